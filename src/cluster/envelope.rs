//! The authenticated, versioned envelope around every inter-node message (membership datagrams
//! and link frames alike). foca and Herald's own protocol carry no authentication: a process that
//! does not hold `cluster.secret` must not be able to join, nor have anything it sends acted
//! upon (issue 10, item 3).
//!
//! Layout (big-endian), all of it covered by the MAC:
//!
//! ```text
//! version u8 (= 1) | kind u8 | sender length u8 | sender (UTF-8) | sent at (Unix ms) u64 |
//! nonce u64 | payload … | HMAC-SHA256 (32 bytes)
//! ```
//!
//! Replay: an envelope is accepted only within `window` of the receiver's clock, and a
//! `(sender, nonce)` seen within that window is refused, so a captured message cannot be played
//! back later, nor twice now. The key is derived from the secret for this use only, so the
//! secret itself is never the MAC key of anything else.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The envelope format this build writes and reads.
pub const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// version, kind, sender length, timestamp, nonce.
const FIXED_HEADER: usize = 1 + 1 + 1 + 8 + 8;

/// What an envelope carries, so that a datagram of one kind is never read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A SWIM membership datagram.
    Membership = 1,
    /// A frame on a link between two nodes.
    Link = 2,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Kind::Membership),
            2 => Some(Kind::Link),
            _ => None,
        }
    }
}

/// Why an envelope was refused; also the `reason` label of
/// `herald_cluster_rejected_envelopes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("truncated or malformed envelope")]
    Malformed,
    #[error("unknown envelope version")]
    Version,
    #[error("bad MAC (wrong cluster.secret or altered)")]
    Mac,
    #[error("sent outside the accepted time window")]
    Stale,
    #[error("replayed")]
    Replay,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Version => "version",
            Rejected::Mac => "mac",
            Rejected::Stale => "stale",
            Rejected::Replay => "replay",
        }
    }
}

/// An envelope that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub kind: Kind,
    pub sender: &'a str,
    pub sent_at_ms: u64,
    pub payload: &'a [u8],
}

/// Seals and opens envelopes with the cluster's key.
#[derive(Clone)]
pub struct Sealer {
    key: HmacSha256,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { key: <secret> }")
    }
}

impl Sealer {
    pub fn new(secret: &str) -> Self {
        // The MAC key is HMAC(secret, label): one secret could later key other uses apart.
        let mut derive = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        derive.update(b"herald cluster envelope v1");
        let key = derive.finalize().into_bytes();
        Self {
            key: HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length"),
        }
    }

    /// The envelope of `payload` from `sender` (at most 255 bytes), sent at `now_ms`.
    pub fn seal(&self, kind: Kind, sender: &str, now_ms: u64, nonce: u64, payload: &[u8]) -> Vec<u8> {
        let sender = truncate(sender);
        let mut out = Vec::with_capacity(FIXED_HEADER + sender.len() + payload.len() + MAC_LEN);
        out.push(VERSION);
        out.push(kind as u8);
        out.push(sender.len() as u8);
        out.extend_from_slice(sender.as_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce.to_be_bytes());
        out.extend_from_slice(payload);
        let mut mac = self.key.clone();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Checks version, layout and MAC (in constant time). Freshness is [`ReplayGuard`]'s.
    pub fn open<'a>(&self, envelope: &'a [u8]) -> Result<Opened<'a>, Rejected> {
        let (&version, rest) = envelope.split_first().ok_or(Rejected::Malformed)?;
        if version != VERSION {
            return Err(Rejected::Version);
        }
        if envelope.len() < FIXED_HEADER + MAC_LEN {
            return Err(Rejected::Malformed);
        }
        let sender_len = usize::from(rest[1]);
        let header = FIXED_HEADER + sender_len;
        if envelope.len() < header + MAC_LEN {
            return Err(Rejected::Malformed);
        }
        let (signed, tag) = envelope.split_at(envelope.len() - MAC_LEN);
        let mut mac = self.key.clone();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| Rejected::Mac)?;
        // Authentic from here on: the fields are as the sender wrote them.
        let kind = Kind::from_u8(envelope[1]).ok_or(Rejected::Malformed)?;
        let sender = std::str::from_utf8(&envelope[3..3 + sender_len]).map_err(|_| Rejected::Malformed)?;
        let at = 3 + sender_len;
        let sent_at_ms = u64::from_be_bytes(envelope[at..at + 8].try_into().expect("8 bytes"));
        Ok(Opened {
            kind,
            sender,
            sent_at_ms,
            payload: &signed[header..],
        })
    }
}

