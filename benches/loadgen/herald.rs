//! Herald's client side: the Centrifugo protocol v2 over WebSocket, JSON or Protobuf, for
//! subscribers and for the socket publisher. Server pings (`{}` / a zero-length Protobuf reply)
//! are answered with a pong at once. The decoding and counting here serve the HTTP-streaming
//! subscribers ([`crate::http_stream`]) too.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto::{Command, PublishRequest, Push, Reply};
use herald::protocol::Format;
use prost::Message as _;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::payload::{self, Stamp};
use crate::progress::{Ending, Outcome, Receiver};
use crate::publisher::{wait_for_acks, Acks, Outgoing};
use crate::ws::{Endpoint, Ws};

/// How to reach a Herald node and authenticate.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: String,
    format: Format,
}

/// One decoded element of a server message.
pub enum Event {
    Ping,
    Publication(Stamp),
    Reply(Box<Reply>),
}

impl Client {
    pub async fn new(url: &str, token: String, format: Format) -> anyhow::Result<Self> {
        let subprotocol = (format == Format::Protobuf).then_some("centrifuge-protobuf");
        Ok(Self {
            endpoint: Endpoint::resolve(url, subprotocol).await?,
            token,
            format,
        })
    }

    /// Connects, sends `connect` (id 1) plus `extra` (id 2) in one frame, and waits for the
    /// replies to both.
    async fn open(&self, source: Option<IpAddr>, extra: Option<Command>) -> anyhow::Result<Ws> {
        let mut ws = self.endpoint.connect(source).await?;
        let mut commands = vec![connect_command(&self.token)];
        commands.extend(extra);
        let last_id = commands.len() as u32;
        ws.send(encode_commands(self.format, &commands)).await?;
        loop {
            let data = match ws.next().await {
                Some(Ok(Message::Text(text))) => Frame::Json(text),
                Some(Ok(Message::Binary(data))) => Frame::Protobuf(data),
                Some(Ok(Message::Close(frame))) => bail!("closed during the handshake: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("handshake failed: {e}"),
                None => bail!("closed during the handshake"),
            };
            let mut done = false;
            let mut failure = None;
            decode(&data, |event| {
                if let Event::Reply(reply) = event {
                    if let Some(error) = &reply.error {
                        failure = Some(format!("command {}: error {} {}", reply.id, error.code, error.message));
                    }
                    done |= reply.id == last_id;
                }
            })?;
            if let Some(failure) = failure {
                bail!(failure);
            }
            if done {
                return Ok(ws);
            }
        }
    }

    pub async fn subscribe(&self, channel: &str, source: Option<IpAddr>) -> anyhow::Result<Subscriber> {
        let subscribe = Command::subscribe(2, channel);
        Ok(Subscriber {
            ws: self.open(source, Some(subscribe)).await?,
            format: self.format,
        })
    }

    pub async fn publisher(&self, channels: Vec<String>, inflight: usize) -> anyhow::Result<Publisher> {
        let ws = self.open(None, None).await?;
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let permits = Arc::new(Semaphore::new(inflight));
        let (acks_tx, acks) = watch::channel(Acks::default());
        tokio::spawn(read_acks(self.format, stream, sink.clone(), permits.clone(), acks_tx));
        Ok(Publisher {
            sink,
            format: self.format,
            channels,
            next_id: 1,
            sent: 0,
            permits,
            acks,
        })
    }
}

/// A connected, subscribed Herald client.
pub struct Subscriber {
    ws: Ws,
    format: Format,
}

impl Subscriber {
    /// Receives until `stop`, counting publications into `receiver`.
    pub async fn run(mut self, mut receiver: Receiver, stop: CancellationToken) -> Outcome {
        let ending = loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break Ending::Stopped,
                message = self.ws.next() => message,
            };
            let data = match message {
                Some(Ok(Message::Text(text))) => Frame::Json(text),
                Some(Ok(Message::Binary(data))) => Frame::Protobuf(data),
                Some(Ok(Message::Close(frame))) => break Ending::closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Ending::Failed(e.to_string()),
                None => break Ending::dropped(),
            };
            let received = receive(&data, &mut receiver);
            if let Some(ending) = received.ending {
                break ending;
            }
            if received.pings > 0 {
                if let Err(e) = self.ws.send(pong(self.format)).await {
                    break Ending::Failed(format!("sending a pong: {e}"));
                }
            }
        };
        Outcome {
            tally: receiver.tally,
            ending,
        }
    }
}

/// What one server message brought a subscriber, its publications already counted.
pub struct Received {
    pub pings: u32,
    /// Set when the message ends the subscription: an unsubscribe or disconnect push, or a
    /// message that does not decode.
    pub ending: Option<Ending>,
}

