//! `rpc`: calls a method of the application backend.
//!
//! Herald will answer it through the RPC proxy (issue 13), as it will a client's `rpc`. Until a
//! proxy is configured, an empty `method` is 107 and any other 108 "not available", the answer a
//! client's `rpc` gets too. (The open-source reference server answers 104: it only calls
//! handlers registered in the server itself, and registers none.)

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{nullable, ApiResult};
use crate::protocol::ErrorCode;

/// Centrifugo's `RPCRequest`: a method name and its parameters (any JSON).
#[derive(Deserialize)]
pub struct Rpc {
    #[serde(default, deserialize_with = "nullable")]
    method: String,
    #[serde(default)]
    #[allow(dead_code)]
    params: Option<Box<RawValue>>,
}

pub fn rpc(r: Rpc) -> ApiResult {
    if r.method.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    Err(ErrorCode::NOT_AVAILABLE.into())
}
