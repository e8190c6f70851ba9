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
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::reply::api_error;
use super::State;
use crate::config::ClientToken;

/// The client behind a request, as the label of the token that authenticated it (a digest:
/// the token itself is never stored or shown). The runtime scopes idempotency keys,
/// conversation pins and queued jobs to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tenant(pub(crate) String);

/// The tenant label of a token: 128 bits of its SHA-256, in hex.
pub(crate) fn tenant_label(token: &ClientToken) -> String {
    let d = seawall_actors::digest::digest_of(&[b"seawall-tenant", token.expose().as_bytes()]);
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

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

/// How a request's credentials compare with the tokens.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Token number `n` matched.
    Token(usize),
    /// No credential was presented.
    Missing,
    /// A credential was presented and matched no token.
    Wrong,
    /// Two different credentials were presented (`x-api-key` and `Bearer`): which one is meant
    /// cannot be known, so neither is used.
    Conflicting,
}

/// Compare what the client presented with every token, in constant time per comparison (every
/// token is compared whatever the outcome of the others).
pub(crate) fn authenticate(tokens: &[ClientToken], headers: &HeaderMap) -> Auth {
    let presented = presented(headers);
    match presented.as_slice() {
        [] => return Auth::Missing,
        [a, b] if a != b => return Auth::Conflicting,
        _ => {}
    }
    let candidate = presented[0];
    let mut found = Choice::from(0);
    let mut index = 0u32;
    for (i, token) in tokens.iter().enumerate() {
        let eq = candidate.ct_eq(token.expose().as_bytes());
        found |= eq;
        index.conditional_assign(&(i as u32), eq);
    }
    if bool::from(found) {
        Auth::Token(index as usize)
    } else {
        Auth::Wrong
    }
}

/// Middleware of the guarded routes: 401 `authentication_error` without a valid token; with
/// one, the request carries its [`Tenant`]. With no tokens configured (loopback only) everything
/// passes, as the one tenant of the machine.
pub(crate) async fn require_token(
    Extract(state): Extract<Arc<State>>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.tokens.is_empty() {
        return next.run(request).await;
    }
    let message = match authenticate(&state.tokens, request.headers()) {
        Auth::Token(i) => {
            if let Some(label) = state.tenants.get(i) {
                request.extensions_mut().insert(Tenant(label.clone()));
            }
            return next.run(request).await;
        }
        Auth::Missing => {
            "x-api-key header is required (or Authorization: Bearer): use a client token of this gateway"
        }
        Auth::Wrong => "invalid x-api-key: use a client token of this gateway",
        Auth::Conflicting => {
            "x-api-key and Authorization: Bearer carry different credentials: send one token, once"
        }
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
        let auth = |pairs: &[(&'static str, &str)]| authenticate(&t, &headers(pairs));
        assert_eq!(
            auth(&[("x-api-key", "tok-aaaaaaaaaaaaaaaa")]),
            Auth::Token(0)
        );
        assert_eq!(
            auth(&[("authorization", "Bearer tok-bbbbbbbbbbbbbbbb")]),
            Auth::Token(1)
        );
        assert_eq!(
            auth(&[("authorization", "bearer tok-bbbbbbbbbbbbbbbb")]),
            Auth::Token(1)
        );
        assert_eq!(auth(&[]), Auth::Missing);
        assert_eq!(auth(&[("x-api-key", "tok-aaaaaaaaaaaaaaa")]), Auth::Wrong);
        assert_eq!(
            auth(&[("authorization", "Basic tok-aaaaaaaaaaaaaaaa")]),
            Auth::Missing
        );
        // The same token twice is one credential; two different ones are refused, even when
        // one of them is right.
        assert_eq!(
            auth(&[
                ("x-api-key", "tok-aaaaaaaaaaaaaaaa"),
                ("authorization", "Bearer tok-aaaaaaaaaaaaaaaa")
            ]),
            Auth::Token(0)
        );
        assert_eq!(
            auth(&[
                ("x-api-key", "wrong-wrong-wrong-wrong"),
                ("authorization", "Bearer tok-aaaaaaaaaaaaaaaa")
            ]),
            Auth::Conflicting
        );
    }

    #[test]
    fn tenant_labels_are_stable_distinct_and_never_the_token() {
        let t = tokens();
        let a = tenant_label(&t[0]);
        assert_eq!(a, tenant_label(&t[0]));
        assert_ne!(a, tenant_label(&t[1]));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("tok-"));
    }
}
