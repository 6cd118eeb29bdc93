//! The JSON command decoder, as a session calls it on each text message.
#![no_main]

use herald::protocol::codec::{decode_commands, DecodeError, Format};
use libfuzzer_sys::fuzz_target;

/// The default `client.max_message_size`.
const LIMIT: usize = 65536;

fuzz_target!(|data: &[u8]| {
    match decode_commands(Format::Json, data, LIMIT) {
        // One command per line: a frame never yields more commands than it has lines.
        Ok(commands) => assert!(commands.len() <= data.iter().filter(|b| **b == b'\n').count() + 1),
        Err(DecodeError::TooLarge { .. }) => assert!(data.len() > LIMIT),
        Err(_) => {}
    }
    // The size limit is checked before any parsing.
    if !data.is_empty() {
        let limit = data.len() - 1;
        assert_eq!(
            decode_commands(Format::Json, data, limit),
            Err(DecodeError::TooLarge {
                size: data.len(),
                limit
            })
        );
    }
});
