//! The simulator's Bedrock and Vertex wires (issue 22), driven by seawall's real
//! `BedrockUpstream` and `VertexUpstream`: unary answers, streams (Bedrock's event-stream frames,
//! Vertex's SSE), the counters, every fault kind in each platform's shape and what the
//! transports make of it; raw requests for what the transports never send (no credentials, a
//! wrong `anthropic_version`). Real time, millisecond settings, loopback only.
//!
//! Vertex tokens come from the Vertex fake's token endpoint (tests/support/vertex.rs, which
//! checks the service account's JWT); the simulator only asks for a bearer.

mod support;
#[path = "support/vertex.rs"]
mod vertex_fake;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use seawall::core::policy::classify::{classify, Class, Verdict};
use seawall::core::upstream::{Attempt, StreamBody, StreamResponse, Upstream, UpstreamResponse};
use seawall::core::{Backoff, BreakerConfig, Call, Jitter, Outcome, RetryPolicy, Seawall};
use seawall::sim::{estimate_input_tokens, LogEntry, Scenario, SimHandle};
use seawall::transport::{
    AwsCredentials, BedrockOptions, BedrockUpstream, GoogleCredentials, VertexOptions,
    VertexUpstream,
};
use serde_json::{json, Value};

use support::http::{header, plain_client};
use support::sim::{attempt, sim};
use vertex_fake::Vertex;

/// A Bedrock inference-profile id: `:` must go percent-encoded in the path.
const BEDROCK_ID: &str = "us.anthropic.claude-sim-v1:0";
const VERTEX_MODEL: &str = "claude-sim@20250929";
const ACCESS_KEY: &str = "AKIASIMTESTKEY000042";
const SECRET: &str = "simSECRETkey/neverSent+0042";
const WORDS: usize = 8;

/// The two platform models, each served on its own wire only, with `extra` TOML after each.
fn scenario(bedrock_extra: &str, vertex_extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{BEDROCK_ID}\"\nwires = [\"bedrock\"]\noutput_tokens = {WORDS}\n\
         {bedrock_extra}\n\
         [[models]]\nname = \"{VERTEX_MODEL}\"\nwires = [\"vertex\"]\noutput_tokens = {WORDS}\n\
         {vertex_extra}\n"
    )
}

fn body() -> Value {
    json!({"model": "ignored-by-the-transports", "max_tokens": 64,
           "system": "be brief",
           "messages": [{"role": "user", "content": "hello there, simulated platform"}]})
}

fn platform_attempt(model: &str) -> Attempt {
    attempt(
        model,
        Bytes::from(body().to_string()),
        Duration::from_secs(3),
    )
}

fn bedrock(sim: &SimHandle) -> BedrockUpstream {
    let mut options = BedrockOptions::new("us-east-1");
    options.base_url = Some(sim.base_url());
    options.connect_timeout = Duration::from_millis(500);
    options.credentials = AwsCredentials::Provider(
        aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(ACCESS_KEY, SECRET, None, None, "sim-test"),
        ),
    );
    BedrockUpstream::new(options).unwrap()
}

