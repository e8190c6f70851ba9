//! `POST /v1/messages` and `POST /v1/messages/count_tokens`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State as Extract;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use seawall_actors::upstream::Attempt;
use seawall_actors::{Call, Error, Lane};
use serde_json::{json, Value};

use super::reply::{self, api_error};
use super::State;

/// The header saying a token count is seawall's estimate, not the provider's.
const SEAWALL_ESTIMATE: HeaderName = HeaderName::from_static("seawall-estimate");
/// The longest deadline a client's `x-stainless-timeout` may set: a day.
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The API-shaped answer to a body that could not be read.
fn body_rejection(state: &State, rejection: &BytesRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!(
                "the request body exceeds this gateway's limit of {} bytes",
                state.max_body_bytes
            ),
            &state.ids.next(),
        )
    } else {
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("the request body could not be read: {rejection}"),
            &state.ids.next(),
        )
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The call's deadline from the client's own timeout (`x-stainless-timeout`, seconds), less a
/// margin (a tenth, at most 1 s) so the answer arrives before the client gives up.
pub(crate) fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = header(headers, "x-stainless-timeout")?.parse().ok()?;
    if !(secs.is_finite() && secs > 0.0) {
        return None;
    }
    let total = Duration::from_secs_f64(secs).min(MAX_CLIENT_TIMEOUT);
    let margin = (total / 10).min(Duration::from_secs(1));
    Some(total - margin)
}

