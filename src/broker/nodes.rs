//! The broker's side of the cluster: what peers ask of this node ([`Local`]), and the merging
//! of their answers into presence, channels and info.
//!
//! Soft state (presence, channels, node figures) belongs to the node that holds the
//! connections, so a query asks every node that may have some and merges the answers. A peer
//! that does not answer within [`crate::cluster::REQUEST_TIMEOUT`] is left out of the answer,
//! logged and counted (`herald_cluster_partial_answers_total`): a slow node makes the answer
//! incomplete, never late. A node declared dead is not asked, so its entries disappear with it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Broker, NodeId, NodeInfo};
use crate::cluster::wire::{self, request, response, user_command};
use crate::cluster::{AskError, Cluster, Local};
use crate::hub::Prepared;
use crate::protocol::proto::{ClientInfo, Push};

impl Broker {
    /// Joins the node to its cluster: the cluster delivers peers' pushes and asks questions
    /// through this broker, and the broker routes and asks through the cluster. Done once,
    /// before clients are accepted.
    pub fn attach_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let local: Arc<dyn Local> = self.clone();
        cluster.attach(Arc::downgrade(&local));
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }
}

impl Local for Broker {
    fn deliver(&self, push: Push, epoch: String) {
        let channel = push.channel.clone();
        let push = Prepared::from_push(push, Arc::from(epoch));
        // Local subscribers only: a peer's push is never routed on.
        self.hub.broadcast(&channel, &push);
    }

    fn answer(&self, request: request::Body) -> Pin<Box<dyn Future<Output = response::Body> + Send + '_>> {
        Box::pin(async move {
            match request {
                request::Body::Presence(channel) => response::Body::Presence(wire::Presence {
                    clients: self.hub.presence(&channel),
                }),
                request::Body::Channels(_) => response::Body::Channels(wire::Channels {
                    channels: self
                        .hub
                        .channels()
                        .into_iter()
                        .map(|(name, count)| (name, count as u64))
                        .collect(),
                }),
                request::Body::Info(_) => {
                    let info = self.local_info();
                    response::Body::Info(wire::NodeInfo {
                        id: info.id.to_string(),
                        name: info.name,
                        version: info.version,
                        clients: info.clients as u64,
                        users: info.users as u64,
                        channels: info.channels as u64,
                        subscriptions: info.subscriptions as u64,
                        uptime_ms: info.uptime.as_millis() as u64,
                    })
                }
                request::Body::UserCommand(command) => {
                    let client = (!command.client.is_empty()).then_some(command.client.as_str());
                    if let Some(action) = &command.action {
                        self.act_on_local_user(&command.user, client, action);
                    }
                    response::Body::Done(wire::Done {})
                }
                request::Body::Status(_) => response::Body::Error("status is answered by the cluster".to_owned()),
            }
        })
    }
}

fn partial(what: &'static str, error: &AskError) {
    metrics::counter!("herald_cluster_partial_answers_total", "query" => what).increment(1);
    tracing::warn!(error = %error, "{what}: answer without this peer's part");
}

/// The presence entries of the peers that have subscribers of `channel`.
pub(super) async fn presence_of_peers(cluster: &Cluster, channel: &str) -> HashMap<String, ClientInfo> {
    let peers = cluster.interested(channel);
    let mut presence = HashMap::new();
    if peers.is_empty() {
        return presence;
    }
    for (_, answer) in cluster
        .ask_each(&peers, request::Body::Presence(channel.to_owned()))
        .await
    {
        match answer {
            Ok(response::Body::Presence(p)) => presence.extend(p.clients),
            Ok(_) => {}
            Err(e) => partial("presence", &e),
        }
    }
    presence
}

pub(super) async fn channels_of_peers(cluster: &Cluster) -> Vec<(String, usize)> {
    let mut channels = Vec::new();
    for (_, answer) in cluster.ask_all(request::Body::Channels(wire::ChannelsQuery {})).await {
        match answer {
            Ok(response::Body::Channels(c)) => {
                channels.extend(c.channels.into_iter().map(|(name, n)| (name, n as usize)))
            }
            Ok(_) => {}
            Err(e) => partial("channels", &e),
        }
    }
    channels
}

pub(super) async fn info_of_peers(cluster: &Cluster) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for (_, answer) in cluster.ask_all(request::Body::Info(wire::InfoQuery {})).await {
        match answer {
            Ok(response::Body::Info(info)) => nodes.push(NodeInfo {
                id: NodeId::named(&info.id),
                name: info.name,
                version: info.version,
                clients: info.clients as usize,
                users: info.users as usize,
                channels: info.channels as usize,
                subscriptions: info.subscriptions as usize,
                uptime: Duration::from_millis(info.uptime_ms),
            }),
            Ok(_) => {}
            Err(e) => partial("info", &e),
        }
    }
    nodes
}

/// Sends a user command to every peer (the user's connections may be anywhere).
pub(super) async fn user_command_to_peers(
    cluster: &Cluster,
    user: &str,
    client: Option<&str>,
    action: user_command::Action,
) {
    let command = wire::UserCommand {
        user: user.to_owned(),
        client: client.unwrap_or_default().to_owned(),
        action: Some(action),
    };
    for (_, answer) in cluster.ask_all(request::Body::UserCommand(command)).await {
        if let Err(e) = answer {
            partial("user command", &e);
        }
    }
}
