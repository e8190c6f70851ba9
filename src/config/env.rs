//! What is read from the environment: the API keys of `[[upstreams]]` and the client tokens of
//! `[gateway] token_envs`, by variable name. Errors name the variable, never its value. Only
//! [`process_env`] reads the process's environment; everything else takes an `env` lookup, so
//! tests and secret managers can pass their own.

use crate::secret::{ApiKey, KeyError};

use super::error::invalid;
use super::{ClientToken, Config, ConfigError};

/// A variable of the process environment, as text (lossily, for one that is not UTF-8): the
/// lookup [`Config::spawn`] reads keys and tokens through.
pub(super) fn process_env(var: &str) -> Option<String> {
    std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
}

impl Config {
    /// `[gateway] tokens` plus the values of `token_envs`, read through `env`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `gateway.token_envs[i]` when a variable is missing or
    /// holds an unusable token (never the value).
    pub fn resolve_tokens(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<ClientToken>, ConfigError> {
        let mut tokens = self.gateway.tokens.clone();
        for (i, var) in self.gateway.token_envs.iter().enumerate() {
            let key = format!("gateway.token_envs[{i}]");
            let value = env(var).ok_or_else(|| {
                invalid(
                    key.clone(),
                    format!("environment variable {var} is not set: export it with a client token"),
                )
            })?;
            let token = ClientToken::new(value);
            if let Some(problem) = token.problem() {
                return Err(invalid(
                    key,
                    format!("environment variable {var} does not hold a usable token: {problem}"),
                ));
            }
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// (key path, variable) of every key variable of upstream `i`, in key-slot order.
    pub(super) fn key_vars(&self, i: usize) -> Vec<(String, &str)> {
        let Some(u) = self.upstreams.get(i) else {
            return Vec::new();
        };
        match &u.api_key_env {
            Some(var) => vec![(format!("upstreams[{i}].api_key_env"), var.as_str())],
            None => u
                .api_key_envs
                .iter()
                .enumerate()
                .map(|(j, v)| (format!("upstreams[{i}].api_key_envs[{j}]"), v.as_str()))
                .collect(),
        }
    }
}

/// A key from `env`, with [`ApiKey::from_env`]'s errors (the variable's name, never the value).
pub(super) fn read_key(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<ApiKey, KeyError> {
    match env(var) {
        None => Err(KeyError::EnvMissing {
            var: var.to_owned(),
        }),
        Some(value) => ApiKey::new(value).map_err(|e| match e {
            KeyError::Invalid(problem) => KeyError::EnvInvalid {
                var: var.to_owned(),
                problem,
            },
            other => other,
        }),
    }
}

/// What is wrong with an environment variable's name, if anything.
pub(super) fn env_name_problem(var: &str) -> Option<String> {
    if var.is_empty() {
        Some("the variable name is empty".into())
    } else if var.contains(['=', '\0']) || var.chars().any(char::is_whitespace) {
        Some(format!("{var:?} is not a usable environment variable name"))
    } else {
        None
    }
}
