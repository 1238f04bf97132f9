//! One typed configuration: defaults, then an optional `ponte.toml`, then `PONTE_*`
//! variables (`PONTE_<KEY>_FILE` reads a secret from a file). Unknown keys are errors.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::forwarded::{Cidr, ForwardedHeader};

/// A value that must not appear in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `ponte` can be told. See the README's configuration reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub bind: String,
    /// Public base URL: the OIDC issuer and the base of every link Ponte sends.
    pub public_url: String,
    /// Folder for the embedded database, the generated master key and the mail outbox.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; empty means SQLite under `data_dir`.
    pub database_url: Option<Secret>,
    /// `redis://…`; empty means the in-process session store.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key Ponte writes.
    pub redis_key_prefix: String,
    /// Base64 of 32 random bytes; seals secrets at rest. Empty: generated into `data_dir`.
    pub master_key: Option<Secret>,
    /// Retired master keys, which only open what was sealed before a rotation until
    /// `ponte keys reseal` has moved it (a list; in the environment comma-separated).
    #[serde(deserialize_with = "list_or_commas")]
    pub master_keys_retired: Vec<Secret>,
    /// Apply pending migrations at start-up.
    pub migrate_on_start: bool,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Default log filter when `RUST_LOG` is not set.
    pub log_level: String,
    /// HTTP worker threads; empty means one per core.
    pub workers: Option<usize>,
    /// Seconds between SIGTERM (when `/readyz` starts answering 503) and the listener
    /// closing, so load balancers stop sending requests first.
    pub shutdown_delay_secs: u64,
    /// Seconds in-flight requests get to finish once the listener has closed.
    pub shutdown_grace_secs: u64,
    /// Seconds an idle keep-alive connection stays open. Behind a proxy or load balancer
    /// that reuses connections, keep it above that proxy's idle timeout toward Ponte, so
    /// the proxy always closes first (a request sent as Ponte closes gets no answer).
    pub keep_alive_secs: u64,
    /// Seconds a browser session may sit unused.
    pub session_idle_secs: u64,
    /// Seconds a browser session lasts at most.
    pub session_absolute_secs: u64,
    /// Seconds an access token is valid.
    pub access_token_ttl_secs: u64,
    /// Seconds an ID token is valid.
    pub id_token_ttl_secs: u64,
    /// Seconds a refresh-token family lives at most.
    pub refresh_token_ttl_secs: u64,
    /// `ES256`, `EdDSA` or `RS256`: the algorithm of new signing keys.
    pub signing_alg: String,
    /// Days a signing key signs before it is rotated.
    pub key_rotation_days: u64,
    /// Seconds between reloads of the key ring from the database (picks up rotations
    /// made by `ponte keys rotate` or another replica).
    pub key_reload_secs: u64,
    /// Seconds an entry of the directory cache (accounts, users, their links, companies,
    /// integrations, invites) may be served at most, on PostgreSQL; changes reach every
    /// replica's cache at once by notification, this is the bound if notifications stall.
    /// 0 turns the cache off. SQLite never caches.
    pub cache_ttl_secs: u64,
    /// Seconds a session record read from Redis may be served from this replica's memory
    /// at most. Every session write publishes a change that reaches every replica's cache
    /// at once; this is the bound if that stalls or Redis drops a session by itself. 0 turns
    /// the cache off; a Redis Cluster and the in-process store never cache.
    pub session_cache_ttl_secs: u64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Networks of the reverse proxies whose forwarding header names the client (a list;
    /// in the environment comma-separated). Empty: the TCP peer is the client.
    #[serde(deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<Cidr>,
    /// The header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub forwarded_header: ForwardedHeader,
    /// Assert `email_verified: true` for users' emails in ID tokens and userinfo (set it
    /// when the POS backend only provisions verified addresses).
    pub assert_email_verified: bool,
    /// Upstream OpenID Providers by id (`[providers.<id>]`).
    pub providers: std::collections::BTreeMap<String, ponte_identity::upstream::ProviderConfig>,
    /// Outgoing mail (`[smtp]`).
    pub smtp: SmtpConfig,
    /// The background worker that runs jobs (`[worker]`).
    pub worker: WorkerConfig,
    /// Collaboration invites (`[invites]`).
    pub invites: InvitesConfig,
    /// Password recovery (`[recovery]`).
    pub recovery: RecoveryConfig,
    /// Seats of additional users (`[seats]`).
    pub seats: SeatsConfig,
    /// The password hashing pool (`[hashing]`).
    pub hashing: HashingConfig,
    /// Webhook receivers of the POS backend by id (`[webhooks.<id>]`), besides those
    /// defined over REST.
    pub webhooks: std::collections::BTreeMap<String, WebhookConfig>,
    /// The invoicing platform (`[platform]`).
    pub platform: PlatformConfig,
}

