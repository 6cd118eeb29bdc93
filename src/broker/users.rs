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
use crate::proxy::messages::{BoolValue, Overrides};
use crate::session::{Control, SubscribeOptions};

/// Whose connections a call targets: all of a user's, or only `client` among them.
#[derive(Debug, Clone, Copy)]
pub struct UserTarget<'a> {
    pub user: &'a str,
    pub client: Option<&'a str>,
}

impl Broker {
    /// Subscribes the user's connections to `channel` (server-side: announced with a
    /// `subscribe` push), with `options` when given. 102/107 for a channel that cannot exist.
    pub async fn subscribe_user(
        &self,
        target: UserTarget<'_>,
        channel: &str,
        options: Option<SubscribeOptions>,
    ) -> Result<(), BrokerError> {
        self.options(channel)?;
        let action = match options {
            None => Action::Subscribe(channel.to_owned()),
            Some(options) => Action::SubscribeWith(server_subscribe(channel, options)),
        };
        self.user_command(target, action).await;
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
        info: bytes::Bytes,
    ) -> Result<(), BrokerError> {
        let action = Action::Refresh(wire::Refresh {
            expired,
            expire_at: expire_at.unwrap_or(0),
            info,
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
                    options: None,
                },
                Action::SubscribeWith(subscribe) => Control::Subscribe {
                    channel: subscribe.channel.clone(),
                    options: Some(Box::new(options_of(subscribe))),
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
                    info: refresh.info.clone(),
                },
            };
            session.control(control);
        }
    }
}

/// Subscribe options as they travel to the nodes holding the user's connections.
fn server_subscribe(channel: &str, options: SubscribeOptions) -> wire::ServerSubscribe {
    let flag = |v: Option<BoolValue>| v.map_or(0, |v| if v.value { 2 } else { 1 });
    let overrides = options.overrides.unwrap_or_default();
    let (recover, (recover_epoch, recover_offset)) = match options.recover_since {
        Some(since) => (true, since),
        None => (false, Default::default()),
    };
    wire::ServerSubscribe {
        channel: channel.to_owned(),
        info: options.info,
        data: options.data,
        expire_at: options.expire_at.unwrap_or(0),
        recover,
        recover_epoch,
        recover_offset,
        presence: flag(overrides.presence),
        join_leave: flag(overrides.join_leave),
        force_push_join_leave: flag(overrides.force_push_join_leave),
        force_recovery: flag(overrides.force_recovery),
        force_positioning: flag(overrides.force_positioning),
    }
}

fn options_of(subscribe: &wire::ServerSubscribe) -> SubscribeOptions {
    let flag = |v: u32| (v != 0).then_some(BoolValue { value: v == 2 });
    SubscribeOptions {
        info: subscribe.info.clone(),
        data: subscribe.data.clone(),
        expire_at: (subscribe.expire_at > 0).then_some(subscribe.expire_at),
        recover_since: subscribe
            .recover
            .then(|| (subscribe.recover_epoch.clone(), subscribe.recover_offset)),
        overrides: Some(Overrides {
            presence: flag(subscribe.presence),
            join_leave: flag(subscribe.join_leave),
            force_push_join_leave: flag(subscribe.force_push_join_leave),
            force_recovery: flag(subscribe.force_recovery),
            force_positioning: flag(subscribe.force_positioning),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscribe options survive the trip to a peer: every field, and each override unset,
    /// false or true.
    #[test]
    fn subscribe_options_cross_the_wire_intact() {
        let options = SubscribeOptions {
            info: bytes::Bytes::from_static(b"{\"i\":1}"),
            data: bytes::Bytes::from_static(b"{\"d\":2}"),
            expire_at: Some(1_900_000_000),
            recover_since: Some(("e1".into(), 7)),
            overrides: Some(Overrides {
                presence: Some(BoolValue { value: false }),
                join_leave: Some(BoolValue { value: true }),
                force_push_join_leave: None,
                force_recovery: Some(BoolValue { value: true }),
                force_positioning: None,
            }),
        };
        let wire = server_subscribe("ch", options);
        let back = options_of(&wire);
        assert_eq!(wire.channel, "ch");
        assert_eq!((&back.info[..], &back.data[..]), (&b"{\"i\":1}"[..], &b"{\"d\":2}"[..]));
        assert_eq!(back.expire_at, Some(1_900_000_000));
        assert_eq!(back.recover_since, Some(("e1".to_owned(), 7)));
        let o = back.overrides.unwrap();
        let value = |v: Option<BoolValue>| v.map(|v| v.value);
        assert_eq!(value(o.presence), Some(false));
        assert_eq!(value(o.join_leave), Some(true));
        assert_eq!(value(o.force_push_join_leave), None);
        assert_eq!(value(o.force_recovery), Some(true));
        assert_eq!(value(o.force_positioning), None);
    }
}
