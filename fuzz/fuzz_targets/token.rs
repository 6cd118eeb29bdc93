//! Connection and subscription tokens: arbitrary token text, and tokens signed with the right
//! key whose claims JSON is fuzzed, so the claims themselves are read; then what a session
//! derives from the expiry claim.
//!
//! Input: byte 0 even: the rest is a token. Odd: the rest is the claims JSON of an HS256 token
//! (signed with the configured secret, and once with another secret, which must be refused).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::auth::token::Verifier;
use herald::config::ClientConfig;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::from_config(&ClientConfig {
            token_hmac_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .expect("an HMAC secret needs no file")
    })
}

/// An HS256 token with exactly these claims bytes (no re-serialisation, so duplicate keys,
/// odd numbers and escapes reach the verifier as written).
fn signed(claims: &[u8], secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(secret.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HMAC signs");
    format!("{message}.{signature}")
}

fn verify(token: &str) {
    let verifier = verifier();
    let grace = Duration::from_secs(25);
    if let Ok(claims) = verifier.verify_connect(token) {
        if let Some(at) = claims.expires_at {
            herald::fuzzing::session_expiry(at, grace);
        }
    }
    if let Ok(claims) = verifier.verify_subscribe(token) {
        if let Some(at) = claims.expires_at {
            herald::fuzzing::session_expiry(at, grace);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        verify(&String::from_utf8_lossy(rest));
        return;
    }
    verify(&signed(rest, SECRET));
    let forged = signed(rest, "another-secret");
    assert!(
        verifier().verify_connect(&forged).is_err(),
        "a token signed with another key was accepted"
    );
    assert!(
        verifier().verify_subscribe(&forged).is_err(),
        "a token signed with another key was accepted"
    );
});
