//! The gateway's outer guards, applied before any route: a body announced larger than the limit
//! is refused at once, a gateway without tokens serves only loopback clients that are not web
//! pages, and a panicking handler answers 500 in the API's shape.

use std::any::Any;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, HOST, ORIGIN};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::reply::{api_error, RequestIds};
use super::State;

/// A request whose `Content-Length` exceeds the body limit is answered 413 before a byte of its
/// body is read, and its connection is closed (the unread body is never drained).
pub(crate) async fn body_size(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.max_body_bytes as u64) {
        let mut response = api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!(
                "the request body exceeds this gateway's limit of {} bytes",
                state.max_body_bytes
            ),
            &state.ids.next(),
        );
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// True for a `Host` header naming the loopback interface (`localhost`, `127.x.y.z`, `[::1]`,
/// with or without a port).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inner, _)) => inner,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Without client tokens the gateway trusts whoever can reach it, which must then be a program
/// on this machine, never a web page:
/// - the `Host` must name loopback, so a DNS-rebinding page (whose requests carry its own host
///   name) cannot read answers or `/status`;
/// - a request with an `Origin` (browsers send one on cross-site POSTs, including "simple"
///   `text/plain` ones that skip CORS preflight) is refused unless that origin is listed in
///   `[gateway] allowed_origins`.
pub(crate) async fn loopback_clients(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    if !state.tokens.is_empty() {
        return next.run(request).await;
    }
    let headers = request.headers();
    if let Some(host) = headers.get(HOST) {
        let ok = host.to_str().is_ok_and(is_loopback_host);
        if !ok {
            return api_error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "this gateway has no client tokens and serves only loopback hosts: call it as \
                 localhost or 127.0.0.1, or configure [gateway] tokens",
                &state.ids.next(),
            );
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return api_error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "browser requests are refused by a gateway without client tokens: list the \
                 page's origin in [gateway] allowed_origins, or configure [gateway] tokens",
                &state.ids.next(),
            );
        }
    }
    next.run(request).await
}

/// What a panicking handler answers: a 500 in the API's shape. The panic's own message stays
/// in the log (it may name internals), never in the answer.
#[derive(Clone)]
pub(crate) struct PanicAnswer {
    pub(crate) ids: Arc<RequestIds>,
}

impl tower_http::catch_panic::ResponseForPanic for PanicAnswer {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, panic: Box<dyn Any + Send + 'static>) -> Response {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let id = self.ids.next();
        tracing::error!(request_id = %id, panic = %message, "a gateway handler panicked");
        api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal error in the gateway: the request was not completed (see the gateway's \
             log for this request id)",
            &id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_apis_shape() {
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    tokio::task::yield_now().await;
                    panic!("secret internals: sk-ant-api03-XXXX");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                PanicAnswer {
                    ids: Arc::new(RequestIds::new()),
                },
            ));
        let request = axum::http::Request::get("/boom")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key("request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert!(
            !v.to_string().contains("secret"),
            "the panic stays in the log: {v}"
        );
    }

    #[test]
    fn loopback_hosts_are_recognised_and_others_are_not() {
        for ok in [
            "localhost",
            "localhost:8700",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8700",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8700",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8700",
            "localhost.evil.example",
            "10.0.0.1:8700",
            "[::2]:1",
            "[::1",
            "0.0.0.0:8700",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
