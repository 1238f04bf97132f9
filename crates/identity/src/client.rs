//! OAuth clients registered with Ponte (the POS backend, first-party apps).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{from_unix, to_unix};
use crate::db::{Database, is_unique_violation};
use crate::secret::{digest, digest_matches, random_token};
use crate::{Error, Result};

/// An OAuth 2.0 grant a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// Machine-to-machine (the POS backend).
    ClientCredentials,
    /// Browser login through Ponte.
    AuthorizationCode,
    /// Refresh of user tokens.
    RefreshToken,
}

impl GrantType {
    /// The RFC 6749 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    /// Parses the RFC 6749 spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_credentials" => Some(Self::ClientCredentials),
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }
}

/// A registered client. The secret is only ever stored as a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Public identifier.
    pub id: String,
    /// Human name, for consent pages and audit.
    pub name: String,
    /// Grants it may use.
    pub grants: Vec<GrantType>,
    /// Scopes it may be given.
    pub scopes: Vec<String>,
    /// Exact redirect URIs (browser flows).
    pub redirect_uris: Vec<String>,
    /// Exact URIs the browser may be sent to after RP-initiated logout.
    pub post_logout_redirect_uris: Vec<String>,
    /// First-party apps skip the consent page.
    pub first_party: bool,
    /// Registration time.
    pub created_at: OffsetDateTime,
    secret_digest: Option<String>,
}

impl Client {
    /// Whether this client may use `grant`.
    pub fn allows_grant(&self, grant: GrantType) -> bool {
        self.grants.contains(&grant)
    }

    /// Whether the client has a secret (confidential) or not (public).
    pub fn is_confidential(&self) -> bool {
        self.secret_digest.is_some()
    }

    /// Whether `uri` is registered, by exact string comparison (RFC 9700 §2.1).
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }

    /// Whether `uri` is a registered post-logout redirect URI (exact match).
    pub fn has_post_logout_redirect_uri(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris.iter().any(|r| r == uri)
    }

    /// Checks a presented secret in constant time.
    pub fn secret_matches(&self, presented: &str) -> bool {
        match &self.secret_digest {
            Some(stored) => digest_matches(presented, stored),
            None => false,
        }
    }
}

/// What `ponte client create` asks for.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Human name.
    pub name: String,
    /// Grants it may use (at least one).
    pub grants: Vec<GrantType>,
    /// Scopes it may be given.
    pub scopes: Vec<String>,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Exact post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Skips consent.
    pub first_party: bool,
    /// A public client has no secret.
    pub public: bool,
}

/// The scopes an authorization-code client may ask for when none are given.
pub const DEFAULT_BROWSER_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// Checks a redirect URI for registration: absolute, no fragment, and https unless it
/// points at this machine (RFC 8252 loopback redirects for native apps and tests).
pub fn check_redirect_uri(uri: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("redirect URI {uri:?}: {why}")));
    let Some((scheme, rest)) = uri.split_once("://") else { return bad("must be an absolute URI") };
    if uri.contains('#') {
        return bad("must not contain a fragment");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return bad("must name a host");
    }
    let loopback = is_loopback_host(host);
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => bad("must use https unless the host is loopback"),
        _ => bad("must be http(s)"),
    }
}

/// Checks a scope token against RFC 6749 §3.3.
pub fn is_valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Where clients are kept.
#[async_trait]
pub trait ClientRepo: Send + Sync + std::fmt::Debug {
    /// Registers a client; returns it and, for a confidential client, the secret (shown once).
    async fn create(&self, new: NewClient, now: OffsetDateTime) -> Result<(Client, Option<String>)>;
    /// A client by id (shared: a cached client is handed out without being copied).
    async fn find(&self, id: &str) -> Result<Option<Arc<Client>>>;
}

/// Clients in the relational store.
#[derive(Debug, Clone)]
pub struct SqlClients {
    db: Database,
}

