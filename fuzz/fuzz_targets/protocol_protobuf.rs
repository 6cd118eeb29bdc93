//! The Protobuf command decoder (varint-delimited commands), as a session calls it on each
//! binary message.
#![no_main]

use herald::protocol::codec::{decode_commands, DecodeError, Format};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The default `client.max_message_size`.
const LIMIT: usize = 65536;

fuzz_target!(|data: &[u8]| {
    match decode_commands(Format::Protobuf, data, LIMIT) {
        Ok(commands) => {
            assert!(!commands.is_empty());
            // What was decoded encodes to a frame that decodes to the same commands (unknown
            // fields are dropped, so the bytes themselves may differ).
            let mut frame = Vec::new();
            for command in &commands {
                command.encode_length_delimited(&mut frame).expect("a Vec grows");
            }
            assert_eq!(
                decode_commands(Format::Protobuf, &frame, usize::MAX).as_ref(),
                Ok(&commands)
            );
        }
        Err(DecodeError::TooLarge { .. }) => assert!(data.len() > LIMIT),
        Err(DecodeError::Truncated { declared, available }) => assert!(declared > available),
        Err(_) => {}
    }
    if !data.is_empty() {
        let limit = data.len() - 1;
        assert_eq!(
            decode_commands(Format::Protobuf, data, limit),
            Err(DecodeError::TooLarge {
                size: data.len(),
                limit
            })
        );
    }
});
