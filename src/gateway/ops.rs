//! Operations endpoints (`/healthz`, `/readyz`, `/metrics`, `/status`), the fallbacks, the
//! outer middleware that counts every request and gives every response a `request-id`, and the
//! alert webhook.
//!
//! `/status` renders every duration in milliseconds, in a key ending in `_ms` (`open_for_ms`,
//! `window_ms`, `p99_ms`, ...), never as serde's `{"secs", "nanos"}` object: the runtime's status
//! types are converted here, and any duration a future status field adds is converted the same
//! way ([`durations_to_ms`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use seawall_actors::{Event, Seawall, SlaEntry, SlaReport, StateKind};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::config::{AlertWebhook, WEBHOOK_ATTEMPTS};

use super::metrics::route_label;
use super::reply::{api_error, REQUEST_ID};
use super::State;

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Counts the request and its response, and gives a response without one a `request-id`.
pub(crate) async fn observe(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    state.metrics.request(route);
    let mut response = next.run(request).await;
    if !response.headers().contains_key(REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&state.ids.next()) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
    }
    state.metrics.response(route, response.status().as_u16());
    response
}

/// `GET /healthz`: the process serves.
pub(crate) async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when every chain has a model whose breaker is not open.
pub(crate) async fn readyz(Extract(state): Extract<Arc<State>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "reason": "the gateway is shutting down"}),
        );
    }
    let mut open = std::collections::HashMap::new();
    let mut down = Vec::new();
    for name in &state.order {
        let Some(entry) = state.models.get(name) else {
            continue;
        };
        let mut any = false;
        for hop in &entry.chain {
            let is_open = match open.get(hop) {
                Some(o) => *o,
                None => {
                    // A breaker that does not answer counts as open: it cannot serve either.
                    let o = state
                        .seawall
                        .breaker_status(hop)
                        .await
                        .map_or(true, |s| s.state == StateKind::Open);
                    open.insert(hop.clone(), o);
                    o
                }
            };
            any |= !is_open;
        }
        if !any {
            down.push(name.clone());
        }
    }
    if down.is_empty() {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "status": "unavailable",
                "reason": format!(
                    "every model of these chains has an open breaker: {}",
                    down.join(", ")
                ),
                "chains": down,
            }),
        )
    }
}

