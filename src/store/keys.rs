//! Key layout of the `streams` tree (documented in docs/storage.md).
//!
//! - `m` ++ channel                              → `StreamMeta` (epoch, top offset, last append)
//! - `p` ++ len(channel) as u8 ++ channel ++ offset as u64 big-endian → `Publication`
//!
//! The length prefix keeps one channel's publications contiguous and never mixed with a channel
//! whose name extends another's; big-endian offsets sort numerically.

pub const META: u8 = b'm';
pub const PUBLICATION: u8 = b'p';

pub fn meta(channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + channel.len());
    key.push(META);
    key.extend_from_slice(channel.as_bytes());
    key
}

/// Prefix of every publication key of `channel`.
pub fn publication_prefix(channel: &str) -> Vec<u8> {
    debug_assert!(channel.len() <= u8::MAX as usize, "channel names are at most 255 bytes");
    let mut key = Vec::with_capacity(2 + channel.len() + 8);
    key.push(PUBLICATION);
    key.push(channel.len() as u8);
    key.extend_from_slice(channel.as_bytes());
    key
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
