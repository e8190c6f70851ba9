//! A Vertex AI fake on loopback with its own OAuth token endpoint, checking what Google
//! checks, independently of the transport under test: the service account's JWT assertion
//! (RS256 over the test key, verified with the `rsa` crate; issuer, audience = the token URI,
//! scope, expiry), then the bearer on `rawPredict` / `streamRawPredict`, the path, and the body
//! rules (no `model`, `anthropic_version: "vertex-2023-10-16"`). Errors in Google's shape.
//! Included by tests/platforms.rs only (`#[path]`), beside `support`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::Verifier;
use serde_json::{json, Value};

pub const PROJECT: &str = "seawall-test";
pub const REGION: &str = "us-east5";
pub const MODEL: &str = "claude-sonnet-4-5@20250929";
pub const CLIENT_EMAIL: &str = "seawall@seawall-test.iam.gserviceaccount.com";
/// The test key (tests/fixtures/vertex-test-sa.pem).
pub const PRIVATE_KEY: &str = include_str!("../fixtures/vertex-test-sa.pem");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// 429 RESOURCE_EXHAUSTED in Google's shape.
    Exhausted,
    /// 529 overloaded_error in Anthropic's shape (the model's own error, passed through).
    Overloaded,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    tokens_issued: Vec<String>,
    /// (path, body, the bearer was one we issued)
    calls: Vec<(String, Value, bool)>,
    jwt_rejections: usize,
}

#[derive(Clone)]
pub struct Vertex {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Vertex {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            mode: Some(Mode::Ok),
            ..State::default()
        }));
        let s = state.clone();
        let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let a = addr_cell.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            let a = a.clone();
            async move {
                let addr = a.lock().unwrap().expect("address known");
                handle(s, addr, uri, headers, body)
            }
        });
        let addr = crate::support::http::serve_app(app).await;
        *addr_cell.lock().unwrap() = Some(addr);
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    pub fn tokens_issued(&self) -> Vec<String> {
        self.state.lock().unwrap().tokens_issued.clone()
    }

    pub fn calls(&self) -> Vec<(String, Value, bool)> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn jwt_rejections(&self) -> usize {
        self.state.lock().unwrap().jwt_rejections
    }

    /// A service-account key file naming this fake's token endpoint.
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key-1",
            "private_key": PRIVATE_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }
}

fn google_error(code: u16, status: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
    )
        .into_response()
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Verify a service-account JWT assertion as Google's token endpoint does.
fn verify_jwt(assertion: &str, token_uri: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("not a JWT".into());
    };
    let header: Value =
        serde_json::from_slice(&b64url(h).ok_or("bad header")?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let claims: Value =
        serde_json::from_slice(&b64url(c).ok_or("bad claims")?).map_err(|e| e.to_string())?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err("wrong issuer".into());
    }
    if claims["aud"] != token_uri {
        return Err(format!("audience {} is not the token URI", claims["aud"]));
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or("")
        .contains("https://www.googleapis.com/auth/cloud-platform")
    {
        return Err("scope".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if claims["exp"].as_i64().unwrap_or(0) <= now {
        return Err("expired".into());
    }
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(PRIVATE_KEY).map_err(|e| e.to_string())?;
    let verifier =
        rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(rsa::RsaPublicKey::from(&key));
    let sig = rsa::pkcs1v15::Signature::try_from(b64url(s).ok_or("bad signature")?.as_slice())
        .map_err(|e| e.to_string())?;
    verifier
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "invalid_grant: Invalid JWT Signature.".to_owned())
}

fn handle(
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path == "/token" {
        let form: Vec<(String, String)> = url_pairs(&body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"error":"unsupported_grant_type"}"#,
            )
                .into_response();
        }
        let token_uri = format!("http://{addr}/token");
        return match verify_jwt(&get("assertion").unwrap_or_default(), &token_uri) {
            Ok(()) => {
                let mut s = state.lock().unwrap();
                let token = format!("ya29.test-access-token-{}", s.tokens_issued.len() + 1);
                s.tokens_issued.push(token.clone());
                axum::Json(
                    json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
                )
                .into_response()
            }
            Err(why) => {
                state.lock().unwrap().jwt_rejections += 1;
                (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_grant", "error_description": why}).to_string(),
                )
                    .into_response()
            }
        };
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (issued, mode) = {
        let s = state.lock().unwrap();
        (
            bearer.as_ref().is_some_and(|b| s.tokens_issued.contains(b)),
            s.mode.unwrap_or(Mode::Ok),
        )
    };
    state
        .lock()
        .unwrap()
        .calls
        .push((path.clone(), json.clone(), issued));
    if !issued {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    let prefix = format!("/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return google_error(404, "NOT_FOUND", "no such resource");
    };
    let Some((model, method)) = rest.rsplit_once(':') else {
        return google_error(404, "NOT_FOUND", "no method");
    };
    if json["anthropic_version"] != "vertex-2023-10-16" {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "anthropic_version: vertex-2023-10-16 is required",
        );
    }
    if model == "count-tokens" {
        return axum::Json(json!({"input_tokens": 17})).into_response();
    }
    if json.get("model").is_some() {
        return (StatusCode::BAD_REQUEST, r#"{"type":"error","error":{"type":"invalid_request_error","message":"model: Extra inputs are not permitted"}}"#).into_response();
    }
    if model != MODEL {
        return google_error(404, "NOT_FOUND", "Publisher model not found");
    }
    match (mode, method) {
        (Mode::Exhausted, _) => google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model"),
        (Mode::Overloaded, _) => (StatusCode::from_u16(529).unwrap(), r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#).into_response(),
        (Mode::Ok, "rawPredict") => axum::Json(json!({
            "id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "tool_use", "id": "toolu_vrtx_01", "name": "get_weather", "input": {"city": "Lyon"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 19, "output_tokens": 7}
        })).into_response(),
        (Mode::Ok, "streamRawPredict") => {
            let events = [
                ("message_start", json!({"type": "message_start", "message": {"id": "msg_vrtx_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 19, "output_tokens": 1}}})),
                ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_vrtx_02", "name": "get_weather", "input": {}}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Lyon\"}"}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 7}})),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            let text: String = events.iter().map(|(e, d)| format!("event: {e}\ndata: {d}\n\n")).collect();
            ([("content-type", "text/event-stream")], text).into_response()
        }
        _ => google_error(404, "NOT_FOUND", "no such method"),
    }
}

fn url_pairs(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
