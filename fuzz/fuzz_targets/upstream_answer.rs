//! An upstream's answer: status, headers (`retry-after`, `retry-after-ms`, `x-should-retry`,
//! `anthropic-ratelimit-*`) and body (error bodies with `error.type` and
//! `error.details.error_code`), through the classifier, the hint reader, the rate-limit header
//! reader and the redactor. No panic; a hint is positive and at most a day.
//!
//! Input: two bytes of status, then `name: value` header lines up to a blank line, then the
//! body.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use seawall::core::policy::classify::{classify_response, error_code, error_type, retry_hint, Verdict};
use seawall::core::policy::lanes::ServerLimits;
use seawall::core::{Headers, UpstreamResponse};
use seawall::secret::Redactor;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let rest = &data[2..];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&rest[..0], rest),
    };
    let mut headers = Headers::default();
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(&name.trim().to_ascii_lowercase(), value.trim());
        }
    }
    let mut resp = UpstreamResponse::new(status, body.to_vec());
    resp.headers = headers.clone();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let verdict = classify_response(&resp, now);
    if let Verdict::Retryable { hint: Some(h), .. } = verdict {
        assert!(!h.is_zero() && h <= Duration::from_secs(86_400));
    }
    if let Some(h) = retry_hint(&headers, now) {
        assert!(!h.is_zero() && h <= Duration::from_secs(86_400));
    }
    for part in [error_code(body), error_type(body)].into_iter().flatten() {
        assert!(part.len() <= body.len());
    }
    let _ = ServerLimits::from_headers(&headers);
    let clean = Redactor::default().redact(body);
    assert!(clean.len() <= body.len() * 2 + 16);
});
