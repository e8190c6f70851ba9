//! The transports: one [`Upstream`](seawall_actors::upstream::Upstream) per platform, over one
//! HTTP client setup.
//!
//! - [`anthropic`]: [`AnthropicUpstream`], the Messages API as it is (streams included).
//! - [`openai`]: [`OpenAiUpstream`], OpenAI-compatible chat completions, translated to and from
//!   the Messages API.
//! - [`bedrock`]: [`BedrockUpstream`], Claude on AWS Bedrock: SigV4 (aws-sigv4), credentials
//!   from [`aws`] (aws-config's default chain behind a cache), event-stream answers decoded with
//!   aws-smithy-eventstream into the Anthropic stream's events, Bedrock errors as the Anthropic
//!   errors they mean.
//! - [`vertex`]: [`VertexUpstream`], Claude on Google Vertex AI: Application Default Credentials
//!   (gcp_auth), the Anthropic stream read by the shared SSE reader, Google errors mapped.
//! - `http.rs`: what all share: the reqwest client they build (no redirects, no proxy from the
//!   environment, a bounded idle pool), the base URL check, the SSE reader, and what a reqwest
//!   error means as a `TransportError`.
//!
//! Each transport sends what it is given and hands back status, headers and body for any
//! status; what an answer means is the core's to decide. Keys go on the wire and nowhere else.
//! Bedrock and Vertex hand the core the Anthropic API's shapes (answers, stream events, error
//! bodies), so one set of pure rules classifies every platform. Their credentials go on the
//! wire (signed or as a bearer) and nowhere else.

pub mod anthropic;
pub mod aws;
pub mod bedrock;
mod http;
pub mod openai;
pub mod vertex;

pub use anthropic::{AnthropicOptions, AnthropicUpstream, AuthStyle};
pub use aws::AwsCredentials;
pub use bedrock::{BedrockOptions, BedrockUpstream};
pub use openai::{OpenAiOptions, OpenAiUpstream};
pub use vertex::{GoogleCredentials, VertexOptions, VertexUpstream};

/// Why a transport ([`AnthropicUpstream`], [`OpenAiUpstream`], [`BedrockUpstream`],
/// [`VertexUpstream`]) could not be built. Messages name
/// the field to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportSetupError {
    /// The key list was empty.
    #[error("no API keys given: pass at least one ApiKey")]
    NoKeys,
    /// `base_url` cannot be used.
    #[error("base_url is not usable: {0}")]
    BaseUrl(String),
    /// A header option (`version`, `beta`, `organization`) cannot be sent as an HTTP header value.
    #[error("{field} is not a valid HTTP header value: use printable ASCII without line breaks")]
    HeaderValue {
        /// The offending option field: `"version"` or `"beta"` (anthropic), `"organization"`
        /// (openai), or `"keys (an ApiKey)"`, which validated keys cannot reach.
        field: &'static str,
    },
    /// A URL option (`api_version`) cannot be sent in a query string.
    #[error("{field} must be letters, digits, '-', '.' or '_' (like 2024-10-21)")]
    QueryValue {
        /// The offending option field.
        field: &'static str,
    },
    /// reqwest refused to build the HTTP client (for example, no TLS backend available).
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}
