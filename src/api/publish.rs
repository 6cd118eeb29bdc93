//! `publish` and `broadcast`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{nullable, ApiError, ApiResult};
use crate::broker::{Broker, PublishRequest, PublishResult};
use crate::protocol::ErrorCode;

/// Parameters of publish (`channel`) and broadcast (`channels`): Centrifugo's `PublishRequest`
/// and `BroadcastRequest`. One flat struct: `data` must reach us as raw JSON, which serde's
/// `flatten` would re-buffer.
#[derive(Deserialize)]
pub struct Body {
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    channels: Vec<String>,
    /// `null` is published as `null`, as Centrifugo does; only a missing `data` is `None`.
    #[serde(default, deserialize_with = "raw_even_null")]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    b64data: String,
    #[serde(default, deserialize_with = "nullable")]
    skip_history: bool,
    #[serde(default, deserialize_with = "nullable")]
    tags: HashMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    idempotency_key: String,
    /// May go out as a fossil delta to the subscribers that negotiated one (the others get the
    /// full data, as they would anyway).
    #[serde(default, deserialize_with = "nullable")]
    delta: bool,
    /// A publication whose `version` (> 0) is not above the channel's last one within the same
    /// `version_epoch` (an empty epoch matches any) is dropped: nothing is appended or
    /// delivered, and the answer is the stream's current position (as in Centrifugo). Channels
    /// with history only; elsewhere it is ignored.
    #[serde(default, deserialize_with = "nullable")]
    version: u64,
    #[serde(default, deserialize_with = "nullable")]
    version_epoch: String,
}

fn raw_even_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Body {
    /// The payload: `b64data` when given (it wins over `data`, as in Centrifugo), else `data`,
    /// which must be I-JSON (see [`crate::protocol::json::check_interoperable`]).
    fn data(&self) -> Result<Bytes, ApiError> {
        if !self.b64data.is_empty() {
            return base64::engine::general_purpose::STANDARD
                .decode(&self.b64data)
                .map(Bytes::from)
                .map_err(|_| ApiError::Code(ErrorCode::BAD_REQUEST));
        }
        let Some(raw) = &self.data else {
            // Centrifugo would publish an empty payload, which a JSON subscriber cannot read.
            return Err(ApiError::Code(ErrorCode::BAD_REQUEST));
        };
        crate::protocol::json::check_interoperable(raw.get().as_bytes())
            .map_err(|why| ApiError::Malformed(format!("data: {why}")))?;
        Ok(Bytes::from(raw.get().to_owned()))
    }

    fn request(&self, channel: String, data: Bytes) -> PublishRequest {
        PublishRequest {
            channel,
            data,
            info: None,
            tags: self.tags.clone(),
            skip_history: self.skip_history,
            idempotency_key: Some(self.idempotency_key.clone()).filter(|k| !k.is_empty()),
            delta: self.delta,
            version: (self.version > 0).then(|| crate::store::Version {
                version: self.version,
                epoch: self.version_epoch.clone(),
            }),
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

/// What `publish` asks of the broker: 107 for an empty channel or bad `b64data`.
pub fn publish_request(mut p: Body) -> Result<PublishRequest, ApiError> {
    if p.channel.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    let data = p.data()?;
    let channel = std::mem::take(&mut p.channel);
    Ok(p.request(channel, data))
}

pub async fn publish(broker: &Arc<Broker>, request: PublishRequest) -> ApiResult {
    let result = broker.publish(request).await?;
    Ok(result_json(&result))
}

/// The reply to one `publish` of a batch.
pub fn publish_reply(result: Result<PublishResult, crate::broker::BrokerError>) -> Value {
    match result {
        Ok(result) => json!({ "publish": result_json(&result) }),
        Err(e) => json!({ "error": super::error_json(e.code()) }),
    }
}

/// What `broadcast` asks of the broker, one publish per channel: 107 when there are no
/// channels or `b64data` is bad. A channel that cannot be published to fails in its own slot.
pub fn broadcast_requests(b: Body) -> Result<Vec<PublishRequest>, ApiError> {
    if b.channels.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    let data = b.data()?;
    Ok(b.channels
        .iter()
        .map(|channel| b.request(channel.clone(), data.clone()))
        .collect())
}

pub async fn broadcast(broker: &Arc<Broker>, requests: Vec<PublishRequest>) -> ApiResult {
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
