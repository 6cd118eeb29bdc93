//! Delta compression of publication data (issue 12 item 3). A subscriber that asks for
//! `delta: "fossil"` receives each publication as the difference from the previous one it
//! received; the server decides per publication whether the delta is worth sending (the full
//! data goes out whenever the delta is not smaller).
//!
//! Pure: bytes in, bytes out, no I/O, no clock, no state between calls; every function here
//! can be fuzzed. Choosing what to diff against (the previous publication a subscriber holds)
//! and when to fall back to full data belongs to the caller, not to this module.
//!
//! - [`fossil`]: the Fossil SCM delta format, the one the Centrifugo SDKs decode.

pub mod fossil;

use bytes::Bytes;

/// The fossil delta turning `previous` into `data`, when it is smaller than `data` (else the
/// full data is worth sending). Made with [`fossil::encode_utf8`], so that the delta of two
/// texts is text too and fits a JSON string.
pub fn smaller_delta(previous: &[u8], data: &[u8]) -> Option<Bytes> {
    let delta = fossil::encode_utf8(previous, data);
    (delta.len() < data.len()).then(|| Bytes::from(delta))
}

/// `data` as a JSON string literal: how a JSON subscriber with delta on receives publication
/// data (full or delta). JSON data is UTF-8; anything else is taken lossily.
pub fn json_string(data: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(data);
    Bytes::from(serde_json::to_vec(&*text).expect("a string serializes"))
}

/// [`json_string`] for bytes that must arrive exactly (a delta): `None` unless they are UTF-8.
pub fn json_string_exact(data: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(data).ok()?;
    Some(Bytes::from(serde_json::to_vec(text).expect("a string serializes")))
}
