//! A Bedrock Runtime fake on loopback that checks what Bedrock checks, independently of the
//! transport under test: its own SigV4 verifier (hmac + sha2, written from the published
//! algorithm and checked against AWS's own test vectors below), its own event-stream encoder
//! (crc32fast), Bedrock's error shapes (`x-amzn-ErrorType`, `{"message"}`), and the body rules
//! (no `model`, no `stream`, `anthropic_version: "bedrock-2023-05-31"`). Included by
//! tests/platforms.rs only (`#[path]`), beside `support`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The fake's region and service.
pub const REGION: &str = "us-east-1";
pub const SERVICE: &str = "bedrock";
/// The test credentials (a profile file holds them).
pub const ACCESS_KEY: &str = "AKIASEAWALLTEST0001";
pub const SECRET_KEY: &str = "bedrockSECRETkey/0001+doNotLeak";
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjSESSIONtoken0001doNotLeak";

/// How the fake answers model calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tool-use answers and streams.
    Ok,
    /// 429 ThrottlingException.
    Throttle,
    /// Streams break after their first content event with a modelStreamErrorException frame.
    BreakAfterContent,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub body: Value,
    /// The signature verified (else the fake answered 403).
    pub signed: bool,
    pub session_token: Option<String>,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    seen: Vec<Seen>,
    /// access key -> (secret, session token)
    keys: HashMap<String, (String, Option<String>)>,
}

/// The running fake.
#[derive(Clone)]
pub struct Bedrock {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Bedrock {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            mode: Some(Mode::Ok),
            keys: HashMap::from([(
                ACCESS_KEY.to_owned(),
                (SECRET_KEY.to_owned(), Some(SESSION_TOKEN.to_owned())),
            )]),
            ..State::default()
        }));
        let s = state.clone();
        let app = axum::Router::new().fallback(move |method, uri, headers, body| {
            let s = s.clone();
            async move { handle(s, method, uri, headers, body) }
        });
        let addr = crate::support::http::serve_app(app).await;
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn aws_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            (
                "x-amzn-errortype",
                format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ),
            ("x-amzn-requestid", "aws-req-error-1".to_owned()),
            ("content-type", "application/json".to_owned()),
        ],
        json!({"message": message}).to_string(),
    )
        .into_response()
}

fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let keys = state.lock().unwrap().keys.clone();
    let verdict = verify(
        method.as_str(),
        &uri,
        &headers,
        &body,
        &keys,
        SystemTime::now(),
    );
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let session_token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mode = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            path: path.clone(),
            body: json.clone(),
            signed: verdict.is_ok(),
            session_token,
        });
        s.mode.unwrap_or(Mode::Ok)
    };
    if let Err((kind, why)) = verdict {
        return aws_error(403, kind, &why);
    }
    let Some(rest) = path.strip_prefix("/model/") else {
        return aws_error(404, "UnknownOperationException", "no such operation");
    };
    let Some((id, op)) = rest.rsplit_once('/') else {
        return aws_error(404, "UnknownOperationException", "no such operation");
    };
    // Bedrock's own body checks for Claude.
    let invoke = if op == "count-tokens" {
        let b64 = json
            .pointer("/input/invokeModel/body")
            .and_then(Value::as_str)
            .unwrap_or("");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        serde_json::from_slice(&raw).unwrap_or(Value::Null)
    } else {
        json.clone()
    };
    for field in ["model", "stream"] {
        if invoke.get(field).is_some() {
            return aws_error(
                400,
                "ValidationException",
                &format!("Malformed input request: extraneous key [{field}] is not permitted"),
            );
        }
    }
    if invoke["anthropic_version"] != "bedrock-2023-05-31" {
        return aws_error(
            400,
            "ValidationException",
            "Malformed input request: anthropic_version is required",
        );
    }
    if id != "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0" {
        return aws_error(
            404,
            "ResourceNotFoundException",
            &format!("model {id} not found"),
        );
    }
    match (op, mode) {
        ("count-tokens", _) => axum::Json(json!({"inputTokens": 42})).into_response(),
        (_, Mode::Throttle) => aws_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        ("invoke", _) => (
            [
                ("x-amzn-requestid", "aws-req-invoke-1"),
                ("x-amzn-bedrock-input-token-count", "21"),
                ("x-amzn-bedrock-output-token-count", "9"),
                ("content-type", "application/json"),
            ],
            tool_use_message().to_string(),
        )
            .into_response(),
        ("invoke-with-response-stream", mode) => {
            let mut out = Vec::new();
            let events = stream_events();
            for (i, e) in events.iter().enumerate() {
                if mode == Mode::BreakAfterContent && i == 3 {
                    out.extend(frame(
                        &[
                            (":message-type", "exception"),
                            (":exception-type", "modelStreamErrorException"),
                            (":content-type", "application/json"),
                        ],
                        json!({"message": "The model stream failed."})
                            .to_string()
                            .as_bytes(),
                    ));
                    break;
                }
                let payload = json!({"bytes": base64::engine::general_purpose::STANDARD.encode(e.to_string())});
                out.extend(frame(
                    &[
                        (":message-type", "event"),
                        (":event-type", "chunk"),
                        (":content-type", "application/json"),
                    ],
                    payload.to_string().as_bytes(),
                ));
            }
            (
                [
                    ("x-amzn-requestid", "aws-req-stream-1"),
                    ("content-type", "application/vnd.amazon.eventstream"),
                ],
                out,
            )
                .into_response()
        }
        _ => aws_error(404, "UnknownOperationException", "no such operation"),
    }
}

