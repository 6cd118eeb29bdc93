//! Entry points for the fuzz targets in `fuzz/` (issue 11): the parts of the crate that read
//! untrusted bytes, reached here without sockets or a broker. Not an API: nothing else calls
//! these, and they may change with the targets.
//!
//! The decoders that are public anyway (`protocol::codec::decode_commands`,
//! `auth::token::Verifier`, `config::Config::from_text`, `store::keys`) are called by the
//! targets directly.

use crate::api::{ApiError, Request};
use crate::session::transport::Incoming;
use crate::transport::websocket;

/// Parses an API request as `POST /api/{method}` does up to the broker: the body, the method's
/// parameters and, for `batch`, every command in it. `Err` is the 400 answer's text or the
/// error code's number.
pub fn parse_api_request(method: &str, body: &[u8]) -> Result<usize, String> {
    let body = crate::api::body_of(body)?;
    let described = |e: ApiError| match e {
        ApiError::Malformed(message) => message,
        ApiError::Code(code) => code.code.to_string(),
        ApiError::Backend { code, .. } => code.to_string(),
    };
    match Request::parse(method, body).map_err(described)? {
        Request::Batch(batch) => batch.parse_commands().map_err(described),
        _ => Ok(1),
    }
}

/// What a session receives from a WebSocket client that sent `bytes` after the handshake, and
/// the bytes tungstenite queued for the writer (pongs).
pub async fn read_websocket_client(bytes: &[u8], limit: usize) -> (Vec<Incoming>, Vec<u8>) {
    websocket::read_client_bytes(bytes, limit).await
}

/// The header of a frame the server writes, as `WebSocketTransport` writes it.
pub fn websocket_header(opcode_binary: bool, len: usize) -> Vec<u8> {
    let opcode = if opcode_binary {
        websocket::OPCODE_BINARY
    } else {
        websocket::OPCODE_TEXT
    };
    let mut header = Vec::new();
    websocket::put_header(&mut header, opcode, len);
    header
}

/// The close frame the server sends.
pub fn websocket_close_frame(code: Option<u16>, reason: &str) -> Vec<u8> {
    websocket::close_frame(code, reason)
}

/// Whether a browser `Origin` may connect, given the `Host` header and the allowed patterns.
pub fn websocket_origin_allowed(origin: &str, host: &str, allowed: &[String]) -> bool {
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in [(axum::http::header::ORIGIN, origin), (axum::http::header::HOST, host)] {
        if let Ok(value) = axum::http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    websocket::origin_allowed(&headers, allowed)
}

/// What a session derives from a token's expiry claim (Unix seconds): the `ttl` its reply
/// announces and the instant it closes the connection, `grace` after expiry.
pub fn session_expiry(expires_at: i64, grace: std::time::Duration) -> (u32, tokio::time::Instant) {
    use crate::session::connection::{instant_of, ttl_of};
    (ttl_of(expires_at), instant_of(expires_at) + grace)
}

/// Decodes a proxy reply `body` as the reply of proxy `kind` (modulo 5: connect, subscribe,
/// publish, rpc, refresh), then reads every field the session would: payloads in both forms,
/// and overrides applied to a namespace. Returns whether it was a result. Panics are bugs.
pub fn proxy_reply(kind: u8, body: &[u8]) -> bool {
    use crate::proxy::messages::{self, bytes_of};
    use crate::proxy::{decode_reply, Decision};
    fn result<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
        match decode_reply::<T>(body) {
            Ok(Decision::Result(result)) => Some(result),
            _ => None,
        }
    }
    let namespace = crate::config::ChannelOptions {
        history_size: 10,
        history_ttl: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    match kind % 5 {
        0 => result::<messages::ConnectResult>(body).map(|r| {
            let _ = bytes_of(&r.info, &r.b64info);
            let _ = bytes_of(&r.data, &r.b64data);
            for options in r.subs.values() {
                let _ = bytes_of(&options.info, &options.b64info);
                let _ = bytes_of(&options.data, &options.b64data);
                if let Some(o) = &options.overrides {
                    let applied = o.apply(&namespace);
                    assert!(!applied.force_recovery || applied.history_enabled());
                }
            }
        }),
        1 => result::<messages::SubscribeResult>(body).map(|r| {
            let _ = bytes_of(&r.info, &r.b64info);
            let _ = bytes_of(&r.data, &r.b64data);
            if let Some(o) = &r.overrides {
                let applied = o.apply(&Default::default());
                assert!(!applied.force_recovery, "recovery needs history");
            }
        }),
        2 => result::<messages::PublishResult>(body).map(|r| {
            let _ = bytes_of(&r.data, &r.b64data);
        }),
        3 => result::<messages::RpcResult>(body).map(|r| {
            let _ = bytes_of(&r.data, &r.b64data);
        }),
        _ => result::<messages::RefreshResult>(body).map(|r| {
            let _ = bytes_of(&r.info, &r.b64info);
        }),
    }
    .is_some()
}
