//! A WebSocket client's byte stream after the handshake, read by tungstenite configured as
//! `transport::websocket` configures it; and the server's own frame headers and close frames,
//! read back by tungstenite as a client would.
//!
//! Input: byte 0 picks the message size limit, the rest is what the client sends. The same
//! bytes also give a payload length, a close code and a reason for the writer's helpers.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use herald::fuzzing::{read_websocket_client, websocket_close_frame, websocket_header, websocket_origin_allowed};
use herald::session::transport::Incoming;
use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    // 16 B .. 8 KiB: small enough that fuzzed inputs cross it.
    let limit = 16 + usize::from(selector) * 32;
    read_stream(stream, limit);
    server_header(stream);
    server_close_frame(stream);
    origin(stream);
});

fn read_stream(stream: &[u8], limit: usize) {
    let (incoming, own_output) = runtime().block_on(read_websocket_client(stream, limit));
    for (i, event) in incoming.iter().enumerate() {
        match event {
            Incoming::Message { data, binary } => {
                assert!(data.len() <= limit, "{} bytes passed the limit of {limit}", data.len());
                assert!(*binary || std::str::from_utf8(data).is_ok(), "text that is not UTF-8");
            }
            // The session stops reading at the first of these.
            Incoming::Violation(_) | Incoming::Closed => assert_eq!(i, incoming.len() - 1),
        }
    }
    // What tungstenite left for the writer is whole, unmasked control frames (pongs, or its
    // close reply), within the cap on waiting output.
    assert!(own_output.len() <= 4096);
    let mut cursor = Cursor::new(&own_output[..]);
    while (cursor.position() as usize) < own_output.len() {
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("a server frame header")
            .expect("a whole server frame header");
        assert!(header.mask.is_none() && header.is_final);
        assert!(matches!(header.opcode, OpCode::Control(Control::Pong | Control::Close)));
        assert!(len <= 125);
        cursor.set_position(cursor.position() + len);
        assert!(cursor.position() as usize <= own_output.len(), "a frame cut short");
    }
}

fn server_header(stream: &[u8]) {
    let mut len_bytes = [0u8; 8];
    let n = stream.len().min(8);
    len_bytes[..n].copy_from_slice(&stream[..n]);
    let len = u64::from_le_bytes(len_bytes) >> (stream.len() % 64);
    let binary = stream.len() % 2 == 1;
    let header = websocket_header(binary, len as usize);
    let mut cursor = Cursor::new(&header[..]);
    let (parsed, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
    assert_eq!(parsed_len, len);
    assert_eq!(cursor.position() as usize, header.len(), "header bytes left over");
    assert!(parsed.is_final && parsed.mask.is_none() && !parsed.rsv1 && !parsed.rsv2 && !parsed.rsv3);
    let expected = if binary { Data::Binary } else { Data::Text };
    assert_eq!(parsed.opcode, OpCode::Data(expected));
}

fn server_close_frame(stream: &[u8]) {
    let code = stream.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let reason = String::from_utf8_lossy(stream.get(2..).unwrap_or_default());
    let frame = websocket_close_frame(code, &reason);
    let mut cursor = Cursor::new(&frame[..]);
    let (header, len) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
    assert_eq!(header.opcode, OpCode::Control(Control::Close));
    let payload = &frame[cursor.position() as usize..];
    assert_eq!(payload.len() as u64, len);
    assert!(payload.len() <= 125, "a control frame's payload is at most 125 bytes");
    match code {
        None => assert!(payload.is_empty()),
        Some(code) => {
            assert_eq!(payload[..2], code.to_be_bytes());
            let sent = std::str::from_utf8(&payload[2..]).expect("the reason stays UTF-8");
            assert!(reason.starts_with(sent));
        }
    }
}

fn origin(stream: &[u8]) {
    let text = String::from_utf8_lossy(stream);
    let mut parts = text.splitn(3, '\n');
    let (origin, host, pattern) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    websocket_origin_allowed(origin, host, &[]);
    websocket_origin_allowed(origin, host, &[pattern.to_owned()]);
}