/// The Vertex transport at the simulator, its tokens from the fake's token endpoint.
fn vertex(sim: &SimHandle, tokens: &Vertex, name: &str) -> VertexUpstream {
    let dir = std::env::temp_dir().join(format!(
        "seawall-sim-platforms-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sa = dir.join("sa.json");
    std::fs::write(&sa, tokens.service_account_json()).unwrap();
    let mut options = VertexOptions::new(vertex_fake::PROJECT, vertex_fake::REGION);
    options.base_url = Some(sim.base_url());
    options.connect_timeout = Duration::from_millis(500);
    options.credentials = GoogleCredentials::ServiceAccountFile(sa);
    VertexUpstream::new(options).unwrap()
}

fn last(sim: &SimHandle) -> LogEntry {
    sim.log().pop().expect("a logged request")
}

/// Every event of a stream until it ends; the last item is the transport's own error, if any.
async fn drain(resp: StreamResponse) -> (Vec<(String, Value)>, Option<String>) {
    let StreamBody::Events(mut rx) = resp.body else {
        panic!("not a stream: {}", resp.status);
    };
    let mut events = Vec::new();
    while let Some(item) = rx.recv().await {
        match item {
            Ok(e) => events.push((e.event.clone(), serde_json::from_str(&e.data).unwrap())),
            Err(e) => return (events, Some(e.to_string())),
        }
    }
    (events, None)
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect()
}

fn error_type(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["error"]["type"].as_str().unwrap_or("").to_owned()
}

fn verdict(resp: &UpstreamResponse) -> Verdict {
    classify(&Ok(resp.clone()), SystemTime::now())
}

// ---------------------------------------------------------------------------------------------
// Bedrock

#[tokio::test]
async fn bedrock_answers_streams_and_counts_through_the_real_transport() {
    let sim = sim(&scenario("", "")).await;
    let up = bedrock(&sim);

    // Unary: the Messages body, usage, and Bedrock's request id as the core's.
    let r = up.send(platform_attempt(BEDROCK_ID)).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let input = estimate_input_tokens(&body()).unwrap();
    assert_eq!(v["usage"]["input_tokens"], input);
    assert_eq!(v["usage"]["output_tokens"], WORDS);
    assert_eq!(v["model"], BEDROCK_ID);
    assert!(v["id"].as_str().unwrap().starts_with("msg_bdrk_"));
    let entry = last(&sim);
    assert_eq!(r.headers.get("request-id"), entry.request_id.as_deref());
    assert_eq!(entry.path, "/model/us.anthropic.claude-sim-v1%3A0/invoke");
    assert_eq!(entry.model.as_deref(), Some(BEDROCK_ID), "the decoded id");
    assert_eq!(
        entry.key_tail.as_deref(),
        Some("0042"),
        "the access key id's tail"
    );
    assert!(!entry.stream);
    assert_eq!(
        r.headers.get("x-amzn-bedrock-output-token-count"),
        Some(WORDS.to_string().as_str())
    );

    // Streamed: event-stream frames, decoded back into the Anthropic events they carry.
    let s = up.send_stream(platform_attempt(BEDROCK_ID)).await.unwrap();
    assert_eq!(s.status, 200);
    let (events, broke) = drain(s).await;
    assert_eq!(broke, None);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert_eq!(text_of(&events).split(' ').count(), WORDS);
    let metrics = &events.last().unwrap().1["amazon-bedrock-invocationMetrics"];
    assert_eq!(metrics["inputTokenCount"], input);
    assert_eq!(metrics["outputTokenCount"], WORDS);
    let entry = last(&sim);
    assert!(entry.stream && entry.path.ends_with("/invoke-with-response-stream"));
    assert_eq!(entry.outcome, "ok");

    // CountTokens: the simulator's own count of the wrapped InvokeModel body.
    let n = up
        .count_tokens(platform_attempt(BEDROCK_ID))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(n, input);
    assert!(last(&sim).path.ends_with("/count-tokens"));

    // A model served on Bedrock only is unknown on the other wires, and the other way round.
    let resp = plain_client()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", "sk-sim-test-key-aaaa")
        .json(&json!({"model": BEDROCK_ID, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let r = up.send(platform_attempt(VERTEX_MODEL)).await.unwrap();
    assert_eq!(
        r.status, 404,
        "the transport's mapping of ResourceNotFoundException"
    );
    assert_eq!(error_type(&r.body), "not_found_error");
}

#[tokio::test]
async fn bedrock_status_faults_arrive_as_bedrock_errors_the_transport_classifies() {
    let sim = sim(&scenario("", "")).await;
    let up = bedrock(&sim);
    // (fault status, what Bedrock sends, its exception, what the transport makes of it)
    let cases = [
        (429, 429, "ThrottlingException", 429, "rate_limit_error"),
        (529, 503, "ServiceUnavailableException", 503, "api_error"),
        (503, 503, "ServiceUnavailableException", 503, "api_error"),
        (500, 500, "InternalServerException", 500, "api_error"),
        (
            400,
            400,
            "ValidationException",
            400,
            "invalid_request_error",
        ),
    ];
    for (fault, sent, exception, mapped, kind) in cases {
        let extra =
            format!("[[models.faults]]\nkind = \"status\"\nstatus = {fault}\nretry_after = 1\n");
        sim.set_scenario(Scenario::from_toml(&scenario(&extra, "")).unwrap())
            .unwrap();
        // On the wire: Bedrock's status, x-amzn-ErrorType and {"message"}, never a retry-after.
        let resp = plain_client()
            .post(format!(
                "{}/model/us.anthropic.claude-sim-v1%3A0/invoke",
                sim.base_url()
            ))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"),
            )
            .header("x-amz-date", "20250101T000000Z")
            .json(&json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), sent, "{fault}");
        let error_type_header = header(&resp, "x-amzn-errortype").unwrap_or_default();
        assert!(
            error_type_header.starts_with(&format!("{exception}:")),
            "{error_type_header}"
        );
        assert_eq!(
            header(&resp, "retry-after"),
            None,
            "Bedrock sends no retry-after"
        );
        assert!(header(&resp, "x-amzn-requestid").is_some());
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].is_string() && v.get("type").is_none(), "{v}");
        // Through the transport: the Anthropic error it means, classified by the core's rules.
        let r = up.send(platform_attempt(BEDROCK_ID)).await.unwrap();
        assert_eq!(r.status, mapped, "{fault}");
        assert_eq!(error_type(&r.body), kind, "{fault}");
        assert_eq!(last(&sim).status, Some(sent));
        match verdict(&r) {
            Verdict::Retryable { class, hint } if fault == 429 => {
                assert_eq!((class, hint), (Class::RateLimited, None));
            }
            Verdict::Retryable { class, .. } if fault != 400 => {
                assert_eq!(class, Class::ServerError, "{fault}");
            }
            Verdict::Permanent { class, .. } if fault == 400 => {
                assert_eq!(class, Class::InvalidRequest);
            }
            other => panic!("{fault}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_throttled_bedrock_model_is_backed_off_and_retried_until_it_answers() {
    // Throttled for its first 150 ms: the runtime backs off (no retry-after to go by) and
    // tries again on the same hop until the window is over.
    let sim = sim(&scenario(
        "[[models.faults]]\nkind = \"status\"\nstatus = 429\nuntil = \"150ms\"\n",
        "",
    ))
    .await;
    let sw = Seawall::builder()
        .upstream("bedrock", bedrock(&sim))
        .model("sonnet-bedrock", BreakerConfig::default())
        .model_id("sonnet-bedrock", BEDROCK_ID)
        .chain_with(
            "sonnet-bedrock",
            ["sonnet-bedrock"],
            RetryPolicy {
                backoff: Backoff {
                    base: Duration::from_millis(20),
                    cap: Duration::from_millis(60),
                    max_attempts: 50,
                    jitter: Jitter::Full,
                },
                deadline: Duration::from_secs(5),
                attempt_timeout: Duration::from_secs(1),
                max_attempts: 50,
                ..RetryPolicy::default()
            },
        )
        .spawn()
        .await
        .unwrap();
    sim.reset();
    let reply = sw
        .complete(Call::new("sonnet-bedrock", 16).user("hello"))
        .await
        .expect("answered once the throttling ends");
    assert_eq!(reply.model, "sonnet-bedrock");
    let throttled = reply
        .trail
        .iter()
        .filter(|s| {
            matches!(
                s.outcome,
                Outcome::Attempted {
                    status: Some(429),
                    class: Class::RateLimited,
                    ..
                }
            )
        })
        .count();
    assert!(throttled >= 1, "{:?}", reply.trail);
    assert!(matches!(
        reply.trail.last().map(|s| &s.outcome),
        Some(Outcome::Attempted {
            class: Class::Success,
            ..
        })
    ));
    let log = sim.log();
    assert_eq!(log.len(), throttled + 1, "{log:?}");
    assert!(log[..throttled].iter().all(|e| e.status == Some(429)));
    assert_eq!(log[throttled].status, Some(200));
    assert!(
        log[throttled].at_ms >= 150,
        "the retry that answered came after the window"
    );
    sw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_bedrock_stream_that_breaks_after_content_ends_with_an_error_event() {
    for (status, kind) in [(529, "api_error"), (429, "rate_limit_error")] {
        let sim = sim(&scenario(
            &format!(
                "[[models.faults]]\nkind = \"mid_stream_error\"\nstatus = {status}\nafter_deltas = 2\n"
            ),
            "",
        ))
        .await;
        let up = bedrock(&sim);
        // A unary request is not affected by a mid-stream fault.
        assert_eq!(
            up.send(platform_attempt(BEDROCK_ID)).await.unwrap().status,
            200
        );
        let s = up.send_stream(platform_attempt(BEDROCK_ID)).await.unwrap();
        assert_eq!(s.status, 200);
        let (events, broke) = drain(s).await;
        assert_eq!(
            broke, None,
            "an exception frame is an error event, not a broken body"
        );
        assert_eq!(text_of(&events), "The simulated");
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{events:?}");
        assert_eq!(data["error"]["type"], kind, "{status}");
        let exception = if status == 429 {
            "throttlingException"
        } else {
            "modelStreamErrorException"
        };
        assert!(
            data["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(exception),
            "{data}"
        );
        assert!(!events.iter().any(|(n, _)| n == "message_stop"));
        assert_eq!(last(&sim).outcome, "mid_stream_error");
    }
}

#[tokio::test]
async fn bedrock_wants_a_signature_header_and_its_own_body() {
    let sim = sim(&scenario("", "")).await;
    let url = format!(
        "{}/model/us.anthropic.claude-sim-v1%3A0/invoke",
        sim.base_url()
    );
    let good = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/us-east-1/bedrock/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=abc"
    );
    let send = |auth: Option<&str>, date: bool, body: &Value| {
        let mut req = plain_client().post(&url).json(body);
        if let Some(a) = auth {
            req = req.header("authorization", a.to_owned());
        }
        if date {
            req = req.header("x-amz-date", "20250101T000000Z");
        }
        req.send()
    };
    for (auth, date, exception) in [
        (None, true, "MissingAuthenticationTokenException"),
        (
            Some("Bearer sk-not-sigv4-0000"),
            true,
            "IncompleteSignatureException",
        ),
        (Some(auth.as_str()), false, "IncompleteSignatureException"),
    ] {
        let resp = send(auth, date, &good).await.unwrap();
        assert_eq!(resp.status(), 403, "{exception}");
        assert!(header(&resp, "x-amzn-errortype")
            .unwrap()
            .starts_with(exception));
        assert_eq!(last(&sim).outcome, "unauthenticated");
    }
    let resp = send(Some(&auth), true, &good).await.unwrap();
    assert_eq!(resp.status(), 200);
    for (bad, why) in [
        (
            json!({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            "anthropic_version",
        ),
        (
            json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}),
            "bedrock-2023-05-31",
        ),
        (
            json!({"anthropic_version": "bedrock-2023-05-31", "model": BEDROCK_ID, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}),
            "[model]",
        ),
        (
            json!({"anthropic_version": "bedrock-2023-05-31", "stream": true, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}),
            "[stream]",
        ),
    ] {
        let resp = send(Some(&auth), true, &bad).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert!(header(&resp, "x-amzn-errortype")
            .unwrap()
            .starts_with("ValidationException"));
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
        assert_eq!(last(&sim).outcome, "invalid_request");
    }
    // An unknown operation is Bedrock's 404, not the Messages API's.
    let resp = plain_client()
        .post(format!("{}/model/x/converse", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(header(&resp, "x-amzn-errortype").is_some());
}

// ---------------------------------------------------------------------------------------------
// Vertex

#[tokio::test]
async fn vertex_answers_streams_and_counts_through_the_real_transport() {
    let sim = sim(&scenario("", "")).await;
    let tokens = Vertex::start().await;
    let up = vertex(&sim, &tokens, "ok");

    let r = up.send(platform_attempt(VERTEX_MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let input = estimate_input_tokens(&body()).unwrap();
    assert_eq!(v["usage"]["input_tokens"], input);
    assert_eq!(v["usage"]["output_tokens"], WORDS);
    let entry = last(&sim);
    assert_eq!(
        entry.path,
        format!(
            "/v1/projects/{}/locations/{}/publishers/anthropic/models/{VERTEX_MODEL}:rawPredict",
            vertex_fake::PROJECT,
            vertex_fake::REGION
        )
    );
    assert_eq!(entry.model.as_deref(), Some(VERTEX_MODEL));
    assert_eq!(
        tokens.tokens_issued().len(),
        1,
        "a token from the JWT exchange"
    );

    let s = up
        .send_stream(platform_attempt(VERTEX_MODEL))
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let (events, broke) = drain(s).await;
    assert_eq!(broke, None);
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert_eq!(text_of(&events).split(' ').count(), WORDS);
    assert!(last(&sim).path.ends_with(":streamRawPredict") && last(&sim).stream);

    let n = up
        .count_tokens(platform_attempt(VERTEX_MODEL))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(n, input);
    let entry = last(&sim);
    assert!(entry.path.ends_with("/models/count-tokens:rawPredict"));
    assert_eq!(
        entry.model.as_deref(),
        Some(VERTEX_MODEL),
        "named by the body"
    );
    assert_eq!(tokens.tokens_issued().len(), 1, "the token is cached");

    // Served on Vertex only: the Bedrock id is not found here, in Google's shape.
    let r = up.send(platform_attempt(BEDROCK_ID)).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_type(&r.body), "not_found_error");
}

#[tokio::test]
async fn vertex_faults_arrive_in_googles_shape_or_as_the_models_own_529() {
    let sim = sim(&scenario("", "")).await;
    let tokens = Vertex::start().await;
    let up = vertex(&sim, &tokens, "faults");
    let url = format!(
        "{}/v1/projects/p/locations/us-east5/publishers/anthropic/models/{VERTEX_MODEL}:rawPredict",
        sim.base_url()
    );
    let good = json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    // (fault status, Google status or None for Anthropic's shape, the transport's type, class)
    let cases = [
        (
            429,
            Some("RESOURCE_EXHAUSTED"),
            "rate_limit_error",
            Class::RateLimited,
        ),
        (503, Some("UNAVAILABLE"), "api_error", Class::ServerError),
        (529, None, "overloaded_error", Class::Overloaded),
    ];
    for (fault, google, kind, class) in cases {
        let extra =
            format!("[[models.faults]]\nkind = \"status\"\nstatus = {fault}\nretry_after = 2\n");
        sim.set_scenario(Scenario::from_toml(&scenario("", &extra)).unwrap())
            .unwrap();
        let resp = plain_client()
            .post(&url)
            .bearer_auth("ya29.sim-token")
            .json(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), fault);
        assert_eq!(
            header(&resp, "retry-after"),
            None,
            "Vertex sends no retry-after"
        );
        let v: Value = resp.json().await.unwrap();
        match google {
            Some(g) => {
                assert_eq!(v["error"]["status"], g, "{v}");
                assert_eq!(v["error"]["code"], fault);
            }
            None => assert_eq!(v["error"]["type"], "overloaded_error", "{v}"),
        }
        let r = up.send(platform_attempt(VERTEX_MODEL)).await.unwrap();
        assert_eq!(r.status, fault);
        assert_eq!(error_type(&r.body), kind, "{fault}");
        match verdict(&r) {
            Verdict::Retryable { class: c, hint } => {
                assert_eq!(c, class, "{fault}");
                assert_eq!(hint, None, "{fault}: no retry-after to go by");
            }
            other => panic!("{fault}: {other:?}"),
        }
    }

    // A stream that breaks after content: the Anthropic error event, passed through.
    let extra = "[[models.faults]]\nkind = \"mid_stream_error\"\nafter_deltas = 3\n";
    sim.set_scenario(Scenario::from_toml(&scenario("", extra)).unwrap())
        .unwrap();
    let (events, broke) = drain(
        up.send_stream(platform_attempt(VERTEX_MODEL))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(broke, None);
    assert_eq!(text_of(&events).split(' ').count(), 3);
    let (name, data) = events.last().unwrap();
    assert_eq!(
        (name.as_str(), data["error"]["type"].as_str()),
        ("error", Some("overloaded_error"))
    );

    // No bearer: Google's 401; the wrong anthropic_version: the model's 400.
    let resp = plain_client().post(&url).json(&good).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    let resp = plain_client()
        .post(&url)
        .bearer_auth("ya29.sim-token")
        .json(
            &json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vertex-2023-10-16"),
        "{v}"
    );
}

#[tokio::test]
async fn one_model_without_wires_is_the_same_model_on_every_wire() {
    // No `wires`: its faults, limits and counts apply whichever wire a request comes by.
    let sim = sim("[[models]]\nname = \"shared\"\noutput_tokens = 4\n\
         [models.limits]\nrequests_per_minute = 2\n")
    .await;
    let tokens = Vertex::start().await;
    let b = bedrock(&sim);
    let v = vertex(&sim, &tokens, "shared");
    assert_eq!(
        b.send(platform_attempt("shared")).await.unwrap().status,
        200
    );
    assert_eq!(
        v.send(platform_attempt("shared")).await.unwrap().status,
        200
    );
    // The third request of the minute is over the shared limit, on either wire.
    let r = b.send(platform_attempt("shared")).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.headers.get("retry-after"), None);
    let r = v.send(platform_attempt("shared")).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(error_type(&r.body), "rate_limit_error");
    let resp = plain_client()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", "sk-sim-test-key-aaaa")
        .json(&json!({"model": "shared", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(
        header(&resp, "retry-after").is_some(),
        "the Anthropic wire says when"
    );
    assert_eq!(sim.count("shared"), 5);
    let outcomes: Vec<String> = sim.log().into_iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        ["ok", "ok", "rate_limited", "rate_limited", "rate_limited"]
    );
}
