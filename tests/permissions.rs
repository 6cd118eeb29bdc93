//! Every channel permission rule, allowed and denied, in both formats.

mod common;

use common::{cmd, token, Client, Node, CONFIG, FORMATS};
use herald::protocol::proto::{Command, SubRefreshRequest, SubscribeRequest};
use herald::protocol::Format;
use serde_json::json;

fn code(reply: &herald::protocol::proto::Reply) -> Option<u32> {
    reply.error.as_ref().map(|e| e.code)
}

fn sub_with_token(channel: &str, token: String) -> Command {
    cmd::subscribe_with(SubscribeRequest {
        channel: channel.into(),
        token,
        ..Default::default()
    })
}

#[tokio::test]
async fn subscribe_rules() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut c = Client::connected(&node, format, "42").await;
        // allow_subscribe_for_client.
        assert_eq!(code(&c.call(cmd::subscribe("room")).await), None);
        // Already subscribed.
        assert_eq!(code(&c.call(cmd::subscribe("room")).await), Some(105));
        // A namespace that allows nothing.
        assert_eq!(code(&c.call(cmd::subscribe("closed:x")).await), Some(103));
        // An unknown namespace.
        assert_eq!(code(&c.call(cmd::subscribe("nowhere:x")).await), Some(102));
        // Bad names.
        assert_eq!(code(&c.call(cmd::subscribe("")).await), Some(107));
        assert_eq!(code(&c.call(cmd::subscribe(&"x".repeat(300))).await), Some(107));
        // `$` private channels need a subscription token even where clients may subscribe.
        assert_eq!(code(&c.call(cmd::subscribe("$secret")).await), Some(103));
        // A channel both private and user-limited needs the token even for its own user.
        assert_eq!(code(&c.call(cmd::subscribe("$billing#42")).await), Some(103));
        let t = token(json!({"sub": "42", "channel": "$billing#42"}));
        assert_eq!(code(&c.call(sub_with_token("$billing#42", t)).await), None);
        // User-limited channels.
        assert_eq!(code(&c.call(cmd::subscribe("dm#1,42")).await), None);
        assert_eq!(code(&c.call(cmd::subscribe("dm#1,2")).await), Some(103));
        // A valid subscription token opens a closed namespace and a private channel.
        let t = token(json!({"sub": "42", "channel": "closed:x"}));
        assert_eq!(code(&c.call(sub_with_token("closed:x", t)).await), None);
        let t = token(json!({"sub": "42", "channel": "$secret"}));
        assert_eq!(code(&c.call(sub_with_token("$secret", t)).await), None);
        // An invalid subscription token is 103 and the connection stays.
        assert_eq!(
            code(&c.call(sub_with_token("closed:y", "garbage".into())).await),
            Some(103)
        );
        let forged = herald::auth::token::mint_hs256("wrong", &json!({"sub": "42", "channel": "closed:y"}));
        assert_eq!(code(&c.call(sub_with_token("closed:y", forged)).await), Some(103));
        // An expired one is 109.
        let expired = token(json!({"sub": "42", "channel": "closed:y", "exp": common::now() - 5}));
        assert_eq!(code(&c.call(sub_with_token("closed:y", expired)).await), Some(109));
        assert!(c.closed.is_none());
        // A token for another channel → 3500.
        let other = token(json!({"sub": "42", "channel": "closed:other"}));
        c.send(&Command {
            id: 100,
            ..sub_with_token("closed:y", other)
        })
        .await;
        assert_eq!(c.closed().await.0, 3500);
        // A token for another user → 3500.
        let mut c = Client::connected(&node, format, "42").await;
        let other_user = token(json!({"sub": "7", "channel": "closed:y"}));
        c.send(&Command {
            id: 100,
            ..sub_with_token("closed:y", other_user)
        })
        .await;
        assert_eq!(c.closed().await.0, 3500);
    }
}

