//! Publishing through Herald's HTTP API: `POST /api/publish` on keep-alive HTTP/1.1 connections,
//! requests pipelined (sent before the previous response arrives). The server answers one
//! connection's requests in order, one at a time, so a single connection keeps the channel's
//! order while hiding the round trip; several connections publish faster but may interleave.

use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::publisher::{wait_for_acks, Acks, Outgoing};
use crate::target::ApiAccess;

pub struct Publisher {
    connections: Vec<Connection>,
    next: usize,
    /// `{"channel":"…","data":` for each channel: the start of every request body.
    body_prefixes: Vec<String>,
    /// Request head up to the Content-Length value.
    head: String,
    /// Publishes per request: above 1, `/api/batch` calls.
    per_request: usize,
}

struct Connection {
    write: OwnedWriteHalf,
    permits: Arc<Semaphore>,
    acks: watch::Receiver<Acks>,
    sent: u64,
}

impl Publisher {
    pub async fn connect(api: &ApiAccess, channels: &[String], inflight: usize) -> anyhow::Result<Self> {
        let addr = crate::ws::resolve(&api.url).await?;
        let mut opened = Vec::new();
        for _ in 0..api.connections.max(1) {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to the API at {addr}"))?;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            let permits = Arc::new(Semaphore::new(inflight.max(1)));
            let (acks_tx, acks) = watch::channel(Acks::default());
            tokio::spawn(read_responses(read, permits.clone(), acks_tx));
            opened.push(Connection {
                write,
                permits,
                acks,
                sent: 0,
            });
        }
        let body_prefixes = channels
            .iter()
            .map(|c| Ok(format!("{{\"channel\":{},\"data\":", serde_json::to_string(c)?)))
            .collect::<anyhow::Result<_>>()?;
        let method = if api.per_request > 1 { "batch" } else { "publish" };
        Ok(Self {
            connections: opened,
            next: 0,
            body_prefixes,
            per_request: api.per_request.max(1),
            head: format!(
                "POST /api/{method} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\n\
                 content-type: application/json\r\ncontent-length: ",
                api.key
            ),
        })
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut requests = Vec::new();
        let mut body = Vec::new();
        for chunk in batch.chunks(self.per_request) {
            self.body(chunk, &mut body);
            requests.extend_from_slice(self.head.as_bytes());
            requests.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
            requests.extend_from_slice(&body);
        }
        let index = self.next;
        self.next = (index + 1) % self.connections.len();
        let connection = &mut self.connections[index];
        connection.permits.acquire_many(batch.len() as u32).await?.forget();
        connection.sent += batch.len() as u64;
        connection
            .write
            .write_all(&requests)
            .await
            .context("sending API requests")
    }

    /// The body of one request: a publish, or a batch of them.
    fn body(&self, chunk: &[Outgoing], body: &mut Vec<u8>) {
        body.clear();
        let batch = self.per_request > 1;
        if batch {
            body.extend_from_slice(b"{\"commands\":[");
        }
        for (i, out) in chunk.iter().enumerate() {
            if batch {
                body.extend_from_slice(if i == 0 { b"{\"publish\":" } else { b",{\"publish\":" });
            }
            body.extend_from_slice(self.body_prefixes[out.channel].as_bytes());
            body.extend_from_slice(&out.payload);
            body.push(b'}');
            if batch {
                body.push(b'}');
            }
        }
        if batch {
            body.extend_from_slice(b"]}");
        }
    }

    pub async fn finish(&mut self, deadline: Instant) -> Acks {
        let mut total = Acks::default();
        for c in &mut self.connections {
            let acks = wait_for_acks(&mut c.acks, c.sent, deadline).await;
            total.ok += acks.ok;
            total.errors += acks.errors;
            total.first_error = total.first_error.or(acks.first_error);
            total.closed = total.closed.or(acks.closed);
        }
        total
    }
}

/// One parsed HTTP response.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Bytes,
}

