//! The OpenAI face: `POST /v1/chat/completions` and `GET /v1/models`, for agents written
//! against the OpenAI SDK.
//!
//! A chat request becomes the runtime's Messages call ([`from_chat::request`]), with the same
//! request headers read as on `/v1/messages` (tenant, `idempotency-key`, lanes, features,
//! conversations, the client's timeout), and walks the same chain: breakers, governor,
//! hedging, degradation, idempotency. Its answer goes back as a `chat.completion`
//! ([`to_chat::completion`]) or as `chat.completion.chunk` events ending `data: [DONE]`
//! ([`to_chat::Chunks`]), with seawall's response headers. No second call path: only the
//! shapes at the edge differ.
//!
//! Errors come back in OpenAI's shape, `{"error":{"message","type","param","code"}}`, with the
//! statuses of the Messages face (so the official SDK raises `BadRequestError`,
//! `AuthenticationError`, `NotFoundError`, `RateLimitError`, `InternalServerError`, ...):
//! [`openai_errors`] rewrites every error answer on these routes at one place, whichever layer
//! made it (auth, body limits, the runtime).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State as Extract};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use seawall_actors::upstream::SseEvent;
use seawall_actors::Call;
use serde_json::{json, Value};

use super::auth::Tenant;
use super::messages::{apply_headers, read_body};
use super::reply::{self, Framer, REQUEST_ID};
use super::State;
use crate::translate::{from_chat, to_chat, DROPPED_HEADER};

/// The largest error body rewritten into OpenAI's shape; a larger one (no error the gateway
/// or an upstream makes is near it) is answered as a plain 502.
const MAX_ERROR_BODY: usize = 1 << 20;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    Extract(state): Extract<Arc<State>>,
    tenant: Option<Extension<Tenant>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&state, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let request = match from_chat::request(&body, state.default_max_tokens) {
        Ok(r) => r,
        Err(bad) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &bad.message,
                "invalid_request_error",
                Some(&bad.param),
                None,
                &state.ids.next(),
            )
        }
    };
    drop(body);
    let from_chat::Request {
        body: messages,
        model,
        stream,
        include_usage,
        dropped,
    } = request;
    let mut call = match Call::from_value(messages) {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    let tenant = tenant.map(|Extension(t)| t);
    if let Err(e) = apply_headers(&mut call, &headers, tenant.as_ref()) {
        return reply::error(&e, &state.ids);
    }
    drop(headers);
    let mut response = if stream {
        match state.seawall.stream(call).await {
            Ok(s) => {
                let framer = ChatFrames(to_chat::Chunks::new(&model, now_secs(), include_usage));
                reply::stream_with(s, framer, &state.ids)
            }
            Err(e) => reply::error(&e, &state.ids),
        }
    } else {
        match state.seawall.complete(call).await {
            Ok(answer) => match to_chat::completion(&answer.body, &model, now_secs()) {
                Ok(chat) => reply::success_with(&answer, Bytes::from(chat), &state.ids),
                Err(_) => openai_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("{} answered something that is not a message", answer.model),
                    "server_error",
                    None,
                    None,
                    &state.ids.next(),
                ),
            },
            Err(e) => reply::error(&e, &state.ids),
        }
    };
    if !dropped.is_empty() {
        // The face's drops first, then any the upstream hop made.
        let mut all = dropped.header();
        if let Some(more) = response
            .headers()
            .get(DROPPED_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            all = format!("{all},{more}");
        }
        if let Ok(v) = HeaderValue::from_str(&all) {
            response.headers_mut().insert(DROPPED_HEADER, v);
        }
    }
    response
}

/// Chat completion chunks on the wire: `data: {chunk}` frames, then `data: [DONE]`.
struct ChatFrames(to_chat::Chunks);