/// The tool-use answer Bedrock returns for Claude.
pub fn tool_use_message() -> Value {
    json!({
        "id": "msg_bdrk_01", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "Checking the weather."},
            {"type": "tool_use", "id": "toolu_bdrk_01", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 21, "output_tokens": 9}
    })
}

/// A tool-use stream, as the Anthropic events Bedrock wraps in `chunk` frames.
pub fn stream_events() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_bdrk_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_bdrk_02", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 21, "outputTokenCount": 9, "invocationLatency": 120, "firstByteLatency": 40}}),
    ]
}

// ---------------------------------------------------------------------------------------------
// The event-stream encoder: prelude (total length, headers length, CRC32 of both), headers
// (name length u8, name, type 7 = string, value length u16, value), payload, CRC32 of all.

pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).unwrap());
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap().to_be_bytes());
    out.extend_from_slice(&u32::try_from(h.len()).unwrap().to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// The SigV4 verifier (header signatures), from the published algorithm.

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// URI-encode as SigV4 does: everything but unreserved characters, `/` kept when asked.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The canonical request of a request with these parts (non-S3: the path as sent, encoded once
/// more).
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    query: &str,
    headers: &[(String, String)],
    signed: &[&str],
    body: &[u8],
) -> String {
    let path = if raw_path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(raw_path, true)
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(k, false), uri_encode(v, false))
        })
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canon = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canon.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{method}\n{path}\n{query}\n{canon}\n{}\n{}",
        signed.join(";"),
        sha256_hex(body)
    )
}

/// The signature of a canonical request.
pub fn signature(secret: &str, amz_date: &str, scope: &str, canonical: &str) -> String {
    let mut parts = scope.split('/');
    let (date, region, service) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// Check a request's SigV4 header signature as Bedrock does: a known access key, the scope's
/// region and service, a date within 5 minutes, the session token of the key, and the
/// signature itself. The error is Bedrock's error type and message.
pub fn verify(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    keys: &HashMap<String, (String, Option<String>)>,
    now: SystemTime,
) -> Result<(), (&'static str, String)> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let auth = header("authorization").ok_or((
        "MissingAuthenticationTokenException",
        "Missing Authentication Token".to_owned(),
    ))?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or((
        "IncompleteSignatureException",
        "not AWS4-HMAC-SHA256".to_owned(),
    ))?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            fields.insert(k.to_owned(), v.to_owned());
        }
    }
    let (Some(credential), Some(signed), Some(sig)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return Err((
            "IncompleteSignatureException",
            "Authorization lacks a field".into(),
        ));
    };
    let (access, scope) = credential
        .split_once('/')
        .ok_or(("IncompleteSignatureException", "bad Credential".to_owned()))?;
    let Some((secret, token)) = keys.get(access) else {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    };
    let want_scope_tail = format!("/{REGION}/{SERVICE}/aws4_request");
    if !scope.ends_with(&want_scope_tail) {
        return Err((
            "InvalidSignatureException",
            format!("Credential should be scoped to {want_scope_tail}, not {scope}"),
        ));
    }
    let amz_date =
        header("x-amz-date").ok_or(("IncompleteSignatureException", "no x-amz-date".to_owned()))?;
    let signed_at = parse_amz_date(&amz_date)
        .ok_or(("IncompleteSignatureException", "bad x-amz-date".to_owned()))?;
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err(("InvalidSignatureException", "Signature expired".into()));
    }
    let signed: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err((
                "InvalidSignatureException",
                format!("{required} must be signed"),
            ));
        }
    }
    if let Some(token) = token {
        if header("x-amz-security-token").as_deref() != Some(token.as_str())
            || !signed.contains(&"x-amz-security-token")
        {
            return Err((
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".into(),
            ));
        }
    }
    let all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let canonical = canonical_request(
        method,
        uri.path(),
        uri.query().unwrap_or(""),
        &all,
        &signed,
        body,
    );
    if signature(secret, &amz_date, scope, &canonical) != *sig {
        return Err(("InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into()));
    }
    Ok(())
}

/// `20150830T123600Z` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || s.as_bytes()[8] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod vectors {
    //! The verifier against AWS's published SigV4 test suite (aws-sig-v4-test-suite), so the
    //! fake's verdicts mean what Bedrock's would.
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SCOPE: &str = "20150830/us-east-1/service/aws4_request";

    #[test]
    fn post_x_www_form_urlencoded() {
        let headers = vec![
            ("content-length".to_owned(), "13".to_owned()),
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("host".to_owned(), "example.amazonaws.com".to_owned()),
            (
                "x-amz-content-sha256".to_owned(),
                "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e".to_owned(),
            ),
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let signed = [
            "content-length",
            "content-type",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
        ];
        let c = canonical_request("POST", "/", "", &headers, &signed, b"Param1=value1");
        assert_eq!(
            signature(SECRET, "20150830T123600Z", SCOPE, &c),
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
    }

    #[test]
    fn get_vanilla_with_session_token() {
        let headers = vec![
            ("host".to_owned(), "example.amazonaws.com".to_owned()),
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
            (
                "x-amz-security-token".to_owned(),
                "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267".to_owned(),
            ),
        ];
        let c = canonical_request(
            "GET",
            "/",
            "",
            &headers,
            &["host", "x-amz-date", "x-amz-security-token"],
            b"",
        );
        assert_eq!(
            signature(SECRET, "20150830T123600Z", SCOPE, &c),
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn paths_are_encoded_twice_and_dates_parse() {
        assert_eq!(
            uri_encode("/model/a%3A0/invoke", true),
            "/model/a%253A0/invoke"
        );
        assert_eq!(
            parse_amz_date("20150830T123600Z").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
        );
    }
}
