//! The gateway's OpenAI face over real loopback HTTP: a Rust OpenAI client (async-openai) and
//! requests recorded from the official Python SDK, against the gateway in-process, the scripted
//! Messages API fake behind it (which checks the wire as the API does). Real time, millisecond
//! settings.

mod support;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    CreateChatCompletionResponse, CreateChatCompletionStreamResponse, FinishReason,
};
use async_openai::types::models::ListModelResponse;
use async_openai::Client;
use futures_util::StreamExt;
use serde_json::{json, Value};

use support::agents::{anthropic_fake, Fake, CITY, WEATHER};
use support::gateway::*;
use support::http::header;

fn face_config(base_url: &str, extra_gateway: &str) -> String {
    config(
        base_url,
        &format!(
            "[[models]]\nname = \"claude-sonnet-4-5\"\n{}",
            gateway_section(extra_gateway)
        ),
    )
}

async fn face(extra_gateway: &str) -> (Gw, Fake) {
    let (base, fake) = anthropic_fake().await;
    let gw = Gw::start(&face_config(&base, extra_gateway)).await;
    (gw, fake)
}

fn sdk(gw: &Gw, token: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", gw.url))
            .with_api_key(token),
    )
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}])
}

async fn create(
    client: &Client<OpenAIConfig>,
    body: Value,
) -> Result<CreateChatCompletionResponse, OpenAIError> {
    client.chat().create_byot(body).await
}

/// The chunks of a stream, in order.
async fn stream(
    client: &Client<OpenAIConfig>,
    body: Value,
) -> Vec<CreateChatCompletionStreamResponse> {
    let mut s = client
        .chat()
        .create_stream_byot::<Value, CreateChatCompletionStreamResponse>(body)
        .await
        .expect("the stream starts");
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a chunk in time")
    {
        out.push(chunk.expect("a well-formed chunk"));
    }
    out
}

