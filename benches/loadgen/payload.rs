//! The benchmark payload: a JSON object carrying the message's sequence number within its channel
//! and its send time, padded to the requested size:
//!
//! ```text
//! {"s":42,"t":1234567,"p":"xxxxxxxx…"}
//! ```
//!
//! JSON because Herald embeds publication data verbatim in JSON frames; the same bytes go to NATS
//! and to Protobuf subscribers, so every target carries exactly the same payload. `t` is
//! nanoseconds since the run's start `Instant` (publisher and subscribers share one process).

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;

/// What a subscriber reads back from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub sent_ns: u64,
}

const PREFIX: &[u8; 5] = b"{\"s\":";
const TIME_FIELD: &[u8] = b",\"t\":";

/// Builds a payload of `size` bytes, or just over when `size` is too small for the two numbers.
pub fn encode(seq: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut text = format!("{{\"s\":{seq},\"t\":{sent_ns},\"p\":\"");
    let padding = size.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n('x', padding));
    text.push_str("\"}");
    Bytes::from(text)
}

/// Reads the stamp of a payload: `bytes` is the payload itself (NATS, Protobuf data), or
/// contains it somewhere.
pub fn find(bytes: &[u8]) -> Option<Stamp> {
    if bytes.starts_with(PREFIX) {
        return read(bytes);
    }
    let start = bytes.windows(PREFIX.len()).position(|w| w == PREFIX)?;
    read(&bytes[start..])
}

/// Finds the payload embedded in a JSON reply (Herald JSON frames) and reads its stamp. The
/// prefix `{"s":` appears nowhere else in the protocol's framing. Called once per delivery, so it
/// searches with a prebuilt SIMD substring finder.
pub fn find_in_text(text: &str) -> Option<Stamp> {
    find_in_bytes(text.as_bytes())
}

/// The same for an encoded Protobuf reply, where the payload is a `bytes` field.
pub fn find_in_bytes(bytes: &[u8]) -> Option<Stamp> {
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(PREFIX));
    let start = FINDER.find(bytes)?;
    read(&bytes[start..])
}

fn read(payload: &[u8]) -> Option<Stamp> {
    let (seq, rest) = number(&payload[PREFIX.len()..])?;
    let (sent_ns, _) = number(rest.strip_prefix(TIME_FIELD)?)?;
    Some(Stamp { seq, sent_ns })
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = bytes[..len].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((value, &bytes[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        for size in [0, 10, 64, 128, 1024] {
            let payload = encode(7, 123_456_789, size);
            assert_eq!(payload.len(), size.max(encode(7, 123_456_789, 0).len()));
            assert!(serde_json::from_slice::<serde_json::Value>(&payload).is_ok());
            assert_eq!(
                find(&payload),
                Some(Stamp {
                    seq: 7,
                    sent_ns: 123_456_789
                })
            );
        }
    }

    #[test]
    fn found_inside_a_herald_json_push() {
        let payload = encode(3, 9, 64);
        let frame = format!(
            r#"{{"push":{{"channel":"bench:fanout","pub":{{"data":{},"offset":4}}}}}}"#,
            std::str::from_utf8(&payload).unwrap()
        );
        assert_eq!(find(frame.as_bytes()), Some(Stamp { seq: 3, sent_ns: 9 }));
        assert_eq!(find_in_text(&frame), Some(Stamp { seq: 3, sent_ns: 9 }));
    }

    #[test]
    fn anything_else_is_not_a_payload() {
        for bytes in [
            &b"{}"[..],
            b"{\"id\":2,\"subscribe\":{}}",
            b"{\"s\":",
            b"{\"s\":1}",
            b"{\"s\":x,\"t\":1}",
        ] {
            assert_eq!(find(bytes), None, "{}", String::from_utf8_lossy(bytes));
            assert_eq!(find_in_text(std::str::from_utf8(bytes).unwrap()), None);
        }
    }
}
