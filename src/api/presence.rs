//! `presence` and `presence_stats`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{nullable, ApiResult};
use crate::broker::Broker;
use crate::protocol::json::raw;
use crate::protocol::proto;

/// The parameters of the methods that name one channel (`presence`, `presence_stats`,
/// `history_remove`). An empty channel is 107.
#[derive(Deserialize)]
pub struct Channel {
    #[serde(default, deserialize_with = "nullable")]
    pub channel: String,
}

/// A connection as the API shows it (Centrifugo's API `ClientInfo`): `user` and `client`
/// always, even when empty (an anonymous user); the infos when there are some.
#[derive(Serialize)]
pub(super) struct ClientInfo {
    user: String,
    client: String,
    #[serde(serialize_with = "raw::serialize", skip_serializing_if = "Bytes::is_empty")]
    conn_info: Bytes,
    #[serde(serialize_with = "raw::serialize", skip_serializing_if = "Bytes::is_empty")]
    chan_info: Bytes,
}

impl From<proto::ClientInfo> for ClientInfo {
    fn from(info: proto::ClientInfo) -> Self {
        Self {
            user: info.user,
            client: info.client,
            conn_info: info.conn_info,
            chan_info: info.chan_info,
        }
    }
}

/// `{presence: {client id: ClientInfo}}`.
pub async fn presence(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    let presence: HashMap<String, ClientInfo> = broker
        .presence(&c.channel)
        .await?
        .into_iter()
        .map(|(client, info)| (client, ClientInfo::from(info)))
        .collect();
    Ok(json!({ "presence": presence }))
}

/// `{num_clients, num_users}`, both always present.
pub async fn presence_stats(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    let (clients, users) = broker.presence_stats(&c.channel).await?;
    Ok(json!({ "num_clients": clients, "num_users": users }))
}