fn status_of(err: &OpenAIError) -> (u16, Option<String>, String) {
    match err {
        OpenAIError::ApiError(e) => (
            e.status_code.as_u16(),
            e.api_error.param.clone(),
            e.api_error.message.clone(),
        ),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_and_a_streamed_answer_reach_the_openai_client() {
    let (gw, fake) = face("").await;
    let client = sdk(&gw, TOKEN);
    let answer = create(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(answer.object, "chat.completion");
    assert_eq!(answer.model, "claude-sonnet-4-5");
    let choice = &answer.choices[0];
    assert_eq!(
        choice.message.content.as_deref(),
        Some("Hello from the fake.")
    );
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = answer.usage.as_ref().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (21, 9));
    let sent = &fake.bodies()[0];
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Say hi"}])
    );

    let chunks = stream(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_completion_tokens": 32, "stream": true,
               "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    let text: String = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.content.clone())
        .collect();
    assert_eq!(text, "Hello from the fake.");
    let finish: Vec<_> = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.finish_reason)
        .collect();
    assert_eq!(finish, [FinishReason::Stop]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty(), "the usage chunk comes last");
    let usage = last.usage.as_ref().expect("usage was asked for");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (21, 9));
    assert_eq!(fake.bodies()[1]["stream"], true);
    assert_eq!(fake.bodies()[1]["max_tokens"], 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tool_round_trip_unary_and_streamed() {
    let (gw, fake) = face("").await;
    let client = sdk(&gw, TOKEN);
    let ask = json!({"role": "user", "content": "Weather in Paris?"});
    let first = create(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 128, "tools": weather_tool(),
               "tool_choice": "auto", "messages": [ask]}),
    )
    .await
    .unwrap();
    let choice = &first.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.clone().expect("a tool call");
    let async_openai::types::chat::ChatCompletionMessageToolCalls::Function(call) = &calls[0]
    else {
        panic!("a function call: {calls:?}");
    };
    assert_eq!(call.function.name, "get_weather");
    let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(args, json!({"city": CITY}));
    assert_eq!(
        fake.bodies()[0]["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(fake.bodies()[0]["tool_choice"], json!({"type": "auto"}));

    // The next turn: the call and its result, as the SDK sends them back.
    let turn = json!([ask,
        {"role": "assistant", "content": choice.message.content, "tool_calls": [{"id": call.id,
            "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]);
    let second = create(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 128, "tools": weather_tool(), "messages": turn}),
    )
    .await
    .unwrap();
    assert_eq!(second.choices[0].message.content.as_deref(), Some(WEATHER));
    let sent = &fake.bodies()[1];
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": CITY}}])
    );
    assert_eq!(
        sent["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}])
    );

    // The same round trip streamed: the call arrives in pieces that join into its arguments.
    let chunks = stream(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 128, "stream": true,
               "tools": weather_tool(), "messages": [ask]}),
    )
    .await;
    let pieces: Vec<_> = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.tool_calls.clone())
        .flatten()
        .collect();
    let id = pieces
        .iter()
        .find_map(|p| p.id.clone())
        .expect("the call's id");
    let name = pieces
        .iter()
        .find_map(|p| p.function.as_ref().and_then(|f| f.name.clone()));
    let arguments: String = pieces
        .iter()
        .filter_map(|p| p.function.as_ref().and_then(|f| f.arguments.clone()))
        .collect();
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert!(pieces.iter().all(|p| p.index == 0));
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": CITY})
    );
    let finish = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .find_map(|c| c.finish_reason);
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    let turn = json!([ask,
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}]);
    let chunks = stream(
        &client,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 128, "stream": true,
               "tools": weather_tool(), "messages": turn}),
    )
    .await;
    let text: String = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.content.clone())
        .collect();
    assert_eq!(text, WEATHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_limit_gets_the_configured_default() {
    let (gw, fake) = face("default_max_tokens = 777").await;
    create(
        &sdk(&gw, TOKEN),
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(fake.bodies()[0]["max_tokens"], 777);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_in_openais_shape_with_the_statuses_the_sdk_maps() {
    let (gw, fake) = face("").await;
    let client = sdk(&gw, TOKEN);
    // A tool message that answers no call: a 400 naming the field, nothing sent upstream.
    let err = create(
        &client,
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "call_nope", "content": "r"}]}),
    )
    .await
    .unwrap_err();
    let (status, param, message) = status_of(&err);
    assert_eq!(status, 400);
    assert_eq!(param.as_deref(), Some("messages[1].tool_call_id"));
    assert!(message.contains("call_nope"), "{message}");
    // An image that is neither data nor http(s).
    let err = create(
        &client,
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status_of(&err).1.as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    assert_eq!(fake.count(), 0, "nothing invalid reached the upstream");

    // The wrong token: 401 (AuthenticationError), in OpenAI's shape.
    let err = create(
        &sdk(&gw, "not-a-token"),
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(status_of(&err).0, 401);
    // An unknown model: 404 (NotFoundError).
    let err = create(
        &client,
        json!({"model": "gpt-nonexistent", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .unwrap_err();
    let (status, _, message) = status_of(&err);
    assert_eq!(status, 404);
    assert!(message.contains("gpt-nonexistent"), "{message}");

    // An overloaded upstream until the client's deadline: a 5xx with OpenAI's body, the
    // retry hint kept, the key nowhere.
    fake.fail(true);
    let resp = client_raw()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(TOKEN)
        .header("x-stainless-timeout", "0.5")
        .json(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert!(status >= 500, "{status}");
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"].get("param").is_some(), "OpenAI's shape: {v}");
    assert!(v.get("type").is_none(), "not the Anthropic shape: {v}");
    assert_no_secret(&text);
}

fn client_raw() -> reqwest::Client {
    support::http::plain_client()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_list_is_the_chains_in_each_sdks_shape() {
    let (gw, _fake) = face("").await;
    let list: ListModelResponse = sdk(&gw, TOKEN).models().list_byot().await.unwrap();
    assert_eq!(list.object, "list");
    let ids: Vec<_> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["claude-sonnet-4-5"]);
    let raw: Value = client_raw()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["data"][0]["seawall_chain"],
        json!(["claude-sonnet-4-5"])
    );
    // The Anthropic SDK lists models at the same path, and says so with anthropic-version.
    let anthropic: Value = client_raw()
        .get(format!("{}/v1/models", gw.url))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["data"][0]["type"], "model");
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["first_id"], "claude-sonnet-4-5");
    let one = client_raw()
        .get(format!("{}/v1/models/nope", gw.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 404);
    let v: Value = one.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

/// A request recorded from the official OpenAI Python SDK (tests/fixtures/openai_sdk).
fn recorded(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/openai_sdk/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recorded_from_the_python_sdk_are_served() {
    let (gw, fake) = face("").await;
    for name in [
        "unary",
        "stream_usage",
        "tools_no_max_tokens",
        "tool_result",
        "stream_image_tool_choice",
        "models",
    ] {
        let r = recorded(name);
        let url = format!("{}{}", gw.url, r["path"].as_str().unwrap());
        let mut req = match r["method"].as_str() {
            Some("GET") => client_raw().get(url),
            _ => client_raw().post(url).body(r["body"].to_string()),
        };
        for (k, v) in r["headers"].as_object().unwrap() {
            let v = v.as_str().unwrap().replace("TOKEN", TOKEN);
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let streamed = r["body"]["stream"] == true;
        if streamed {
            assert!(header(&resp, "content-type")
                .unwrap()
                .starts_with("text/event-stream"));
        }
        let text = resp.text().await.unwrap();
        if streamed {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{name}: {text}");
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if line != "[DONE]" {
                    let c: CreateChatCompletionStreamResponse = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
                    assert_eq!(c.object, "chat.completion.chunk");
                }
            }
        } else if name == "models" {
            let _: ListModelResponse = serde_json::from_str(&text).unwrap();
        } else {
            let c: CreateChatCompletionResponse =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
            assert_eq!(c.object, "chat.completion");
        }
    }
    let sent = fake.bodies();
    // tools_no_max_tokens: the default limit; stream_image_tool_choice: the image as base64,
    // the named tool choice.
    assert_eq!(sent[2]["max_tokens"], 4096);
    assert_eq!(
        sent[4]["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        sent[4]["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": "iVBORw0KGgo="}})
    );
}
