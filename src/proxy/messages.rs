//! The proxies' request and result bodies, field for field the reference server's
//! (`proxyproto`), so that a backend written for it works unchanged.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::Format;

/// What every request carries about the connection.
#[derive(Serialize)]
pub struct Base<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'static str,
    pub encoding: &'static str,
}

impl<'a> Base<'a> {
    /// `encoding` follows the payload: `binary` when it had to go base64-encoded.
    pub fn new(client: &'a str, transport: &'a str, format: Format, payload: &Payload<'_>) -> Self {
        Self {
            client,
            transport,
            protocol: match format {
                Format::Json => "json",
                Format::Protobuf => "protobuf",
            },
            encoding: if payload.b64data.is_some() { "binary" } else { "json" },
        }
    }
}

/// A client's payload as the backend gets it: JSON in `data`, or base64 in `b64data` when it is
/// not JSON (a Protobuf client's binary data). Nothing when empty.
#[derive(Serialize, Default)]
pub struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
}

impl<'a> Payload<'a> {
    /// `bytes` as JSON when they are JSON, unless `binary` (the proxy's `binary_encoding`).
    pub fn of(bytes: &'a [u8], binary: bool) -> Self {
        if bytes.is_empty() {
            return Self::default();
        }
        let json = if binary {
            Err(())
        } else {
            serde_json::from_slice::<&RawValue>(bytes).map_err(|_| ())
        };
        match json {
            Ok(raw) => Self {
                data: Some(raw),
                b64data: None,
            },
            Err(_) => Self {
                data: None,
                b64data: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }
}

#[derive(Serialize)]
pub struct ConnectRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub channels: &'a [String],
}

/// The part of every request after connect: who asks.
#[derive(Serialize)]
pub struct Caller<'a> {
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

#[derive(Serialize)]
pub struct RefreshRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(flatten)]
    pub caller: Caller<'a>,
}

#[derive(Serialize)]
pub struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub channel: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub token: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
}

#[derive(Serialize)]
pub struct PublishRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub channel: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
}

#[derive(Serialize)]
pub struct SubRefreshRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub channel: &'a str,
}

#[derive(Serialize)]
pub struct RpcRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub method: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
}

/// The result's bytes of a field given as JSON (`json`) or base64 (`b64`, which wins when set).
/// JSON `null` is no value. `Err` for base64 that does not decode.
pub fn bytes_of(json: &Option<Box<RawValue>>, b64: &str) -> Result<Bytes, base64::DecodeError> {
    if !b64.is_empty() {
        return base64::engine::general_purpose::STANDARD.decode(b64).map(Bytes::from);
    }
    Ok(match json {
        Some(raw) if raw.get() != "null" => Bytes::copy_from_slice(raw.get().as_bytes()),
        _ => Bytes::new(),
    })
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct ConnectResult {
    pub user: String,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub channels: Vec<String>,
    pub subs: HashMap<String, SubscribeOptions>,
    pub meta: Option<Box<RawValue>>,
}

/// A server-side subscription's options in a connect result (`subs`).
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct SubscribeOptions {
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    #[serde(rename = "override")]
    pub overrides: Option<Overrides>,
}

/// Channel options one subscription may change (`override`), each `{"value": bool}`.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(default)]
pub struct Overrides {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
    pub force_recovery: Option<BoolValue>,
    pub force_positioning: Option<BoolValue>,
}

#[derive(Deserialize, Default, Debug, Clone, Copy)]
#[serde(default)]
pub struct BoolValue {
    pub value: bool,
}

impl Overrides {
    /// The namespace's options with these applied. Recovery and positioning need history: on a
    /// namespace without it they change nothing.
    pub fn apply(&self, options: &crate::config::ChannelOptions) -> crate::config::ChannelOptions {
        let mut options = options.clone();
        if let Some(v) = self.presence {
            options.presence = v.value;
        }
        if let Some(v) = self.join_leave {
            options.join_leave = v.value;
        }
        if let Some(v) = self.force_push_join_leave {
            options.force_push_join_leave = v.value;
        }
        // Herald's positioned subscriptions are recoverable ones.
        let positioned = self.force_recovery.or(self.force_positioning);
        if let Some(v) = positioned {
            options.force_recovery = v.value && options.history_enabled();
        }
        options
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct RefreshResult {
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    /// Replaces the connection's `meta` (connection refresh only).
    pub meta: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct SubscribeResult {
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    #[serde(rename = "override")]
    pub overrides: Option<Overrides>,
    pub expire_at: i64,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct PublishResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub skip_history: bool,
    pub tags: HashMap<String, String>,
    pub idempotency_key: String,
    pub delta: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct RpcResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_go_as_json_or_base64() {
        let json = Payload::of(br#"{"a":1}"#, false);
        let base = Base::new("c", "websocket", Format::Json, &json);
        let body = serde_json::to_string(&RpcRequest {
            base,
            caller: Caller { user: "42", meta: None },
            method: "m",
            payload: json,
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"client":"c","transport":"websocket","protocol":"json","encoding":"json","user":"42","method":"m","data":{"a":1}}"#
        );
        let binary = Payload::of(&[0xff, 0x00], false);
        assert_eq!(binary.b64data.as_deref(), Some("/wA="));
        assert_eq!(Base::new("c", "sse", Format::Protobuf, &binary).encoding, "binary");
        assert!(Payload::of(b"", false).data.is_none());
        assert!(Payload::of(b"{}", true).b64data.is_some());
    }

    #[test]
    fn result_fields_in_either_form() {
        let result: ConnectResult = serde_json::from_str(
            r#"{"user":"7","info":{"n":1},"b64data":"aGk=","subs":{"a":{"override":{"presence":{"value":true}}}}}"#,
        )
        .unwrap();
        assert_eq!(bytes_of(&result.info, &result.b64info).unwrap(), r#"{"n":1}"#);
        assert_eq!(bytes_of(&result.data, &result.b64data).unwrap(), "hi");
        assert!(bytes_of(&None, "%%").is_err());
        let null: RpcResult = serde_json::from_str(r#"{"data":null}"#).unwrap();
        assert!(bytes_of(&null.data, &null.b64data).unwrap().is_empty());
        let overrides = result.subs["a"].overrides.clone().unwrap();
        let applied = overrides.apply(&Default::default());
        assert!(applied.presence);
    }
}
