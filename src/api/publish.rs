//! `publish` and `broadcast`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{ApiError, ApiResult};
use crate::broker::{Broker, PublishRequest, PublishResult};
use crate::protocol::ErrorCode;

/// Parameters of publish (`channel`) and broadcast (`channels`). One flat struct: `data` must
/// reach us as raw JSON, which serde's `flatten` would re-buffer.
#[derive(Deserialize)]
pub struct Body {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl Body {
    fn data(&self) -> Result<Bytes, ApiError> {
        match (&self.data, &self.b64data) {
            (Some(raw), _) => {
                crate::protocol::json::check_interoperable(raw.get().as_bytes())
                    .map_err(|why| ApiError::Malformed(format!("data: {why}")))?;
                Ok(Bytes::from(raw.get().to_owned()))
            }
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| ApiError::Malformed(format!("b64data: {e}"))),
            (None, None) => Err(ApiError::Code(ErrorCode::BAD_REQUEST)),
        }
    }

    fn request(&self, channel: String, data: Bytes) -> PublishRequest {
        PublishRequest {
            channel,
            data,
            info: None,
            tags: self.tags.clone(),
            skip_history: self.skip_history,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

fn result_json(result: &PublishResult) -> Value {
    let mut out = serde_json::Map::new();
    if result.offset > 0 {
        out.insert("offset".into(), json!(result.offset));
    }
    if !result.epoch.is_empty() {
        out.insert("epoch".into(), json!(result.epoch));
    }
    Value::Object(out)
}

pub async fn publish(broker: &Arc<Broker>, p: Body) -> ApiResult {
    let result = broker.publish(publish_request(p)?).await?;
    Ok(result_json(&result))
}

/// What `publish` asks of the broker.
pub fn publish_request(p: Body) -> Result<PublishRequest, ApiError> {
    if p.channel.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    let data = p.data()?;
    Ok(p.request(p.channel.clone(), data))
}

/// The reply to one `publish` of a batch.
pub fn publish_reply(result: Result<PublishResult, crate::broker::BrokerError>) -> Value {
    match result {
        Ok(result) => json!({ "publish": result_json(&result) }),
        Err(e) => json!({ "error": super::error_json(e.code()) }),
    }
}

pub async fn broadcast(broker: &Arc<Broker>, b: Body) -> ApiResult {
    if b.channels.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    let data = b.data()?;
    let requests = b
        .channels
        .iter()
        .map(|channel| b.request(channel.clone(), data.clone()))
        .collect();
    // One group commit for every channel with history, not one flush per channel.
    let responses: Vec<Value> = broker
        .publish_all(requests)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(result) => json!({ "result": result_json(&result) }),
            Err(e) => json!({ "error": super::error_json(e.code()) }),
        })
        .collect();
    Ok(json!({ "responses": responses }))
}
