//! The peer adapter: the NATS client protocol carried in WebSocket frames (nats-server's
//! `websocket` listener). The server sends `INFO {…}`, we answer `CONNECT {…}`, then `SUB`/`PUB`;
//! deliveries are `MSG subject sid [reply] len\r\n<payload>\r\n`, and every `PING` needs a `PONG`.
//! Frame boundaries mean nothing: one frame may carry several operations or part of one, so the
//! [`Parser`] reads a byte stream.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::progress::{Ending, Outcome, Receiver};
use crate::publisher::{Acks, Outgoing};
use crate::ws::{Endpoint, Ws};

const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"no_responders\":false}\r\n";

/// Longest control line accepted before its `\r\n` (nats-server's own default limit).
const MAX_CONTROL_LINE: usize = 4096;

/// One server operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Info(Bytes),
    Msg { sid: u64, payload: Bytes },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Incremental parser of the server's byte stream. "Incomplete" is not an error: [`Parser::next`]
/// returns `None` and keeps the bytes until more arrive.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
}

impl Parser {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Called once per delivery: the control line is found with memchr and read without
    /// allocating, so the load generator's cost per NATS delivery stays as low as per Herald one.
    pub fn next(&mut self) -> Result<Option<Op>, String> {
        let Some(eol) = find_crlf(&self.buf) else {
            if self.buf.len() > MAX_CONTROL_LINE {
                return Err("control line too long".into());
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..eol]).map_err(|_| "control line is not UTF-8".to_string())?;
        let (verb, args) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let is_msg = verb.eq_ignore_ascii_case("MSG");
        let op = if is_msg || verb.eq_ignore_ascii_case("HMSG") {
            // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr size> <size>
            let sizes = if is_msg { 1 } else { 2 };
            let mut fields = [""; 5];
            let mut count = 0;
            for field in args.split([' ', '\t']).filter(|a| !a.is_empty()) {
                if count == fields.len() {
                    return Err(format!("bad {verb} line {line:?}"));
                }
                fields[count] = field;
                count += 1;
            }
            if !(2 + sizes..=3 + sizes).contains(&count) {
                return Err(format!("bad {verb} line {line:?}"));
            }
            let number = |s: &str| s.parse::<usize>().map_err(|_| format!("bad number in {line:?}"));
            let sid = number(fields[1])? as u64;
            let total = number(fields[count - 1])?;
            let headers = if sizes == 2 { number(fields[count - 2])? } else { 0 };
            if headers > total {
                return Err(format!("headers longer than the message in {line:?}"));
            }
            if self.buf.len() < eol + 2 + total + 2 {
                return Ok(None);
            }
            self.buf.advance(eol + 2);
            let mut message = self.buf.split_to(total).freeze();
            if &self.buf[..2] != b"\r\n" {
                return Err("message not followed by \\r\\n".into());
            }
            self.buf.advance(2);
            Op::Msg {
                sid,
                payload: message.split_off(headers),
            }
        } else {
            let op = match verb.to_ascii_uppercase().as_str() {
                "PING" => Op::Ping,
                "PONG" => Op::Pong,
                "+OK" => Op::Ok,
                "-ERR" => Op::Err(line[4..].trim().to_owned()),
                "INFO" => Op::Info(Bytes::copy_from_slice(line[4..].trim().as_bytes())),
                _ => return Err(format!("unknown operation {line:?}")),
            };
            self.buf.advance(eol + 2);
            op
        };
        Ok(Some(op))
    }
}

