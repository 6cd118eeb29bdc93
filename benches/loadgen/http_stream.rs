//! Herald subscribers over the HTTP-streaming fallback (issue 12): `POST /connection/http_stream`
//! whose body is the `connect` and `subscribe` commands (the session handles them in order) and
//! whose chunked response carries every reply, JSON lines or varint-delimited Protobuf. Server
//! pings are answered with a pong through `POST /emulation`, naming the session and node from
//! the connect reply. Publications are counted by [`herald::receive`], as over WebSocket.
//!
//! The stream is read by hand from the subscriber's own task, as tungstenite reads a WebSocket:
//! hyper's client hands each body chunk from its connection task to the reader through a
//! channel, a second task wake-up per chunk on the load generator's one core, which would count
//! against http_stream in a comparison with WebSocket. The rare `/emulation` requests go through
//! hyper.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use herald::protocol::proto::{Command, EmulationRequest};
use herald::protocol::Format;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::herald::{connect_command, decode, encode_commands, receive, Event, Frame};
use crate::progress::{Ending, Outcome, Receiver};
use crate::ws::{connect_tcp, resolve};

/// Where HTTP-streaming subscribers connect: the host and port of the WebSocket URL.
pub struct Client {
    addr: SocketAddr,
    /// The `host` header.
    authority: String,
    token: String,
    format: Format,
    pongs: Arc<Pongs>,
}

impl Client {
    pub async fn new(url: &str, token: String, format: Format) -> anyhow::Result<Self> {
        let addr = resolve(url).await?;
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url}"))?
            .to_string();
        Ok(Self {
            addr,
            pongs: Arc::new(Pongs {
                addr,
                authority: authority.clone(),
                format,
                idle: parking_lot::Mutex::new(Vec::new()),
                in_flight: Semaphore::new(PONG_CONNECTIONS),
            }),
            authority,
            token,
            format,
        })
    }

    /// Opens a stream carrying `connect` (id 1) and `subscribe` (id 2) and waits for both
    /// replies.
    pub async fn subscribe(&self, channel: &str, source: Option<IpAddr>) -> anyhow::Result<Subscriber> {
        let mut stream = connect_tcp(self.addr, source).await?;
        let commands = [connect_command(&self.token), Command::subscribe(2, channel)];
        let body = encode_commands(self.format, &commands).into_data();
        let content_type = match self.format {
            Format::Json => "application/json",
            Format::Protobuf => "application/octet-stream",
        };
        let mut request = format!(
            "POST /connection/http_stream HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\n\r\n",
            self.authority,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).await.context("sending the stream request")?;

        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let head = loop {
            if let Some(head) = parse_head(&mut buf).map_err(anyhow::Error::msg)? {
                break head;
            }
            read_more(&mut stream, &mut buf).await?;
        };
        if head.status != 200 {
            // The refusal's text, as far as it came with the head.
            bail!(
                "POST /connection/http_stream: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&buf[..buf.len().min(head.content_length.unwrap_or(0))])
            );
        }
        if !head.chunked {
            bail!("POST /connection/http_stream: the response is not chunked");
        }

        let mut session = None;
        loop {
            let chunk = loop {
                if let Some(chunk) = next_chunk(&mut buf).map_err(anyhow::Error::msg)? {
                    break chunk;
                }
                read_more(&mut stream, &mut buf).await?;
            };
            let Chunk::Data(data) = chunk else {
                bail!("the stream ended during the handshake");
            };
            let mut failure = None;
            let mut subscribed = false;
            decode(&frame(self.format, data)?, |event| {
                let Event::Reply(reply) = event else { return };
                if let Some(error) = &reply.error {
                    failure = Some(format!("command {}: error {} {}", reply.id, error.code, error.message));
                }
                if let Some(connect) = &reply.connect {
                    session = Some((connect.session.clone(), connect.node.clone()));
                }
                subscribed |= reply.id == 2;
            })?;
            if let Some(failure) = failure {
                bail!(failure);
            }
            if subscribed {
                let (session, node) = session.context("no connect result before the subscribe reply")?;
                return Ok(Subscriber {
                    stream,
                    buf,
                    format: self.format,
                    pong: pong_body(self.format, session, node)?,
                    pongs: self.pongs.clone(),
                });
            }
        }
    }
}

/// The read buffer of one stream, as for a WebSocket connection ([`crate::ws`]).
const READ_BUFFER: usize = 16 * 1024;

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<()> {
    buf.reserve(READ_BUFFER / 4);
    match stream.read_buf(buf).await.context("reading the stream")? {
        0 => bail!("the server closed the connection"),
        _ => Ok(()),
    }
}

/// A connected, subscribed HTTP-streaming client.
pub struct Subscriber {
    stream: TcpStream,
    /// Response bytes read and not yet decoded.
    buf: BytesMut,
    format: Format,
    /// The `/emulation` body that answers a ping of this session.
    pong: Bytes,
    pongs: Arc<Pongs>,
}

