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
    /// A grant covers every authenticated user, and the anonymous user ("") only where the
    /// namespace's `allow_*_for_anonymous` says so.
    fn admitted(&self, anonymous_allowed: bool) -> bool {
        !self.user.is_empty() || anonymous_allowed
    }
}

/// Subscribe without a (valid) subscription token. A valid token for the channel is itself the
/// permission and skips these rules. Order as in the reference server: a private (`$`) channel
/// needs a token whatever else holds (so `$billing#42` is not open to user 42 without one), then
/// the user-limited channel rule, then the namespace's client permission, then insecure mode.
pub fn subscribe(options: &ChannelOptions, channel: &ChannelName, asker: Asker) -> Result<(), ErrorCode> {
    if asker.insecure {
        // Development mode: everything is allowed, private channels included (documented in
        // config/herald.toml under `client.insecure`).
        return Ok(());
    }
    if channel.private {
        return Err(ErrorCode::PERMISSION_DENIED);
    }
    if options.allow_user_limited_channels && channel.users.is_some() {
        return if channel.allows_user(asker.user) {
            Ok(())
        } else {
            Err(ErrorCode::PERMISSION_DENIED)
        };
    }
    if options.allow_subscribe_for_client && asker.admitted(options.allow_subscribe_for_anonymous) {
        return Ok(());
    }
    Err(ErrorCode::PERMISSION_DENIED)
}

/// Publish from a client: any client of the namespace, or only its subscribers; the anonymous
/// user only where `allow_publish_for_anonymous` also holds.
pub fn publish(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    let granted = options.allow_publish_for_client || (options.allow_publish_for_subscriber && asker.subscribed);
    decide(asker, granted && asker.admitted(options.allow_publish_for_anonymous))
}

/// Presence and presence stats: 108 where presence is off, then as [`publish`].
pub fn presence(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    if !options.presence {
        return Err(ErrorCode::NOT_AVAILABLE);
    }
    let granted = options.allow_presence_for_client || (options.allow_presence_for_subscriber && asker.subscribed);
    decide(asker, granted && asker.admitted(options.allow_presence_for_anonymous))
}

/// History: 108 where history is off, then as [`publish`].
pub fn history(options: &ChannelOptions, asker: Asker) -> Result<(), ErrorCode> {
    if !options.history_enabled() {
        return Err(ErrorCode::NOT_AVAILABLE);
    }
    let granted = options.allow_history_for_client || (options.allow_history_for_subscriber && asker.subscribed);
    decide(asker, granted && asker.admitted(options.allow_history_for_anonymous))
}