/// Where the first `\r\n` starts.
fn find_crlf(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &bytes[from..]) {
        let at = from + at;
        if at > 0 && bytes[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// How to reach the server's WebSocket listener.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub async fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::resolve(url, None).await?,
        })
    }

    /// Connects: waits for `INFO`, sends `CONNECT`, `setup` and `PING`, and returns after the
    /// `PONG`, which proves the server processed everything before it.
    async fn open(&self, source: Option<IpAddr>, setup: &str) -> anyhow::Result<(Ws, Parser)> {
        let mut ws = self.endpoint.connect(source).await?;
        let mut parser = Parser::default();
        let mut greeted = false;
        loop {
            while let Some(op) = parser.next().map_err(anyhow::Error::msg)? {
                match op {
                    Op::Info(_) if !greeted => {
                        greeted = true;
                        ws.send(binary(format!("{CONNECT}{setup}PING\r\n"))).await?;
                    }
                    Op::Pong if greeted => return Ok((ws, parser)),
                    Op::Ping => ws.send(binary("PONG\r\n".into())).await?,
                    Op::Err(e) => bail!("server error during the handshake: {e}"),
                    _ => {}
                }
            }
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => parser.feed(&data),
                Some(Ok(Message::Text(text))) => parser.feed(text.as_bytes()),
                Some(Ok(Message::Close(frame))) => bail!("closed during the handshake: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("handshake failed: {e}"),
                None => bail!("closed during the handshake"),
            }
        }
    }

    pub async fn subscribe(&self, subject: &str, source: Option<IpAddr>) -> anyhow::Result<Subscriber> {
        let (ws, parser) = self.open(source, &format!("SUB {subject} 1\r\n")).await?;
        Ok(Subscriber { ws, parser })
    }

    pub async fn publisher(&self, subjects: Vec<String>) -> anyhow::Result<Publisher> {
        let (ws, parser) = self.open(None, "").await?;
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let (state_tx, state) = watch::channel(PublisherState::default());
        tokio::spawn(read_publisher(stream, parser, sink.clone(), state_tx));
        Ok(Publisher {
            sink,
            subjects,
            sent: 0,
            state,
        })
    }
}

fn binary(text: String) -> Message {
    Message::binary(Bytes::from(text))
}

pub struct Subscriber {
    ws: Ws,
    parser: Parser,
}

impl Subscriber {
    pub async fn run(mut self, mut receiver: Receiver, stop: CancellationToken) -> Outcome {
        let ending = loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break Ending::Stopped,
                message = self.ws.next() => message,
            };
            match message {
                Some(Ok(Message::Binary(data))) => self.parser.feed(&data),
                Some(Ok(Message::Text(text))) => self.parser.feed(text.as_bytes()),
                Some(Ok(Message::Close(frame))) => break Ending::closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Ending::Failed(e.to_string()),
                None => break Ending::dropped(),
            }
            let (mut pings, mut failure) = (0, None);
            loop {
                match self.parser.next() {
                    Ok(Some(Op::Msg { payload, .. })) => match payload::find(&payload) {
                        Some(stamp) => receiver.push(stamp),
                        None => {
                            failure = Some(Ending::Failed("message without a benchmark payload".into()));
                            break;
                        }
                    },
                    Ok(Some(Op::Ping)) => pings += 1,
                    Ok(Some(Op::Err(e))) => {
                        failure = Some(Ending::Closed {
                            code: 0,
                            reason: format!("-ERR {e}"),
                        });
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(Ending::Failed(e));
                        break;
                    }
                }
            }
            receiver.flush();
            if let Some(ending) = failure {
                break ending;
            }
            if pings > 0 {
                if let Err(e) = self.ws.send(binary("PONG\r\n".repeat(pings))).await {
                    break Ending::Failed(format!("sending a PONG: {e}"));
                }
            }
        };
        Outcome {
            tally: receiver.tally,
            ending,
        }
    }
}

type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

#[derive(Debug, Clone, Default)]
struct PublisherState {
    pongs: u64,
    errors: Acks,
}

/// Publishes with `PUB` on one connection. NATS does not acknowledge a `PUB`; [`Publisher::finish`]
/// sends a `PING` and waits for its `PONG`, after which the server has processed every `PUB`.
pub struct Publisher {
    sink: Sink,
    subjects: Vec<String>,
    sent: u64,
    state: watch::Receiver<PublisherState>,
}

impl Publisher {
    pub async fn send(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut frame = Vec::new();
        for out in batch {
            let subject = &self.subjects[out.channel];
            frame.extend_from_slice(format!("PUB {subject} {}\r\n", out.payload.len()).as_bytes());
            frame.extend_from_slice(&out.payload);
            frame.extend_from_slice(b"\r\n");
        }
        self.sent += batch.len() as u64;
        self.sink
            .lock()
            .await
            .send(Message::binary(frame))
            .await
            .context("publishing")
    }