impl SqlClients {
    /// Clients kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ClientRepo for SqlClients {
    async fn create(&self, new: NewClient, now: OffsetDateTime) -> Result<(Client, Option<String>)> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::Invalid("client name must have 1 to 100 characters".into()));
        }
        if new.grants.is_empty() {
            return Err(Error::Invalid("a client needs at least one grant".into()));
        }
        if let Some(bad) = new.scopes.iter().find(|s| !is_valid_scope_token(s)) {
            return Err(Error::Invalid(format!("invalid scope {bad:?}")));
        }
        if new.public && new.grants.contains(&GrantType::ClientCredentials) {
            return Err(Error::Invalid("a public client cannot use client_credentials".into()));
        }
        for uri in new.redirect_uris.iter().chain(&new.post_logout_redirect_uris) {
            check_redirect_uri(uri)?;
        }
        if new.grants.contains(&GrantType::AuthorizationCode) && new.redirect_uris.is_empty() {
            return Err(Error::Invalid("an authorization_code client needs at least one redirect URI".into()));
        }
        let mut scopes = new.scopes;
        if scopes.is_empty() && new.grants.contains(&GrantType::AuthorizationCode) {
            scopes = DEFAULT_BROWSER_SCOPES.iter().map(|s| s.to_string()).collect();
        }
        let secret = (!new.public).then(random_token);
        let client = Client {
            id: format!("cl_{}", &random_token()[..22]),
            name: name.to_owned(),
            grants: new.grants,
            scopes,
            redirect_uris: new.redirect_uris,
            post_logout_redirect_uris: new.post_logout_redirect_uris,
            first_party: new.first_party,
            created_at: now,
            secret_digest: secret.as_deref().map(digest),
        };
        let grants: Vec<&str> = client.grants.iter().map(|g| g.as_str()).collect();
        let result = sqlx::query(
            "INSERT INTO oauth_clients (id, name, secret_digest, grants, scopes, redirect_uris, created_at, \
             post_logout_redirect_uris, first_party) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(client.secret_digest.clone())
        .bind(grants.join(" "))
        .bind(client.scopes.join(" "))
        .bind(json_list(&client.redirect_uris)?)
        .bind(to_unix(now))
        .bind(json_list(&client.post_logout_redirect_uris)?)
        .bind(i64::from(client.first_party))
        .execute(self.db.pool())
        .await;
        match result {
            Ok(_) => Ok((client, secret)),
            Err(e) if is_unique_violation(&e) => Err(Error::Invalid("client id collision, try again".into())),
            Err(e) => Err(e.into()),
        }
    }

    async fn find(&self, id: &str) -> Result<Option<Arc<Client>>> {
        type Row = (String, String, Option<String>, String, String, String, i64, String, i64);
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, name, secret_digest, grants, scopes, redirect_uris, created_at, post_logout_redirect_uris, first_party \
             FROM oauth_clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|(id, name, secret_digest, grants, scopes, redirect_uris, created_at, post_logout, first_party)| {
            Ok(Arc::new(Client {
                id,
                name,
                grants: grants.split_whitespace().filter_map(GrantType::parse).collect(),
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                redirect_uris: parse_list(&redirect_uris)?,
                post_logout_redirect_uris: parse_list(&post_logout)?,
                first_party: first_party != 0,
                created_at: from_unix(created_at),
                secret_digest,
            }))
        })
        .transpose()
    }
}

/// Keeps recently used clients in memory, so the token and introspection endpoints do not
/// query the database on every request (measured: the lookup was most of their cost).
/// Clients are immutable once registered; a client removed from the store stays usable
/// here for at most `ttl`.
#[derive(Debug)]
pub struct CachedClients<R> {
    inner: R,
    ttl: std::time::Duration,
    cache: std::sync::RwLock<std::collections::HashMap<String, (Arc<Client>, std::time::Instant)>>,
}

/// Most clients kept; beyond this the cache starts over (a deployment has a handful).
const CACHE_CAPACITY: usize = 4096;

impl<R: ClientRepo> CachedClients<R> {
    /// Caches `inner`'s clients for `ttl`.
    pub fn new(inner: R, ttl: std::time::Duration) -> Self {
        Self { inner, ttl, cache: Default::default() }
    }
}