fn decide(asker: Asker, granted: bool) -> Result<(), ErrorCode> {
    (granted || asker.insecure)
        .then_some(())
        .ok_or(ErrorCode::PERMISSION_DENIED)
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
    const DENIED: Result<(), ErrorCode> = Err(ErrorCode::PERMISSION_DENIED);
    const UNAVAILABLE: Result<(), ErrorCode> = Err(ErrorCode::NOT_AVAILABLE);

    fn ch(name: &str) -> ChannelName<'_> {
        ChannelName::parse(name).unwrap()
    }

    fn subscriber(asker: Asker<'static>) -> Asker<'static> {
        Asker {
            subscribed: true,
            ..asker
        }
    }

    fn insecure(asker: Asker<'static>) -> Asker<'static> {
        Asker {
            insecure: true,
            ..asker
        }
    }

    #[test]
    fn private_channels_need_a_token_before_any_other_rule() {
        // Everything else would allow user 42: open namespace, user-limited channel naming 42.
        let open = ChannelOptions {
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_user_limited_channels: true,
            ..Default::default()
        };
        assert_eq!(subscribe(&open, &ch("$billing#42"), USER), DENIED);
        assert_eq!(subscribe(&open, &ch("$billing"), USER), DENIED);
        assert_eq!(subscribe(&open, &ch("$ns:x#42"), USER), DENIED);
        assert_eq!(subscribe(&open, &ch("$billing"), ANON), DENIED);
        // Insecure (development) mode allows them.
        assert_eq!(subscribe(&open, &ch("$billing#42"), insecure(ANON)), Ok(()));
    }

    #[test]
    fn user_limited_channels_admit_exactly_their_users() {
        let limited = ChannelOptions {
            allow_user_limited_channels: true,
            ..Default::default()
        };
        assert_eq!(subscribe(&limited, &ch("d#1,42"), USER), Ok(()));
        assert_eq!(subscribe(&limited, &ch("d#42"), USER), Ok(()));
        assert_eq!(subscribe(&limited, &ch("d#1,2"), USER), DENIED);
        assert_eq!(subscribe(&limited, &ch("d#420"), USER), DENIED);
        // The anonymous user is never one of the listed users, even of an empty list.
        assert_eq!(subscribe(&limited, &ch("d#"), ANON), DENIED);
        assert_eq!(subscribe(&limited, &ch("d#,1"), ANON), DENIED);
        // The rule decides alone: a namespace open to clients does not admit other users.
        let open_limited = ChannelOptions {
            allow_subscribe_for_client: true,
            ..limited.clone()
        };
        assert_eq!(subscribe(&open_limited, &ch("d#1,2"), USER), DENIED);
        // Without allow_user_limited_channels `#` is an ordinary character.
        let open = ChannelOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        assert_eq!(subscribe(&open, &ch("d#1,2"), USER), Ok(()));
        assert_eq!(subscribe(&ChannelOptions::default(), &ch("d#42"), USER), DENIED);
    }

    #[test]
    fn subscribe_for_client_and_anonymous() {
        let closed = ChannelOptions::default();
        let open = ChannelOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        let open_anon = ChannelOptions {
            allow_subscribe_for_anonymous: true,
            ..open.clone()
        };
        let anon_only_flag = ChannelOptions {
            allow_subscribe_for_anonymous: true,
            ..Default::default()
        };
        assert_eq!(subscribe(&closed, &ch("a"), USER), DENIED);
        assert_eq!(subscribe(&open, &ch("a"), USER), Ok(()));
        assert_eq!(subscribe(&open, &ch("a"), ANON), DENIED);
        assert_eq!(subscribe(&open_anon, &ch("a"), ANON), Ok(()));
        // allow_subscribe_for_anonymous widens allow_subscribe_for_client; alone it grants nothing.
        assert_eq!(subscribe(&anon_only_flag, &ch("a"), ANON), DENIED);
        assert_eq!(subscribe(&anon_only_flag, &ch("a"), USER), DENIED);
        assert_eq!(subscribe(&closed, &ch("a"), insecure(ANON)), Ok(()));
    }

    /// The three grants of publish, presence and history behave alike: for every client, for
    /// subscribers only, and the anonymous user only with the `_for_anonymous` key.
    #[test]
    fn publish_presence_history_grants() {
        type Rule = fn(&ChannelOptions, Asker) -> Result<(), ErrorCode>;
        type Set = fn(&mut ChannelOptions, bool, bool, bool);
        let cases: [(&str, Rule, Set); 3] = [
            ("publish", publish, |o, client, subscriber, anonymous| {
                o.allow_publish_for_client = client;
                o.allow_publish_for_subscriber = subscriber;
                o.allow_publish_for_anonymous = anonymous;
            }),
            ("presence", presence, |o, client, subscriber, anonymous| {
                o.allow_presence_for_client = client;
                o.allow_presence_for_subscriber = subscriber;
                o.allow_presence_for_anonymous = anonymous;
            }),
            ("history", history, |o, client, subscriber, anonymous| {
                o.allow_history_for_client = client;
                o.allow_history_for_subscriber = subscriber;
                o.allow_history_for_anonymous = anonymous;
            }),
        ];
        let available = ChannelOptions {
            presence: true,
            history_size: 10,
            history_ttl: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        for (name, rule, set) in cases {
            let with = |client, subscriber, anonymous| {
                let mut o = available.clone();
                set(&mut o, client, subscriber, anonymous);
                o
            };
            // (options, asker, expected)
            let table = [
                (with(false, false, false), USER, DENIED),
                (with(false, false, false), subscriber(USER), DENIED),
                (with(false, false, true), subscriber(ANON), DENIED),
                (with(true, false, false), USER, Ok(())),
                (with(true, false, false), ANON, DENIED),
                (with(true, false, true), ANON, Ok(())),
                (with(false, true, false), USER, DENIED),
                (with(false, true, false), subscriber(USER), Ok(())),
                (with(false, true, false), subscriber(ANON), DENIED),
                (with(false, true, true), subscriber(ANON), Ok(())),
                (with(false, true, true), ANON, DENIED),
                (with(false, false, false), insecure(ANON), Ok(())),
            ];
            for (i, (options, asker, expected)) in table.into_iter().enumerate() {
                assert_eq!(rule(&options, asker), expected, "{name} case {i}: {asker:?}");
            }
        }
    }

    #[test]
    fn presence_and_history_are_unavailable_before_any_grant() {
        let everything_granted = ChannelOptions {
            allow_presence_for_client: true,
            allow_history_for_client: true,
            ..Default::default()
        };
        assert_eq!(presence(&everything_granted, USER), UNAVAILABLE);
        assert_eq!(history(&everything_granted, USER), UNAVAILABLE);
        // Even in insecure mode: there is nothing to read.
        assert_eq!(presence(&everything_granted, insecure(USER)), UNAVAILABLE);
        assert_eq!(history(&everything_granted, insecure(USER)), UNAVAILABLE);
    }
}
