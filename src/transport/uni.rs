//! The unidirectional protocol, shared by `uni_websocket`, `uni_http_stream` and `uni_sse`:
//! the client sends one `ConnectRequest` (not a `Command`) and from then on only receives. What
//! it receives are bare `Push` objects (`{"connect":{…}}`, `{"channel":"…","pub":{…}}`), not
//! the `Reply` envelopes of the bidirectional protocol; pings are `{}`, never answered. JSON only.
//!
//! The session is the bidirectional one: these functions turn the connect request into the
//! command it expects, and its output into pushes.

use bytes::Bytes;

use crate::protocol::proto::{Command, Connect, ConnectRequest, Disconnect, Push, Reply};

/// The connect command for a unidirectional client's `ConnectRequest` (JSON; an empty body is
/// a request with no token). `None` when it is not one.
pub fn connect_command(request: &[u8]) -> Option<Bytes> {
    let request: ConnectRequest = if request.iter().all(u8::is_ascii_whitespace) {
        ConnectRequest::default()
    } else {
        serde_json::from_slice(request).ok()?
    };
    let command = Command {
        id: 1,
        connect: Some(request),
        ..Default::default()
    };
    Some(Bytes::from(
        serde_json::to_vec(&command).expect("protocol types always serialize"),
    ))
}

/// What a unidirectional client receives for one encoded JSON reply: the push inside it, the
/// connect result as a connect push, a ping as it is. An error reply (the connect refused)
/// becomes a disconnect push, since the client has no command to match it with. `None` for
/// anything else (there is nothing else: the client sends no other command).
pub fn push_of(reply: &Bytes) -> Option<Bytes> {
    // Pushes are most of the traffic: `{"push":P}` is cut down to `P` without parsing. The
    // encoder writes a push reply exactly so (no id, no other field; see the test below).
    const PREFIX: &[u8] = b"{\"push\":";
    if reply.starts_with(PREFIX) && reply.ends_with(b"}") {
        return Some(reply.slice(PREFIX.len()..reply.len() - 1));
    }
    if &reply[..] == b"{}" {
        return Some(reply.clone());
    }
    let reply: Reply = serde_json::from_slice(reply).ok()?;
    let push = if let Some(result) = reply.connect {
        Push {
            connect: Some(Connect {
                client: result.client,
                version: result.version,
                data: result.data,
                subs: result.subs,
                expires: result.expires,
                ttl: result.ttl,
                ping: result.ping,
                pong: result.pong,
                session: result.session,
                node: result.node,
                time: result.time,
            }),
            ..Default::default()
        }
    } else if let Some(error) = reply.error {
        Push {
            disconnect: Some(Disconnect {
                code: error.code,
                reason: error.message,
                reconnect: error.temporary,
            }),
            ..Default::default()
        }
    } else {
        return None;
    };
    Some(Bytes::from(
        serde_json::to_vec(&push).expect("protocol types always serialize"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{encode_reply, Format};
    use crate::protocol::proto::{ConnectResult, Publication};

    #[test]
    fn pushes_come_out_of_their_envelope() {
        let push = Push {
            channel: "news".into(),
            r#pub: Some(Publication {
                offset: 3,
                data: Bytes::from_static(b"{\"x\":1}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reply = encode_reply(
            Format::Json,
            &Reply {
                push: Some(push.clone()),
                ..Default::default()
            },
        );
        let bare = push_of(&reply).expect("a push");
        assert_eq!(&bare[..], &serde_json::to_vec(&push).unwrap()[..]);
        assert_eq!(&bare[..], br#"{"channel":"news","pub":{"data":{"x":1},"offset":3}}"#);
        assert_eq!(&push_of(&Bytes::from_static(b"{}")).unwrap()[..], b"{}");
    }

    #[test]
    fn the_connect_result_becomes_a_connect_push() {
        let reply = encode_reply(
            Format::Json,
            &Reply {
                id: 1,
                connect: Some(ConnectResult {
                    client: "c1".into(),
                    version: "0.1.0".into(),
                    ping: 25,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let push: serde_json::Value = serde_json::from_slice(&push_of(&reply).unwrap()).unwrap();
        assert_eq!(
            push,
            serde_json::json!({"connect": {"client": "c1", "version": "0.1.0", "ping": 25}})
        );
    }

    #[test]
    fn connect_requests_become_connect_commands() {
        let command = connect_command(br#"{"token":"t","subs":{"news":{"recover":true,"offset":2,"epoch":"e"}}}"#)
            .expect("valid");
        let command: Command = serde_json::from_slice(&command).unwrap();
        let connect = command.connect.unwrap();
        assert_eq!(connect.token, "t");
        assert_eq!(connect.subs["news"].offset, 2);
        assert_eq!(command.id, 1);
        assert!(connect_command(b"").is_some(), "no body: no token");
        assert!(connect_command(b"[1,2]").is_none());
        assert!(connect_command(b"{\"token\":5}").is_none());
    }
}