/// Apply the request headers the gateway reads to `call`.
fn apply_headers(call: &mut Call, headers: &HeaderMap) -> Result<(), Error> {
    // For a stream the SDK's timeout bounds each read, not the whole answer: a stream keeps
    // its chain's deadline (and first-token timeout).
    if !call.wants_stream() {
        if let Some(timeout) = client_deadline(headers) {
            call.timeout = Some(timeout);
        }
    }
    if let Some(key) = header(headers, "idempotency-key").filter(|k| !k.is_empty()) {
        call.idempotency_key = Some(key.to_owned());
    }
    // The client's API version and betas reach the upstream unchanged (server-side
    // `fallbacks` and other betas keep working behind seawall).
    call.forward.version = header(headers, "anthropic-version")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    call.forward.beta = header(headers, "anthropic-beta")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    if let Some(feature) = header(headers, "seawall-feature").filter(|f| !f.is_empty()) {
        call.feature = Some(feature.to_owned());
    }
    if let Some(c) = header(headers, "seawall-conversation").filter(|c| !c.is_empty()) {
        call.conversation = Some(c.to_owned());
    }
    if let Some(lane) = header(headers, "seawall-lane") {
        call.lane = match lane {
            "interactive" => Lane::Interactive,
            "background" => Lane::Background,
            other => {
                return Err(Error::InvalidCall(format!(
                    "seawall-lane must be \"interactive\" or \"background\", got {other:?}"
                )))
            }
        };
    }
    Ok(())
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejection(&state, &rejection),
    };
    let mut call = match Call::from_json(&body) {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    if let Err(e) = apply_headers(&mut call, &headers) {
        return reply::error(&e, &state.ids);
    }
    let requested = call.model().to_owned();
    let deadline = state.models.get(&requested).map(|m| {
        (
            call.timeout.unwrap_or(m.policy.deadline),
            m.policy.min_attempt,
        )
    });
    let result = if call.wants_stream() {
        match state.seawall.stream(call).await {
            Ok(stream) => {
                tracing::info!(
                    model = %requested,
                    served_by = %stream.model,
                    attempts = stream.attempts,
                    request_id = stream.headers.get("request-id").unwrap_or("-"),
                    first_token_ms = millis(stream.time_to_first_token),
                    "gateway stream committed"
                );
                return reply::stream(stream, &state.ids);
            }
            Err(e) => Err(e),
        }
    } else {
        state.seawall.complete(call).await
    };
    let elapsed = started.elapsed();
    match result {
        Ok(answer) => {
            tracing::info!(
                model = %requested,
                served_by = %answer.model,
                status = answer.status,
                attempts = answer.attempts,
                request_id = answer.request_id().unwrap_or("-"),
                latency_ms = millis(elapsed),
                "gateway call answered"
            );
            reply::success(&answer, &state.ids)
        }
        Err(e) => {
            let response = reply::call_error(&e, &state.ids, spent(deadline, elapsed));
            tracing::info!(
                model = %requested,
                status = response.status().as_u16(),
                request_id = response
                    .headers()
                    .get(reply::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                latency_ms = millis(elapsed),
                error = %e,
                "gateway call failed"
            );
            response
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Did the call's deadline really run out (no attempt could start any more), or was the call
/// refused early because nothing recovers before it? `deadline`: the call's deadline and its
/// chain's minimum attempt, when the model is known.
fn spent(deadline: Option<(Duration, Duration)>, elapsed: Duration) -> bool {
    deadline
        .is_none_or(|(deadline, min_attempt)| elapsed + min_attempt.min(deadline / 2) >= deadline)
}

/// `POST /v1/messages/count_tokens`: the provider's count from the upstream of the model's
/// first hop; `Call::estimate_input_tokens` with `seawall-estimate: heuristic` when that
/// upstream has no counter or the count fails.
pub(crate) async fn count_tokens(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejection(&state, &rejection),
    };
    // count_tokens has no max_tokens: lend one so the call's own validation applies.
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut map)) => {
            map.entry("max_tokens").or_insert(json!(1));
            Value::Object(map)
        }
        Ok(_) => {
            return reply::error(
                &Error::InvalidCall("the request body must be a JSON object".into()),
                &state.ids,
            )
        }
        Err(e) => {
            return reply::error(
                &Error::InvalidCall(format!("the request body is not valid JSON: {e}")),
                &state.ids,
            )
        }
    };
    let call = match Call::from_value(value) {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    let model = call.model().to_owned();
    let Some(entry) = state.models.get(&model) else {
        return reply::error(&Error::UnknownModel(model), &state.ids);
    };
    let timeout = client_deadline(&headers)
        .unwrap_or(state.count_timeout)
        .min(state.count_timeout);
    let attempt = Attempt {
        model: model.clone(),
        body,
        key: pick_key(&state, &entry.upstream_name, entry.upstream.as_ref()).await,
        retry_count: 0,
        timeout,
        idempotency_key: None,
        forward: Default::default(),
    };
    let counted = match entry.upstream.count_tokens(attempt) {
        Some(count) => match count.await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(model = %model, error = %e, "count_tokens failed: answering the heuristic estimate");
                None
            }
        },
        None => None,
    };
    let (n, heuristic) = match counted {
        Some(n) => (n, false),
        None => (call.estimate_input_tokens(), true),
    };
    let mut response = Response::new(Body::from(json!({ "input_tokens": n }).to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if heuristic {
        response
            .headers_mut()
            .insert(SEAWALL_ESTIMATE, HeaderValue::from_static("heuristic"));
    }
    response
}

/// A key slot for a request that is not an attempt: round robin over the slots the governor
/// neither quarantined nor paused (any slot when all are).
async fn pick_key(
    state: &State,
    upstream_name: &str,
    upstream: &dyn seawall_actors::upstream::Upstream,
) -> usize {
    let slots = upstream.key_count().max(1);
    let start = state.next_key.fetch_add(1, Ordering::Relaxed) % slots;
    if slots == 1 {
        return 0;
    }
    let unusable: HashSet<String> = match state.seawall.governor_status().await {
        Ok(all) => all
            .into_iter()
            .filter(|u| u.upstream == upstream_name)
            .flat_map(|u| {
                u.quarantined_keys
                    .into_iter()
                    .chain(u.paused_keys.into_iter().map(|(label, _)| label))
            })
            .collect(),
        Err(_) => HashSet::new(),
    };
    (0..slots)
        .map(|i| (start + i) % slots)
        .find(|&slot| !unusable.contains(&upstream.key_label(slot)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn client_timeout_becomes_the_deadline_less_a_margin() {
        let d = |v| client_deadline(&with("x-stainless-timeout", v));
        assert_eq!(d("600"), Some(Duration::from_secs(599)));
        assert_eq!(d("600.0"), Some(Duration::from_secs(599)));
        assert_eq!(d("2"), Some(Duration::from_millis(1800)));
        assert_eq!(d("0"), None);
        assert_eq!(d("-3"), None);
        assert_eq!(d("NaN"), None);
        assert_eq!(d("soon"), None);
        assert_eq!(client_deadline(&HeaderMap::new()), None);
    }
}
