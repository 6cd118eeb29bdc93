//! Fossil deltas (`herald::delta::fossil`): applying arbitrary deltas to arbitrary origins never
//! panics, and whatever our encoder makes from two inputs applies back to the target, in both
//! its byte and its UTF-8 forms.
//!
//! Input: two bytes (big-endian) give the origin's length; the origin follows, and the rest is
//! both a delta to apply to it and a target to encode against it.
#![no_main]

use herald::delta::fossil;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (origin, other) = rest.split_at(len);

    let _ = fossil::apply(origin, other);

    let delta = fossil::encode(origin, other);
    assert_eq!(fossil::apply(origin, &delta).as_deref(), Ok(other));
    let delta = fossil::encode_utf8(origin, other);
    assert_eq!(fossil::apply(origin, &delta).as_deref(), Ok(other));
    if std::str::from_utf8(other).is_ok() {
        assert!(std::str::from_utf8(&delta).is_ok(), "the delta of a text is text");
    }
});