/// Reads responses in order, frees one in-flight permit per response, counts errors: non-200
/// statuses and `{"error":…}` bodies.
async fn read_responses(mut read: OwnedReadHalf, permits: Arc<Semaphore>, acks: watch::Sender<Acks>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let closed = loop {
        let mut update = Acks::default();
        let failure = loop {
            match parse_response(&mut buf) {
                Ok(Some(response)) if response.status == 200 && response.body.starts_with(BATCH_RESULT) => {
                    count_batch_replies(&response.body, &mut update)
                }
                Ok(Some(response)) if response.status == 200 && !response.body.starts_with(b"{\"error\"") => {
                    update.ok += 1
                }
                Ok(Some(response)) => {
                    update.error(|| format!("HTTP {}: {}", response.status, String::from_utf8_lossy(&response.body)))
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        permits.add_permits(update.answered() as usize);
        acks.send_modify(|a| {
            a.ok += update.ok;
            a.errors += update.errors;
            if a.first_error.is_none() {
                a.first_error = update.first_error;
            }
        });
        if let Some(failure) = failure {
            break failure;
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => break "the API closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    acks.send_modify(|a| a.closed = Some(closed));
}

/// How a `/api/batch` answer starts (Centrifugo's shape: the replies at the top, no `result`).
const BATCH_RESULT: &[u8] = b"{\"replies\":";

/// Counts each reply of a batch result: a publish result, or an error. A body that does not
/// parse counts as one error (its publishes stay unanswered, which the run reports).
fn count_batch_replies(body: &[u8], acks: &mut Acks) {
    let replies = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["replies"].as_array().cloned());
    let Some(replies) = replies else {
        acks.error(|| format!("bad batch result {}", String::from_utf8_lossy(body)));
        return;
    };
    for reply in replies {
        if reply.get("publish").is_some() {
            acks.ok += 1;
        } else {
            acks.error(|| format!("batch reply {reply}"));
        }
    }
}

/// Takes one complete response off the front of `buf`; `None` while it is incomplete.
fn parse_response(buf: &mut BytesMut) -> Result<Option<Response>, String> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unsupported transfer-encoding {}", value.trim()));
        }
    }
    let length = length.ok_or_else(|| format!("no content-length in {head:?}"))?;
    if buf.len() < head_len + length {
        return Ok(None);
    }
    buf.advance(head_len);
    Ok(Some(Response {
        status,
        body: buf.split_to(length).freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 13\r\n\r\n{\"result\":{}}\
HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";

    #[test]
    fn pipelined_responses_fed_one_byte_at_a_time() {
        let mut buf = BytesMut::new();
        let mut responses = Vec::new();
        for &byte in TWO {
            buf.extend_from_slice(&[byte]);
            while let Some(r) = parse_response(&mut buf).unwrap() {
                responses.push(r);
            }
        }
        assert_eq!(
            responses,
            [
                Response {
                    status: 200,
                    body: Bytes::from_static(b"{\"result\":{}}")
                },
                Response {
                    status: 401,
                    body: Bytes::new()
                }
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn batch_bodies_are_what_the_api_takes_and_replies_are_counted() {
        let publisher = Publisher {
            connections: Vec::new(),
            next: 0,
            body_prefixes: vec![
                "{\"channel\":\"b:one\",\"data\":".into(),
                "{\"channel\":\"b:two\",\"data\":".into(),
            ],
            head: String::new(),
            per_request: 3,
        };
        let outgoing: Vec<Outgoing> = (0..3)
            .map(|i| Outgoing {
                channel: i % 2,
                payload: crate::payload::encode(i as u64, 0, 40),
            })
            .collect();
        let mut body = Vec::new();
        publisher.body(&outgoing, &mut body);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let commands = parsed["commands"].as_array().unwrap();
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[1]["publish"]["channel"], "b:two");
        assert_eq!(commands[2]["publish"]["data"]["s"], 2);

        let mut acks = Acks::default();
        count_batch_replies(
            br#"{"replies":[{"publish":{"offset":1}},{"error":{"code":102}},{"publish":{}}]}"#,
            &mut acks,
        );
        assert_eq!((acks.ok, acks.errors), (2, 1));
    }

    #[test]
    fn chunked_bodies_are_refused_not_misread() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
        assert!(parse_response(&mut buf).is_err());
    }
}