/// Collaboration invites (`[invites]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvitesConfig {
    /// Days an invite link works; a resend starts them again.
    pub ttl_days: u64,
}

impl Default for InvitesConfig {
    fn default() -> Self {
        Self { ttl_days: 7 }
    }
}

/// Seats of additional users (`[seats]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeatsConfig {
    /// How often each worker sweeps: suspends members that lapsed grants no longer seat
    /// and sends the 30- and 7-day expiry reminders.
    pub sweep_interval_secs: u64,
}

impl Default for SeatsConfig {
    fn default() -> Self {
        Self { sweep_interval_secs: 300 }
    }
}

/// Password recovery (`[recovery]`): how many reset requests a 15-minute window takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Requests per email address per 15 minutes.
    pub max_per_email: u64,
    /// Requests per client address (an IPv6 /64) per 15 minutes.
    pub max_per_ip: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        let limits = ponte_linking::recovery::Limits::default();
        Self { max_per_email: limits.per_email.max, max_per_ip: limits.per_ip.max }
    }
}

/// The password hashing pool (`[hashing]`): argon2id runs on these threads only, each
/// holding one 19 MiB block for good, so memory stays bounded whatever arrives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashingConfig {
    /// Hashing threads; empty means one per core.
    pub workers: Option<usize>,
    /// Hashes that may wait for a thread; one more is answered 503 `busy`. Empty means
    /// 32 per thread.
    pub queue: Option<usize>,
}

impl HashingConfig {
    /// The pool size these settings ask for.
    pub fn pool_size(&self) -> ponte_identity::password::PoolSize {
        ponte_identity::password::PoolSize::new(self.workers, self.queue)
    }
}

/// A webhook receiver from the configuration: Ponte POSTs its events there, signed with
/// `secret`. REST cannot change it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…`, or `http://` to a loopback host; no user or password in it.
    pub url: String,
    /// The signing secret, at least 32 characters.
    pub secret: Secret,
}

/// Outgoing mail: SMTP when `url` is set, else `.eml` files under `data_dir/outbox/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `smtp://host[:port]` (plain: loopback only, unless `?tls=none`), `smtp://[user:pass@]…?tls=starttls`, or `smtps://…` (implicit TLS).
    pub url: Option<Secret>,
    /// The `From` address, e.g. `Ponte <no-reply@example.com>`.
    pub from: String,
    /// Seconds one delivery may take before it is retried later.
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self { url: None, from: "Ponte <no-reply@localhost>".into(), timeout_secs: 20 }
    }
}

/// The invoicing platform's connector: off while `base_url` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// The platform's API base, e.g. `https://platform.example.com` (plain http: loopback only).
    pub base_url: Option<url::Url>,
    /// The OAuth2 token endpoint; empty means `{base_url}/oauth/token`.
    pub token_url: Option<url::Url>,
    /// Ponte's OAuth2 client id at the platform (required with `base_url`).
    pub client_id: Option<String>,
    /// Ponte's OAuth2 client secret, sent with `client_secret_basic` (required with `base_url`).
    pub client_secret: Option<Secret>,
    /// Space-separated scopes to ask for; empty asks for none.
    pub scope: Option<String>,
    /// Seconds one request to the platform (or its token endpoint) may take.
    pub timeout_secs: u64,
    /// The key of the HMAC-SHA256 signature on the platform's webhooks.
    pub webhook_secret: Option<Secret>,
}

