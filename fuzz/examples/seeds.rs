//! Writes the seed corpus under `fuzz/corpus/<target>/`: small, meaningful inputs for each
//! target, built with Herald's own types where it has them (Protobuf commands, tokens, store
//! keys). Run it again after a format changes:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! libFuzzer adds what it finds to the same directories while it runs; those files are named
//! by their SHA-1 and are not committed (see fuzz/.gitignore), the seeds are named `seed-…`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use herald::protocol::proto::{
    Command, HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest, RefreshRequest, RpcRequest,
    SendRequest, StreamPosition, SubRefreshRequest, SubscribeRequest, UnsubscribeRequest,
};
use herald::store::keys;
use prost::Message;
use serde_json::json;

const TOKEN_SECRET: &str = "fuzz-secret";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    protocol_json(&root.join("protocol_json"));
    protocol_protobuf(&root.join("protocol_protobuf"));
    websocket_frames(&root.join("websocket_frames"));
    api_bodies(&root.join("api_bodies"));
    token(&root.join("token"));
    config(&root.join("config"));
    store_keys(&root.join("store_keys"));
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(dir).unwrap();
    let path: PathBuf = dir.join(format!("seed-{name}"));
    std::fs::write(path, bytes).unwrap();
}

const JSON_COMMANDS: &[(&str, &str)] = &[
    ("ping", r#"{}"#),
    (
        "connect",
        r#"{"id":1,"connect":{"token":"eyJhbGciOiJIUzI1NiJ9.e30.x","name":"js","version":"5.0.0","subs":{"news":{"recover":true,"offset":3,"epoch":"ab"}}}}"#,
    ),
    (
        "subscribe",
        r#"{"id":2,"subscribe":{"channel":"chat:room#42","token":"t","recover":true,"offset":18446744073709551615,"epoch":"e","positioned":true,"recoverable":true,"join_leave":true}}"#,
    ),
    ("unsubscribe", r#"{"id":3,"unsubscribe":{"channel":"news"}}"#),
    (
        "publish",
        r#"{"id":4,"publish":{"channel":"news","data":{"text":"hi","n":[1,2.5e3,null,true]}}}"#,
    ),
    ("presence", r#"{"id":5,"presence":{"channel":"news"}}"#),
    ("presence_stats", r#"{"id":6,"presence_stats":{"channel":"news"}}"#),
    (
        "history",
        r#"{"id":7,"history":{"channel":"news","limit":10,"since":{"offset":5,"epoch":"e"},"reverse":true}}"#,
    ),
    ("send", r#"{"send":{"data":"\u00e9\ud83d\ude00"}}"#),
    ("rpc", r#"{"id":8,"rpc":{"method":"m","data":[1]}}"#),
    ("refresh", r#"{"id":9,"refresh":{"token":"t"}}"#),
    (
        "sub_refresh",
        r#"{"id":10,"sub_refresh":{"channel":"$private","token":"t"}}"#,
    ),
];

fn protocol_json(dir: &Path) {
    for (name, command) in JSON_COMMANDS {
        write(dir, name, command);
    }
    let joined: Vec<&str> = JSON_COMMANDS.iter().map(|(_, c)| *c).collect();
    write(dir, "several", joined.join("\n") + "\n");
    write(dir, "empty-line", "{}\n\n{}");
}

fn commands() -> Vec<(&'static str, Command)> {
    let base = |id| Command {
        id,
        ..Default::default()
    };
    vec![
        ("ping", Command::default()),
        ("connect", Command::connect(1, "eyJhbGciOiJIUzI1NiJ9.e30.x")),
        (
            "subscribe",
            Command {
                subscribe: Some(SubscribeRequest {
                    channel: "chat:room#42".into(),
                    recover: true,
                    offset: u64::MAX,
                    epoch: "e".into(),
                    positioned: true,
                    recoverable: true,
                    ..Default::default()
                }),
                ..base(2)
            },
        ),
        (
            "unsubscribe",
            Command {
                unsubscribe: Some(UnsubscribeRequest { channel: "news".into() }),
                ..base(3)
            },
        ),
        (
            "publish",
            Command {
                publish: Some(PublishRequest {
                    channel: "news".into(),
                    data: Bytes::from_static(b"\x00\x01binary"),
                }),
                ..base(4)
            },
        ),
        (
            "presence",
            Command {
                presence: Some(PresenceRequest { channel: "news".into() }),
                ..base(5)
            },
        ),
        (
            "presence_stats",
            Command {
                presence_stats: Some(PresenceStatsRequest { channel: "news".into() }),
                ..base(6)
            },
        ),
        (
            "history",
            Command {
                history: Some(HistoryRequest {
                    channel: "news".into(),
                    limit: -1,
                    since: Some(StreamPosition {
                        offset: 5,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                }),
                ..base(7)
            },
        ),
        (
            "send",
            Command {
                send: Some(SendRequest {
                    data: Bytes::from_static(b"{}"),
                }),
                ..base(0)
            },
        ),
        (
            "rpc",
            Command {
                rpc: Some(RpcRequest {
                    data: Bytes::from_static(b"[1]"),
                    method: "m".into(),
                }),
                ..base(8)
            },
        ),
        (
            "refresh",
            Command {
                refresh: Some(RefreshRequest { token: "t".into() }),
                ..base(9)
            },
        ),
        (
            "sub_refresh",
            Command {
                sub_refresh: Some(SubRefreshRequest {
                    channel: "$private".into(),
                    token: "t".into(),
                }),
                ..base(10)
            },
        ),
    ]
}

fn protocol_protobuf(dir: &Path) {
    let mut all = Vec::new();
    for (name, command) in commands() {
        let frame = command.encode_length_delimited_to_vec();
        all.extend_from_slice(&frame);
        write(dir, name, frame);
    }
    write(dir, "several", all);
}

/// A client frame: final or not, masked with a fixed key as RFC 6455 requires of clients.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=65535 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

fn websocket_frames(dir: &Path) {
    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
    // Byte 0 picks the size limit: 255 is the largest (8 KiB), 2 is 80 bytes.
    let seed = |name: &str, limit: u8, frames: &[Vec<u8>]| {
        let mut bytes = vec![limit];
        frames.iter().for_each(|f| bytes.extend_from_slice(f));
        write(dir, name, bytes);
    };
    let connect = JSON_COMMANDS[1].1.as_bytes();
    let protobuf = Command::connect(1, "t").encode_length_delimited_to_vec();
    seed("text", 255, &[client_frame(true, 1, connect, KEY)]);
    seed("binary", 255, &[client_frame(true, 2, &protobuf, KEY)]);
    seed(
        "ping-pong-close",
        255,
        &[
            client_frame(true, 9, b"hello", KEY),
            client_frame(true, 10, b"", KEY),
            client_frame(true, 8, b"\x03\xe8bye", KEY),
        ],
    );
    seed(
        "fragmented",
        255,
        &[
            client_frame(false, 1, b"{\"id\":1,", KEY),
            client_frame(true, 9, b"", KEY),
            client_frame(true, 0, b"\"connect\":{}}", KEY),
        ],
    );
    seed("over-limit", 2, &[client_frame(true, 1, &[b' '; 200], KEY)]);
    seed("long-length", 255, &[client_frame(true, 2, &[7; 300], KEY)]);
    seed("unmasked", 255, &[client_frame(true, 1, b"{}", None)]);
    seed(
        "rsv-bits",
        255,
        &[{
            let mut frame = client_frame(true, 1, b"{}", KEY);
            frame[0] |= 0x70;
            frame
        }],
    );
    seed("bad-utf8", 255, &[client_frame(true, 1, b"\xff\xfe", KEY)]);
    seed("pings", 255, &vec![client_frame(true, 9, &[b'p'; 125], KEY); 40]);
    seed("close-no-code", 255, &[client_frame(true, 8, b"", KEY)]);
}

fn api_bodies(dir: &Path) {
    let bodies = [
        (
            "publish",
            json!({"channel": "news", "data": {"text": "hi"}, "tags": {"k": "v"}, "idempotency_key": "k1"}),
        ),
        (
            "publish-b64",
            json!({"channel": "news", "b64data": "AAEC", "skip_history": true}),
        ),
        ("broadcast", json!({"channels": ["a", "b"], "data": [1, 2]})),
        ("subscribe", json!({"user": "42", "channel": "news", "client": "c"})),
        ("unsubscribe", json!({"user": "42", "channel": "news"})),
        (
            "disconnect",
            json!({"user": "42", "whitelist": ["c"], "disconnect": {"code": 4000, "reason": "bye"}}),
        ),
        (
            "refresh",
            json!({"user": "42", "expired": false, "expire_at": 1_900_000_000}),
        ),
        ("presence", json!({"channel": "news"})),
        ("presence_stats", json!({"channel": "news"})),
        (
            "history",
            json!({"channel": "news", "limit": 10, "since": {"offset": 3, "epoch": "e"}, "reverse": true}),
        ),
        ("history_remove", json!({"channel": "news"})),
        ("channels", json!({"pattern": "chat:*"})),
        ("info", json!({})),
        (
            "batch",
            json!({"commands": [
                {"publish": {"channel": "a", "data": 1}},
                {"publish": {"channel": "", "data": 1}},
                {"info": {}},
                {"history": {"channel": "a", "limit": 1}},
                {"nope": {}},
            ]}),
        ),
    ];
    for (name, body) in bodies {
        let method = name.split('-').next().unwrap();
        write(dir, name, format!("{method}\n{body}"));
    }
    write(dir, "blank-body", "info\n \n");
    write(dir, "not-an-object", "publish\n[1]");
}

fn token(dir: &Path) {
    let claims = [
        (
            "connect",
            json!({"sub": "42", "exp": 4_000_000_000i64, "info": {"name": "Ann"}, "channels": ["news"]}),
        ),
        (
            "subscribe",
            json!({"sub": "42", "channel": "$billing#42", "client": "c", "expire_at": 4_000_000_000i64}),
        ),
        ("b64info", json!({"sub": "", "b64info": "AAE=", "nbf": 1})),
        ("expire-never", json!({"sub": "1", "expire_at": 0, "exp": 1})),
    ];
    for (name, claims) in claims {
        // Mode 0: a whole token minted by Herald's own minting function.
        let mut token = vec![0];
        token.extend_from_slice(herald::auth::token::mint_hs256(TOKEN_SECRET, &claims).as_bytes());
        write(dir, &format!("token-{name}"), token);
        // Mode 1: the claims JSON, signed by the target.
        let mut raw = vec![1];
        raw.extend_from_slice(claims.to_string().as_bytes());
        write(dir, &format!("claims-{name}"), raw);
    }
    write(dir, "none-alg", b"\x00eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.");
}

fn config(dir: &Path) {
    write(dir, "embedded", herald::config::DEFAULT_CONFIG);
    write(dir, "namespaces", concat!(
        "[client]\nping_interval = \"10s\"\npong_timeout = \"0s\"\nallowed_origins = [\"https://*.example.com\"]\n",
        "[channels.default]\npresence = true\nhistory_size = 10\nhistory_ttl = \"1m\"\nhistory_meta_ttl = \"1h\"\n",
        "[channels.namespaces.chat]\njoin_leave = true\nforce_recovery = true\nhistory_size = 5\nhistory_ttl = \"30s\"\n",
    ));
    write(dir, "env", "[api]\nkey = \"k\"\n\0CLIENT_PING_INTERVAL=10s\nCHANNELS_NAMESPACES_CHAT_HISTORY_SIZE=10\nCLIENT_INSECUR=true\nAPI_KEY=123");
    write(
        dir,
        "invalid",
        "[client]\nmax_message_size = 0\nmax_queue_bytes = -1\nunknown = 1\n",
    );
}

fn store_keys(dir: &Path) {
    let seed = |name: &str, first: &str, offset: u64, second: &str| {
        let mut bytes = vec![first.len() as u8];
        bytes.extend_from_slice(first.as_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(second.as_bytes());
        write(dir, name, bytes);
    };
    seed("extends", "a", 1, "ab");
    seed("namespaced", "chat:room#42,43", u64::MAX, "$private");
    seed("unicode", "новости", 256, "");
    seed("longest", &"x".repeat(255), 7, &"x".repeat(254));
    write(dir, "meta-key", keys::meta("news"));
    write(dir, "publication-key", keys::publication("news", 42));
    write(dir, "idempotency-key", keys::idempotency("news", "k1"));
}
