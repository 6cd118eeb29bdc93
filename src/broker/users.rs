//! Server-API calls that act on a user's live connections: subscribe, unsubscribe, disconnect,
//! refresh. They reach this node's connections through the registry and each session's
//! control channel, and, in a cluster, every peer (the user's other connections may be on any
//! node). They do not wait for the sessions; they wait for the peers' acknowledgement, up to
//! [`crate::cluster::REQUEST_TIMEOUT`].

use std::borrow::Cow;
use std::sync::Arc;

use super::{Broker, BrokerError};
use crate::cluster::wire::{self, user_command::Action};
use crate::protocol::{DisconnectCode, UnsubscribeCode};
use crate::session::Control;

/// Whose connections a call targets: all of a user's, or only `client` among them.
#[derive(Debug, Clone, Copy)]
pub struct UserTarget<'a> {
    pub user: &'a str,
    pub client: Option<&'a str>,
}

impl Broker {
    /// Subscribes the user's connections to `channel` (server-side: announced with a
    /// `subscribe` push). 102/107 for a channel that cannot exist.
    pub async fn subscribe_user(&self, target: UserTarget<'_>, channel: &str) -> Result<(), BrokerError> {
        self.options(channel)?;
        self.user_command(target, Action::Subscribe(channel.to_owned())).await;
        Ok(())
    }

    /// Unsubscribes the user's connections from `channel` (an `unsubscribe` push, code 2000).
    pub async fn unsubscribe_user(&self, target: UserTarget<'_>, channel: &str) -> Result<(), BrokerError> {
        if channel.is_empty() {
            return Err(BrokerError::BadRequest("empty channel"));
        }
        self.user_command(target, Action::Unsubscribe(channel.to_owned())).await;
        Ok(())
    }

    /// Closes the user's connections with `code`, except the clients in `whitelist`.
    pub async fn disconnect_user(
        &self,
        target: UserTarget<'_>,
        whitelist: &[String],
        code: DisconnectCode,
    ) -> Result<(), BrokerError> {
        let action = Action::Disconnect(wire::Disconnect {
            code: u32::from(code.code),
            reason: code.reason.into_owned(),
            whitelist: whitelist.to_vec(),
        });
        self.user_command(target, action).await;
        Ok(())
    }

    /// Sets the user's connections' expiry (`None`: never), or expires them now.
    pub async fn refresh_user(
        &self,
        target: UserTarget<'_>,
        expired: bool,
        expire_at: Option<i64>,
    ) -> Result<(), BrokerError> {
        let action = Action::Refresh(wire::Refresh {
            expired,
            expire_at: expire_at.unwrap_or(0),
        });
        self.user_command(target, action).await;
        Ok(())
    }

    async fn user_command(&self, target: UserTarget<'_>, action: Action) {
        self.act_on_local_user(target.user, target.client, &action);
        if let Some(cluster) = self.cluster.get() {
            super::nodes::user_command_to_peers(cluster, target.user, target.client, action).await;
        }
    }

    /// Carries out a user command on this node's connections of the user.
    pub(super) fn act_on_local_user(&self, user: &str, client: Option<&str>, action: &Action) {
        for session in self.sessions.of_user(user, client) {
            let control = match action {
                Action::Subscribe(channel) => Control::Subscribe {
                    channel: channel.clone(),
                },
                Action::Unsubscribe(channel) => Control::Unsubscribe {
                    channel: Arc::from(channel.as_str()),
                    code: UnsubscribeCode::SERVER,
                },
                Action::Disconnect(disconnect) => {
                    if disconnect.whitelist.iter().any(|w| **w == *session.id) {
                        continue;
                    }
                    Control::Disconnect(DisconnectCode {
                        code: u16::try_from(disconnect.code).unwrap_or(3000),
                        reason: Cow::Owned(disconnect.reason.clone()),
                    })
                }
                Action::Refresh(refresh) => Control::Refresh {
                    expired: refresh.expired,
                    expire_at: (refresh.expire_at != 0).then_some(refresh.expire_at),
                },
            };
            session.control(control);
        }
    }
}