impl Subscriber {
    /// Receives until `stop`, counting publications into `receiver`.
    pub async fn run(mut self, mut receiver: Receiver, stop: CancellationToken) -> Outcome {
        // A pong is sent by a task of its own, so that deliveries keep being read meanwhile.
        let mut pong: Option<JoinHandle<anyhow::Result<()>>> = None;
        let ending = 'run: loop {
            loop {
                let data = match next_chunk(&mut self.buf) {
                    Ok(Some(Chunk::Data(data))) => data,
                    Ok(Some(Chunk::End)) => break 'run Ending::dropped(),
                    Ok(None) => break,
                    Err(e) => break 'run Ending::Failed(e),
                };
                let frame = match frame(self.format, data) {
                    Ok(frame) => frame,
                    Err(e) => break 'run Ending::Failed(e.to_string()),
                };
                let received = receive(&frame, &mut receiver);
                if let Some(ending) = received.ending {
                    break 'run ending;
                }
                if received.pings > 0 && pong.is_none() {
                    pong = Some(tokio::spawn(self.pongs.clone().send(self.pong.clone())));
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_BUFFER / 4 {
                self.buf.reserve(READ_BUFFER);
            }
            tokio::select! {
                _ = stop.cancelled() => break Ending::Stopped,
                answered = async { pong.as_mut().expect("guarded").await }, if pong.is_some() => {
                    pong = None;
                    match answered {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Ending::Failed(format!("answering a ping: {e:#}")),
                        Err(e) => break Ending::Failed(format!("answering a ping: {e}")),
                    }
                }
                read = self.stream.read_buf(&mut self.buf) => match read {
                    Ok(0) => break Ending::dropped(),
                    Ok(_) => {}
                    Err(e) => break Ending::Failed(e.to_string()),
                },
            }
        };
        if let Some(pong) = pong {
            pong.abort();
        }
        Outcome {
            tally: receiver.tally,
            ending,
        }
    }
}

/// One chunk of the response as a server message. Herald writes one batch of replies per chunk
/// (`Framing::frame` in `src/transport/emulation.rs`), JSON lines ending in a newline, so a chunk
/// decodes as a WebSocket message does; a chunk that splits a reply is an error, as a truncated
/// WebSocket message is.
fn frame(format: Format, data: Bytes) -> anyhow::Result<Frame> {
    Ok(match format {
        Format::Json => {
            let Some(lines) = data.strip_suffix(b"\n") else {
                bail!("a JSON chunk that does not end a line");
            };
            let lines = data.slice(..lines.len());
            Frame::Json(Utf8Bytes::try_from(lines).context("a JSON chunk that is not UTF-8")?)
        }
        Format::Protobuf => Frame::Protobuf(data),
    })
}

/// The `/emulation` request that answers a ping: an empty command (`{}`, or a zero-length
/// Protobuf command) for the session.
fn pong_body(format: Format, session: String, node: String) -> anyhow::Result<Bytes> {
    Ok(match format {
        Format::Json => {
            serde_json::to_vec(&serde_json::json!({"session": session, "node": node, "data": "{}"}))?.into()
        }
        Format::Protobuf => EmulationRequest {
            node,
            session,
            data: Bytes::from_static(&[0]),
        }
        .encode_to_vec()
        .into(),
    })
}

/// Concurrent `/emulation` requests, each on a keep-alive connection of its own: pings come
/// every `client.ping_interval` (25 s by default) per session, so a few connections serve
/// thousands of subscribers.
const PONG_CONNECTIONS: usize = 8;

/// Sends pongs through `POST /emulation` for every subscriber of the run.
struct Pongs {
    addr: SocketAddr,
    authority: String,
    format: Format,
    /// Open connections not in use.
    idle: parking_lot::Mutex<Vec<SendRequest<Full<Bytes>>>>,
    in_flight: Semaphore,
}

impl Pongs {
    async fn send(self: Arc<Self>, body: Bytes) -> anyhow::Result<()> {
        let _permit = self.in_flight.acquire().await?;
        let idle = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.open().await?,
        };
        connection.ready().await?;
        let content_type = match self.format {
            Format::Json => "application/json",
            Format::Protobuf => "application/octet-stream",
        };
        let request = Request::post("/emulation")
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))?;
        let response = connection.send_request(request).await.context("POST /emulation")?;
        let status = response.status();
        let text = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::NO_CONTENT {
            bail!("POST /emulation: HTTP {status}: {}", String::from_utf8_lossy(&text));
        }
        self.idle.lock().push(connection);
        Ok(())
    }

    async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = connect_tcp(self.addr, None).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// A response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// Takes the response head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("response head over 64 KiB".into())
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {text:?}"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.trim().eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().ok();
        }
    }
    buf.advance(end + 4);
    Ok(Some(head))
}

