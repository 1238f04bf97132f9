//! Where the POS backend takes Ponte's events: webhook receivers, each a URL and the
//! secret its deliveries are signed with.
//!
//! Receivers come from two places: `[webhooks.<id>]` in the configuration (read-only) and
//! the REST API (stored, the secret sealed under the master key with the receiver id as
//! context, so a sealed secret cannot be moved to another row). [`WithConfigured`] shows
//! both as one set; a configured id hides a stored one of the same name.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::Database;
use ponte_identity::seal::MasterKeys;
use time::OffsetDateTime;

use super::rules::{self, Invalid};
use crate::config::{Secret, WebhookConfig};

/// Where a receiver is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverSource {
    /// `[webhooks.<id>]` in the configuration: changed only there.
    Config,
    /// `PUT /api/v1/webhooks/{receiver}`.
    Api,
}

impl ReceiverSource {
    /// The spelling the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverSource::Config => "config",
            ReceiverSource::Api => "api",
        }
    }
}

/// A webhook receiver of the POS backend (its secret is kept apart, see
/// [`Receivers::get_with_secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceiver {
    /// Slug, `[a-z0-9_-]{1,64}`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Where it is defined.
    pub source: ReceiverSource,
    /// When it was stored (absent for receivers from the configuration).
    pub created_at: Option<OffsetDateTime>,
    /// Its last change (absent for receivers from the configuration).
    pub updated_at: Option<OffsetDateTime>,
}

/// Why a receiver could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The receiver is defined in the configuration, which REST does not change.
    #[error("webhook receiver {0:?} is defined in the configuration")]
    FromConfig(String),
    /// A value breaks a rule.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The store failed (or a sealed secret could not be opened).
    #[error(transparent)]
    Store(#[from] ponte_identity::Error),
}

impl From<sqlx::Error> for ReceiverError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<Invalid> for ReceiverError {
    fn from(e: Invalid) -> Self {
        Self::Invalid { field: e.field, message: e.message }
    }
}

/// Checks a receiver id: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub fn check_id(id: &str) -> Result<(), ReceiverError> {
    Ok(rules::check_id(id)?)
}

/// Checks a receiver URL (see [`rules::check_url`]).
pub fn check_url(url: &str) -> Result<(), ReceiverError> {
    Ok(rules::check_url(url)?)
}

/// Checks a signing secret (see [`rules::check_secret`]).
pub fn check_secret(secret: &str) -> Result<(), ReceiverError> {
    Ok(rules::check_secret(secret)?)
}

/// Checks a whole receiver definition.
pub fn check(id: &str, url: &str, secret: &str) -> Result<(), ReceiverError> {
    Ok(rules::check(id, url, secret)?)
}

/// The webhook receivers.
#[async_trait]
pub trait Receivers: Send + Sync + std::fmt::Debug {
    /// Every receiver, by id.
    async fn list(&self) -> Result<Vec<WebhookReceiver>, ReceiverError>;
    /// One receiver with its secret, for a delivery.
    async fn get_with_secret(&self, id: &str) -> Result<Option<(WebhookReceiver, Secret)>, ReceiverError>;
    /// Creates or replaces a receiver (after [`check`]).
    async fn put(
        &self,
        id: &str,
        url: &str,
        secret: &Secret,
        now: OffsetDateTime,
    ) -> Result<WebhookReceiver, ReceiverError>;
    /// Removes a receiver; `false` when there was none.
    async fn delete(&self, id: &str) -> Result<bool, ReceiverError>;
}

/// Receivers stored in the database, secrets sealed.
#[derive(Debug, Clone)]
pub struct SqlReceivers {
    db: Database,
    master: MasterKeys,
}

impl SqlReceivers {
    /// Receivers kept in `db`, secrets sealed under `master`.
    pub fn new(db: Database, master: MasterKeys) -> Self {
        Self { db, master }
    }
}

/// The seal context of a receiver's secret: it opens only in its own row.
fn seal_context(id: &str) -> String {
    format!("webhook_receiver:{id}")
}

type Row = (String, String, i64, i64);

fn receiver(row: Row) -> WebhookReceiver {
    WebhookReceiver {
        id: row.0,
        url: row.1,
        source: ReceiverSource::Api,
        created_at: Some(from_unix(row.2)),
        updated_at: Some(from_unix(row.3)),
    }
}

