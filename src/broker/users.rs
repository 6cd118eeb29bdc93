//! Server-API calls that act on a user's live connections: subscribe, unsubscribe, disconnect,
//! refresh. They reach the connections through the registry and each session's control
//! channel and do not wait for the sessions. Today every connection is local; in a cluster these
//! methods also reach the nodes that hold the user's other connections.

use std::sync::Arc;

use super::{Broker, BrokerError};
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
        for session in self.sessions.of_user(target.user, target.client) {
            session.control(Control::Subscribe {
                channel: channel.to_owned(),
            });
        }
        Ok(())
    }

    /// Unsubscribes the user's connections from `channel` (an `unsubscribe` push, code 2000).
    pub async fn unsubscribe_user(&self, target: UserTarget<'_>, channel: &str) -> Result<(), BrokerError> {
        if channel.is_empty() {
            return Err(BrokerError::BadRequest("empty channel"));
        }
        for session in self.sessions.of_user(target.user, target.client) {
            session.control(Control::Unsubscribe {
                channel: Arc::from(channel),
                code: UnsubscribeCode::SERVER,
            });
        }
        Ok(())
    }

    /// Closes the user's connections with `code`, except the clients in `whitelist`.
    pub async fn disconnect_user(
        &self,
        target: UserTarget<'_>,
        whitelist: &[String],
        code: DisconnectCode,
    ) -> Result<(), BrokerError> {
        for session in self.sessions.of_user(target.user, target.client) {
            if !whitelist.iter().any(|w| **w == *session.id) {
                session.control(Control::Disconnect(code.clone()));
            }
        }
        Ok(())
    }

    /// Sets the user's connections' expiry (`None`: never), or expires them now.
    pub async fn refresh_user(
        &self,
        target: UserTarget<'_>,
        expired: bool,
        expire_at: Option<i64>,
    ) -> Result<(), BrokerError> {
        for session in self.sessions.of_user(target.user, target.client) {
            session.control(Control::Refresh { expired, expire_at });
        }
        Ok(())
    }
}
