//! AWS credentials for the Bedrock transport: aws-config's default provider chain (environment
//! keys with a session token, the shared profile files and `profile`, web identity, ECS
//! container credentials, IMDSv2, `credential_process`), or a provider the embedding app gives,
//! behind one cache that hands out the same credentials until shortly before they expire.
//!
//! Why a cache here: aws-config's chain itself is not cached (an SDK client caches through its
//! orchestrator's identity cache, which needs an SDK client around it). [`CredentialCache`] is
//! that cache for a transport without an SDK client: one fetch at a time (callers wait on the
//! same fetch, never a stampede), credentials reused until [`REFRESH_BEFORE`] their expiry,
//! still-valid credentials kept when a refresh fails, and [`CredentialCache::invalidate`] for a
//! refresh-once after the platform rejected them.
//!
//! No secret leaves this file except into the signer: `Credentials`' own `Debug` redacts the
//! secret key and session token, and errors carry the provider's message (which names the
//! source, never a secret).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::{Mutex, OnceCell};

/// Credentials are refreshed this long before they expire: a signed request must still be valid
/// when it arrives, and a refresh that fails leaves time for the next one.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Where a Bedrock upstream's credentials come from.
#[derive(Clone)]
pub enum AwsCredentials {
    /// aws-config's default chain for `region`, with the named profile (else `AWS_PROFILE`, else
    /// `default`) and, when set, these profile files instead of `~/.aws/config` and
    /// `~/.aws/credentials`.
    DefaultChain {
        /// The profile name.
        profile: Option<String>,
        /// The shared config file (`AWS_CONFIG_FILE`).
        config_file: Option<PathBuf>,
        /// The shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`).
        credentials_file: Option<PathBuf>,
    },
    /// A provider of the embedding app's own (an STS role it assumes, a secret manager).
    Provider(SharedCredentialsProvider),
}

impl Default for AwsCredentials {
    fn default() -> Self {
        AwsCredentials::DefaultChain {
            profile: None,
            config_file: None,
            credentials_file: None,
        }
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsCredentials::DefaultChain {
                profile,
                config_file,
                credentials_file,
            } => f
                .debug_struct("DefaultChain")
                .field("profile", profile)
                .field("config_file", config_file)
                .field("credentials_file", credentials_file)
                .finish(),
            // The provider's own Debug may describe it; only say there is one.
            AwsCredentials::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// Why no credentials could be had: the source's message, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no AWS credentials: {0}")]
pub struct NoCredentials(pub String);

/// The credentials of one upstream, fetched once and reused until shortly before expiry.
pub(crate) struct CredentialCache {
    source: AwsCredentials,
    region: String,
    connect_timeout: Duration,
    /// The default chain, built on first use (building it is async, and reads files).
    chain: OnceCell<SharedCredentialsProvider>,
    current: Mutex<Option<Credentials>>,
}

impl CredentialCache {
    pub(crate) fn new(source: AwsCredentials, region: &str, connect_timeout: Duration) -> Self {
        Self {
            source,
            region: region.to_owned(),
            connect_timeout,
            chain: OnceCell::new(),
            current: Mutex::new(None),
        }
    }

    async fn provider(&self) -> SharedCredentialsProvider {
        match &self.source {
            AwsCredentials::Provider(p) => p.clone(),
            AwsCredentials::DefaultChain {
                profile,
                config_file,
                credentials_file,
            } => self
                .chain
                .get_or_init(|| {
                    default_chain(
                        &self.region,
                        profile.as_deref(),
                        config_file.clone(),
                        credentials_file.clone(),
                        self.connect_timeout,
                    )
                })
                .await
                .clone(),
        }
    }

    /// Credentials valid for at least [`REFRESH_BEFORE`] (or, when a refresh fails, the current
    /// ones while they are still valid at all).
    pub(crate) async fn get(&self) -> Result<Credentials, NoCredentials> {
        let mut current = self.current.lock().await;
        let now = SystemTime::now();
        if let Some(c) = current.as_ref() {
            if fresh(c, now, REFRESH_BEFORE) {
                return Ok(c.clone());
            }
        }
        match self.provider().await.provide_credentials().await {
            Ok(c) => {
                *current = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                let why = NoCredentials(super::http::chain(&e));
                match current.as_ref() {
                    Some(c) if fresh(c, now, Duration::ZERO) => {
                        tracing::warn!(error = %why, "AWS credentials refresh failed: using the current ones until they expire");
                        Ok(c.clone())
                    }
                    _ => Err(why),
                }
            }
        }
    }

    /// Forget `rejected` (the platform refused them) so the next [`CredentialCache::get`]
    /// fetches again; a newer set fetched meanwhile is kept.
    pub(crate) async fn invalidate(&self, rejected: &Credentials) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| same(c, rejected)) {
            *current = None;
        }
    }
}

