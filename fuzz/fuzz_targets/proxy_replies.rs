//! What an application backend answers a proxy call (docs/proxies.md): any body decodes to a
//! decision or to "invalid", and every field the session reads of a result (payloads as JSON
//! or base64, overrides on a namespace) is read without a panic.
//!
//! Input: byte 0 picks the proxy (connect, subscribe, publish, rpc, refresh); the rest is the
//! reply body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    herald::fuzzing::proxy_reply(kind, body);
});