/// Counts the publications of one server message into `receiver` (they all arrived now), the
/// same for every transport.
pub fn receive(data: &Frame, receiver: &mut Receiver) -> Received {
    let mut pings = 0;
    let mut ending = None;
    let decoded = decode(data, |event| match event {
        Event::Ping => pings += 1,
        Event::Publication(stamp) => receiver.push(stamp),
        Event::Reply(reply) => match reply.push {
            Some(Push {
                unsubscribe: Some(u), ..
            }) => {
                ending = Some(Ending::Closed {
                    code: u.code as u16,
                    reason: format!("unsubscribed: {}", u.reason),
                })
            }
            // Streams carry no close code: a disconnect push comes before their end.
            Some(Push {
                disconnect: Some(d), ..
            }) => {
                ending = Some(Ending::Closed {
                    code: d.code as u16,
                    reason: d.reason,
                })
            }
            _ => {}
        },
    });
    receiver.flush();
    if let Err(e) = decoded {
        ending = Some(Ending::Failed(e.to_string()));
    }
    Received { pings, ending }
}

/// The `connect` command (id 1) every connection opens with.
pub fn connect_command(token: &str) -> Command {
    let mut connect = Command::connect(1, token);
    if let Some(request) = &mut connect.connect {
        request.name = "herald-loadgen".into();
    }
    connect
}

type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// Publishes with client `publish` commands on one connection. Herald handles a connection's
/// commands in order, so several in flight keep the channel's order.
pub struct Publisher {
    sink: Sink,
    format: Format,
    channels: Vec<String>,
    next_id: u32,
    sent: u64,
    permits: Arc<Semaphore>,
    acks: watch::Receiver<Acks>,
}

