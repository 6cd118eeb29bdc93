//! Who may do what on a channel. Plain functions: the session gathers the facts, these decide.
//!
//! The namespace must be known (else 102) before any of these is asked.

use super::ChannelName;
use crate::config::ChannelOptions;
use crate::protocol::ErrorCode;

/// The facts about the asking connection.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub user: &'a str,
    /// `client.insecure`: everything is allowed.
    pub insecure: bool,
    /// Whether the connection is subscribed to the channel.
    pub subscribed: bool,
}

impl Asker<'_> {
    fn anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// Subscribe without a (valid) subscription token. A valid token for the channel is itself the
/// permission and skips these rules. Order as in Centrifugo: user-limited channel, then the
/// namespace's client permission, then insecure mode.
pub fn subscribe(options: &ChannelOptions, channel: &ChannelName, asker: Asker) -> Result<(), ErrorCode> {
    if options.allow_user_limited_channels && channel.users.is_some() {
        return if channel.allows_user(asker.user) || asker.insecure {
            Ok(())
        } else {
            Err(ErrorCode::PERMISSION_DENIED)
        };
    }
    if channel.private {
        // `$` channels are only for holders of a subscription token.
        return if asker.insecure {
            Ok(())
        } else {
            Err(ErrorCode::PERMISSION_DENIED)
        };
    }
    if options.allow_subscribe_for_client && (!asker.anonymous() || options.allow_subscribe_for_anonymous) {
        return Ok(());
    }
    if asker.insecure {
        return Ok(());
    }
    Err(ErrorCode::PERMISSION_DENIED)
}

pub fn publish(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    let allowed = asker.insecure
        || (options.allow_publish_for_client && (!asker.anonymous() || options.allow_publish_for_anonymous))
        || (options.allow_publish_for_subscriber && asker.subscribed);
    allowed.then_some(()).ok_or(ErrorCode::PERMISSION_DENIED)
}

pub fn presence(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    if !options.presence {
        return Err(ErrorCode::NOT_AVAILABLE);
    }
    let allowed = asker.insecure
        || options.allow_presence_for_client
        || (options.allow_presence_for_subscriber && asker.subscribed);
    allowed.then_some(()).ok_or(ErrorCode::PERMISSION_DENIED)
}

pub fn history(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    if !options.history_enabled() {
        return Err(ErrorCode::NOT_AVAILABLE);
    }
    let allowed = asker.insecure
        || options.allow_history_for_client
        || (options.allow_history_for_subscriber && asker.subscribed);
    allowed.then_some(()).ok_or(ErrorCode::PERMISSION_DENIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Asker = Asker {
        user: "42",
        insecure: false,
        subscribed: false,
    };
    const ANON: Asker = Asker {
        user: "",
        insecure: false,
        subscribed: false,
    };

    fn ch(name: &str) -> ChannelName<'_> {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn subscribe_rules() {
        let closed = ChannelOptions::default();
        let open = ChannelOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        let limited = ChannelOptions {
            allow_user_limited_channels: true,
            ..Default::default()
        };
        assert_eq!(subscribe(&closed, &ch("a"), USER), Err(ErrorCode::PERMISSION_DENIED));
        assert_eq!(subscribe(&open, &ch("a"), USER), Ok(()));
        assert_eq!(subscribe(&open, &ch("a"), ANON), Err(ErrorCode::PERMISSION_DENIED));
        let open_anon = ChannelOptions {
            allow_subscribe_for_anonymous: true,
            ..open.clone()
        };
        assert_eq!(subscribe(&open_anon, &ch("a"), ANON), Ok(()));
        assert_eq!(subscribe(&open, &ch("$a"), USER), Err(ErrorCode::PERMISSION_DENIED));
        assert_eq!(subscribe(&limited, &ch("d#1,42"), USER), Ok(()));
        assert_eq!(
            subscribe(&limited, &ch("d#1,2"), USER),
            Err(ErrorCode::PERMISSION_DENIED)
        );
        // Without allow_user_limited_channels `#` is an ordinary character.
        assert_eq!(subscribe(&open, &ch("d#1,2"), USER), Ok(()));
        let insecure = Asker { insecure: true, ..ANON };
        assert_eq!(subscribe(&closed, &ch("$a"), insecure), Ok(()));
    }

    #[test]
    fn publish_presence_history_rules() {
        let subscriber = Asker {
            subscribed: true,
            ..USER
        };
        let opts = ChannelOptions {
            presence: true,
            history_size: 10,
            history_ttl: std::time::Duration::from_secs(60),
            allow_publish_for_subscriber: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            ..Default::default()
        };
        assert_eq!(publish(&opts, USER), Err(ErrorCode::PERMISSION_DENIED));
        assert_eq!(publish(&opts, subscriber), Ok(()));
        assert_eq!(presence(&opts, USER), Err(ErrorCode::PERMISSION_DENIED));
        assert_eq!(presence(&opts, subscriber), Ok(()));
        assert_eq!(history(&opts, subscriber), Ok(()));
        let bare = ChannelOptions::default();
        assert_eq!(presence(&bare, subscriber), Err(ErrorCode::NOT_AVAILABLE));
        assert_eq!(history(&bare, subscriber), Err(ErrorCode::NOT_AVAILABLE));
        let insecure = Asker { insecure: true, ..ANON };
        assert_eq!(publish(&bare, insecure), Ok(()));
    }
}
