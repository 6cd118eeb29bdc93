//! Channel names: `[$][namespace:]name[#user1,user2]`.

use crate::protocol::ErrorCode;

/// Longest channel name accepted, in bytes (keeps store keys' one-byte length prefix valid).
pub const MAX_CHANNEL_LENGTH: usize = 255;

/// A parsed channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName<'a> {
    pub full: &'a str,
    /// The part before the first `:` (after a leading `$`), if any.
    pub namespace: Option<&'a str>,
    /// Starts with `$`: subscribing needs a subscription token.
    pub private: bool,
    /// For `name#42,43`: the users allowed, if the channel is user-limited.
    pub users: Option<&'a str>,
}

impl<'a> ChannelName<'a> {
    pub fn parse(full: &'a str) -> Result<Self, ErrorCode> {
        if full.is_empty() || full.len() > MAX_CHANNEL_LENGTH {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let private = full.starts_with('$');
        let bare = full.strip_prefix('$').unwrap_or(full);
        let namespace = bare.split_once(':').map(|(ns, _)| ns);
        let users = full.rsplit_once('#').map(|(_, users)| users);
        Ok(Self {
            full,
            namespace,
            private,
            users,
        })
    }

    /// Whether `user` is one of the users of a user-limited channel.
    pub fn allows_user(&self, user: &str) -> bool {
        !user.is_empty() && self.users.is_some_and(|users| users.split(',').any(|u| u == user))
    }
}

/// The personal channel of a user: `#<user>`.
pub fn personal_channel(user: &str) -> String {
    format!("#{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let c = ChannelName::parse("$chat:room#42,43").unwrap();
        assert_eq!(c.namespace, Some("chat"));
        assert!(c.private);
        assert!(c.allows_user("43"));
        assert!(!c.allows_user("4"));
        let plain = ChannelName::parse("news").unwrap();
        assert_eq!(plain.namespace, None);
        assert!(!plain.allows_user(""));
        assert_eq!(ChannelName::parse("#42").unwrap().users, Some("42"));
        assert!(ChannelName::parse("").is_err());
        assert!(ChannelName::parse(&"x".repeat(256)).is_err());
    }
}
