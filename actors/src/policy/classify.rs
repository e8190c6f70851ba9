//! What an upstream answer means for the runtime: success, a transient failure worth retrying
//! (with the server's retry hint), or a permanent one that must never be retried.
//!
//! Rules follow the API's documented statuses and
//! `error.type` / `error.details.error_code` (never the human `message`, whose wording changes),
//! and the official SDK's override header `x-should-retry`.

use std::time::{Duration, SystemTime};

use crate::wire::{Headers, TransportError, UpstreamResponse};

/// The kind of answer, fine enough for the breaker, the governor and the chain walker to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A complete, well-formed successful answer.
    Success,
    /// 429: a rate limit (a budget signal, not a health signal).
    RateLimited,
    /// 529: the model is overloaded (a capacity and health signal).
    Overloaded,
    /// 5xx other than 529, and 408/409: the server failed this time.
    ServerError,
    /// No complete answer within the attempt's budget.
    Timeout,
    /// Connect failure, reset, truncated or unparseable body.
    Network,
    /// 400, 413, 422, and any 4xx not listed apart (431, 414, 415, ...): this request is wrong
    /// and will be wrong everywhere. Never held against a model's health.
    InvalidRequest,
    /// 401: this API key is not valid.
    Authentication,
    /// 402, or a 429 whose error code is a spend cap: the organization cannot pay.
    Billing,
    /// 403: this key may not use this resource.
    Permission,
    /// 404: unknown model or path.
    NotFound,
    /// A status outside 2xx, 4xx and 5xx (a redirect, an informational answer): unknown to
    /// this classifier.
    Other,
}

impl Class {
    /// Every class, in [`Class::index`] order.
    pub const ALL: [Class; 12] = [
        Class::Success,
        Class::RateLimited,
        Class::Overloaded,
        Class::ServerError,
        Class::Timeout,
        Class::Network,
        Class::InvalidRequest,
        Class::Authentication,
        Class::Billing,
        Class::Permission,
        Class::NotFound,
        Class::Other,
    ];

    /// This class's place in [`Class::ALL`]: the index of per-class tables (counters, metric
    /// handles), so they are arrays rather than maps.
    pub fn index(self) -> usize {
        match self {
            Class::Success => 0,
            Class::RateLimited => 1,
            Class::Overloaded => 2,
            Class::ServerError => 3,
            Class::Timeout => 4,
            Class::Network => 5,
            Class::InvalidRequest => 6,
            Class::Authentication => 7,
            Class::Billing => 8,
            Class::Permission => 9,
            Class::NotFound => 10,
            Class::Other => 11,
        }
    }

    /// True for the capacity signals (429, 529) that the SDK's fallback middleware also treats
    /// as a reason to move to another model.
    pub fn is_capacity(self) -> bool {
        matches!(self, Class::RateLimited | Class::Overloaded)
    }

    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::RateLimited => "rate_limited",
            Class::Overloaded => "overloaded",
            Class::ServerError => "server_error",
            Class::Timeout => "timeout",
            Class::Network => "network",
            Class::InvalidRequest => "invalid_request",
            Class::Authentication => "authentication",
            Class::Billing => "billing",
            Class::Permission => "permission",
            Class::NotFound => "not_found",
            Class::Other => "other",
        }
    }
}

/// How far a permanent failure reaches: it decides whether another hop of the chain may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The request itself is wrong (400, 413, 422): no model will take it; answer the caller now.
    Request,
    /// This model refuses it (404, 403, or the server said `x-should-retry: false`): another model may not.
    Model,
    /// This API key is bad (401): quarantine the key; another key or upstream may work.
    Key,
    /// The organization cannot pay (402, spend cap): nothing on this upstream will work.
    Organization,
}

/// The classifier's answer for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve this answer.
    Success,
    /// Transient: the same model may be retried, no sooner than `hint` if the server gave one.
    Retryable {
        /// What went wrong.
        class: Class,
        /// The server's retry hint (`retry-after-ms`, `retry-after` seconds or HTTP-date).
        hint: Option<Duration>,
    },
    /// Permanent: never retry this request on this model.
    Permanent {
        /// What went wrong.
        class: Class,
        /// Whether another hop may help.
        scope: Scope,
    },
}

