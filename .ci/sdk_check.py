# The official OpenAI and Anthropic Python SDKs against `seawall serve` (the OpenAI face and the
# Messages face), over a small scripted Messages API. Not part of .ci/run (it needs PyPI):
#   pip install openai anthropic && cargo build && python3 .ci/sdk_check.py target/debug/seawall
# It writes its config and the gateway log under /tmp/sdkcheck/.
import json, os, subprocess, sys, threading, time, http.server, socket
import openai, anthropic

def fake_messages():
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            last = body["messages"][-1]
            answered = isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"])
            if body.get("tools") and not answered:
                blocks = [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "toolu_1", "name": body["tools"][0]["name"], "input": {"city": "Paris"}}]
                stop = "tool_use"
            else:
                blocks = [{"type": "text", "text": "It is 18C in Paris." if answered else "Hello from the fake."}]
                stop = "end_turn"
            if body.get("stream"):
                out = []
                ev = lambda e, d: out.append(f"event: {e}\ndata: {json.dumps(d)}\n\n")
                ev("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 1}}})
                for i, b in enumerate(blocks):
                    if b["type"] == "text":
                        ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                        ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": b["text"]}})
                    else:
                        ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}})
                        s = json.dumps(b["input"])
                        ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": s[:5]}})
                        ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": s[5:]}})
                    ev("content_block_stop", {"type": "content_block_stop", "index": i})
                ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 7}})
                ev("message_stop", {"type": "message_stop"})
                data = "".join(out).encode()
                self.send_response(200); self.send_header("content-type", "text/event-stream"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
            else:
                data = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 7}}).encode()
                self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_port

up = fake_messages()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cfg = f'''
listen = "127.0.0.1:{port}"
[[upstreams]]
name = "fake"
base_url = "http://127.0.0.1:{up}"
api_key_env = "FAKE_KEY"
[[models]]
name = "claude-sonnet-4-5"
[gateway]
tokens = ["sdk-check-token-000000001"]
'''
os.makedirs("/tmp/sdkcheck", exist_ok=True)
open("/tmp/sdkcheck/gw.toml", "w").write(cfg)
proc = subprocess.Popen([sys.argv[1], "serve", "--config", "/tmp/sdkcheck/gw.toml"], env={**os.environ, "FAKE_KEY": "sk-ant-fake-000000000000"}, stdout=subprocess.DEVNULL, stderr=open("/tmp/sdkcheck/gw.log", "w"))
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
    except OSError: time.sleep(0.1)
base = f"http://127.0.0.1:{port}"
c = openai.OpenAI(base_url=base + "/v1", api_key="sdk-check-token-000000001", max_retries=0)
ok = []
try:
    r = c.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=32)
    assert r.choices[0].message.content == "Hello from the fake.", r; ok.append("unary")
    chunks = list(c.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from the fake."
    assert chunks[-1].usage.prompt_tokens == 20 and chunks[-1].usage.completion_tokens == 7; ok.append("stream+usage")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.chat.completions.create(model="claude-sonnet-4-5", messages=msgs, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    msgs += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
    r2 = c.chat.completions.create(model="claude-sonnet-4-5", messages=msgs, tools=tools)
    assert r2.choices[0].message.content == "It is 18C in Paris."; ok.append("tool round trip")
    # streamed tool call, accumulated with the SDK's own stream helper
    with c.chat.completions.stream(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Weather?"}], tools=tools) as s:
        final = s.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert json.loads(tc.function.arguments) == {"city": "Paris"} and final.choices[0].finish_reason == "tool_calls", final; ok.append("streamed tool call (SDK accumulator)")
    try:
        c.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}])
        raise SystemExit("no error")
    except openai.BadRequestError as e:
        assert e.body["param"] == "messages[1].tool_call_id", e.body; ok.append("BadRequestError")
    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong-token-0000000000", max_retries=0).chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
        raise SystemExit("no error")
    except openai.AuthenticationError: ok.append("AuthenticationError")
    try:
        c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
        raise SystemExit("no error")
    except openai.NotFoundError: ok.append("NotFoundError")
    assert [m.id for m in c.models.list()] == ["claude-sonnet-4-5"]; ok.append("models.list")
    assert c.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"; ok.append("models.retrieve")
    a = anthropic.Anthropic(base_url=base, api_key="sdk-check-token-000000001", max_retries=0)
    assert [m.id for m in a.models.list()] == ["claude-sonnet-4-5"]; ok.append("anthropic models.list")
    m = a.messages.create(model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == "Hello from the fake."; ok.append("anthropic messages")
finally:
    proc.terminate(); proc.wait(10)
print("OK:", ", ".join(ok))
