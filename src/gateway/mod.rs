//! `seawall serve`: an Anthropic-compatible HTTP gateway that runs every request through the
//! runtime. The official SDKs point at it with `base_url` and cannot tell it from the API,
//! except that answers survive overloads, outages and rate limits.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/messages` | token | the call through its fallback chain; `"stream": true` answers SSE |
//! | `POST /v1/messages/count_tokens` | token | `Seawall::count_tokens`: the first hop's counter with the governor's key, else the heuristic |
//! | `POST /v1/chat/completions` | token | the OpenAI face: the same call on the same chain, translated at the edge (`chat.rs`); OpenAI-shaped answers, chunks and errors |
//! | `GET /v1/models`, `GET /v1/models/{id}` | token | the served models and their chains, in the OpenAI SDK's shape, or the Anthropic SDK's when it sends `anthropic-version` |
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when every chain has a model whose breaker is not open, else 503 |
//! | `GET /metrics` | token | Prometheus text: the runtime's metrics (latencies as histograms), calls in flight, every request and response by route and status |
//! | `GET /status` | token | JSON: breakers, governor buckets/keys/queues, SLA, in flight; durations in `_ms` keys; never a key |
//! | `GET /v1/seawall/jobs/{id}` | token | a queued call: `pending`, or `done` with the answer, `failed`, `expired`; `?wait=30s` waits for the outcome |
//!
//! **Client auth.** Clients present one of `[gateway] tokens` as `x-api-key: T` or
//! `Authorization: Bearer T` (the SDKs send their `api_key` so). Tokens are compared in constant
//! time and never forwarded: upstream keys come from the config and never leave the server.
//! Without tokens the gateway only serves on loopback.
//!
//! **Request headers read.** `x-stainless-timeout` (the client's own timeout, seconds) becomes
//! a non-streaming call's deadline, less a margin of a tenth, at most 1 s, so the gateway
//! answers before the client gives up (for a stream the SDK's timeout bounds each read, so a
//! stream keeps its chain's `deadline` and `first_token_timeout`); `idempotency-key` is forwarded; `seawall-lane: background` and
//! `seawall-feature: NAME` select the governor lane and bulkhead; `seawall-conversation: KEY`
//! pins a conversation to the fallback that served it until the primary's breaker closes. The client's `anthropic-version`
//! replaces the upstream's configured one and its `anthropic-beta` values follow the configured
//! ones, so server-side betas keep working behind the gateway.
//!
//! **Response headers.** `seawall-model` (who served), `seawall-source` (`live`, `replay` for an
//! idempotent repeat, `cache` or `static` when degraded, `queued` with `seawall-job-id` and HTTP
//! 202 when the call was stored for later),
//! `seawall-attempts` (upstream attempts, cancelled ones included), `seawall-hedges` (when the
//! call hedged), the upstream's `request-id` (every response has one:
//! the upstream's, or a `req_seawall_…` id for answers the gateway made), and
//! `seawall-translation-dropped` from an OpenAI-compatible hop.
//!
//! **Errors** are Anthropic-shaped (`{"type":"error","error":{"type","message"},"request_id"}`):
//!
//! | runtime answer | status | `error.type` |
//! |---|---|---|
//! | `Rejected` (a permanent upstream error) | the upstream's | the upstream's body, unchanged, with its `request-id`, `retry-after`, `x-should-retry` |
//! | `Unavailable`, the call's deadline ran out | 504 | `gateway_timeout_error` (+ `retry-after` when known) |
//! | `Unavailable`, refused early (nothing recovers in time) | 503 | `api_error` + `retry-after` (whole seconds, rounded up) and `retry-after-ms` when known |
//! | `InvalidCall`, malformed JSON | 400 | `invalid_request_error` |
//! | `UnknownModel` | 404 | `not_found_error` |
//! | `ShuttingDown` | 503 | `api_error` + `retry-after: 1` |
//! | `Internal` | 500 | `api_error` |
//! | missing or wrong client token | 401 | `authentication_error` |
//! | body over `max_body_bytes` | 413 | `request_too_large` |
//!
//! **Streaming.** A `"stream": true` request walks the chain like any other until its first
//! content event: an overload, a break or a slow first token before content falls back unseen.
//! Then the gateway answers 200 `text/event-stream` and writes each event as it arrives. A
//! break after content ends the stream with an `event: error` in the API's shape, never a
//! silent cut. When no model could start a stream, the answer is the same JSON error as for a
//! unary call, not SSE.
//!
//! **Alerts.** With `[alerts] webhook_url` (or `webhook_url_env`), [`Gateway::new`] starts a
//! task that POSTs every alert event to it as JSON (bounded retries, never in a caller's way).
//!
//! **Shutdown.** [`Gateway::serve`] stops accepting when its shutdown future resolves, lets
//! calls in flight finish for `shutdown_grace`, then stops the runtime.

