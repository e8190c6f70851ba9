//! HTTP pieces the loopback tests share: a plain client, a response header as text, an axum app
//! served on a free loopback port, and an SSE body split into its events.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpListener;

/// A client with no proxy and no timeout of its own (the test's bounds apply).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A response header as text.
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Serve `app` on 127.0.0.1 (a free port) in a task of its own; its address.
pub async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The `(event, data)` pairs of an SSE body: each block's `event:` line and its `data:` lines
/// joined, as JSON (a block whose data is not JSON fails the test, naming the block).
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {block}"));
            (event, data)
        })
        .collect()
}