impl PlatformConfig {
    /// The token endpoint in effect: `token_url`, else `{base_url}/oauth/token`.
    pub fn token_url(&self) -> Option<url::Url> {
        if let Some(url) = &self.token_url {
            return Some(url.clone());
        }
        let mut url = self.base_url.clone()?;
        url.path_segments_mut().ok()?.pop_if_empty().extend(["oauth", "token"]);
        Some(url)
    }

    fn check(&self, lease_secs: u64) -> Result<(), String> {
        // A call must end before another worker may claim its job; without a platform no
        // call is made, so a short lease for other jobs is fine.
        if self.timeout_secs == 0 || (self.base_url.is_some() && self.timeout_secs >= lease_secs) {
            return Err("platform.timeout_secs must be greater than zero and shorter than worker.lease_secs".into());
        }
        if let Some(scope) = &self.scope
            && !scope.split_whitespace().all(ponte_identity::client::is_valid_scope_token)
        {
            return Err(format!("platform.scope {scope:?} is not a list of scope tokens"));
        }
        if self.webhook_secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            return Err("platform.webhook_secret must not be empty".into());
        }
        let Some(base) = &self.base_url else {
            return match self.token_url {
                Some(_) => Err("platform.token_url needs platform.base_url".into()),
                None => Ok(()),
            };
        };
        check_platform_url("platform.base_url", base)?;
        if let Some(token_url) = &self.token_url {
            check_platform_url("platform.token_url", token_url)?;
        }
        if self.client_id.as_deref().is_none_or(str::is_empty)
            || self.client_secret.as_ref().is_none_or(|s| s.expose().is_empty())
        {
            return Err("platform.client_id and platform.client_secret are required with platform.base_url".into());
        }
        Ok(())
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            token_url: None,
            client_id: None,
            client_secret: None,
            scope: None,
            timeout_secs: 10,
            webhook_secret: None,
        }
    }
}

/// A platform URL: https, or http to a loopback host; no credentials, query or fragment
/// (they would end up in logs and error messages).
fn check_platform_url(key: &str, url: &url::Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match url.scheme() {
        "https" if !host.is_empty() => {}
        "http" if ponte_identity::client::is_loopback_host(host) => {}
        "http" => return Err(format!("{key} must use https unless the host is loopback")),
        _ => return Err(format!("{key} must be an http(s) URL")),
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key} must not carry credentials, a query or a fragment"));
    }
    Ok(())
}

/// The background worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Run the worker inside `ponte serve` (turn off on replicas that should only serve).
    pub enabled: bool,
    /// Jobs run at the same time by one process.
    pub concurrency: usize,
    /// Milliseconds between polls when nothing wakes the worker.
    pub poll_interval_ms: u64,
    /// Seconds a claim lasts; a job still running then may be claimed by another worker,
    /// so a handler is given a little less than this.
    pub lease_secs: u64,
    /// Attempts before a job is dead (jobs may ask for their own number).
    pub max_attempts: u32,
    /// Seconds before the first retry; doubles per attempt, with jitter.
    pub backoff_base_secs: u64,
    /// The longest wait between attempts, in seconds.
    pub backoff_max_secs: u64,
    /// Seconds in-flight jobs get to finish at shutdown before their leases are released.
    pub shutdown_grace_secs: u64,
    /// Days a finished job is kept for support before it is deleted.
    pub retain_done_days: u64,
    /// Seconds between refreshes of the `jobs` gauge (by the worker, or by a `ponte serve`
    /// without one) and between prunings of done jobs.
    pub housekeeping_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 4,
            poll_interval_ms: 1000,
            lease_secs: 60,
            max_attempts: 8,
            backoff_base_secs: 2,
            backoff_max_secs: 3600,
            shutdown_grace_secs: 10,
            retain_done_days: 7,
            housekeeping_secs: 15,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            redis_key_prefix: "ponte:".into(),
            master_key: None,
            master_keys_retired: Vec::new(),
            migrate_on_start: true,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            workers: None,
            shutdown_delay_secs: 0,
            shutdown_grace_secs: 30,
            keep_alive_secs: 5,
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 60 * 60,
            access_token_ttl_secs: 600,
            id_token_ttl_secs: 600,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            signing_alg: "ES256".into(),
            key_rotation_days: 30,
            key_reload_secs: 30,
            cache_ttl_secs: 10,
            session_cache_ttl_secs: 10,
            max_body_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            assert_email_verified: false,
            providers: Default::default(),
            smtp: SmtpConfig::default(),
            worker: WorkerConfig::default(),
            invites: InvitesConfig::default(),
            recovery: RecoveryConfig::default(),
            seats: SeatsConfig::default(),
            hashing: HashingConfig::default(),
            webhooks: Default::default(),
            platform: PlatformConfig::default(),
        }
    }
}