#[tokio::test]
async fn anonymous_connections() {
    let config = CONFIG.replace("[client]\n", "[client]\nallow_anonymous = true\n")
        + r#"
[channels.namespaces.anon]
presence = true
history_size = 10
history_ttl = "300s"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true
allow_presence_for_subscriber = true
allow_presence_for_anonymous = true
allow_history_for_subscriber = true
allow_history_for_anonymous = true
"#;
    let node = Node::start(&config);
    for format in FORMATS {
        let mut anon = Client::open(&node, format).await;
        assert!(anon.connect("").await.connect.is_some());
        // allow_subscribe_for_client does not cover anonymous users.
        assert_eq!(code(&anon.call(cmd::subscribe("room")).await), Some(103));
        // A user-limited channel never lets the anonymous user in.
        assert_eq!(code(&anon.call(cmd::subscribe("dm#1,2")).await), Some(103));
        // But a subscription token for the anonymous user ("") does.
        let t = token(json!({"sub": "", "channel": "room"}));
        assert_eq!(code(&anon.call(sub_with_token("room", t)).await), None);
        // Subscribed, the anonymous user still may not publish, read presence or history: the
        // subscriber grants need their `_for_anonymous` keys as well.
        assert_eq!(code(&anon.call(cmd::publish("room", "{}")).await), Some(103));
        assert_eq!(code(&anon.call(cmd::presence("room")).await), Some(103));
        assert_eq!(code(&anon.call(cmd::history("room", 5, None, false)).await), Some(103));
        // Where the namespace admits the anonymous user, everything works.
        for command in [
            cmd::subscribe("anon:x"),
            cmd::publish("anon:x", "{}"),
            cmd::presence("anon:x"),
            cmd::history("anon:x", 5, None, false),
        ] {
            let reply = anon.call(command).await;
            assert_eq!(code(&reply), None, "{reply:?}");
        }
    }
}

#[tokio::test]
async fn publish_presence_history_rules() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut c = Client::connected(&node, format, "42").await;
        let channel = format!("rules-{format:?}");
        // Default namespace: only subscribers may publish, read presence and history.
        assert_eq!(code(&c.call(cmd::publish(&channel, "{\"a\":1}")).await), Some(103));
        assert_eq!(code(&c.call(cmd::presence(&channel)).await), Some(103));
        assert_eq!(code(&c.call(cmd::presence_stats(&channel)).await), Some(103));
        assert_eq!(code(&c.call(cmd::history(&channel, 10, None, false)).await), Some(103));
        c.call(cmd::subscribe(&channel)).await;
        assert!(c.push().await.join.is_some());
        assert_eq!(code(&c.call(cmd::publish(&channel, "{\"a\":1}")).await), None);
        // The publisher receives its own publication, with its client info.
        let publication = c.push().await.r#pub.unwrap();
        assert_eq!(publication.offset, 1);
        assert_eq!(publication.info.unwrap().user, "42");
        let presence = c.call(cmd::presence(&channel)).await.presence.unwrap().presence;
        assert_eq!(presence.len(), 1);
        assert_eq!(presence.values().next().unwrap().user, "42");
        let history = c.call(cmd::history(&channel, 10, None, false)).await.history.unwrap();
        assert_eq!(history.publications.len(), 1);
        // `open:` allows publishing and presence without subscribing, but has neither
        // presence enabled nor history: those are "not available".
        assert_eq!(code(&c.call(cmd::publish("open:x", "{}")).await), None);
        assert_eq!(code(&c.call(cmd::presence("open:x")).await), Some(108));
        assert_eq!(code(&c.call(cmd::history("open:x", 1, None, false)).await), Some(108));
        // `closed:` has presence and history but grants nothing.
        assert_eq!(code(&c.call(cmd::publish("closed:x", "{}")).await), Some(103));
        assert_eq!(code(&c.call(cmd::presence("closed:x")).await), Some(103));
        assert_eq!(code(&c.call(cmd::history("closed:x", 1, None, false)).await), Some(103));
        assert_eq!(code(&c.call(cmd::publish("nowhere:x", "{}")).await), Some(102));
    }
}