mod auth;
mod chat;
mod guard;
mod messages;
pub mod metrics;
mod ops;
mod reply;
mod server;
mod trim;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use seawall_actors::{Seawall, ShutdownReport};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ClientToken, Config, ConfigError, Runtime};

pub use reply::REQUEST_ID_PREFIX;

/// How long, after the runtime drained, the server may take to write the last answers and
/// close its connections before it is cut.
const FLUSH: Duration = Duration::from_secs(5);

/// A configured gateway, ready to [`serve`](Gateway::serve). Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
}

/// A model as the gateway shows it: its chain (`/status`, `/v1/models`).
struct ModelEntry {
    chain: Vec<String>,
}

/// Everything the handlers share.
struct State {
    seawall: Seawall,
    tokens: Vec<ClientToken>,
    /// The tenant label of each token (same order): a digest, never the token.
    tenants: Vec<String>,
    /// Browser origins served without tokens.
    allowed_origins: Vec<String>,
    /// What one connection may cost.
    conn_limits: server::ConnLimits,
    /// The longest a request body may take to arrive.
    body_read_timeout: Duration,
    /// Model names in config order (for /readyz, /metrics, /status).
    order: Vec<String>,
    models: HashMap<String, ModelEntry>,
    max_body_bytes: usize,
    shutdown_grace: Duration,
    /// Time allowed to a `count_tokens` exchange.
    count_timeout: Duration,
    /// `max_tokens` of a chat request that names no limit.
    default_max_tokens: u64,
    metrics: metrics::Metrics,
    ids: Arc<reply::RequestIds>,
    /// Set when shutdown begins: /readyz answers 503.
    draining: AtomicBool,
}

