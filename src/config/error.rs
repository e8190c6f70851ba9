//! [`ConfigError`]: why a configuration cannot be used. Every variant names the key; none
//! contains a secret.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a configuration cannot be used. Every variant names the key; none contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// Not valid TOML, a value of the wrong type, or an unknown key.
    #[error("{}", parse_message(key, line, message))]
    Parse {
        /// The key path where it went wrong (`"."` for the document itself).
        key: String,
        /// 1-based line and column, when known.
        line: Option<(usize, usize)>,
        /// What the parser said.
        message: String,
    },
    /// A value that parsed but cannot be used.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key path, e.g. `models[1].fallbacks[0]`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The gateway would listen beyond loopback without client tokens: anyone who reaches it
    /// would spend the upstream keys.
    #[error(
        "listen: {listen} is not a loopback address and [gateway] has no tokens: anyone who can \
         reach it would spend your API keys. Add tokens = [\"...\"] (or token_envs = [\"VAR\"]) \
         under [gateway], or listen on 127.0.0.1"
    )]
    Unauthenticated {
        /// The configured address.
        listen: SocketAddr,
    },
    /// The runtime refused the configuration (a check this module does not repeat).
    #[error("the runtime refused the configuration: {0}")]
    Runtime(String),
}

impl ConfigError {
    /// The key path the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Unauthenticated { .. } => Some("listen"),
            ConfigError::Read { .. } | ConfigError::Runtime(_) => None,
        }
    }
}

/// An [`ConfigError::Invalid`] at `key`.
pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn parse_message(key: &str, line: &Option<(usize, usize)>, message: &str) -> String {
    let mut out = String::from("config TOML");
    if let Some((l, c)) = line {
        out.push_str(&format!(" (line {l}, column {c})"));
    }
    out.push_str(": ");
    if key != "." && !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}
