-- wrk script: the fixed Messages request of examples/gateway_load.rs, to cross-check its
-- generator. Start the targets with
--   cargo run --release --example gateway_load -- --phases serve --seconds 120
-- then, with the addresses it prints:
--   wrk -t1 -c16 -d10s --latency -s benches/wrk_messages.lua http://127.0.0.1:GATEWAY_PORT/v1/messages
wrk.method = "POST"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Say hello in five words."}]}'
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "load-bench-client-token-0001"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["accept"] = "application/json"

-- wrk itself reports "Non-2xx or 3xx responses"; no response() callback, which would slow it.