impl Publisher {
    pub async fn send(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        self.permits.acquire_many(batch.len() as u32).await?.forget();
        let message = match self.format {
            Format::Json => {
                let mut text = String::new();
                for (i, out) in batch.iter().enumerate() {
                    if i > 0 {
                        text.push('\n');
                    }
                    let id = self.id();
                    text.push_str(&json_publish(id, &self.channels[out.channel], &out.payload)?);
                }
                Message::text(text)
            }
            Format::Protobuf => {
                let commands: Vec<Command> = batch
                    .iter()
                    .map(|out| Command {
                        id: self.id(),
                        publish: Some(PublishRequest {
                            channel: self.channels[out.channel].clone(),
                            data: out.payload.clone(),
                        }),
                        ..Default::default()
                    })
                    .collect();
                encode_commands(Format::Protobuf, &commands)
            }
        };
        self.sent += batch.len() as u64;
        self.sink.lock().await.send(message).await.context("publishing")
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    pub async fn finish(&mut self, deadline: Instant) -> Acks {
        wait_for_acks(&mut self.acks, self.sent, deadline).await
    }
}

/// The publisher's reader: counts replies, frees in-flight permits, answers pings.
async fn read_acks(
    format: Format,
    mut stream: SplitStream<Ws>,
    sink: Sink,
    permits: Arc<Semaphore>,
    acks: watch::Sender<Acks>,
) {
    let closed = loop {
        let data = match stream.next().await {
            Some(Ok(Message::Text(text))) => Frame::Json(text),
            Some(Ok(Message::Binary(data))) => Frame::Protobuf(data),
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e.to_string(),
            None => break "connection dropped".into(),
        };
        let (mut pings, mut answered) = (0, 0);
        let mut update = Acks::default();
        let decoded = decode(&data, |event| match event {
            Event::Ping => pings += 1,
            Event::Reply(reply) if reply.id > 0 => {
                answered += 1;
                match &reply.error {
                    Some(e) => update.error(|| format!("error {} {}", e.code, e.message)),
                    None => update.ok += 1,
                }
            }
            _ => {}
        });
        if let Err(e) = decoded {
            break e.to_string();
        }
        permits.add_permits(answered);
        acks.send_modify(|a| {
            a.ok += update.ok;
            a.errors += update.errors;
            if a.first_error.is_none() {
                a.first_error = update.first_error;
            }
        });
        if pings > 0 && sink.lock().await.send(pong(format)).await.is_err() {
            break "sending a pong failed".into();
        }
    };
    acks.send_modify(|a| a.closed = Some(closed));
}

/// A JSON `publish` command. The payload is JSON and is embedded as is, as Centrifugo clients do.
fn json_publish(id: u32, channel: &str, payload: &[u8]) -> anyhow::Result<String> {
    Ok(format!(
        "{{\"id\":{id},\"publish\":{{\"channel\":{},\"data\":{}}}}}",
        serde_json::to_string(channel)?,
        std::str::from_utf8(payload)?
    ))
}

fn pong(format: Format) -> Message {
    match format {
        Format::Json => Message::text("{}"),
        Format::Protobuf => Message::binary(Bytes::from_static(&[0])),
    }
}

pub fn encode_commands(format: Format, commands: &[Command]) -> Message {
    match format {
        Format::Json => {
            let lines: Vec<String> = commands
                .iter()
                .map(|c| serde_json::to_string(c).expect("commands serialize"))
                .collect();
            Message::text(lines.join("\n"))
        }
        Format::Protobuf => {
            let mut buf = BytesMut::new();
            for command in commands {
                buf.reserve(command.encoded_len() + 5);
                command.encode_length_delimited(&mut buf).expect("buffer has capacity");
            }
            Message::binary(buf.freeze())
        }
    }
}

/// A server message: JSON in text frames (or stream chunks), Protobuf in binary frames.
pub enum Frame {
    Json(Utf8Bytes),
    Protobuf(Bytes),
}

/// Splits one server message into events. Publications are recognised by their payload without
/// decoding the whole reply, which keeps the load generator's cost per delivery low (it shares one
/// core with thousands of connections); anything else is decoded in full.
pub fn decode(frame: &Frame, mut on: impl FnMut(Event)) -> anyhow::Result<()> {
    match frame {
        Frame::Json(text) => {
            // Lines are split with memchr (`str::split(char)` adds a memcmp call per match).
            let text = text.as_str();
            let mut start = 0;
            let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]);
            for end in ends {
                let line = &text[start..end];
                start = end + 1;
                if line.len() == 2 && line.as_bytes().first_chunk() == Some(b"{}") {
                    on(Event::Ping);
                } else if let Some(stamp) = payload::find_in_text(line) {
                    on(Event::Publication(stamp));
                } else {
                    let reply: Reply = serde_json::from_str(line).with_context(|| format!("bad reply {line}"))?;
                    on(Event::Reply(Box::new(reply)));
                }
            }
        }
        Frame::Protobuf(data) => {
            let mut rest = &data[..];
            while !rest.is_empty() {
                let len = prost::decode_length_delimiter(&mut rest)?;
                if len > rest.len() {
                    bail!("truncated Protobuf reply: {len} bytes declared, {} left", rest.len());
                }
                if len == 0 {
                    on(Event::Ping);
                } else {
                    let start = data.len() - rest.len();
                    // As for JSON: a publication is recognised by its payload, which only
                    // publications carry, without decoding the reply.
                    if let Some(stamp) = payload::find_in_bytes(&rest[..len]) {
                        on(Event::Publication(stamp));
                    } else {
                        // Decoding from `Bytes` keeps `data` fields as slices of the frame.
                        let reply = Reply::decode(data.slice(start..start + len))?;
                        if reply.push.as_ref().is_some_and(|p| p.r#pub.is_some()) {
                            bail!("publication without a benchmark payload");
                        }
                        on(Event::Reply(Box::new(reply)));
                    }
                }
                rest = &rest[len..];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::protocol::codec::{encode_reply, join_replies};
    use herald::protocol::proto::Publication;

    fn publication(seq: u64) -> Reply {
        Reply {
            push: Some(Push {
                channel: "bench:fanout".into(),
                r#pub: Some(Publication {
                    data: payload::encode(seq, 5, 64),
                    offset: seq + 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn events(format: Format, replies: &[Reply]) -> Vec<String> {
        let encoded: Vec<Bytes> = replies.iter().map(|r| encode_reply(format, r)).collect();
        let joined = join_replies(format, &encoded);
        let frame = match format {
            Format::Json => Frame::Json(String::from_utf8(joined.to_vec()).unwrap().into()),
            Format::Protobuf => Frame::Protobuf(joined),
        };
        let mut seen = Vec::new();
        decode(&frame, |e| {
            seen.push(match e {
                Event::Ping => "ping".to_string(),
                Event::Publication(s) => format!("pub {}", s.seq),
                Event::Reply(r) => format!("reply {}", r.id),
            })
        })
        .unwrap();
        seen
    }

    #[test]
    fn decodes_what_herald_encodes_in_both_formats() {
        let replies = [
            Reply {
                id: 2,
                subscribe: Some(Default::default()),
                ..Default::default()
            },
            publication(0),
            Reply::default(),
            publication(1),
        ];
        for format in [Format::Json, Format::Protobuf] {
            assert_eq!(
                events(format, &replies),
                ["reply 2", "pub 0", "ping", "pub 1"],
                "{format:?}"
            );
        }
    }

    #[test]
    fn json_publish_commands_are_what_herald_decodes() {
        let data = payload::encode(1, 2, 64);
        let text = json_publish(7, "bench:fanout", &data).unwrap();
        let commands = herald::protocol::codec::decode_commands(Format::Json, text.as_bytes(), 1 << 16).unwrap();
        let publish = commands[0].publish.as_ref().unwrap();
        assert_eq!((commands[0].id, publish.channel.as_str()), (7, "bench:fanout"));
        assert_eq!(publish.data, data);
    }
}