#[async_trait]
impl<R: ClientRepo> ClientRepo for CachedClients<R> {
    async fn create(&self, new: NewClient, now: OffsetDateTime) -> Result<(Client, Option<String>)> {
        self.inner.create(new, now).await
    }

    async fn find(&self, id: &str) -> Result<Option<Arc<Client>>> {
        if let Some((client, at)) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(client.clone()));
        }
        // Unknown ids are not cached: they would let anyone fill memory.
        let found = self.inner.find(id).await?;
        if let Some(client) = &found {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(id.to_owned(), (client.clone(), std::time::Instant::now()));
        }
        Ok(found)
    }
}

fn json_list(items: &[String]) -> Result<String> {
    serde_json::to_string(items).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parse_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("uri list: {e}")))
}

/// Whether `host` (a name or an address, without brackets) stays on this machine:
/// `localhost` or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn client_for_tests() -> Client {
        Client {
            id: "c".into(),
            name: "n".into(),
            grants: vec![GrantType::ClientCredentials],
            scopes: vec![],
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            first_party: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
            secret_digest: Some(digest("s3cret")),
        }
    }

    #[test]
    fn scope_tokens_follow_rfc6749() {
        assert!(is_valid_scope_token("ponte.admin"));
        assert!(is_valid_scope_token("openid"));
        assert!(!is_valid_scope_token(""));
        assert!(!is_valid_scope_token("a b"));
        assert!(!is_valid_scope_token("quote\"d"));
        assert!(!is_valid_scope_token("back\\slash"));
    }

    #[derive(Debug, Default)]
    struct CountingRepo(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl ClientRepo for CountingRepo {
        async fn create(&self, _: NewClient, _: OffsetDateTime) -> Result<(Client, Option<String>)> {
            Err(Error::Invalid("not here".into()))
        }

        async fn find(&self, id: &str) -> Result<Option<Arc<Client>>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok((id == "c").then(|| Arc::new(client_for_tests())))
        }
    }

    #[tokio::test]
    async fn known_clients_are_cached_unknown_ones_are_not() {
        let cached = CachedClients::new(CountingRepo::default(), std::time::Duration::from_secs(30));
        assert!(cached.find("c").await.unwrap().is_some());
        assert!(cached.find("c").await.unwrap().is_some());
        assert_eq!(cached.inner.0.load(std::sync::atomic::Ordering::SeqCst), 1, "second lookup from memory");
        assert!(cached.find("x").await.unwrap().is_none());
        assert!(cached.find("x").await.unwrap().is_none());
        assert_eq!(cached.inner.0.load(std::sync::atomic::Ordering::SeqCst), 3, "misses always ask the store");
        let expired = CachedClients::new(CountingRepo::default(), std::time::Duration::ZERO);
        expired.find("c").await.unwrap();
        expired.find("c").await.unwrap();
        assert_eq!(
            expired.inner.0.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "after the ttl the store is asked again"
        );
    }

    #[test]
    fn redirect_uris_must_be_https_unless_loopback() {
        assert!(check_redirect_uri("https://shop.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:4000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:8000/cb").is_ok());
        assert!(check_redirect_uri("http://shop.example.com/cb").is_err());
        assert!(check_redirect_uri("http://127.0.0.1.evil.com/cb").is_err());
        assert!(check_redirect_uri("https://shop.example.com/cb#frag").is_err());
        assert!(check_redirect_uri("javascript://alert").is_err());
        assert!(check_redirect_uri("/relative").is_err());
    }

    #[test]
    fn secret_matches_only_the_right_secret() {
        let client = Client {
            id: "c".into(),
            name: "n".into(),
            grants: vec![GrantType::ClientCredentials],
            scopes: vec![],
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            first_party: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
            secret_digest: Some(digest("s3cret")),
        };
        assert!(client.secret_matches("s3cret"));
        assert!(!client.secret_matches("s3cre"));
        assert!(!client.secret_matches(""));
    }
}
