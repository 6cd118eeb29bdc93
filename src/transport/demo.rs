//! The demo page (`GET /demo`), for development only: a page on the npm `centrifuge` browser
//! bundle that shows live publications, presence, the connection state and a recovery after a
//! dropped connection, over WebSocket or, where that is blocked, HTTP-streaming and SSE.
//!
//! `[demo] enabled` turns it on (the embedded development config does; the default is off).
//! The page is in the binary (`demo/index.html`); the bundle is read from
//! `demo.centrifuge_js`, which npm installs (nothing of it is in the repository).
//! `GET /demo/token?user=U` hands out a connection token for any user, signed with
//! `client.token_hmac_secret`: that is why the demo must never be on in production.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::session::SessionContext;

const PAGE: &str = include_str!("../../demo/index.html");

/// How long a demo token is valid.
const TOKEN_TTL_SECONDS: i64 = 3600;

fn disabled() -> Response {
    (StatusCode::NOT_FOUND, "the demo is off ([demo] enabled = false)").into_response()
}

pub async fn page(State(ctx): State<Arc<SessionContext>>) -> Response {
    if !ctx.config.demo.enabled {
        return disabled();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn bundle(State(ctx): State<Arc<SessionContext>>) -> Response {
    if !ctx.config.demo.enabled {
        return disabled();
    }
    let path = &ctx.config.demo.centrifuge_js;
    match tokio::fs::read(path).await {
        Ok(script) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            script,
        )
            .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!(
                "the centrifuge browser bundle is not at {} (demo.centrifuge_js): {e}; install it with `npm install centrifuge`",
                path.display()
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    user: String,
}

pub async fn token(State(ctx): State<Arc<SessionContext>>, Query(query): Query<TokenQuery>) -> Response {
    if !ctx.config.demo.enabled {
        return disabled();
    }
    let Some(secret) = &ctx.config.client.token_hmac_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the demo needs client.token_hmac_secret to sign its tokens",
        )
            .into_response();
    };
    if query.user.is_empty() || query.user.len() > 64 {
        return (StatusCode::BAD_REQUEST, "user: 1 to 64 bytes").into_response();
    }
    let now = crate::store::now_ms() / 1000;
    let claims = serde_json::json!({"sub": query.user, "iat": now, "exp": now + TOKEN_TTL_SECONDS});
    let token = crate::auth::token::mint_hs256(secret, &claims);
    axum::Json(serde_json::json!({ "token": token })).into_response()
}