impl Verdict {
    /// The class of the answer.
    pub fn class(&self) -> Class {
        match *self {
            Verdict::Success => Class::Success,
            Verdict::Retryable { class, .. } | Verdict::Permanent { class, .. } => class,
        }
    }

    /// True when the API key used should be quarantined.
    pub fn key_is_bad(&self) -> bool {
        matches!(
            self,
            Verdict::Permanent {
                scope: Scope::Key,
                ..
            }
        )
    }
}

/// Spend-cap error codes on a 429: retrying is useless until someone raises the cap. The last
/// is OpenAI's "out of credit", which the `openai` transport passes on in the same place.
const SPEND_CAP_CODES: [&str; 3] = [
    "contract_spend_limit_reached",
    "enforced_spend_limit_reached",
    "insufficient_quota",
];

/// Error codes on a 400 that say the request is too long for this model's context window
/// (OpenAI's, passed on by the `openai` transport), not that the request is wrong.
const CONTEXT_CODES: [&str; 1] = ["context_length_exceeded"];

/// Classify a transport result. `now` is the wall clock, needed only to read an HTTP-date
/// `retry-after`.
pub fn classify(result: &Result<UpstreamResponse, TransportError>, now: SystemTime) -> Verdict {
    match result {
        Ok(resp) => classify_response(resp, now),
        Err(err) => classify_transport(err),
    }
}

/// Classify a transport failure (no complete HTTP answer).
pub fn classify_transport(err: &TransportError) -> Verdict {
    let class = match err {
        TransportError::Timeout(_) => Class::Timeout,
        TransportError::Connect(_) | TransportError::Reset(_) | TransportError::Truncated(_) => {
            Class::Network
        }
        // Only side exchanges (token counts) end so; an attempt's status is classified as one.
        TransportError::Status(_) => Class::Network,
        // This transport cannot send the request (e.g. a feature an OpenAI-compatible provider
        // lacks): that ends this hop; another hop's transport may take it.
        TransportError::Invalid(_) => {
            return Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Model,
            }
        }
    };
    Verdict::Retryable { class, hint: None }
}

/// Classify a complete HTTP answer.
pub fn classify_response(resp: &UpstreamResponse, now: SystemTime) -> Verdict {
    let (class, mut verdict) = match resp.status {
        200..=299 => {
            // A 200 whose body is not a JSON object is a broken answer, not a success.
            if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&resp.body)
                .is_ok()
            {
                return Verdict::Success;
            }
            (Class::Network, Disposition::Retry)
        }
        // A context window too small for the request is this model's limit: a later hop with
        // a larger window may take the same request.
        400 if error_code(&resp.body).is_some_and(|c| CONTEXT_CODES.contains(&c.as_str())) => {
            (Class::InvalidRequest, Disposition::Fail(Scope::Model))
        }
        400 | 413 | 422 => (Class::InvalidRequest, Disposition::Fail(Scope::Request)),
        401 => (Class::Authentication, Disposition::Fail(Scope::Key)),
        402 => (Class::Billing, Disposition::Fail(Scope::Organization)),
        403 => (Class::Permission, Disposition::Fail(Scope::Model)),
        404 => (Class::NotFound, Disposition::Fail(Scope::Model)),
        408 | 409 => (Class::ServerError, Disposition::Retry),
        429 => {
            if error_code(&resp.body).is_some_and(|c| SPEND_CAP_CODES.contains(&c.as_str())) {
                (Class::Billing, Disposition::Fail(Scope::Organization))
            } else {
                (Class::RateLimited, Disposition::Retry)
            }
        }
        529 => (Class::Overloaded, Disposition::Retry),
        500..=599 => (Class::ServerError, Disposition::Retry),
        // Any other 4xx (431 headers too large, 414, 415, ...) is about this request, which the
        // client chose: it ends the call and says nothing about the model's health, so no
        // client can open a breaker that every tenant shares.
        400..=499 => (Class::InvalidRequest, Disposition::Fail(Scope::Request)),
        _ => (Class::Other, Disposition::Fail(Scope::Request)),
    };
    // The server's explicit word wins over the status (the SDK obeys it the same way).
    match resp.headers.get("x-should-retry").map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => verdict = Disposition::Retry,
        Some(v) if v.eq_ignore_ascii_case("false") && verdict == Disposition::Retry => {
            verdict = Disposition::Fail(Scope::Model);
        }
        _ => {}
    }
    match verdict {
        Disposition::Retry => Verdict::Retryable {
            class,
            hint: retry_hint(&resp.headers, now),
        },
        Disposition::Fail(scope) => Verdict::Permanent { class, scope },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Retry,
    Fail(Scope),
}