fn data_frame(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

impl Framer for ChatFrames {
    fn frame(&mut self, event: &SseEvent) -> Vec<Bytes> {
        self.0.push(event).iter().map(|c| data_frame(c)).collect()
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = self.0.finish().iter().map(|c| data_frame(c)).collect();
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

/// Whether a request is for the Anthropic SDK (which always sends `anthropic-version`) rather
/// than an OpenAI client: both SDKs list models at `GET /v1/models`.
fn is_anthropic_client(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

/// `GET /v1/models`: the models this gateway serves (each a chain), in the asking SDK's shape.
pub(crate) async fn models(Extract(state): Extract<Arc<State>>, headers: HeaderMap) -> Response {
    let entries: Vec<Value> = state
        .order
        .iter()
        .map(|name| model_entry(&state, name, is_anthropic_client(&headers)))
        .collect();
    let body = if is_anthropic_client(&headers) {
        let first = entries.first().and_then(|e| e.get("id")).cloned();
        let last = entries.last().and_then(|e| e.get("id")).cloned();
        json!({"data": entries, "has_more": false, "first_id": first, "last_id": last})
    } else {
        json!({"object": "list", "data": entries})
    };
    json_answer(&body)
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(
    Extract(state): Extract<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.models.contains_key(&id) {
        let message = format!("model: {id} is not served by this gateway");
        return reply::api_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &message,
            &state.ids.next(),
        );
    }
    json_answer(&model_entry(&state, &id, is_anthropic_client(&headers)))
}

fn model_entry(state: &State, name: &str, anthropic: bool) -> Value {
    let chain = state
        .models
        .get(name)
        .map(|m| m.chain.clone())
        .unwrap_or_default();
    if anthropic {
        json!({"type": "model", "id": name, "display_name": name,
               "created_at": "1970-01-01T00:00:00Z", "seawall_chain": chain})
    } else {
        json!({"id": name, "object": "model", "created": 0, "owned_by": "seawall",
               "seawall_chain": chain})
    }
}

fn json_answer(body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error in OpenAI's shape, with `request-id` in the header.
pub(crate) fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    request_id: &str,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    let mut response = json_answer(&body);
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// OpenAI's error `type` for an Anthropic one (the SDK picks its error class from the status;
/// the type is for people and logs). The Anthropic type goes in `code`.
fn openai_type(anthropic: &str) -> &'static str {
    match anthropic {
        "invalid_request_error" | "request_too_large" | "not_found_error" => {
            "invalid_request_error"
        }
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        "timeout_error" | "gateway_timeout_error" => "timeout_error",
        _ => "server_error",
    }
}

/// Whether a path is on the OpenAI face.
fn on_openai_face(path: &str, headers: &HeaderMap) -> bool {
    path == "/v1/chat/completions"
        || ((path == "/v1/models" || path.starts_with("/v1/models/"))
            && !is_anthropic_client(headers))
}

/// Outermost layer: on the OpenAI face, every error answer (any layer's, the runtime's, an
/// upstream's passed-through body) is rewritten into OpenAI's shape with the same status and
/// headers. Bodies already in OpenAI's shape and all successes pass untouched.
pub(crate) async fn openai_errors(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let face = on_openai_face(request.uri().path(), request.headers());
    let response = next.run(request).await;
    if !face || response.status().is_success() || response.status().is_informational() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return openai_error(
            StatusCode::BAD_GATEWAY,
            "the error answer was too large to pass on",
            "server_error",
            None,
            None,
            &state.ids.next(),
        );
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let rewritten = match &parsed {
        // Already OpenAI's shape (this face's own 400s).
        Some(v) if v.get("error").is_some_and(|e| e.get("param").is_some()) => None,
        Some(v) => {
            let kind = v.pointer("/error/type").and_then(Value::as_str);
            let message = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((kind.map(str::to_owned), message))
        }
        None => Some((None, Some(String::from_utf8_lossy(&bytes).into_owned()))),
    };
    let body = match rewritten {
        None => bytes,
        Some((kind, message)) => {
            let status = parts.status;
            let message = message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            let code = kind.clone().unwrap_or_else(|| "api_error".to_owned());
            let body = json!({"error": {
                "message": message,
                "type": openai_type(&code),
                "param": null,
                "code": code,
            }});
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Bytes::from(body.to_string())
        }
    };
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_face_is_told_by_path_and_models_by_the_sdk() {
        let none = HeaderMap::new();
        let mut anthropic = HeaderMap::new();
        anthropic.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert!(on_openai_face("/v1/chat/completions", &none));
        assert!(on_openai_face("/v1/chat/completions", &anthropic));
        assert!(on_openai_face("/v1/models", &none));
        assert!(on_openai_face("/v1/models/sonnet", &none));
        assert!(!on_openai_face("/v1/models", &anthropic));
        assert!(!on_openai_face("/v1/messages", &none));
    }

    #[test]
    fn error_types_map_to_openais_and_keep_the_original_as_code() {
        assert_eq!(
            openai_type("invalid_request_error"),
            "invalid_request_error"
        );
        assert_eq!(openai_type("not_found_error"), "invalid_request_error");
        assert_eq!(openai_type("authentication_error"), "authentication_error");
        assert_eq!(openai_type("rate_limit_error"), "rate_limit_error");
        assert_eq!(openai_type("overloaded_error"), "server_error");
        assert_eq!(openai_type("api_error"), "server_error");
        assert_eq!(openai_type("gateway_timeout_error"), "timeout_error");
    }
}