fn truncate(sender: &str) -> &str {
    let mut end = sender.len().min(255);
    while !sender.is_char_boundary(end) {
        end -= 1;
    }
    &sender[..end]
}

/// Refuses envelopes outside the time window and nonces seen within it. Memory is bounded by
/// the number of envelopes accepted per window (old nonces are forgotten as the window moves).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    seen: HashMap<(String, u64), u64>,
    /// (accepted at, sender, nonce), oldest first: what to forget as time moves on.
    order: VecDeque<(u64, String, u64)>,
}

impl ReplayGuard {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts an opened envelope's `(sender, sent_at, nonce)` at the receiver's `now_ms`.
    pub fn check(&mut self, sender: &str, sent_at_ms: u64, nonce: u64, now_ms: u64) -> Result<(), Rejected> {
        if sent_at_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Rejected::Stale);
        }
        while let Some((at, _, _)) = self.order.front() {
            // A nonce older than twice the window can no longer pass the time check above.
            if now_ms.saturating_sub(*at) <= 2 * self.window_ms {
                break;
            }
            let (_, sender, nonce) = self.order.pop_front().expect("front exists");
            self.seen.remove(&(sender, nonce));
        }
        let key = (sender.to_owned(), nonce);
        if self.seen.contains_key(&key) {
            return Err(Rejected::Replay);
        }
        self.seen.insert(key, now_ms);
        self.order.push_back((now_ms, sender.to_owned(), nonce));
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The nonce of the envelope (its eight bytes after the timestamp). Only for an envelope that
/// [`Sealer::open`] accepted.
pub fn nonce_of(envelope: &[u8]) -> u64 {
    let at = 3 + usize::from(envelope[2]) + 8;
    u64::from_be_bytes(envelope[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000_000;

    #[test]
    fn sealed_envelopes_open_with_the_same_secret_only() {
        let sealer = Sealer::new("s3cret");
        let envelope = sealer.seal(Kind::Membership, "node-a", NOW, 7, b"ping");
        let opened = sealer.open(&envelope).unwrap();
        assert_eq!(
            opened,
            Opened {
                kind: Kind::Membership,
                sender: "node-a",
                sent_at_ms: NOW,
                payload: b"ping",
            }
        );
        assert_eq!(nonce_of(&envelope), 7);
        assert_eq!(Sealer::new("other").open(&envelope), Err(Rejected::Mac));
        // Empty payloads and the longest sender name work too.
        let long = "n".repeat(300);
        let envelope = sealer.seal(Kind::Link, &long, NOW, 1, b"");
        let opened = sealer.open(&envelope).unwrap();
        assert_eq!((opened.sender.len(), opened.payload), (255, &b""[..]));
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let sealer = Sealer::new("s3cret");
        let envelope = sealer.seal(Kind::Link, "node-a", NOW, 7, b"payload");
        for i in 0..envelope.len() {
            let mut altered = envelope.clone();
            altered[i] ^= 0x01;
            let refused = sealer.open(&altered).unwrap_err();
            assert!(
                matches!(refused, Rejected::Mac | Rejected::Version | Rejected::Malformed),
                "byte {i}: {refused:?}"
            );
        }
        for len in 0..envelope.len() {
            assert!(sealer.open(&envelope[..len]).is_err(), "truncated to {len}");
        }
        let mut next_version = envelope.clone();
        next_version[0] = VERSION + 1;
        assert_eq!(sealer.open(&next_version), Err(Rejected::Version));
    }

    #[test]
    fn replays_and_stale_envelopes_are_refused() {
        let mut guard = ReplayGuard::new(Duration::from_secs(30));
        assert_eq!(guard.check("a", NOW, 1, NOW), Ok(()));
        assert_eq!(guard.check("a", NOW, 1, NOW + 10), Err(Rejected::Replay));
        // The same nonce from another sender is another message.
        assert_eq!(guard.check("b", NOW, 1, NOW + 10), Ok(()));
        assert_eq!(guard.check("a", NOW - 31_000, 2, NOW), Err(Rejected::Stale));
        assert_eq!(guard.check("a", NOW + 31_000, 3, NOW), Err(Rejected::Stale));
        // Nonces are forgotten once no envelope carrying them could pass the time check.
        let later = NOW + 61_000;
        assert_eq!(guard.check("a", later, 4, later), Ok(()));
        assert_eq!(guard.len(), 1);
        assert_eq!(guard.check("a", NOW, 1, later), Err(Rejected::Stale));
    }
}
