//! JWT verification for connection and subscription tokens (HS256/384/512 with the configured
//! secret, RS256/384/512 and ES256/384 with PEM public keys).

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ClientConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` has passed or `nbf` is in the future: the client should fetch a new token (109).
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: &'static str,
    pub message: String,
}

/// Verifies tokens with the keys of the client config.
#[derive(Clone, Default)]
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
}

/// Claims of a connection token.
#[derive(Debug, Clone, Default)]
pub struct ConnectClaims {
    pub user: String,
    /// Unix seconds after which the connection must refresh, if any.
    pub expires_at: Option<i64>,
    /// Shown in presence, join/leave and client publications.
    pub info: Bytes,
    /// Server-side subscriptions.
    pub channels: Vec<String>,
}

/// Claims of a subscription token.
#[derive(Debug, Clone, Default)]
pub struct SubscribeClaims {
    pub user: String,
    pub channel: String,
    /// If set, the token is bound to this client id.
    pub client: Option<String>,
    pub expires_at: Option<i64>,
    pub info: Bytes,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawClaims {
    sub: String,
    exp: Option<i64>,
    expire_at: Option<i64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    channels: Vec<String>,
    channel: Option<String>,
    client: Option<String>,
}

impl Verifier {
    /// Loads the keys named by the config. A key file that cannot be read or parsed is an error
    /// naming its config key.
    pub fn from_config(config: &ClientConfig) -> Result<Self, KeyError> {
        let load = |key: &'static str,
                    path: &Option<std::path::PathBuf>,
                    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>|
         -> Result<Option<DecodingKey>, KeyError> {
            let Some(path) = path else { return Ok(None) };
            let pem = read(path).map_err(|message| KeyError { key, message })?;
            parse(&pem).map(Some).map_err(|e| KeyError {
                key,
                message: format!("{}: {e}", path.display()),
            })
        };
        Ok(Self {
            hmac: config
                .token_hmac_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            rsa: load(
                "client.token_rsa_public_key",
                &config.token_rsa_public_key,
                DecodingKey::from_rsa_pem,
            )?,
            ecdsa: load(
                "client.token_ecdsa_public_key",
                &config.token_ecdsa_public_key,
                DecodingKey::from_ec_pem,
            )?,
        })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some() || self.ecdsa.is_some()
    }

    fn decode(&self, token: &str) -> Result<RawClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
            other => return Err(TokenError::Invalid(format!("unsupported algorithm {other:?}"))),
        }
        .ok_or_else(|| TokenError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        match jsonwebtoken::decode::<RawClaims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature
                | jsonwebtoken::errors::ErrorKind::ImmatureSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let raw = self.decode(token)?;
        if raw.channel.is_some() {
            return Err(TokenError::Invalid(
                "a connection token must not carry a channel claim".into(),
            ));
        }
        Ok(ConnectClaims {
            info: info_of(&raw)?,
            expires_at: expiry_of(&raw),
            user: raw.sub,
            channels: raw.channels,
        })
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        let raw = self.decode(token)?;
        let Some(channel) = raw.channel.clone() else {
            return Err(TokenError::Invalid("a subscription token needs a channel claim".into()));
        };
        Ok(SubscribeClaims {
            info: info_of(&raw)?,
            expires_at: expiry_of(&raw),
            user: raw.sub,
            channel,
            client: raw.client,
        })
    }
}

fn expiry_of(raw: &RawClaims) -> Option<i64> {
    // `expire_at` (when set) decides the connection's lifetime apart from the token's own `exp`;
    // 0 means never.
    match raw.expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => raw.exp,
    }
}

fn info_of(raw: &RawClaims) -> Result<Bytes, TokenError> {
    if let Some(info) = &raw.info {
        return Ok(Bytes::from(info.get().to_owned()));
    }
    if let Some(b64) = &raw.b64info {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| TokenError::Invalid(format!("b64info: {e}")));
    }
    Ok(Bytes::new())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Mints an HS256 token: what `herald token` prints, and what tests use.
pub fn mint_hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with a byte secret cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(secret: &str) -> Verifier {
        Verifier::from_config(&ClientConfig {
            token_hmac_secret: Some(secret.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        crate::store::now_ms() / 1000
    }

    #[test]
    fn hs256_connection_token() {
        let token = mint_hs256(
            "s",
            &json!({"sub": "42", "info": {"name": "Ann"}, "channels": ["news"]}),
        );
        let claims = verifier("s").verify_connect(&token).unwrap();
        assert_eq!(claims.user, "42");
        assert_eq!(&claims.info[..], br#"{"name":"Ann"}"#);
        assert_eq!(claims.channels, vec!["news"]);
        assert_eq!(claims.expires_at, None);
    }

    #[test]
    fn only_iat_is_anonymous() {
        let token = mint_hs256("s", &json!({"iat": now()}));
        assert_eq!(verifier("s").verify_connect(&token).unwrap().user, "");
    }

    #[test]
    fn expired_and_invalid() {
        let expired = mint_hs256("s", &json!({"sub": "1", "exp": now() - 10}));
        assert_eq!(verifier("s").verify_connect(&expired).unwrap_err(), TokenError::Expired);
        let future = mint_hs256("s", &json!({"sub": "1", "nbf": now() + 100}));
        assert_eq!(verifier("s").verify_connect(&future).unwrap_err(), TokenError::Expired);
        let other = mint_hs256("other", &json!({"sub": "1"}));
        assert!(matches!(
            verifier("s").verify_connect(&other),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier("s").verify_connect("not a jwt"),
            Err(TokenError::Invalid(_))
        ));
        let with_channel = mint_hs256("s", &json!({"sub": "1", "channel": "x"}));
        assert!(matches!(
            verifier("s").verify_connect(&with_channel),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn future_exp_is_reported() {
        let at = now() + 100;
        let token = mint_hs256("s", &json!({"sub": "1", "exp": at}));
        assert_eq!(verifier("s").verify_connect(&token).unwrap().expires_at, Some(at));
    }

    #[test]
    fn subscription_token_needs_channel() {
        let v = verifier("s");
        let ok = mint_hs256("s", &json!({"sub": "1", "channel": "$x"}));
        assert_eq!(v.verify_subscribe(&ok).unwrap().channel, "$x");
        let none = mint_hs256("s", &json!({"sub": "1"}));
        assert!(v.verify_subscribe(&none).is_err());
    }
}
