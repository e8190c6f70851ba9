//! The gateway's HTTP/1.1 server: an accept loop over hyper with the limits a public edge needs.
//!
//! `axum::serve` offers no way to bound what a connection may cost, so the gateway runs its
//! router on its own accept loop:
//!
//! - **Connection cap.** At most `max_connections` connections are served at once; the loop
//!   accepts the next one only when a slot frees (meanwhile new connections wait in the
//!   kernel's backlog), so a flood of connections cannot take every file descriptor.
//! - **Header read timeout.** hyper starts it whenever a connection waits for a request head:
//!   on a new connection and again after every response. A client that trickles its headers,
//!   or a keep-alive connection left idle, is closed once it runs out, and its slot frees.
//! - **Head size.** A request head larger than `max_header_bytes` is answered 431 by hyper.
//! - **Graceful shutdown.** When told to stop, the loop stops accepting and every connection
//!   finishes the request it is serving, then closes.
//!
//! The body limit and body read timeout are applied where the body is read (the handlers).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// What a connection may cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
}

/// One permit per connection served, `max_connections` in all.
pub(crate) fn slots(limits: &ConnLimits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_connections.max(1)))
}

/// Connections open now, of the `slots` made for `limits`.
pub(crate) fn open(limits: &ConnLimits, slots: &Semaphore) -> usize {
    limits
        .max_connections
        .max(1)
        .saturating_sub(slots.available_permits())
}

/// Serve `router` on `listener` until `stop` turns true, then let open connections finish
/// their requests. Returns when every connection has closed.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    slots: Arc<Semaphore>,
    limits: ConnLimits,
    head_too_large: Arc<dyn Fn() + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A complete head over the limit is answered 431; the read buffer bounds a partial one
        // (hyper refuses buffers under 8 KiB).
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(64 * 1024))
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
            () = stopped(&mut stop) => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_transient(&e) => {
                    // Out of descriptors or a connection reset before accept: pause, go on.
                    tracing::warn!(error = %e, "accept failed: retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let head_too_large = Arc::clone(&head_too_large);
        tokio::spawn(async move {
            // A connection ends on an error too (a header timeout, a reset): nothing to do,
            // except count the 431 hyper itself answered to a head over the limit (the router
            // never saw that request, so nothing else counts it).
            if let Err(e) = conn.await {
                if e.is_parse_too_large() {
                    head_too_large();
                }
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, inside.
    let _ = stop.wait_for(|s| *s).await;
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}
