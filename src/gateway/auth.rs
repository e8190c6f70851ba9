//! Client auth: one of the configured tokens as `x-api-key` or `Authorization: Bearer`.
//!
//! Tokens are compared in constant time (`subtle`), every configured token is compared whatever
//! the outcome of the others, and the presented value is never logged or echoed. A token's
//! length is not hidden: that reveals nothing usable about a random token of 16+ characters.

use std::sync::Arc;

use axum::extract::{Request, State as Extract};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::{Choice, ConstantTimeEq};

use super::reply::api_error;
use super::State;
use crate::config::ClientToken;

/// What the client presented: the `x-api-key` value and the `Authorization: Bearer` token.
fn presented(headers: &HeaderMap) -> Vec<&[u8]> {
    let mut out = Vec::new();
    if let Some(v) = headers.get("x-api-key") {
        out.push(v.as_bytes());
    }
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            out.push(v[7..].trim_ascii());
        }
    }
    out
}

/// True when some presented credential equals some token; constant time per comparison.
pub(crate) fn authorized(tokens: &[ClientToken], headers: &HeaderMap) -> bool {
    let mut ok = Choice::from(0);
    for candidate in presented(headers) {
        for token in tokens {
            ok |= candidate.ct_eq(token.expose().as_bytes());
        }
    }
    bool::from(ok)
}

/// Middleware of the guarded routes: 401 `authentication_error` without a valid token. With no
/// tokens configured (loopback only) everything passes.
pub(crate) async fn require_token(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    if state.tokens.is_empty() || authorized(&state.tokens, request.headers()) {
        return next.run(request).await;
    }
    let message = if presented(request.headers()).is_empty() {
        "x-api-key header is required (or Authorization: Bearer): use a client token of this gateway"
    } else {
        "invalid x-api-key: use a client token of this gateway"
    };
    api_error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        message,
        &state.ids.next(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tokens() -> Vec<ClientToken> {
        vec![
            ClientToken::new("tok-aaaaaaaaaaaaaaaa"),
            ClientToken::new("tok-bbbbbbbbbbbbbbbb"),
        ]
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_styles_and_any_token() {
        let t = tokens();
        assert!(authorized(
            &t,
            &headers(&[("x-api-key", "tok-aaaaaaaaaaaaaaaa")])
        ));
        assert!(authorized(
            &t,
            &headers(&[("authorization", "Bearer tok-bbbbbbbbbbbbbbbb")])
        ));
        assert!(authorized(
            &t,
            &headers(&[("authorization", "bearer tok-bbbbbbbbbbbbbbbb")])
        ));
        assert!(!authorized(&t, &headers(&[])));
        assert!(!authorized(
            &t,
            &headers(&[("x-api-key", "tok-aaaaaaaaaaaaaaa")])
        ));
        assert!(!authorized(
            &t,
            &headers(&[("authorization", "Basic tok-aaaaaaaaaaaaaaaa")])
        ));
    }
}
