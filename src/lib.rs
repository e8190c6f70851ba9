#![doc = include_str!("../README.md")]

pub use seawall_actors as core;

pub mod cluster;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod jobstore;
pub mod secret;
pub mod sim;
pub mod sse;
mod toml_keyed;
pub mod translate;
pub mod transport;

pub use secret::ApiKey;
pub use transport::{
    AnthropicOptions, AnthropicUpstream, AuthStyle, OpenAiOptions, OpenAiUpstream,
};
