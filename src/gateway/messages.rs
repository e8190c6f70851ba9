//! `POST /v1/messages` and `POST /v1/messages/count_tokens`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use seawall_actors::upstream::ForwardHeaders;
use seawall_actors::{Call, CountMiss, Error, Lane, TokenCount};
use serde_json::{json, Value};

use super::auth::Tenant;
use super::reply::{self, api_error};
use super::State;

/// The header saying a token count is seawall's estimate, not the provider's.
const SEAWALL_ESTIMATE: HeaderName = HeaderName::from_static("seawall-estimate");
/// The longest deadline a client's `x-stainless-timeout` may set: a day.
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Read a request body within the gateway's size limit and body read timeout; the error is the
/// API-shaped answer (413 over the limit, 408 when the body is too slow, 400 when it breaks).
pub(super) async fn read_body(state: &State, body: Body) -> Result<Bytes, Response> {
    let read = axum::body::to_bytes(body, state.max_body_bytes);
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!(
                "the request body exceeds this gateway's limit of {} bytes",
                state.max_body_bytes
            ),
            &state.ids.next(),
        )),
        Ok(Err(e)) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("the request body could not be read: {e}"),
            &state.ids.next(),
        )),
        Err(_) => Err(api_error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            &format!(
                "the request body did not arrive within {}",
                humantime::format_duration(state.body_read_timeout)
            ),
            &state.ids.next(),
        )),
    }
}

/// True when reading a body failed because it is over the limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The longest value, in bytes, of each request header the gateway reads or forwards. A client
/// that sends more gets a 400 naming the header: a value the gateway would pass on is never
/// allowed to make the upstream choke (which would count against a model everyone shares),
/// and a key the runtime keeps costs bounded memory.
const HEADER_LIMITS: [(&str, usize); 7] = [
    ("idempotency-key", 255),
    ("seawall-conversation", 255),
    ("seawall-feature", 128),
    ("seawall-lane", 32),
    ("anthropic-version", 64),
    ("anthropic-beta", 1024),
    ("x-stainless-timeout", 64),
];

