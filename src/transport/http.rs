//! The HTTP layer both transports share: one reqwest client setup (no redirects, no proxy from
//! the environment, a bounded idle pool, seawall's user agent), the header they both send, and
//! what a reqwest error means as a [`TransportError`]: which way the exchange broke.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::HeaderName;
use seawall_actors::upstream::TransportError;

use super::TransportSetupError;

/// The header both transports send a call's idempotency key in.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The `user-agent` of every request: `seawall/<version>`.
pub(crate) const USER_AGENT: &str = concat!("seawall/", env!("CARGO_PKG_VERSION"));

/// Idle connections kept per upstream host. A burst of N concurrent calls over HTTP/1.1 opens N
/// connections; keeping them all for `pool_idle_timeout` held ~26 KB each after the burst (issue
/// 14: 2000 calls left 53 MB behind for 90 s). Steady traffic reuses far fewer than this.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The HTTP client both transports use: no redirects and no proxy from the environment, so what
/// is configured is what is contacted.
pub(crate) fn http_client(
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
) -> Result<reqwest::Client, TransportSetupError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(pool_idle_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| TransportSetupError::Client(chain(&e)))
}

/// Map an error from `send()` (before the response head arrived).
pub(crate) fn send_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    // Connect first: a `connect_timeout` is both, and "could not connect" is the truer story
    // (the request never left). The attempt budget firing during connect is not `is_connect`.
    if err.is_connect() {
        TransportError::Connect(chain(err))
    } else if err.is_timeout() {
        TransportError::Timeout(budget)
    } else if err.is_builder() {
        TransportError::Invalid(chain(err))
    } else {
        // Closed or reset before the response head (hyper's IncompleteMessage, or an io error
        // such as ECONNRESET / EPIPE).
        TransportError::Reset(chain(err))
    }
}

/// Map an error from reading the body (the head had arrived).
pub(crate) fn body_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    if err.is_timeout() {
        TransportError::Timeout(budget)
    } else {
        // `bytes()` reports everything as a decode error wrapping the body error: EOF before
        // Content-Length, a reset mid-body, a malformed chunk. All mean the body is incomplete.
        TransportError::Truncated(chain(err))
    }
}

/// Map an error from reading a stream's body. Unlike [`body_error`], a reset is told apart from
/// a cut: a stream that was reset and one that was cut short are different stories for the
/// caller's logs, though both end the stream.
pub(crate) fn stream_body_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    if err.is_timeout() {
        TransportError::Timeout(budget)
    } else if is_reset(err) {
        TransportError::Reset(chain(err))
    } else {
        TransportError::Truncated(chain(err))
    }
}

/// Whether an io error somewhere in the chain says the peer reset or aborted the connection.
fn is_reset(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// An error and its sources, `": "`-separated. reqwest errors carry the URL, never headers.
pub(crate) fn chain(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and hyper-util sometimes repeat their source's text; skip exact repeats.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
