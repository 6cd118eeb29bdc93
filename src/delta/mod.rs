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
