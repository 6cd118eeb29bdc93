//! Frame codec: one WebSocket message holds one or more commands (client → server) or replies
//! (server → client).
//!
//! - JSON: text messages; each command/reply is one JSON object; several are joined by `\n`.
//! - Protobuf: binary messages; each command/reply is prefixed by its length as a varint.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::proto::{Command, Reply};

/// The wire format of one connection, fixed at the WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed JSON command: {0}")]
    Json(String),
    #[error("malformed Protobuf command: {0}")]
    Protobuf(String),
    #[error("truncated Protobuf frame: {declared} bytes declared, {available} available")]
    Truncated { declared: usize, available: usize },
    #[error("frame contains no command")]
    Empty,
}

/// Decodes every command in one WebSocket message. Limits the total size first, so no work is
/// spent on an oversized frame.
pub fn decode_commands(format: Format, data: &[u8], limit: usize) -> Result<Vec<Command>, DecodeError> {
    if data.len() > limit {
        return Err(DecodeError::TooLarge {
            size: data.len(),
            limit,
        });
    }
    let commands = match format {
        Format::Json => decode_json(data)?,
        Format::Protobuf => decode_protobuf(data)?,
    };
    if commands.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(commands)
}

fn decode_json(data: &[u8]) -> Result<Vec<Command>, DecodeError> {
    // One trailing newline is tolerated; empty lines elsewhere are not commands.
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|b| *b == b'\n')
        .map(|line| serde_json::from_slice::<Command>(line).map_err(|e| DecodeError::Json(e.to_string())))
        .collect()
}

fn decode_protobuf(mut data: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut commands = Vec::new();
    while !data.is_empty() {
        let declared = prost::decode_length_delimiter(&mut data).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        if declared > data.len() {
            return Err(DecodeError::Truncated {
                declared,
                available: data.len(),
            });
        }
        let (body, rest) = data.split_at(declared);
        commands.push(Command::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?);
        data = rest;
    }
    Ok(commands)
}

/// Encodes one reply (or push, or ping) as it appears inside a frame: JSON text, or Protobuf with
/// its varint length prefix.
pub fn encode_reply(format: Format, reply: &Reply) -> Bytes {
    match format {
        Format::Json => Bytes::from(serde_json::to_vec(reply).expect("protocol types always serialize")),
        Format::Protobuf => {
            let mut buf = BytesMut::with_capacity(reply.encoded_len() + 5);
            reply.encode_length_delimited(&mut buf).expect("buffer has capacity");
            buf.freeze()
        }
    }
}

/// Joins encoded replies into the payload of one WebSocket message.
pub fn join_replies(format: Format, replies: &[Bytes]) -> Bytes {
    if let [single] = replies {
        return single.clone();
    }
    let mut buf = BytesMut::with_capacity(joined_len(format, replies));
    join_into(format, replies, &mut buf);
    buf.freeze()
}

/// The length of [`join_replies`]'s result.
pub fn joined_len(format: Format, replies: &[Bytes]) -> usize {
    let separators = match format {
        Format::Json => replies.len().saturating_sub(1),
        Format::Protobuf => 0,
    };
    replies.iter().map(Bytes::len).sum::<usize>() + separators
}

/// Appends the replies joined into one message: JSON ones separated by `\n`, Protobuf ones
/// (each already length-delimited) back to back.
pub fn join_into(format: Format, replies: &[Bytes], buf: &mut impl BufMut) {
    for (i, reply) in replies.iter().enumerate() {
        if format == Format::Json && i > 0 {
            buf.put_u8(b'\n');
        }
        buf.put_slice(reply);
    }
}

/// The server ping: an empty reply (`{}` or a zero-length Protobuf message).
pub fn ping(format: Format) -> Bytes {
    match format {
        Format::Json => Bytes::from_static(b"{}"),
        Format::Protobuf => Bytes::from_static(&[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::proto::{ConnectRequest, PublishRequest};

    fn protobuf_frame(commands: &[Command]) -> Vec<u8> {
        let mut buf = Vec::new();
        for c in commands {
            c.encode_length_delimited(&mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn json_frames_split_on_newlines() {
        let frame = b"{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"publish\":{\"channel\":\"a\",\"data\":{\"x\":1}}}\n";
        let commands = decode_commands(Format::Json, frame, 1024).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].connect.as_ref().unwrap().token, "t");
        assert_eq!(&commands[1].publish.as_ref().unwrap().data[..], b"{\"x\":1}");
    }

    #[test]
    fn json_empty_object_is_a_pong() {
        let commands = decode_commands(Format::Json, b"{}", 1024).unwrap();
        assert_eq!(commands, vec![Command::default()]);
    }

    #[test]
    fn json_errors() {
        assert!(matches!(
            decode_commands(Format::Json, b"{\"id\":", 1024),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_commands(Format::Json, b"{}\n\n{}", 1024),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_commands(Format::Json, b"{\"id\":\"x\"}", 1024),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(
            decode_commands(Format::Json, &[b' '; 2000], 1024),
            Err(DecodeError::TooLarge {
                size: 2000,
                limit: 1024
            })
        );
    }

    #[test]
    fn protobuf_round_trip_of_several_commands() {
        let commands = vec![
            Command {
                id: 1,
                connect: Some(ConnectRequest {
                    token: "abc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Command {
                id: 2,
                publish: Some(PublishRequest {
                    channel: "news".into(),
                    data: Bytes::from_static(b"\x00\xff"),
                }),
                ..Default::default()
            },
        ];
        let frame = protobuf_frame(&commands);
        assert_eq!(decode_commands(Format::Protobuf, &frame, 1024).unwrap(), commands);
    }

    #[test]
    fn protobuf_every_truncation_is_an_error_never_a_panic() {
        let frame = protobuf_frame(&[Command {
            id: 300,
            publish: Some(PublishRequest {
                channel: "news".into(),
                data: Bytes::from(vec![7; 200]),
            }),
            ..Default::default()
        }]);
        for cut in 1..frame.len() {
            assert!(
                decode_commands(Format::Protobuf, &frame[..cut], 4096).is_err(),
                "cut at {cut}"
            );
        }
        // A varint that never ends.
        assert!(matches!(
            decode_commands(Format::Protobuf, &[0xff; 12], 4096),
            Err(DecodeError::Protobuf(_))
        ));
    }

    #[test]
    fn replies_join_per_format() {
        let a = Bytes::from_static(b"{\"id\":1}");
        let b = Bytes::from_static(b"{}");
        assert_eq!(
            &join_replies(Format::Json, &[a.clone(), b.clone()])[..],
            b"{\"id\":1}\n{}"
        );
        assert_eq!(&join_replies(Format::Protobuf, &[a, b])[..], b"{\"id\":1}{}");
    }
}