#[async_trait]
impl Receivers for SqlReceivers {
    async fn list(&self) -> Result<Vec<WebhookReceiver>, ReceiverError> {
        let rows: Vec<Row> =
            sqlx::query_as("SELECT id, url, created_at, updated_at FROM webhook_receivers ORDER BY id")
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.into_iter().map(receiver).collect())
    }

    async fn get_with_secret(&self, id: &str) -> Result<Option<(WebhookReceiver, Secret)>, ReceiverError> {
        let row: Option<(String, String, i64, i64, String)> = sqlx::query_as(
            "SELECT id, url, created_at, updated_at, secret_sealed FROM webhook_receivers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some((id, url, created, updated, sealed)) = row else { return Ok(None) };
        let secret = self.master.open(&sealed, &seal_context(&id))?;
        let secret = String::from_utf8(secret)
            .map_err(|_| ponte_identity::Error::Corrupt(format!("webhook receiver {id}: secret is not text")))?;
        Ok(Some((receiver((id, url, created, updated)), Secret::from(secret.as_str()))))
    }

    async fn put(
        &self,
        id: &str,
        url: &str,
        secret: &Secret,
        now: OffsetDateTime,
    ) -> Result<WebhookReceiver, ReceiverError> {
        check(id, url, secret.expose())?;
        let sealed = self.master.seal(secret.expose().as_bytes(), &seal_context(id))?;
        // The same upsert on both engines; `created_at` survives a replacement.
        sqlx::query(
            "INSERT INTO webhook_receivers (id, url, secret_sealed, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, secret_sealed = excluded.secret_sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(url)
        .bind(sealed)
        .bind(to_unix(now))
        .execute(self.db.pool())
        .await?;
        let row: Row = sqlx::query_as("SELECT id, url, created_at, updated_at FROM webhook_receivers WHERE id = $1")
            .bind(id)
            .fetch_one(self.db.pool())
            .await?;
        Ok(receiver(row))
    }

    async fn delete(&self, id: &str) -> Result<bool, ReceiverError> {
        let done = sqlx::query("DELETE FROM webhook_receivers WHERE id = $1").bind(id).execute(self.db.pool()).await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The configured receivers in front of stored ones: listed together, the configured ones
/// read-only.
#[derive(Debug, Clone)]
pub struct WithConfigured {
    configured: BTreeMap<String, WebhookConfig>,
    stored: Arc<dyn Receivers>,
}

impl WithConfigured {
    /// `configured` (from `[webhooks.<id>]`, checked by the configuration) over `stored`.
    pub fn new(configured: BTreeMap<String, WebhookConfig>, stored: Arc<dyn Receivers>) -> Self {
        Self { configured, stored }
    }

    fn configured(&self, id: &str) -> Option<WebhookReceiver> {
        self.configured.get(id).map(|c| WebhookReceiver {
            id: id.to_owned(),
            url: c.url.clone(),
            source: ReceiverSource::Config,
            created_at: None,
            updated_at: None,
        })
    }
}

#[async_trait]
impl Receivers for WithConfigured {
    async fn list(&self) -> Result<Vec<WebhookReceiver>, ReceiverError> {
        let mut all: BTreeMap<String, WebhookReceiver> =
            self.stored.list().await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        for id in self.configured.keys() {
            if let Some(r) = self.configured(id) {
                all.insert(id.clone(), r);
            }
        }
        Ok(all.into_values().collect())
    }

    async fn get_with_secret(&self, id: &str) -> Result<Option<(WebhookReceiver, Secret)>, ReceiverError> {
        match (self.configured(id), self.configured.get(id)) {
            (Some(r), Some(c)) => Ok(Some((r, c.secret.clone()))),
            _ => self.stored.get_with_secret(id).await,
        }
    }

    async fn put(
        &self,
        id: &str,
        url: &str,
        secret: &Secret,
        now: OffsetDateTime,
    ) -> Result<WebhookReceiver, ReceiverError> {
        if self.configured.contains_key(id) {
            return Err(ReceiverError::FromConfig(id.to_owned()));
        }
        self.stored.put(id, url, secret, now).await
    }

    async fn delete(&self, id: &str) -> Result<bool, ReceiverError> {
        if self.configured.contains_key(id) {
            return Err(ReceiverError::FromConfig(id.to_owned()));
        }
        self.stored.delete(id).await
    }
}

/// The receivers `ponte serve` and the worker use: `[webhooks.<id>]` over those in `db`.
pub fn from_config(
    configured: &BTreeMap<String, WebhookConfig>,
    db: Database,
    master: MasterKeys,
) -> Arc<dyn Receivers> {
    Arc::new(WithConfigured::new(configured.clone(), Arc::new(SqlReceivers::new(db, master))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_broken(r: Result<(), ReceiverError>) -> Option<&'static str> {
        match r {
            Err(ReceiverError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn ids_are_short_lowercase_slugs() {
        for ok in ["pos", "pos-backend_2", &"a".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "POS", "pos backend", "pos/1", "però", &"a".repeat(65)] {
            assert_eq!(rule_broken(check_id(bad)), Some("receiver"), "{bad}");
        }
    }

    #[test]
    fn urls_are_https_or_loopback_http_without_credentials() {
        for ok in ["https://pos.example.com/hooks", "http://127.0.0.1:9000/h", "http://localhost/h", "http://[::1]:80/"]
        {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://pos.example.com/hooks",
            "http://10.0.0.1/h",
            "ftp://pos.example.com/",
            "https://user:pw@pos.example.com/",
            "https://user@pos.example.com/",
            "https://pos.example.com/#x",
            "not a url",
            "http://localhost.example.com/",
        ] {
            assert_eq!(rule_broken(check_url(bad)), Some("url"), "{bad}");
        }
    }

    #[test]
    fn secrets_have_at_least_32_characters() {
        assert_eq!(rule_broken(check_secret(&"s".repeat(31))), Some("secret"));
        assert!(check_secret(&"s".repeat(32)).is_ok());
    }
}