    pub async fn finish(&mut self, deadline: Instant) -> Acks {
        let before = self.state.borrow().pongs;
        let pinged = self.sink.lock().await.send(binary("PING\r\n".into())).await;
        let state = match pinged {
            Ok(()) => {
                let wait = self.state.wait_for(|s| s.pongs > before || s.errors.closed.is_some());
                let _ = tokio::time::timeout_at(deadline, wait).await;
                self.state.borrow().clone()
            }
            Err(e) => {
                let mut state = self.state.borrow().clone();
                state.errors.closed = Some(format!("sending PING: {e}"));
                state
            }
        };
        let mut acks = state.errors;
        if state.pongs > before {
            acks.ok = self.sent - acks.errors.min(self.sent);
        } else if acks.closed.is_none() {
            acks.closed = Some("no PONG before the deadline".into());
        }
        acks
    }
}

async fn read_publisher(
    mut stream: SplitStream<Ws>,
    mut parser: Parser,
    sink: Sink,
    state: watch::Sender<PublisherState>,
) {
    let closed = 'read: loop {
        loop {
            match parser.next() {
                Ok(Some(Op::Ping)) => {
                    if sink.lock().await.send(binary("PONG\r\n".into())).await.is_err() {
                        break 'read "sending a PONG failed".to_string();
                    }
                }
                Ok(Some(Op::Pong)) => state.send_modify(|s| s.pongs += 1),
                Ok(Some(Op::Err(e))) => state.send_modify(|s| s.errors.error(|| format!("-ERR {e}"))),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => break 'read e,
            }
        }
        match stream.next().await {
            Some(Ok(Message::Binary(data))) => parser.feed(&data),
            Some(Ok(Message::Text(text))) => parser.feed(text.as_bytes()),
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "connection dropped".into(),
        }
    };
    state.send_modify(|s| s.errors.closed = Some(closed));
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING\r\n\
MSG bench.fanout 1 5\r\nhello\r\nmsg bench.c1 7 reply.to 2\r\n\r\n\r\n+OK\r\n\
HMSG bench.h 3 12 17\r\nNATS/1.0\r\n\r\nworld\r\n-ERR 'Slow Consumer'\r\nPONG\r\n";

    fn expected() -> Vec<Op> {
        vec![
            Op::Info(Bytes::from_static(b"{\"server_id\":\"x\",\"max_payload\":1048576}")),
            Op::Ping,
            Op::Msg {
                sid: 1,
                payload: Bytes::from_static(b"hello"),
            },
            Op::Msg {
                sid: 7,
                payload: Bytes::from_static(b"\r\n"),
            },
            Op::Ok,
            Op::Msg {
                sid: 3,
                payload: Bytes::from_static(b"world"),
            },
            Op::Err("'Slow Consumer'".into()),
            Op::Pong,
        ]
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<Op> {
        let mut parser = Parser::default();
        let mut ops = Vec::new();
        for piece in pieces {
            parser.feed(piece);
            while let Some(op) = parser.next().unwrap() {
                ops.push(op);
            }
        }
        assert!(parser.buf.is_empty());
        ops
    }

    #[test]
    fn whole_stream_at_once() {
        assert_eq!(parse_in_pieces(&[STREAM]), expected());
    }

    #[test]
    fn one_byte_at_a_time() {
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_in_pieces(&bytes), expected());
    }

    #[test]
    fn split_in_two_anywhere() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse_in_pieces(&[a, b]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_streams_are_errors() {
        for bad in [
            &b"MSG subject 1\r\n"[..],
            b"MSG s 1 x\r\n",
            b"MSG s 1 3\r\nabcXY",
            b"WHAT\r\n",
            b"HMSG s 1 9 3\r\nabc\r\n",
        ] {
            let mut parser = Parser::default();
            parser.feed(bad);
            assert!(parser.next().is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut parser = Parser::default();
        parser.feed(&[b'x'; MAX_CONTROL_LINE + 1]);
        assert!(parser.next().is_err());
    }
}
