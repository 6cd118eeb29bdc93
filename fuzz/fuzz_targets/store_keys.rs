//! The store's key layout: decoding arbitrary keys, and encoding then decoding channel names
//! (at most 255 bytes, as channel names are) and offsets, with the ordering and separation the
//! layout promises.
//!
//! Input: byte 0 is the first channel's length; then that channel, 8 bytes of offset, the rest
//! is a second channel. The whole input is also decoded as a key.
#![no_main]

use herald::store::keys;
use libfuzzer_sys::fuzz_target;

/// A channel name of at most 255 bytes from the front of `bytes`, cut on a character boundary.
fn channel(bytes: &[u8], len: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..len.min(bytes.len())]);
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fuzz_target!(|data: &[u8]| {
    let _ = keys::channel_of_meta(data);
    let _ = keys::offset_of(data);

    let Some((&len, rest)) = data.split_first() else { return };
    let first = channel(rest, usize::from(len));
    let rest = &rest[usize::from(len).min(rest.len())..];
    let mut offset_bytes = [0u8; 8];
    let n = rest.len().min(8);
    offset_bytes[..n].copy_from_slice(&rest[..n]);
    let offset = u64::from_be_bytes(offset_bytes);
    let second = channel(&rest[n..], 255);

    assert_eq!(keys::channel_of_meta(&keys::meta(&first)), Some(first.as_str()));
    let key = keys::publication(&first, offset);
    assert_eq!(keys::offset_of(&key), Some(offset));
    assert!(key.starts_with(&keys::publication_prefix(&first)));
    // Offsets sort numerically within a channel.
    if let Some(next) = offset.checked_add(1) {
        assert!(key < keys::publication(&first, next));
    }
    // Another channel's publications are never under this channel's prefix, even when its
    // name extends this one.
    if second != first {
        assert!(!keys::publication(&second, offset).starts_with(&keys::publication_prefix(&first)));
    }
    // Idempotency records live apart from publications and metadata.
    let record = keys::idempotency(&first, &second);
    assert!(!record.starts_with(&keys::publication_prefix(&first)));
    assert_ne!(record.first(), keys::meta(&first).first());
});