/// Whether two credentials are the same set (same key, same session).
pub(crate) fn same(a: &Credentials, b: &Credentials) -> bool {
    a.access_key_id() == b.access_key_id()
        && a.secret_access_key() == b.secret_access_key()
        && a.session_token() == b.session_token()
}

fn fresh(c: &Credentials, now: SystemTime, margin: Duration) -> bool {
    c.expiry().is_none_or(|at| at > now + margin)
}

/// aws-config's default credentials chain for `region`, over its own HTTP client (rustls on
/// ring, as reqwest's) for the sources that need one (STS web identity, ECS, IMDS).
async fn default_chain(
    region: &str,
    profile: Option<&str>,
    config_file: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
    connect_timeout: Duration,
) -> SharedCredentialsProvider {
    use aws_config::{BehaviorVersion, Region};
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(connect_timeout)
                .build(),
        );
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if config_file.is_some() || credentials_file.is_some() {
        use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
        let mut files = EnvConfigFiles::builder();
        for (kind, path) in [
            (EnvConfigFileKind::Config, config_file),
            (EnvConfigFileKind::Credentials, credentials_file),
        ] {
            if let Some(path) = path {
                files = files.with_file(kind, path);
            }
        }
        loader = loader.profile_files(files.build());
    }
    let config = loader.load().await;
    match config.credentials_provider() {
        Some(p) => p,
        None => SharedCredentialsProvider::new(Missing),
    }
}

/// The provider when aws-config found no chain at all (it always builds one; kept for safety).
#[derive(Debug)]
struct Missing;

impl ProvideCredentials for Missing {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "aws-config built no credentials provider",
            ),
        ))
    }
}

/// A shared handle, for the transport.
pub(crate) type SharedCache = Arc<CredentialCache>;

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(key: &str, expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(key, "secret-value", Some("session".into()), expiry, "test")
    }

    #[derive(Debug)]
    struct Counting(std::sync::atomic::AtomicUsize, Duration);

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let expiry = SystemTime::now() + self.1;
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(creds(
                &format!("AKID{n}"),
                Some(expiry),
            )))
        }
    }

    fn cache(lifetime: Duration) -> (CredentialCache, Arc<Counting>) {
        let counting = Arc::new(Counting(Default::default(), lifetime));
        #[derive(Debug)]
        struct Share(Arc<Counting>);
        impl ProvideCredentials for Share {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                self.0.provide_credentials()
            }
        }
        let source =
            AwsCredentials::Provider(SharedCredentialsProvider::new(Share(counting.clone())));
        (
            CredentialCache::new(source, "us-east-1", Duration::from_secs(1)),
            counting,
        )
    }

    fn fetches(c: &Counting) -> usize {
        c.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn credentials_are_reused_until_shortly_before_expiry() {
        let (cache, counting) = cache(Duration::from_secs(3600));
        let a = cache.get().await.unwrap();
        let b = cache.get().await.unwrap();
        assert_eq!(a.access_key_id(), b.access_key_id());
        assert_eq!(fetches(&counting), 1, "fetched once, then cached");
        // Credentials inside the refresh margin are fetched again on the next call.
        let (cache, counting) = cache_with_short(&counting);
        cache.get().await.unwrap();
        cache.get().await.unwrap();
        assert_eq!(
            fetches(&counting),
            2,
            "each call found them about to expire"
        );
    }

    fn cache_with_short(_: &Arc<Counting>) -> (CredentialCache, Arc<Counting>) {
        cache(REFRESH_BEFORE / 2)
    }

    #[tokio::test]
    async fn invalidate_forgets_only_the_rejected_set() {
        let (cache, counting) = cache(Duration::from_secs(3600));
        let first = cache.get().await.unwrap();
        cache.invalidate(&creds("someone-else", None)).await;
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        cache.invalidate(&first).await;
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(fetches(&counting), 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_names_the_source_and_no_secret() {
        let cache = CredentialCache::new(
            AwsCredentials::Provider(SharedCredentialsProvider::new(Missing)),
            "us-east-1",
            Duration::from_secs(1),
        );
        let err = cache.get().await.unwrap_err();
        assert!(err.to_string().starts_with("no AWS credentials: "), "{err}");
        assert!(err.to_string().contains("no credentials provider"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = creds("AKIDEXAMPLE", None);
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-value"), "{shown}");
        assert!(!shown.contains("session"), "{shown}");
        let source = AwsCredentials::Provider(SharedCredentialsProvider::new(c));
        assert_eq!(format!("{source:?}"), "Provider(..)");
    }
}