/// Each model's breaker state, in config order (models whose breaker did not answer are left
/// out).
async fn breaker_states(state: &State) -> Vec<(String, StateKind)> {
    let mut out = Vec::new();
    for name in &state.order {
        if let Ok(s) = state.seawall.breaker_status(name).await {
            out.push((name.clone(), s.state));
        }
    }
    out
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(Extract(state): Extract<Arc<State>>) -> Response {
    let runtime = super::metrics::prometheus().map(|h| h.render());
    let breakers = if runtime.is_some() {
        Vec::new()
    } else {
        breaker_states(&state).await
    };
    let text = state
        .metrics
        .render(&breakers, state.seawall.in_flight(), runtime.as_deref());
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /status`: breakers, governor, calls in flight, chains. Keys appear only as the
/// transports' short labels (`…` and the last four characters), never whole.
pub(crate) async fn status(Extract(state): Extract<Arc<State>>) -> Response {
    let mut breakers = Vec::new();
    for name in &state.order {
        match state.seawall.breaker_status(name).await {
            Ok(s) => breakers.push(json!({
                "model": s.model,
                "state": s.state,
                "open_for_ms": s.open_for.map(|d| d.as_millis() as u64),
                "window": {
                    "calls": s.stats.calls,
                    "failures": s.stats.failures,
                    "slow": s.stats.slow,
                },
                "retry_budget": s.retry_budget,
            })),
            Err(e) => breakers.push(json!({"model": name, "error": e.to_string()})),
        }
    }
    let governor = match state.seawall.governor_status().await {
        Ok(upstreams) => Value::Array(
            upstreams
                .into_iter()
                .map(|u| {
                    json!({
                        "upstream": u.upstream,
                        "buckets": serde_json::to_value(&u.buckets).unwrap_or(Value::Null),
                        "quarantined_keys": u.quarantined_keys,
                        // When each quarantined (or once quarantined) key was last checked
                        // with a token count, and when it will be next.
                        "key_checks": u.key_checks.iter().map(|c| json!({
                            "key": c.key,
                            "quarantined": c.quarantined,
                            "last_checked_ms_ago": c.last_checked_ago.map(|d| d.as_millis() as u64),
                            "next_check_in_ms": c.next_check_in.map(|d| d.as_millis() as u64),
                        })).collect::<Vec<_>>(),
                        "paused_keys": u.paused_keys.iter().map(|(label, left)| json!({
                            "key": label,
                            "for_ms": left.as_millis() as u64,
                        })).collect::<Vec<_>>(),
                        "in_flight_per_key": u.in_flight,
                        "waiting": {"interactive": u.waiting.0, "background": u.waiting.1},
                    })
                })
                .collect(),
        ),
        Err(e) => json!({"error": e.to_string()}),
    };
    let chains: serde_json::Map<String, Value> = state
        .order
        .iter()
        .filter_map(|n| state.models.get(n).map(|m| (n.clone(), json!(m.chain))))
        .collect();
    let sla = match state.seawall.sla_report().await {
        Ok(report) => sla_json(&report),
        Err(e) => json!({"error": e.to_string()}),
    };
    let queue = match state.seawall.queue_depth().await {
        Ok((pending, running)) => json!({"pending": pending, "running": running}),
        Err(seawall_actors::Error::Config(_)) => Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    };
    // {"mode": "alone" | "shared" | "local", "share": .., "live_instances": .., "round_trips": ..}
    let fleet = match state.seawall.fleet_status().await {
        Ok(f) => {
            let mut v = serde_json::to_value(f.mode).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("live_instances".into(), json!(f.live_instances));
                m.insert("round_trips".into(), json!(f.round_trips));
            }
            v
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    let mut body = json!({
        "fleet": fleet,
        "queue": queue,
        "in_flight": state.seawall.in_flight(),
        "draining": state.draining.load(Ordering::Acquire),
        "breakers": breakers,
        "governor": governor,
        "sla": sla,
        "chains": chains,
    });
    durations_to_ms(&mut body);
    json_response(StatusCode::OK, &body)
}

/// A duration in milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The SLA report for `/status`: durations in `_ms` keys, classes as an object.
fn sla_json(report: &SlaReport) -> Value {
    let entries = |list: &[SlaEntry]| -> Value { list.iter().map(sla_entry_json).collect() };
    json!({
        "window_ms": millis(report.window),
        "healthy": report.is_healthy(),
        "models": entries(&report.models),
        "chains": entries(&report.chains),
    })
}

fn sla_entry_json(e: &SlaEntry) -> Value {
    let s = &e.stats;
    let by_class: Map<String, Value> = s
        .by_class
        .iter()
        .map(|(class, n)| (class.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "name": e.name,
        "healthy": e.is_healthy(),
        "stats": {
            "calls": s.calls,
            "failures": s.failures,
            "excluded": s.excluded,
            "availability": s.availability,
            "error_rate": s.error_rate,
            "p50_ms": s.p50.map(millis),
            "p95_ms": s.p95.map(millis),
            "p99_ms": s.p99.map(millis),
            "max_consecutive_failures": s.max_consecutive_failures,
            "consecutive_failures": s.consecutive_failures,
            "by_class": by_class,
        },
        "target": {
            "availability": e.target.availability,
            "p99_ms": millis(e.target.p99),
            "max_consecutive_failures": e.target.max_consecutive_failures,
            "min_calls": e.target.min_calls,
        },
        // Durations inside (a p99 violation's actual and target) become `_ms` keys below.
        "violations": serde_json::to_value(&e.violations).unwrap_or(Value::Null),
    })
}

/// True for serde's rendering of a `std::time::Duration`: `{"secs": N, "nanos": N}`.
fn as_duration(v: &Value) -> Option<Duration> {
    let o = v.as_object()?;
    if o.len() != 2 {
        return None;
    }
    let secs = o.get("secs")?.as_u64()?;
    let nanos = u32::try_from(o.get("nanos")?.as_u64()?).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Replace every `{"secs", "nanos"}` object in `value` by milliseconds: an object's field `x`
/// becomes `x_ms`, a duration inside an array becomes the number.
pub(crate) fn durations_to_ms(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (key, mut v) in old {
                match as_duration(&v) {
                    Some(d) => {
                        let key = if key.ends_with("_ms") {
                            key
                        } else {
                            format!("{key}_ms")
                        };
                        map.insert(key, json!(millis(d)));
                    }
                    None => {
                        durations_to_ms(&mut v);
                        map.insert(key, v);
                    }
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                match as_duration(v) {
                    Some(d) => *v = json!(millis(d)),
                    None => durations_to_ms(v),
                }
            }
        }
        _ => {}
    }
}

/// Forward every [`Event::Alert`] of `seawall` to `hook`, as JSON, in order, from a task of its
/// own: the runtime publishes on a broadcast channel and never waits for it. Each alert gets
/// up to [`WEBHOOK_ATTEMPTS`] attempts, each cut at the hook's timeout, with a short pause
/// between; a 2xx is delivered, a 4xx other than 408/429 is not retried. A failure is logged
/// (naming the hook by host only, its path may hold a token) and the next alert goes on. The
/// task ends when the runtime is gone. Outside a tokio runtime nothing is started.
pub(crate) fn spawn_alert_webhook(seawall: &Seawall, hook: AlertWebhook) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            webhook = %hook.redacted(),
            "alert webhook not started: no tokio runtime"
        );
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(hook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(webhook = %hook.redacted(), error = %e, "alert webhook not started");
            return;
        }
    };
    let mut events = seawall.subscribe();
    handle.spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(lost)) => {
                    tracing::warn!(
                        webhook = %hook.redacted(),
                        lost,
                        "alert webhook fell behind: the oldest events were not delivered"
                    );
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            if let Some(body) = alert_body(&event) {
                deliver(&client, &hook, &body).await;
            }
        }
    });
}

/// The webhook's JSON for an alert event (`None` for other events): the event's fields, when
/// it was sent, and a `text` line that chat webhooks (Slack, Mattermost) show as is.
fn alert_body(event: &Event) -> Option<Value> {
    let Event::Alert {
        kind,
        subject,
        value,
        threshold,
        firing,
    } = event
    else {
        return None;
    };
    let mut body = serde_json::to_value(event).ok()?;
    let unit = if matches!(kind, seawall_actors::AlertKind::BreakerOpen) {
        " s"
    } else {
        " %"
    };
    let text = if *firing {
        format!(
            "seawall alert firing: {} of {subject} is {value:.1}{unit} (threshold {threshold}{unit})",
            kind.as_str()
        )
    } else {
        format!("seawall alert cleared: {} of {subject}", kind.as_str())
    };
    if let Value::Object(o) = &mut body {
        o.insert(
            "at".into(),
            json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
        );
        o.insert("text".into(), json!(text));
    }
    Some(body)
}

/// POST `body` to the hook, retrying a transient failure; log the outcome of a failure.
async fn deliver(client: &reqwest::Client, hook: &AlertWebhook, body: &Value) {
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(200) * (attempt - 1)).await;
        }
        let request = client
            .post(hook.url().clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        match request.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                let status = r.status().as_u16();
                last = format!("HTTP {status}");
                let transient = status >= 500 || status == 408 || status == 429;
                if !transient {
                    break;
                }
            }
            // reqwest's error names the URL: say what failed without it.
            Err(e) if e.is_timeout() => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(hook.timeout)
                )
            }
            Err(e) if e.is_connect() => last = "cannot connect".into(),
            Err(_) => last = "the request failed".into(),
        }
    }
    tracing::warn!(
        webhook = %hook.redacted(),
        error = %last,
        alert = %body["kind"].as_str().unwrap_or(""),
        subject = %body["subject"].as_str().unwrap_or(""),
        "alert webhook delivery failed"
    );
}

/// Any other path: 404 in the API's shape.
pub(crate) async fn not_found(Extract(state): Extract<Arc<State>>, request: Request) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("no route {} {}", request.method(), request.uri().path()),
        &state.ids.next(),
    )
}

/// A known path with the wrong method: 405 in the API's shape.
pub(crate) async fn method_not_allowed(
    Extract(state): Extract<Arc<State>>,
    request: Request,
) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        &format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
        &state.ids.next(),
    )
}

/// The longest `?wait=` a job lookup honours: a long poll, not a parked connection.
const MAX_JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /v1/seawall/jobs/{id}[?wait=30s]`: a queued call as it stands. A finished job carries
/// the answer (`result.body` is the Messages JSON); `wait` holds the request until the job is
/// final or the wait ends (at most 60 s). The stored request itself is not echoed: it may hold
/// prompts, and the caller has it.
pub(crate) async fn job(
    Extract(state): Extract<Arc<State>>,
    tenant: Option<axum::Extension<super::auth::Tenant>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> Response {
    // Another client's job is "no job", as an unknown id is.
    let tenant = tenant.map(|axum::Extension(t)| t.0);
    let wait = match uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
    {
        None => None,
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) => Some(d.min(MAX_JOB_WAIT)),
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("wait={v:?} is not a duration ({e}): write it like wait=30s"),
                    &state.ids.next(),
                )
            }
        },
    };
    let found = match wait {
        Some(d) => state.seawall.wait_job_for(&id, tenant.as_deref(), d).await,
        None => state.seawall.job_for(&id, tenant.as_deref()).await,
    };
    match found {
        Ok(Some(job)) => json_response(StatusCode::OK, &job_json(&job)),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("no job {id:?}: unknown, or finished long enough ago to be purged"),
            &state.ids.next(),
        ),
        Err(seawall_actors::Error::Config(m)) => api_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &m,
            &state.ids.next(),
        ),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            &e.to_string(),
            &state.ids.next(),
        ),
    }
}

/// A job for clients: its state and, when done, the answer as JSON.
fn job_json(job: &seawall_actors::Job) -> Value {
    use seawall_actors::JobState;
    let mut out = json!({
        "id": job.id,
        "chain": job.chain,
        "state": job.state.as_str(),
        "created_at_ms": job.created_ms,
        "expires_at_ms": job.expires_ms,
        "runs": job.runs,
    });
    let extra = match &job.state {
        JobState::Pending { last_error } => json!({"last_error": last_error}),
        JobState::Done {
            model,
            status,
            body,
            finished_ms,
        } => json!({
            "finished_at_ms": finished_ms,
            "result": {
                "model": model,
                "status": status,
                "body": serde_json::from_str::<Value>(body).unwrap_or_else(|_| Value::String(body.clone())),
            },
        }),
        JobState::Failed {
            error,
            status,
            finished_ms,
        } => json!({"finished_at_ms": finished_ms, "error": error, "status": status}),
        JobState::Expired {
            last_error,
            finished_ms,
        } => json!({"finished_at_ms": finished_ms, "last_error": last_error}),
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    out
}