/// Why [`Gateway::serve`] could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener is not on loopback and the gateway has no client tokens.
    #[error(
        "refusing to serve on {addr} without client tokens: only loopback may be served \
         unauthenticated; add [gateway] tokens"
    )]
    Unauthenticated {
        /// The listener's address.
        addr: SocketAddr,
    },
    /// The listener failed.
    #[error("the gateway's listener failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Gateway {
    /// A gateway over a runtime built from `config` (see [`Config::spawn`]). When the runtime
    /// has an alert webhook, a task forwarding its alerts starts here (inside a tokio runtime).
    pub fn new(config: &Config, runtime: Runtime) -> Self {
        let mut models = HashMap::new();
        let mut order = Vec::new();
        // The chains are the runtime's own table (built once from the config), in config order.
        for m in &config.models {
            let chain = runtime.seawall.chain_of(&m.name).unwrap_or_default();
            order.push(m.name.clone());
            models.insert(m.name.clone(), ModelEntry { chain });
        }
        let max_body_bytes = usize::try_from(config.gateway.max_body_bytes()).unwrap_or(usize::MAX);
        let tenants = runtime.tokens.iter().map(auth::tenant_label).collect();
        if let Some(hook) = runtime.alert_webhook {
            ops::spawn_alert_webhook(&runtime.seawall, hook);
        }
        Self {
            state: Arc::new(State {
                seawall: runtime.seawall,
                tokens: runtime.tokens,
                tenants,
                allowed_origins: config.gateway.allowed_origins.clone(),
                conn_limits: server::ConnLimits {
                    max_connections: config.gateway.max_connections(),
                    header_read_timeout: config.gateway.header_read_timeout(),
                    max_header_bytes: config.gateway.max_header_bytes(),
                },
                body_read_timeout: config.gateway.body_read_timeout(),
                order,
                models,
                max_body_bytes,
                shutdown_grace: config.gateway.shutdown_grace(),
                count_timeout: config.retry_defaults().attempt_timeout,
                default_max_tokens: config.gateway.default_max_tokens(),
                metrics: metrics::Metrics::default(),
                ids: Arc::new(reply::RequestIds::new()),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Spawn the runtime of `config` (keys from the process environment) and wrap it.
    ///
    /// # Errors
    ///
    /// As [`Config::spawn`].
    pub async fn start(config: &Config) -> Result<Self, ConfigError> {
        // Before the runtime exists, so its metric handles bind to the exporter.
        metrics::prometheus();
        let runtime = config.spawn().await?;
        Ok(Self::new(config, runtime))
    }

    /// Like [`Gateway::start`], with variables looked up in `env`.
    ///
    /// # Errors
    ///
    /// As [`Config::spawn`].
    pub async fn start_with_env(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // Before the runtime exists, so its metric handles bind to the exporter.
        metrics::prometheus();
        let runtime = config.spawn_with_env(env).await?;
        Ok(Self::new(config, runtime))
    }

    /// The runtime behind the gateway.
    pub fn seawall(&self) -> &Seawall {
        &self.state.seawall
    }

    /// The gateway's routes, to serve yourself or nest in a larger app.
    pub fn router(&self) -> Router {
        let state = Arc::clone(&self.state);
        let guarded = Router::new()
            .route("/v1/messages", post(messages::messages))
            .route("/v1/messages/count_tokens", post(messages::count_tokens))
            .route("/v1/chat/completions", post(chat::chat_completions))
            .route("/v1/models", get(chat::models))
            .route("/v1/models/{id}", get(chat::model))
            .route("/metrics", get(ops::metrics))
            .route("/status", get(ops::status))
            .route("/v1/seawall/jobs/{id}", get(ops::job))
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                auth::require_token,
            ));
        let open = Router::new()
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz));
        Router::new()
            .merge(guarded)
            .merge(open)
            .fallback(ops::not_found)
            .method_not_allowed_fallback(ops::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                guard::body_size,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                guard::loopback_clients,
            ))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                guard::PanicAnswer {
                    ids: Arc::clone(&state.ids),
                },
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                chat::openai_errors,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                ops::observe,
            ))
            .with_state(state)
    }

    /// Serve on `listener` until `shutdown` resolves, then drain: stop accepting, let calls in
    /// flight finish for up to `shutdown_grace`, answer them, stop the runtime.
    ///
    /// # Errors
    ///
    /// [`ServeError::Unauthenticated`] for a non-loopback listener without client tokens;
    /// [`ServeError::Io`] when the listener fails.
    pub async fn serve<F>(
        self,
        listener: TcpListener,
        shutdown: F,
    ) -> Result<ShutdownReport, ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        if self.state.tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(ServeError::Unauthenticated { addr });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = self.state.conn_limits;
        let slots = server::slots(&limits);
        let state = Arc::clone(&self.state);
        let head_too_large = Arc::new(move || {
            state.metrics.request("other");
            state.metrics.response("other", 431);
        });
        let server = server::run(
            listener,
            self.router(),
            Arc::clone(&slots),
            limits,
            head_too_large,
            stop_rx,
        );
        let mut server = tokio::spawn(server);
        // What a burst leaves behind: calls in flight and the connections that carried them.
        let seawall = self.state.seawall.clone();
        let trimmer = AbortOnDrop(trim::spawn(move || {
            seawall.in_flight() + server::open(&limits, &slots)
        }));
        tokio::select! {
            () = shutdown => {}
            ended = &mut server => {
                return match ended {
                    Ok(Ok(())) => Ok(self.state.seawall.shutdown(Duration::ZERO).await),
                    Ok(Err(e)) => Err(ServeError::Io(e)),
                    Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
                };
            }
        }
        tracing::info!(grace = ?self.state.shutdown_grace, "seawall gateway: draining");
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        stop_tx.send_replace(true);
        let report = self.state.seawall.shutdown(self.state.shutdown_grace).await;
        if tokio::time::timeout(FLUSH, &mut server).await.is_err() {
            server.abort();
        }
        tracing::info!(abandoned = report.abandoned, "seawall gateway: stopped");
        drop(trimmer);
        Ok(report)
    }
}

/// A task that ends with its owner (whichever way `serve` returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