#[tokio::test]
async fn insecure_mode_allows_everything() {
    let config = CONFIG.replace("[client]\n", "[client]\ninsecure = true\n");
    let node = Node::start(&config);
    for format in FORMATS {
        let mut c = Client::open(&node, format).await;
        assert!(c.connect("").await.connect.is_some());
        for command in [
            cmd::subscribe("closed:a"),
            cmd::subscribe("$private"),
            cmd::publish("closed:a", "{}"),
            cmd::presence("closed:a"),
            cmd::presence_stats("closed:a"),
            cmd::history("closed:a", 5, None, false),
        ] {
            let reply = c.call(command).await;
            assert_eq!(code(&reply), None, "{reply:?}");
        }
    }
}

#[tokio::test]
async fn server_side_subscriptions_and_personal_channel() {
    let config = CONFIG.replace("[client]\n", "[client]\nsubscribe_to_personal_channel = true\n");
    let node = Node::start(&config);
    for format in FORMATS {
        let mut c = Client::open(&node, format).await;
        let reply = c
            .connect(&token(json!({"sub": "42", "channels": ["closed:feed"]})))
            .await;
        let subs = reply.connect.unwrap().subs;
        assert!(subs.contains_key("#42"), "{subs:?}");
        assert!(subs.contains_key("closed:feed"), "{subs:?}");
        assert!(subs["#42"].recoverable);
        let personal_top = subs["#42"].offset;
        // Own join push in the personal channel.
        let join = c.push().await;
        assert_eq!(join.channel, "#42");
        // Server-side subscriptions count as subscribed: the client may publish into `#42`.
        assert_eq!(code(&c.call(cmd::publish("#42", "{\"me\":1}")).await), None);
        let push = c.push().await;
        assert_eq!(
            (push.channel.as_str(), push.r#pub.unwrap().offset),
            ("#42", personal_top + 1)
        );
        node.publish("closed:feed", json!({"news": 1})).await;
        let push = c.push().await;
        assert_eq!(push.channel, "closed:feed");
        assert!(push.r#pub.is_some());
    }
    // The anonymous user has no personal channel.
    let anon_node = Node::start(&config.replace("[client]\n", "[client]\nallow_anonymous = true\n"));
    let mut anon = Client::open(&anon_node, Format::Json).await;
    assert!(anon.connect("").await.connect.unwrap().subs.is_empty());
}

#[tokio::test]
async fn subscription_token_expiry_and_sub_refresh() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut c = Client::connected(&node, format, "42").await;
        let t = token(json!({"sub": "42", "channel": "closed:short", "exp": common::now() + 2}));
        let result = c.call(sub_with_token("closed:short", t)).await.subscribe.unwrap();
        assert!(result.expires && result.ttl <= 2);
        // Refreshed: stays subscribed past the first expiry.
        let fresh = token(json!({"sub": "42", "channel": "closed:short", "exp": common::now() + 60}));
        let refreshed = c
            .call(Command {
                sub_refresh: Some(SubRefreshRequest {
                    channel: "closed:short".into(),
                    token: fresh,
                }),
                ..Default::default()
            })
            .await
            .sub_refresh
            .unwrap();
        assert!(refreshed.expires && refreshed.ttl > 50);
        // Not refreshed: unsubscribed with 2501 at expiry.
        let t = token(json!({"sub": "42", "channel": "closed:lazy", "exp": common::now() + 1}));
        c.call(sub_with_token("closed:lazy", t)).await.subscribe.unwrap();
        let push = c.push().await;
        assert_eq!(push.channel, "closed:lazy");
        assert_eq!(push.unsubscribe.unwrap().code, 2501);
        let presence_stats = node.api("presence_stats", json!({"channel": "closed:short"})).await.1;
        assert_eq!(presence_stats["result"]["num_clients"], 1, "{presence_stats}");
    }
}
