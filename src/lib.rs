#![doc = include_str!("../README.md")]

pub use seawall_actors as core;

pub mod anthropic;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod jobstore;
pub mod openai;
pub mod secret;
pub mod sim;
pub mod sse;
mod toml_keyed;

pub use anthropic::{AnthropicOptions, AnthropicUpstream, AuthStyle};
pub use openai::{OpenAiOptions, OpenAiUpstream};
pub use secret::ApiKey;