/// One element of a chunked body.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    Data(Bytes),
    /// The last chunk (and any trailers): the response is complete.
    End,
}

/// Largest chunk accepted: far above any batch of replies Herald writes.
const MAX_CHUNK: usize = 64 << 20;

/// Takes the next chunk off the front of `buf`; `None` while it is incomplete.
fn next_chunk(buf: &mut BytesMut) -> Result<Option<Chunk>, String> {
    let Some(line_end) = memchr::memmem::find(buf, b"\r\n") else {
        return if buf.len() > 1024 {
            Err("chunk size line over 1 KiB".into())
        } else {
            Ok(None)
        };
    };
    // The size in hex, then optional `;extensions`.
    let digits = buf[..line_end].split(|&b| b == b';').next().unwrap_or_default();
    let size = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
        .filter(|&size| size <= MAX_CHUNK)
        .ok_or_else(|| format!("bad chunk size line {:?}", String::from_utf8_lossy(&buf[..line_end])))?;
    if size == 0 {
        // Trailer lines, if any, end with an empty line.
        let rest = &buf[line_end..];
        let Some(end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
            return Ok(None);
        };
        buf.advance(line_end + end + 4);
        return Ok(Some(Chunk::End));
    }
    let data_start = line_end + 2;
    if buf.len() < data_start + size + 2 {
        return Ok(None);
    }
    if &buf[data_start + size..data_start + size + 2] != b"\r\n" {
        return Err("a chunk not followed by CRLF".into());
    }
    buf.advance(data_start);
    let data = buf.split_to(size).freeze();
    buf.advance(2);
    Ok(Some(Chunk::Data(data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::protocol::codec::{encode_reply, join_replies};
    use herald::protocol::proto::{Publication, Push, Reply};

    use crate::payload;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
Transfer-Encoding: chunked\r\n\r\n\
6\r\n{\"a\"}\n\r\n3;ext=1\r\n{}\n\r\n0\r\n\r\n";

    #[test]
    fn a_chunked_response_fed_one_byte_at_a_time() {
        let mut buf = BytesMut::new();
        let mut head = None;
        let mut chunks = Vec::new();
        for &byte in RESPONSE {
            buf.extend_from_slice(&[byte]);
            if head.is_none() {
                head = parse_head(&mut buf).unwrap();
                continue;
            }
            while let Some(chunk) = next_chunk(&mut buf).unwrap() {
                chunks.push(chunk);
            }
        }
        assert_eq!(
            head,
            Some(Head {
                status: 200,
                chunked: true,
                content_length: None
            })
        );
        assert_eq!(
            chunks,
            [
                Chunk::Data(Bytes::from_static(b"{\"a\"}\n")),
                Chunk::Data(Bytes::from_static(b"{}\n")),
                Chunk::End
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn broken_chunks_are_errors_not_misreads() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcXY", b"ffffffffff\r\n"] {
            assert!(next_chunk(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let mut refused = BytesMut::from(&b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnot"[..]);
        let head = parse_head(&mut refused).unwrap().unwrap();
        assert_eq!((head.status, head.chunked, head.content_length), (404, false, Some(3)));
    }

    /// What `Framing::frame` writes for JSON and Protobuf, decoded back into events.
    #[test]
    fn chunks_decode_as_herald_frames_them() {
        let replies = [
            Reply {
                push: Some(Push {
                    channel: "bench:fanout".into(),
                    r#pub: Some(Publication {
                        data: payload::encode(7, 5, 64),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Reply::default(),
        ];
        for format in [Format::Json, Format::Protobuf] {
            let encoded: Vec<Bytes> = replies.iter().map(|r| encode_reply(format, r)).collect();
            let mut chunk = join_replies(format, &encoded).to_vec();
            if format == Format::Json {
                chunk.push(b'\n');
            }
            let mut seen = Vec::new();
            decode(&frame(format, chunk.into()).unwrap(), |e| {
                seen.push(match e {
                    Event::Ping => "ping".to_string(),
                    Event::Publication(s) => format!("pub {}", s.seq),
                    Event::Reply(r) => format!("reply {}", r.id),
                })
            })
            .unwrap();
            assert_eq!(seen, ["pub 7", "ping"], "{format:?}");
        }
        assert!(frame(Format::Json, Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn pongs_are_what_emulation_takes() {
        let json = pong_body(Format::Json, "s1".into(), "n1".into()).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed, serde_json::json!({"session": "s1", "node": "n1", "data": "{}"}));
        let protobuf = pong_body(Format::Protobuf, "s1".into(), "n1".into()).unwrap();
        let request = EmulationRequest::decode(&protobuf[..]).unwrap();
        assert_eq!((request.session.as_str(), &request.data[..]), ("s1", &[0u8][..]));
    }
}