/// The `error.details.error_code` of an API error body, if any.
pub fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/details/error_code")?
        .as_str()
        .map(str::to_owned)
}

/// The `error.type` of an API error body, if any.
pub fn error_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/type")?.as_str().map(str::to_owned)
}

/// The server's retry hint, in the SDK's order of precedence: `retry-after-ms` (float
/// milliseconds), then `retry-after` as float seconds, then `retry-after` as an HTTP-date.
/// Zero, negative, absurd (over one day) or unparseable values give `None`.
pub fn retry_hint(headers: &Headers, now: SystemTime) -> Option<Duration> {
    const MAX: f64 = 86_400.0;
    // A positive value too small for a Duration (1e-300 s) rounds to zero: no hint either.
    let positive = |secs: f64| {
        (secs.is_finite() && secs > 0.0 && secs <= MAX)
            .then(|| Duration::from_secs_f64(secs))
            .filter(|d| !d.is_zero())
    };
    if let Some(d) = headers
        .get("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| positive(ms / 1000.0))
    {
        return Some(d);
    }
    let raw = headers.get("retry-after")?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return positive(secs);
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    positive(at.duration_since(now).ok()?.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn err_body(kind: &str, code: Option<&str>) -> String {
        let details = code
            .map(|c| format!(r#","details":{{"error_code":"{c}"}}"#))
            .unwrap_or_default();
        format!(
            r#"{{"type":"error","error":{{"type":"{kind}","message":"x"{details}}},"request_id":"req_1"}}"#
        )
    }

    fn resp(status: u16, body: &str) -> UpstreamResponse {
        UpstreamResponse::new(status, body.to_owned())
    }

    fn verdict(r: UpstreamResponse) -> Verdict {
        classify(&Ok(r), now())
    }

    #[test]
    fn success_needs_a_json_object() {
        assert_eq!(verdict(resp(200, r#"{"id":"msg_1"}"#)), Verdict::Success);
        assert_eq!(
            verdict(resp(200, r#"{"id":"msg_1""#)),
            Verdict::Retryable {
                class: Class::Network,
                hint: None
            }
        );
        assert_eq!(verdict(resp(200, "")).class(), Class::Network);
    }

    #[test]
    fn permanent_statuses_and_their_scope() {
        let cases = [
            (400, Class::InvalidRequest, Scope::Request),
            (413, Class::InvalidRequest, Scope::Request),
            (422, Class::InvalidRequest, Scope::Request),
            (401, Class::Authentication, Scope::Key),
            (402, Class::Billing, Scope::Organization),
            (403, Class::Permission, Scope::Model),
            (404, Class::NotFound, Scope::Model),
            // A client's own input: request-scoped, and never a health failure.
            (431, Class::InvalidRequest, Scope::Request),
            (414, Class::InvalidRequest, Scope::Request),
            (415, Class::InvalidRequest, Scope::Request),
            (451, Class::InvalidRequest, Scope::Request),
            // Outside 4xx and 5xx: unknown.
            (302, Class::Other, Scope::Request),
        ];
        for (status, class, scope) in cases {
            assert_eq!(
                verdict(resp(status, &err_body("x", None))),
                Verdict::Permanent { class, scope },
                "status {status}"
            );
        }
        assert!(verdict(resp(401, "")).key_is_bad());
        assert!(!verdict(resp(403, "")).key_is_bad());
    }

    #[test]
    fn the_class_table_and_its_index_agree() {
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
    }

    #[test]
    fn transient_statuses() {
        for (status, class) in [
            (408, Class::ServerError),
            (409, Class::ServerError),
            (429, Class::RateLimited),
            (500, Class::ServerError),
            (502, Class::ServerError),
            (503, Class::ServerError),
            (504, Class::ServerError),
            (529, Class::Overloaded),
        ] {
            assert_eq!(
                verdict(resp(status, &err_body("x", None))),
                Verdict::Retryable { class, hint: None },
                "status {status}"
            );
        }
        assert!(Class::RateLimited.is_capacity() && Class::Overloaded.is_capacity());
        assert!(!Class::ServerError.is_capacity());
    }

    #[test]
    fn a_context_window_too_small_ends_the_hop_not_the_call() {
        assert_eq!(
            verdict(resp(
                400,
                &err_body("invalid_request_error", Some("context_length_exceeded"))
            )),
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Model
            }
        );
        assert_eq!(
            verdict(resp(400, &err_body("invalid_request_error", Some("other")))),
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Request
            },
            "any other 400 is the request's"
        );
    }

    #[test]
    fn spend_cap_429_is_permanent_but_ramp_limit_is_not() {
        for code in SPEND_CAP_CODES {
            assert_eq!(
                verdict(resp(429, &err_body("rate_limit_error", Some(code)))),
                Verdict::Permanent {
                    class: Class::Billing,
                    scope: Scope::Organization
                }
            );
        }
        let ramp = resp(
            429,
            &err_body("rate_limit_error", Some("ramp_limit_exceeded")),
        )
        .with_header("retry-after", "3");
        assert_eq!(
            verdict(ramp),
            Verdict::Retryable {
                class: Class::RateLimited,
                hint: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn should_retry_header_overrides_status() {
        let forced = resp(400, &err_body("invalid_request_error", None))
            .with_header("X-Should-Retry", "true");
        assert_eq!(
            verdict(forced),
            Verdict::Retryable {
                class: Class::InvalidRequest,
                hint: None
            }
        );
        let refused =
            resp(529, &err_body("overloaded_error", None)).with_header("x-should-retry", "false");
        assert_eq!(
            verdict(refused),
            Verdict::Permanent {
                class: Class::Overloaded,
                scope: Scope::Model
            }
        );
        // `false` never upgrades a request-scoped failure.
        let bad = resp(400, "").with_header("x-should-retry", "false");
        assert_eq!(
            verdict(bad),
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Request
            }
        );
    }

    #[test]
    fn transport_errors() {
        let t = classify(&Err(TransportError::Timeout(Duration::from_secs(1))), now());
        assert_eq!(t.class(), Class::Timeout);
        for e in [
            TransportError::Connect("refused".into()),
            TransportError::Reset("rst".into()),
            TransportError::Truncated("eof".into()),
        ] {
            assert_eq!(
                classify(&Err(e), now()),
                Verdict::Retryable {
                    class: Class::Network,
                    hint: None
                }
            );
        }
        assert!(matches!(
            classify(&Err(TransportError::Invalid("bad".into())), now()),
            Verdict::Permanent {
                scope: Scope::Model,
                ..
            }
        ));
    }

    #[test]
    fn retry_hint_precedence_and_formats() {
        let mut h = Headers::default();
        h.insert("retry-after", "2");
        h.insert("retry-after-ms", "1500.5");
        assert_eq!(
            retry_hint(&h, now()),
            Some(Duration::from_micros(1_500_500))
        );

        let mut h = Headers::default();
        h.insert("retry-after", "0.25");
        assert_eq!(retry_hint(&h, now()), Some(Duration::from_millis(250)));

        let mut h = Headers::default();
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(now() + Duration::from_secs(7)),
        );
        assert_eq!(retry_hint(&h, now()), Some(Duration::from_secs(7)));

        for bad in ["0", "-3", "soon", "1e12", "NaN"] {
            let mut h = Headers::default();
            h.insert("retry-after", bad);
            assert_eq!(retry_hint(&h, now()), None, "{bad}");
        }
        // A date in the past is no hint at all.
        let mut h = Headers::default();
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(now() - Duration::from_secs(7)),
        );
        assert_eq!(retry_hint(&h, now()), None);
    }

    #[test]
    fn error_fields_are_read_not_the_message() {
        let b = err_body("overloaded_error", Some("x_code"));
        assert_eq!(
            error_type(b.as_bytes()).as_deref(),
            Some("overloaded_error")
        );
        assert_eq!(error_code(b.as_bytes()).as_deref(), Some("x_code"));
        assert_eq!(error_code(b"not json"), None);
    }
}
