//! `history` and `history_remove`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::presence::{Channel, ClientInfo};
use super::{nullable, ApiResult};
use crate::broker::Broker;
use crate::protocol::json::{is_default, raw};
use crate::protocol::proto;

/// Centrifugo's `HistoryRequest`: `limit` 0 (or absent) answers only the stream's position, a
/// negative one as many publications as retained.
#[derive(Deserialize)]
pub struct History {
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    limit: i32,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default, deserialize_with = "nullable")]
    reverse: bool,
}

#[derive(Deserialize)]
pub struct StreamPosition {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) offset: u64,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) epoch: String,
}

/// A publication as the API shows it (Centrifugo's API `Publication`): the client protocol's
/// `time`, `channel` and `delta` are not part of it.
#[derive(Serialize)]
struct Publication {
    #[serde(serialize_with = "raw::serialize", skip_serializing_if = "Bytes::is_empty")]
    data: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<ClientInfo>,
    #[serde(skip_serializing_if = "is_default")]
    offset: u64,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    tags: HashMap<String, String>,
}

impl From<proto::Publication> for Publication {
    fn from(p: proto::Publication) -> Self {
        Self {
            data: p.data,
            info: p.info.map(ClientInfo::from),
            offset: p.offset,
            tags: p.tags,
        }
    }
}

/// `{publications, epoch, offset}`, all three always present.
pub async fn history(broker: &Arc<Broker>, h: History) -> ApiResult {
    let since = h.since.map(|s| (s.epoch, s.offset));
    let history = broker.history(&h.channel, i64::from(h.limit), since, h.reverse).await?;
    let publications: Vec<Publication> = history.publications.into_iter().map(Publication::from).collect();
    Ok(json!({ "publications": publications, "epoch": history.epoch, "offset": history.offset }))
}

pub async fn history_remove(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    broker.remove_history(&c.channel).await?;
    Ok(json!({}))
}