/// A request header the gateway reads: absent or blank is `None`; too long or not visible
/// ASCII is an error that says what to fix.
fn read_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let limit = HEADER_LIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(255, |(_, l)| *l);
    if value.len() > limit {
        return Err(Error::InvalidCall(format!(
            "the {name} header is {} bytes long, over this gateway's limit of {limit}: shorten it",
            value.len()
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| Error::InvalidCall(format!("the {name} header must be visible ASCII text")))?;
    Ok(Some(text.trim()).filter(|t| !t.is_empty()))
}

/// The call's deadline from the client's own timeout (`x-stainless-timeout`, seconds), less a
/// margin (a tenth, at most 1 s) so the answer arrives before the client gives up.
pub(crate) fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = read_header(headers, "x-stainless-timeout")
        .ok()
        .flatten()?
        .parse()
        .ok()?;
    if !(secs.is_finite() && secs > 0.0) {
        return None;
    }
    // Clamp before converting: a huge value (1e20) does not fit a Duration.
    let total = if secs >= MAX_CLIENT_TIMEOUT.as_secs_f64() {
        MAX_CLIENT_TIMEOUT
    } else {
        Duration::try_from_secs_f64(secs).ok()?
    };
    if total.is_zero() {
        return None;
    }
    let margin = (total / 10).min(Duration::from_secs(1));
    Some(total - margin)
}

/// Apply the request headers the gateway reads to `call`.
pub(super) fn apply_headers(
    call: &mut Call,
    headers: &HeaderMap,
    tenant: Option<&Tenant>,
) -> Result<(), Error> {
    // For a stream the SDK's timeout bounds each read, not the whole answer: a stream keeps
    // its chain's deadline (and first-token timeout).
    if !call.wants_stream() {
        if let Some(timeout) = client_deadline(headers) {
            call.timeout = Some(timeout);
        }
    }
    call.tenant = tenant.map(|t| t.0.clone());
    if let Some(key) = read_header(headers, "idempotency-key")? {
        call.idempotency_key = Some(key.to_owned());
    }
    // The client's API version and betas reach the upstream unchanged (server-side
    // `fallbacks` and other betas keep working behind seawall).
    call.forward = forwarded(headers)?;
    if let Some(feature) = read_header(headers, "seawall-feature")? {
        call.feature = Some(feature.to_owned());
    }
    if let Some(c) = read_header(headers, "seawall-conversation")? {
        call.conversation = Some(c.to_owned());
    }
    if let Some(lane) = read_header(headers, "seawall-lane")? {
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

/// The client's `anthropic-version` and `anthropic-beta`, checked, to forward unchanged.
fn forwarded(headers: &HeaderMap) -> Result<ForwardHeaders, Error> {
    Ok(ForwardHeaders {
        version: read_header(headers, "anthropic-version")?.map(str::to_owned),
        beta: read_header(headers, "anthropic-beta")?.map(str::to_owned),
    })
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    Extract(state): Extract<Arc<State>>,
    tenant: Option<Extension<Tenant>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let body = match read_body(&state, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let mut call = match Call::from_json(&body) {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    let tenant = tenant.map(|Extension(t)| t);
    if let Err(e) = apply_headers(&mut call, &headers, tenant.as_ref()) {
        return reply::error(&e, &state.ids);
    }
    // The head and body are slices of the connection's read buffer: holding them for the whole
    // call kept that buffer (8 KiB) alive per call in flight (BENCHMARKS.md). The call owns copies.
    drop(headers);
    drop(body);
    let requested = call.model().to_owned();
    let result = if call.wants_stream() {
        match state.seawall.stream(call).await {
            Ok(stream) => {
                // Debug: the runtime's own `call` line (info) reports every call, once; this
                // one only adds what the gateway saw.
                tracing::debug!(
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
            tracing::debug!(
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
            let response = reply::error(&e, &state.ids);
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

/// `POST /v1/messages/count_tokens`: the provider's count from the upstream of the model's
/// first hop; `Call::estimate_input_tokens` with `seawall-estimate: heuristic` when that
/// upstream has no counter or the count fails.
pub(crate) async fn count_tokens(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&state, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let forward = match forwarded(&headers) {
        Ok(f) => f,
        Err(e) => return reply::error(&e, &state.ids),
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
    let mut call = match Call::from_value(value) {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    call.forward = forward;
    let timeout = client_deadline(&headers)
        .unwrap_or(state.count_timeout)
        .min(state.count_timeout);
    // The runtime's path: the chain's first hop, the governor's key, classified failures.
    let counted = match state.seawall.count_tokens(&call, body, timeout).await {
        Ok(c) => c,
        Err(e) => return reply::error(&e, &state.ids),
    };
    let (n, heuristic) = match counted {
        TokenCount::Counted(n) => (n, false),
        TokenCount::Estimated { tokens, why } => {
            if let CountMiss::Failed(class) = why {
                tracing::warn!(model = %call.model(), class = class.as_str(), "count_tokens failed: answering the heuristic estimate");
            }
            (tokens, true)
        }
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
        assert_eq!(d("1e-300"), None, "rounds to zero: no deadline");
        assert_eq!(d("600"), Some(Duration::from_secs(599)));
        assert_eq!(d("600.0"), Some(Duration::from_secs(599)));
        assert_eq!(d("2"), Some(Duration::from_millis(1800)));
        assert_eq!(d("0"), None);
        assert_eq!(d("-3"), None);
        assert_eq!(d("NaN"), None);
        assert_eq!(d("soon"), None);
        // Values past what a Duration holds are clamped to a day, not a panic.
        let day = MAX_CLIENT_TIMEOUT - Duration::from_secs(1);
        assert_eq!(d("1e20"), Some(day));
        assert_eq!(d("1e300"), Some(day));
        assert_eq!(d("18446744073709551616"), Some(day));
        assert_eq!(d("86400"), Some(day));
        assert_eq!(d("inf"), None);
        assert_eq!(client_deadline(&HeaderMap::new()), None);
    }
}
