//! The one seam to the outside: `trait Upstream`.
//!
//! The core never speaks HTTP itself. An [`Upstream`] takes one [`Attempt`] (a request body already
//! patched for the model of this hop, a key slot, a time budget) and returns what came back: an
//! [`UpstreamResponse`] for any HTTP status, or a [`TransportError`] when no complete answer arrived.
//! Classifying what that means is the job of [`crate::policy::classify`], not of the transport.
//! The data types that cross the seam live in [`crate::wire`] (re-exported here).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use crate::wire::{
    Attempt, Cost, ForwardHeaders, Headers, SseEvent, TransportError, UpstreamResponse, Usage,
};
/// The future an [`Upstream`] returns for one attempt.
pub type UpstreamFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UpstreamResponse, TransportError>> + Send + 'a>>;

/// The future an [`Upstream`] returns for a streaming attempt: the response head, then events.
pub type StreamFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StreamResponse, TransportError>> + Send + 'a>>;

/// The future an [`Upstream`] returns for a token count.
pub type CountFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, TransportError>> + Send + 'a>>;

/// A provider of Messages-API answers: the real API over HTTP, an OpenAI-compatible provider, the
/// simulator, or an in-process fake in tests.
///
/// Implementations must honour [`Attempt::timeout`] themselves where they can (connect and read
/// timeouts); the request actor additionally cuts the attempt at that budget, so an implementation
/// that hangs can never hold a caller past its deadline.
pub trait Upstream: Send + Sync + 'static {
    /// Send one attempt and return whatever came back.
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_>;

    /// How many API keys this upstream holds. Key slots `0..key_count()` appear in
    /// [`Attempt::key`]; the governor chooses among them and quarantines bad ones.
    fn key_count(&self) -> usize {
        1
    }

    /// Send one streaming attempt (`"stream": true` is already in `attempt.body`) and return
    /// the response head as soon as it arrives. A 2xx event stream comes back as
    /// [`StreamBody::Events`], fed as events arrive; anything else is read in full as
    /// [`StreamBody::Complete`]. The default refuses: that hop ends and the next may stream.
    fn send_stream(&self, _attempt: Attempt) -> StreamFuture<'_> {
        Box::pin(async {
            Err(TransportError::Invalid(
                "streaming is not supported by this upstream".into(),
            ))
        })
    }

    /// Count the input tokens of `attempt.body` with the provider's own counter (the
    /// `count_tokens` endpoint), if it has one. `None`: no counter; the runtime estimates.
    fn count_tokens(&self, _attempt: Attempt) -> Option<CountFuture<'_>> {
        None
    }

    /// A short, non-secret label for key slot `slot` (for example the key's last four characters),
    /// used in logs and status output.
    fn key_label(&self, slot: usize) -> String {
        format!("key#{slot}")
    }
}

/// The head of a streaming answer, and its body.
#[derive(Debug)]
pub struct StreamResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Headers,
    /// The body: events as they arrive, or the whole (error) body.
    pub body: StreamBody,
}

/// The body of a streaming answer.
#[derive(Debug)]
pub enum StreamBody {
    /// A non-2xx answer (or a 2xx that is not an event stream), read in full.
    Complete(Bytes),
    /// Events as they arrive. A transport failure mid-stream is the last item; the channel
    /// closing after `message_stop` is the normal end.
    Events(tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>),
}
