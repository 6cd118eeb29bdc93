//! Key layout of the `streams` tree (documented in docs/storage.md).
//!
//! - `m` ++ channel                              → `StreamMeta` (epoch, top offset, last append)
//! - `p` ++ len(channel) as u8 ++ channel ++ offset as u64 big-endian → `Publication`
//! - `i` ++ len(channel) as u8 ++ channel ++ idempotency key → `IdempotencyRecord`
//!
//! The length prefix keeps one channel's publications contiguous and never mixed with a channel
//! whose name extends another's; big-endian offsets sort numerically.

pub const META: u8 = b'm';
pub const PUBLICATION: u8 = b'p';
pub const IDEMPOTENCY: u8 = b'i';

pub fn meta(channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + channel.len());
    key.push(META);
    key.extend_from_slice(channel.as_bytes());
    key
}

fn channel_key(kind: u8, channel: &str, extra: usize) -> Vec<u8> {
    debug_assert!(channel.len() <= u8::MAX as usize, "channel names are at most 255 bytes");
    let mut key = Vec::with_capacity(2 + channel.len() + extra);
    key.push(kind);
    key.push(channel.len() as u8);
    key.extend_from_slice(channel.as_bytes());
    key
}

/// Prefix of every publication key of `channel`.
pub fn publication_prefix(channel: &str) -> Vec<u8> {
    channel_key(PUBLICATION, channel, 8)
}

pub fn idempotency(channel: &str, key: &str) -> Vec<u8> {
    let mut k = channel_key(IDEMPOTENCY, channel, key.len());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The channel of a meta key.
pub fn channel_of_meta(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(&[META])?).ok()
}

pub fn publication(channel: &str, offset: u64) -> Vec<u8> {
    let mut key = publication_prefix(channel);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// The offset at the end of a publication key.
pub fn offset_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_of_a_channel_sort_by_offset_and_stay_apart() {
        let mut keys = [
            publication("a", 256),
            publication("a", 2),
            publication("ab", 1),
            publication("a", 10),
        ];
        keys.sort();
        let offsets: Vec<_> = keys.iter().map(|k| offset_of(k).unwrap()).collect();
        assert_eq!(offsets, vec![2, 10, 256, 1]);
        assert!(publication("a", 1).starts_with(&publication_prefix("a")));
        assert!(!publication("ab", 1).starts_with(&publication_prefix("a")));
    }
}
