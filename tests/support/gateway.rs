//! The gateway harness shared by the gateway test binaries: the gateway on 127.0.0.1:0
//! in-process, the simulator (or a capturing axum server) as its upstream, reqwest as the client
//! speaking what the official SDK sends. Real time, millisecond settings.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use seawall::config::Config;
use seawall::core::ShutdownReport;
use seawall::gateway::{Gateway, ServeError};

/// The upstream key: lives in the (fake) environment, must never reach a client.
pub const KEY: &str = "sk-ant-api03-UPSTREAMSECRET-gateway-0001";
/// The gateway's client token: must never reach the upstream.
pub const TOKEN: &str = "client-token-GATEWAYSECRET-0001";
/// A second client token: another tenant.
pub const TOKEN_B: &str = "client-token-GATEWAYSECRET-0002";

/// One model, answering in 5 ms.
pub const ONE_MODEL_SIM: &str = r#"
[[models]]
name = "m"
latency = "5ms"
"#;

#[allow(unused_imports)] // not every binary that includes the harness starts a simulator
pub use super::sim::sim;

/// One upstream at `base_url`, fast retry settings, then `rest` (models, [gateway], ...).
pub fn config(base_url: &str, rest: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "sim"
base_url = "{base_url}"
api_key_env = "SIM_KEY"
connect_timeout = "500ms"

[retry]
deadline = "3s"
attempt_timeout = "1s"
min_attempt = "20ms"

[retry.backoff]
base = "50ms"
cap = "400ms"

{rest}
"#
    )
}

/// A `[gateway]` section with the client token, then `extra`.
pub fn gateway_section(extra: &str) -> String {
    format!("[gateway]\ntokens = [\"{TOKEN}\"]\nshutdown_grace = \"5s\"\n{extra}\n")
}

/// A gateway serving on loopback.
pub struct Gw {
    pub url: String,
    pub addr: SocketAddr,
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<ShutdownReport, ServeError>>>,
}

impl Gw {
    /// Start a gateway from a config text.
    pub async fn start(toml: &str) -> Self {
        Self::start_with_keys(toml, &[]).await
    }

    /// Start a gateway from a config text, with more key variables than `SIM_KEY`.
    pub async fn start_with_keys(toml: &str, keys: &[(&str, &str)]) -> Self {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let gateway = Gateway::start_with_env(&config, move |v| {
            if v == "SIM_KEY" {
                return Some(KEY.to_owned());
            }
            keys.iter()
                .find(|(k, _)| k == v)
                .map(|(_, val)| val.clone())
        })
        .await
        .unwrap();
        Self::from_gateway(gateway).await
    }

    /// Serve an already started gateway on loopback.
    pub async fn from_gateway(gateway: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(gateway.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            url: format!("http://{addr}"),
            addr,
            gateway,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Signal shutdown and wait for the server to finish draining.
    pub async fn shutdown(&mut self) -> ShutdownReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = self.server.take().expect("not shut down yet");
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("the server stops")
            .expect("no panic")
            .expect("serve ends cleanly")
    }
}

/// A client with a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A minimal Messages request for `model`.
pub fn body(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello through the gateway"}],
    })
}

/// POST `body` to `path` with `token` as `x-api-key`.
pub async fn post(gw: &Gw, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = client().post(format!("{}{path}", gw.url)).json(body);
    if let Some(t) = token {
        req = req.header("x-api-key", t);
    }
    req.send().await.unwrap()
}

/// GET `path` with `token` as a bearer token.
pub async fn get(gw: &Gw, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(format!("{}{path}", gw.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

pub use super::http::header;

/// An Anthropic error body; its `request_id` equals the `request-id` header.
pub async fn api_error(resp: reqwest::Response, status: u16, kind: &str) -> (Value, String) {
    assert_eq!(resp.status(), status);
    let rid = header(&resp, "request-id").expect("every response has a request-id");
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["request_id"], rid.as_str(), "{v}");
    (v, rid)
}

/// No secret (nor a long piece of one) in `text`.
pub fn assert_no_secret(text: &str) {
    for secret in [KEY, TOKEN, TOKEN_B] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
        // No long piece of it either (a key label shows at most its last four characters).
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(8) {
            let piece: String = w.iter().collect();
            assert!(
                !text.contains(&piece),
                "{piece:?} of a secret leaked: {text}"
            );
        }
    }
}

/// What a capturing upstream saw: each request's headers and body.
pub type Captured = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// An upstream that answers every `/v1/messages` (and `count_tokens`) with a fixed message and
/// keeps what it was sent.
pub async fn capture_upstream() -> (String, Captured) {
    let seen: Captured = Arc::default();
    let log = Arc::clone(&seen);
    let count_log = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/v1/messages",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let log = Arc::clone(&log);
                async move {
                    log.lock().unwrap().push((headers, body));
                    (
                        [
                            ("content-type", "application/json"),
                            ("request-id", "req_capture_0001"),
                            ("anthropic-organization-id", "org-private"),
                        ],
                        r#"{"id":"msg_01","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#,
                    )
                }
            }),
        )
        .route(
            "/v1/messages/count_tokens",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let log = Arc::clone(&count_log);
                async move {
                    log.lock().unwrap().push((headers, body));
                    (
                        [("content-type", "application/json")],
                        r#"{"input_tokens":7}"#,
                    )
                }
            }),
        );
    let addr = super::http::serve_app(app).await;
    (format!("http://{addr}"), seen)
}
