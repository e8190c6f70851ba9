//! The gateway's request handling, in-process (its router, in front of the simulator on
//! loopback): any header values and body a client sends on `POST /v1/messages` or
//! `/v1/messages/count_tokens` get one answer, never a 500 (a panicking handler answers 500).
//!
//! Input: one byte choosing the path, then `name: value` header lines up to a blank line
//! (`x-stainless-timeout`, `idempotency-key`, `seawall-conversation`, `anthropic-beta`, ...),
//! then the body.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use seawall::config::Config;
use seawall::gateway::Gateway;
use seawall::sim::{Scenario, Sim};
use tokio::runtime::Runtime;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-client-token-0123456789";

struct World {
    rt: Runtime,
    router: axum::Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = Runtime::new().expect("a runtime");
        let router = rt.block_on(async {
            let scenario = Scenario::from_toml("[[models]]\nname = \"m\"\n").expect("scenario");
            let sim = Sim::start(scenario, "127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("the simulator starts");
            let config = Config::from_toml(&format!(
                r#"
[[upstreams]]
name = "sim"
base_url = "{}"
api_key_env = "FUZZ_KEY"

[retry]
deadline = "500ms"
attempt_timeout = "200ms"

[[models]]
name = "m"

[gateway]
tokens = ["{TOKEN}"]
"#,
                sim.base_url()
            ))
            .expect("config");
            // The simulator lives as long as the process.
            std::mem::forget(sim);
            Gateway::start_with_env(&config, |_| Some("sk-fuzz-key-000000000001".into()))
                .await
                .expect("the gateway starts")
                .router()
        });
        World { rt, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let path = if which % 2 == 0 {
        "/v1/messages"
    } else {
        "/v1/messages/count_tokens"
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&rest[..0], rest),
    };
    let mut request = Request::post(path)
        .header("x-api-key", TOKEN)
        .header("content-type", "application/json");
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let w = world();
    let status = w
        .rt
        .block_on(w.router.clone().oneshot(request))
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_ne!(status, 500, "a handler panicked");
    assert_ne!(status, 0, "no answer");
});
