//! `rpc`: calls a method of the application backend through the RPC proxy of the method's
//! namespace, as a client's `rpc` does (docs/proxies.md), with no client and no user. An empty
//! `method` is 107, an unknown RPC namespace 104, one without a proxy 108.
//!
//! (The reference server's API `rpc` calls only handlers registered in the server itself, and
//! its open-source build registers none: there it is always 104. Herald's reaches the backend;
//! the reply shape is the same, `{"data": …}`.)

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{nullable, ApiError, ApiResult};
use crate::broker::Broker;
use crate::protocol::{ErrorCode, Format};
use crate::proxy::messages::{self, bytes_of, Base, Caller, Payload};
use crate::proxy::Decision;

/// Centrifugo's `RPCRequest`: a method name and its parameters (any JSON).
#[derive(Deserialize)]
pub struct Rpc {
    #[serde(default, deserialize_with = "nullable")]
    method: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

pub async fn rpc(broker: &Arc<Broker>, r: Rpc) -> ApiResult {
    let proxy = crate::proxy::rpc_proxy(broker.config(), broker.proxies(), &r.method)?;
    let params = r.params.as_deref().map(|p| p.get().as_bytes()).unwrap_or_default();
    let payload = Payload::of(params, proxy.binary_encoding);
    let body = messages::RpcRequest {
        base: Base::new("", "api", Format::Json, &payload),
        caller: Caller { user: "", meta: None },
        method: &r.method,
        payload,
    };
    let result: messages::RpcResult = match proxy.call(&body, &Default::default()).await {
        Ok(Decision::Result(result)) => result,
        Ok(Decision::Empty) => Default::default(),
        Ok(Decision::Error { code, message, .. }) => return Err(ApiError::Backend { code, message }),
        Ok(Decision::Disconnect { code, reason }) => {
            return Err(ApiError::Backend {
                code: code.into(),
                message: reason,
            })
        }
        Err(_) => return Err(ErrorCode::INTERNAL.into()),
    };
    let data = bytes_of(&result.data, &result.b64data).map_err(|_| ApiError::Code(ErrorCode::INTERNAL))?;
    let data: serde_json::Value = match data.is_empty() {
        true => serde_json::Value::Null,
        // The API answers JSON: binary data goes base64-encoded, as publication data does.
        false => serde_json::from_slice(&data).unwrap_or_else(|_| {
            use base64::Engine as _;
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&data))
        }),
    };
    Ok(serde_json::json!({ "data": data }))
}
