//! `rpc`: calls a method the server registered for the API.
//!
//! Centrifugo answers it from handlers registered in the server itself, never through a proxy,
//! and its open-source server registers none: an empty `method` is 107, any other 104. Herald
//! registers none either and answers the same.

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
    Err(ErrorCode::METHOD_NOT_FOUND.into())
}