/// Keys whose value may come from a file named by `PONTE_<KEY>_FILE`.
const SECRET_KEYS: [&str; 4] = ["master_key", "master_keys_retired", "database_url", "redis_url"];

/// A list given as a list (TOML) or as one comma-separated string (the environment).
fn list_or_commas<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let items = match Form::deserialize(d)? {
        Form::List(items) => items,
        Form::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Environment names (after `PONTE_`) of nested keys, and the key they set.
const ALIASES: [(&str, &str); 3] = [
    ("smtp_url", "smtp.url"),
    ("platform_client_secret", "platform.client_secret"),
    ("platform_webhook_secret", "platform.webhook_secret"),
];

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, or a value has the wrong type.
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    /// A file named in the configuration could not be read.
    #[error("configuration: cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value is well-typed but unusable.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `path` (or `./ponte.toml` if it exists), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError::File {
                    path: p.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new("ponte.toml").exists() => figment = figment.merge(Toml::file_exact("ponte.toml")),
            None => {}
        }
        figment = figment.merge(
            Env::prefixed("PONTE_")
                // PONTE_CONFIG names the file itself; PONTE_TEST_* belong to the test suites.
                .filter(|k| {
                    k != "config"
                        && !k.starts_with("test_")
                        // Env keys keep their case (PONTE_MASTER_KEY_FILE): compare without it.
                        && !SECRET_KEYS.iter().any(|s| k == format!("{s}_file").as_str())
                        && !ALIASES.iter().any(|(var, _)| k == *var || k == format!("{var}_file").as_str())
                })
                .split("__"),
        );
        // Short names for nested keys (PONTE_SMTP_URL for smtp.url), each with a _FILE form.
        for (var, key) in ALIASES {
            let upper = var.to_uppercase();
            if let Some(value) = std::env::var_os(format!("PONTE_{upper}")) {
                figment = figment.merge(Serialized::default(key, value.to_string_lossy().into_owned()));
            }
            if let Some(file) = std::env::var_os(format!("PONTE_{upper}_FILE")) {
                let path = PathBuf::from(file);
                let value = std::fs::read_to_string(&path).map_err(|source| ConfigError::File { path, source })?;
                figment = figment.merge(Serialized::default(key, value.trim()));
            }
        }
        for key in SECRET_KEYS {
            let var = format!("PONTE_{}_FILE", key.to_uppercase());
            if let Some(file) = std::env::var_os(&var) {
                let path = PathBuf::from(file);
                let value = std::fs::read_to_string(&path).map_err(|source| ConfigError::File { path, source })?;
                figment = figment.merge(Serialized::default(key, value.trim()));
            }
        }
        Self::from_figment(figment)
    }

    /// Extracts and checks a configuration from any figment (tests build their own).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.public_url)
            .map_err(|e| ConfigError::Invalid(format!("public_url {:?}: {e}", self.public_url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::Invalid("public_url must be an http(s) URL without query or fragment".into()));
        }
        if url.scheme() == "http" && !is_loopback(&url) {
            return Err(ConfigError::Invalid("public_url must use https unless it is a loopback address".into()));
        }
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!("bind {:?} is not an address such as 127.0.0.1:8080", self.bind)));
        }
        if self.session_idle_secs == 0 || self.session_absolute_secs == 0 || self.access_token_ttl_secs == 0 {
            return Err(ConfigError::Invalid("timeouts must be greater than zero".into()));
        }
        if self.id_token_ttl_secs == 0
            || self.refresh_token_ttl_secs == 0
            || self.key_rotation_days == 0
            || self.key_reload_secs == 0
        {
            return Err(ConfigError::Invalid("token lifetimes and key intervals must be greater than zero".into()));
        }
        ponte_identity::keys::SigningAlg::parse(&self.signing_alg).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (id, provider) in &self.providers {
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !id_ok {
                return Err(ConfigError::Invalid(format!("provider id {id:?}: use lowercase letters, digits and '-'")));
            }
            if provider.client_secret.is_none() && provider.client_secret_file.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "providers.{id}: client_secret or client_secret_file is required"
                )));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("max_body_bytes must be at least 1024".into()));
        }
        let w = &self.worker;
        if w.concurrency == 0 || w.poll_interval_ms == 0 || w.max_attempts == 0 || w.backoff_base_secs == 0 {
            return Err(ConfigError::Invalid(
                "worker.concurrency, poll_interval_ms, max_attempts and backoff_base_secs must be greater than zero"
                    .into(),
            ));
        }
        if w.lease_secs < 2 || w.backoff_max_secs < w.backoff_base_secs {
            return Err(ConfigError::Invalid(
                "worker.lease_secs must be at least 2 and backoff_max_secs at least backoff_base_secs".into(),
            ));
        }
        if self.smtp.timeout_secs == 0 || self.smtp.timeout_secs >= w.lease_secs {
            return Err(ConfigError::Invalid(
                "smtp.timeout_secs must be greater than zero and shorter than worker.lease_secs".into(),
            ));
        }
        crate::worker::smtp::check(self.smtp.url.as_ref().map(Secret::expose), &self.smtp.from)
            .map_err(ConfigError::Invalid)?;
        self.platform.check(w.lease_secs).map_err(ConfigError::Invalid)?;
        for (id, receiver) in &self.webhooks {
            crate::webhooks::rules::check(id, &receiver.url, receiver.secret.expose())
                .map_err(|e| ConfigError::Invalid(format!("webhooks.{id}: {e}")))?;
        }
        Ok(())
    }

    /// Where this process answers from the same host: `bind`, with an unspecified address
    /// (`0.0.0.0`, `[::]`) replaced by loopback.
    pub fn local_url(&self) -> String {
        let mut addr: std::net::SocketAddr = self.bind.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 8080).into());
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// The issuer: the public URL without a trailing slash.
    pub fn issuer(&self) -> String {
        self.public_url.trim_end_matches('/').to_owned()
    }

    /// How signing keys are made and rotated.
    pub fn key_policy(&self) -> ponte_identity::keys::KeyPolicy {
        use time::Duration;
        ponte_identity::keys::KeyPolicy {
            alg: ponte_identity::keys::SigningAlg::parse(&self.signing_alg)
                .unwrap_or(ponte_identity::keys::SigningAlg::ES256),
            max_token_lifetime: Duration::seconds(self.access_token_ttl_secs.max(self.id_token_ttl_secs) as i64),
            rotate_after: Duration::days(self.key_rotation_days as i64),
        }
    }

    /// Whether cookies must be `Secure` and `__Host-` prefixed.
    pub fn is_https(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// The database URL in effect: the configured one, or SQLite under `data_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.expose().is_empty() => url.expose().to_owned(),
            _ => format!("sqlite://{}?mode=rwc", self.data_dir.join("ponte.db").display()),
        }
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = from_toml("").unwrap();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.issuer(), "http://127.0.0.1:8080");
        assert!(c.effective_database_url().starts_with("sqlite://"));
        assert!(c.redis_url.is_none() && c.master_key.is_none());
    }

    #[test]
    fn unknown_keys_are_named_in_the_error() {
        let err = from_toml("bind = \"127.0.0.1:9000\"\nsesion_idle_secs = 5\n").unwrap_err().to_string();
        assert!(err.contains("sesion_idle_secs"), "{err}");
    }

    #[test]
    fn public_url_must_be_https_off_loopback() {
        assert!(from_toml("public_url = \"http://id.example.com\"").is_err());
        assert!(from_toml("public_url = \"https://id.example.com/\"").unwrap().is_https());
        assert_eq!(from_toml("public_url = \"https://id.example.com/\"").unwrap().issuer(), "https://id.example.com");
        assert!(from_toml("public_url = \"http://localhost:8080\"").is_ok());
        assert!(from_toml("bind = \"nowhere\"").is_err());
    }

    #[test]
    fn the_local_url_reaches_an_unspecified_bind_on_loopback() {
        let local = |bind: &str| from_toml(&format!("bind = \"{bind}\"")).unwrap().local_url();
        assert_eq!(local("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(local("[::]:9000"), "http://[::1]:9000");
        assert_eq!(local("10.1.2.3:8080"), "http://10.1.2.3:8080");
    }

    #[test]
    fn providers_are_read_from_their_tables() {
        let c = from_toml(
            "[providers.tsid]\nissuer = \"https://id.example.com\"\nclient_id = \"ponte\"\nclient_secret = \"s3cr3t-value\"\ndisplay_name = \"TeamSystem ID\"\n",
        )
        .unwrap();
        let p = &c.providers["tsid"];
        assert_eq!(
            (p.issuer.as_str(), p.client_id.as_str(), p.display_name.as_str()),
            ("https://id.example.com", "ponte", "TeamSystem ID")
        );
        assert_eq!(p.scopes, vec!["openid", "email", "profile"]);
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        let typo = from_toml(
            "[providers.tsid]\nissuer = \"https://id.example.com\"\nclient_id = \"p\"\nclient_secret = \"s\"\ndisplay_name = \"X\"\nscope = []\n",
        );
        assert!(typo.unwrap_err().to_string().contains("scope"));
        let no_secret = from_toml(
            "[providers.tsid]\nissuer = \"https://id.example.com\"\nclient_id = \"p\"\ndisplay_name = \"X\"\n",
        );
        assert!(no_secret.is_err());
    }

    #[test]
    fn worker_and_smtp_tables_have_safe_defaults_and_are_checked() {
        let c = from_toml("").unwrap();
        assert!(c.worker.enabled && c.worker.concurrency > 0 && c.smtp.url.is_none());
        let c =
            from_toml("[worker]\nenabled = false\nconcurrency = 2\n[smtp]\nurl = \"smtp://127.0.0.1:2525\"\n").unwrap();
        assert!(!c.worker.enabled);
        assert_eq!(c.worker.concurrency, 2);
        assert!(from_toml("[worker]\nconcurency = 2\n").unwrap_err().to_string().contains("concurency"));
        assert!(from_toml("[worker]\nconcurrency = 0\n").is_err());
        assert!(from_toml("[smtp]\nurl = \"http://mail\"\n").is_err());
        assert!(from_toml("[smtp]\nfrom = \"not an address\"\n").is_err());
        assert!(from_toml("[smtp]\ntimeout_secs = 60\n").is_err(), "a delivery must end before its lease");
        let c = from_toml("[smtp]\nurl = \"smtps://u:hunter2@mail:465\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_platform_is_off_by_default_and_checked_when_on() {
        let c = from_toml("").unwrap();
        assert!(c.platform.base_url.is_none() && c.platform.token_url().is_none());
        assert_eq!(c.platform.timeout_secs, 10);
        let on = "[platform]\nbase_url = \"https://platform.example/api\"\nclient_id = \"ponte\"\nclient_secret = \"pl4tf0rm-secret\"\n";
        let c = from_toml(on).unwrap();
        assert_eq!(c.platform.token_url().unwrap().as_str(), "https://platform.example/api/oauth/token");
        assert!(!format!("{c:?}").contains("pl4tf0rm-secret"));
        let c = from_toml(&format!("{on}token_url = \"https://login.example/token\"\nscope = \"invoices accounts\"\n"))
            .unwrap();
        assert_eq!(c.platform.token_url().unwrap().as_str(), "https://login.example/token");
        assert!(
            from_toml("[platform]\nbase_url = \"http://127.0.0.1:8090\"\nclient_id = \"p\"\nclient_secret = \"s\"\n")
                .is_ok()
        );
        for bad in [
            "[platform]\nbase_url = \"http://platform.example\"\nclient_id = \"p\"\nclient_secret = \"s\"\n",
            "[platform]\nbase_url = \"ftp://127.0.0.1\"\nclient_id = \"p\"\nclient_secret = \"s\"\n",
            "[platform]\nbase_url = \"https://u:pw@platform.example\"\nclient_id = \"p\"\nclient_secret = \"s\"\n",
            "[platform]\nbase_url = \"https://platform.example\"\n",
            "[platform]\ntoken_url = \"https://login.example/token\"\n",
            "[platform]\ntimeout_secs = 0\n",
            "[platform]\nscope = \"a\\\\b\"\n",
            "[platform]\nbase_url = \"https://platform.example\"\nclient_id = \"p\"\nclient_secret = \"s\"\nclient_secert = \"s\"\n",
        ] {
            assert!(from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn webhook_receivers_and_the_platform_secret_are_read_and_checked() {
        let secret = "s".repeat(32);
        let c = from_toml(&format!(
            "[webhooks.pos]\nurl = \"https://pos.example.com/h\"\nsecret = \"{secret}\"\n\
             [platform]\nwebhook_secret = \"platform-secret\"\n"
        ))
        .unwrap();
        assert_eq!(c.webhooks["pos"].url, "https://pos.example.com/h");
        assert_eq!(c.platform.webhook_secret.as_ref().map(Secret::expose), Some("platform-secret"));
        assert!(!format!("{c:?}").contains(&secret) && !format!("{c:?}").contains("platform-secret"));
        let refused = |table: &str| from_toml(table).unwrap_err().to_string();
        let plain = refused(&format!("[webhooks.pos]\nurl = \"http://pos.example.com/\"\nsecret = \"{secret}\"\n"));
        assert!(plain.contains("webhooks.pos") && plain.contains("https"), "{plain}");
        assert!(refused("[webhooks.pos]\nurl = \"https://pos.example.com/\"\nsecret = \"short\"\n").contains("32"));
        assert!(
            refused(&format!("[webhooks.POS]\nurl = \"https://p.example.com/\"\nsecret = \"{secret}\"\n"))
                .contains("webhooks.POS")
        );
        assert!(refused("[webhooks.pos]\nurl = \"https://pos.example.com/\"\n").contains("secret"));
    }

    #[test]
    fn retired_master_keys_come_as_a_list_or_comma_separated() {
        let c = from_toml("master_keys_retired = [\"a2V5MQ==\", \"a2V5Mg==\"]").unwrap();
        assert_eq!(c.master_keys_retired.iter().map(Secret::expose).collect::<Vec<_>>(), ["a2V5MQ==", "a2V5Mg=="]);
        let c = from_toml("master_keys_retired = \"a2V5MQ==, a2V5Mg==\"").unwrap();
        assert_eq!(c.master_keys_retired.len(), 2);
        assert!(from_toml("").unwrap().master_keys_retired.is_empty());
        assert!(!format!("{c:?}").contains("a2V5MQ"));
    }

    #[test]
    fn trusted_proxies_come_as_a_list_or_comma_separated_and_a_bad_one_stops_start_up() {
        assert!(from_toml("").unwrap().trusted_proxies.is_empty(), "no proxy is trusted by default");
        let c = from_toml("trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]").unwrap();
        assert_eq!(c.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(c.forwarded_header, ForwardedHeader::XForwardedFor);
        let c = from_toml("trusted_proxies = \"10.0.0.0/8, 127.0.0.1\"\nforwarded_header = \"forwarded\"").unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.forwarded_header, ForwardedHeader::Forwarded);
        let err = from_toml("trusted_proxies = [\"10.0.0.1/8\"]").unwrap_err().to_string();
        assert!(err.contains("trusted_proxies") && err.contains("10.0.0.0/8"), "{err}");
        assert!(from_toml("forwarded_header = \"x-real-ip\"").is_err());
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = from_toml("master_key = \"c2VjcmV0\"\ndatabase_url = \"postgres://u:pw@db/ponte\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("c2VjcmV0") && !shown.contains("pw@db"), "{shown}");
    }
}
