//! The alert webhook of `[alerts]`. Its URL is a secret (chat webhooks carry their token in
//! the path): it is checked without being repeated, read from `webhook_url` or the variable
//! `webhook_url_env`, and shown only as scheme and host.

use std::fmt;
use std::time::Duration;

use super::error::invalid;
use super::{Config, ConfigError};

/// Delivery attempts per alert before the webhook is given up on for that alert.
pub const WEBHOOK_ATTEMPTS: u32 = 3;

/// An alert webhook: its URL (a secret: `Debug` and [`AlertWebhook::redacted`] show only the
/// scheme and host) and the time allowed to one delivery attempt.
#[derive(Clone)]
pub struct AlertWebhook {
    url: reqwest::Url,
    /// Time allowed to one delivery attempt.
    pub timeout: Duration,
}

impl AlertWebhook {
    /// The URL, to send to.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The URL as it may be logged: scheme, host and port, the rest elided.
    pub fn redacted(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port() {
            Some(port) => format!("{}://{host}:{port}/…", self.url.scheme()),
            None => format!("{}://{host}/…", self.url.scheme()),
        }
    }
}

impl fmt::Debug for AlertWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertWebhook")
            .field("url", &self.redacted())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// The alert webhook of `[alerts]`, its URL read through `env` for `webhook_url_env`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `alerts.webhook_url_env` when the variable is missing or
    /// does not hold a usable URL (never the value).
    pub fn resolve_webhook(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<AlertWebhook>, ConfigError> {
        let a = &self.alerts;
        let (key, text) = match (&a.webhook_url, &a.webhook_url_env) {
            (Some(url), _) => ("alerts.webhook_url", url.clone()),
            (None, Some(var)) => {
                let value = env(var).ok_or_else(|| {
                    invalid(
                        "alerts.webhook_url_env",
                        format!("environment variable {var} is not set: export it with the webhook's URL"),
                    )
                })?;
                if let Some(problem) = webhook_url_problem(&value) {
                    return Err(invalid(
                        "alerts.webhook_url_env",
                        format!("environment variable {var} {problem}"),
                    ));
                }
                ("alerts.webhook_url_env", value)
            }
            (None, None) => return Ok(None),
        };
        let url =
            reqwest::Url::parse(&text).map_err(|e| invalid(key, format!("is not a URL ({e})")))?;
        Ok(Some(AlertWebhook {
            url,
            timeout: a.webhook_timeout(),
        }))
    }
}

/// What is wrong with a webhook URL, without repeating it (it may carry a token).
pub(super) fn webhook_url_problem(url: &str) -> Option<String> {
    match reqwest::Url::parse(url) {
        Err(e) => Some(format!(
            "is not a URL ({e}): write it like \"https://hooks.example.com/seawall\""
        )),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            Some(format!("must use http or https, not {:?}", u.scheme()))
        }
        Ok(u) if u.host_str().is_none() => Some("has no host".into()),
        Ok(_) => None,
    }
}
