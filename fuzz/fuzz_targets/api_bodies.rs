//! Every server API method's request body, parsed as `POST /api/{method}` parses it before it
//! reaches the broker; `batch` with each of its commands.
//!
//! Input: the method name, a newline, then the body.
#![no_main]

use herald::api::Request;
use herald::protocol::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (method, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let method = String::from_utf8_lossy(method);
    let parsed = herald::fuzzing::parse_api_request(&method, body);
    // An unknown method is refused whatever the body: "method not found" once the body is an
    // object.
    if !Request::METHODS.contains(&&*method) {
        let not_found = ErrorCode::METHOD_NOT_FOUND.code.to_string();
        match &parsed {
            Err(e) => assert!(*e == not_found || e.starts_with("malformed body"), "{method}: {e}"),
            Ok(_) => panic!("unknown method {method:?} accepted"),
        }
    }
});
