//! Every code Herald sends to clients, as typed values.
//!
//! - **Error codes** (100–113) answer one command; the connection stays up.
//!   SDKs retry on `temporary` errors and on 109 (token expired); other errors are final.
//! - **Unsubscribe codes** (pushed with an `unsubscribe`): 2000–2499 are final, 2500–2999 make the
//!   SDK resubscribe (and recover).
//! - **Disconnect codes** (the WebSocket close code): 3000–3499 and 4000–4499 make the SDK
//!   reconnect; 3500–3999 and 4500–4999 are terminal.

use std::borrow::Cow;

use super::proto;

/// An error reply to one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub message: &'static str,
    pub temporary: bool,
}

impl ErrorCode {
    const fn new(code: u32, message: &'static str, temporary: bool) -> Self {
        Self {
            code,
            message,
            temporary,
        }
    }

    pub const INTERNAL: Self = Self::new(100, "internal server error", true);
    pub const UNAUTHORIZED: Self = Self::new(101, "unauthorized", false);
    pub const UNKNOWN_CHANNEL: Self = Self::new(102, "unknown channel", false);
    pub const PERMISSION_DENIED: Self = Self::new(103, "permission denied", false);
    pub const METHOD_NOT_FOUND: Self = Self::new(104, "method not found", false);
    pub const ALREADY_SUBSCRIBED: Self = Self::new(105, "already subscribed", false);
    pub const LIMIT_EXCEEDED: Self = Self::new(106, "limit exceeded", false);
    pub const BAD_REQUEST: Self = Self::new(107, "bad request", false);
    pub const NOT_AVAILABLE: Self = Self::new(108, "not available", false);
    pub const TOKEN_EXPIRED: Self = Self::new(109, "token expired", false);
    pub const EXPIRED: Self = Self::new(110, "expired", false);
    pub const TOO_MANY_REQUESTS: Self = Self::new(111, "too many requests", true);
    pub const UNRECOVERABLE_POSITION: Self = Self::new(112, "unrecoverable position", false);

    pub fn to_proto(self) -> proto::Error {
        proto::Error {
            code: self.code,
            message: self.message.to_owned(),
            temporary: self.temporary,
        }
    }
}

/// Why the server ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeCode {
    pub code: u32,
    pub reason: &'static str,
}

impl UnsubscribeCode {
    /// Final: the server (API call) removed the subscription.
    pub const SERVER: Self = Self {
        code: 2000,
        reason: "server unsubscribe",
    };
    /// Resubscribe: the server could not keep the stream contiguous (gap, epoch change).
    pub const INSUFFICIENT_STATE: Self = Self {
        code: 2500,
        reason: "insufficient state",
    };
    /// Resubscribe: the subscription token expired and was not refreshed.
    pub const EXPIRED: Self = Self {
        code: 2501,
        reason: "subscription expired",
    };
}

/// Why the server closed a connection; sent as the WebSocket close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectCode {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl DisconnectCode {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// A custom code and reason, e.g. from the server API's `disconnect` method.
    pub fn custom(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    // WebSocket closes (RFC 6455 §7.4.1) for clients that break the framing itself.
    /// A frame the protocol forbids: reserved bits, an unmasked client frame, a bad control
    /// frame, a reserved opcode.
    pub const WS_PROTOCOL_ERROR: Self = Self::new(1002, "protocol error");
    /// A text message that is not UTF-8.
    pub const WS_INVALID_DATA: Self = Self::new(1007, "invalid frame payload data");
    /// A message over `client.max_message_size`.
    pub const WS_MESSAGE_TOO_BIG: Self = Self::new(1009, "message too big");

    // Reconnect range.
    pub const CONNECTION_CLOSED: Self = Self::new(3000, "connection closed");
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    pub const INTERNAL: Self = Self::new(3004, "internal server error");
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    pub const SUBSCRIPTION_EXPIRED: Self = Self::new(3006, "subscription expired");
    pub const SLOW: Self = Self::new(3008, "slow");
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    pub const INSUFFICIENT_STATE: Self = Self::new(3010, "insufficient state");
    pub const FORCE_RECONNECT: Self = Self::new(3011, "force reconnect");
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    pub const TOO_MANY_REQUESTS: Self = Self::new(3013, "too many requests");

    // Terminal range.
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    pub const STALE: Self = Self::new(3502, "stale");
    pub const FORCE_DISCONNECT: Self = Self::new(3503, "force disconnect");
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");
    pub const CHANNEL_LIMIT: Self = Self::new(3505, "channel limit");
    pub const INAPPROPRIATE_PROTOCOL: Self = Self::new(3506, "inappropriate protocol");
    pub const PERMISSION_DENIED: Self = Self::new(3507, "permission denied");
    pub const NOT_AVAILABLE: Self = Self::new(3508, "not available");
    pub const TOO_MANY_ERRORS: Self = Self::new(3509, "too many errors");

    /// Whether SDKs reconnect after this code.
    pub fn reconnect(&self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499) || self.code >= 5000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_ranges() {
        assert!(DisconnectCode::SHUTDOWN.reconnect());
        assert!(DisconnectCode::SLOW.reconnect());
        assert!(!DisconnectCode::INVALID_TOKEN.reconnect());
        assert!(!DisconnectCode::custom(4500, "app").reconnect());
        assert!(DisconnectCode::custom(4000, "app").reconnect());
    }
}
