//! `ponte keys reseal`: moves every stored sealed value to the active master key, in small
//! batches. Each row is compare-and-set on the sealed value it was read with, so a value a
//! replica wrote meanwhile (sealed with the ring it has) is never overwritten; such a row,
//! if still under an old key, is simply counted as remaining and taken by the next run.

use ponte_identity::db::Database;
use ponte_identity::seal::MasterKeys;

/// Rows read per batch.
pub const BATCH: i64 = 100;

/// Where sealed values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `signing_keys.private_sealed` (context: the kid).
    SigningKeys,
    /// `webhook_receivers.secret_sealed` (context: `webhook_receiver:<id>`).
    WebhookReceivers,
    /// `integration_credentials.sealed` (context: `integration_credentials:<company>:<kind>`).
    Credentials,
    /// The payload of `mail.send` jobs not yet done (`{"sealed": …}`; context: `mail.send`).
    MailJobs,
}

impl Store {
    /// Every store, in the order a reseal visits them.
    pub const ALL: [Store; 4] = [Self::SigningKeys, Self::WebhookReceivers, Self::Credentials, Self::MailJobs];

    /// (table, row key as one SQL expression, sealed column, extra filter).
    fn sql(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Self::SigningKeys => ("signing_keys", "kid", "private_sealed", "1 = 1"),
            Self::WebhookReceivers => ("webhook_receivers", "id", "secret_sealed", "1 = 1"),
            Self::Credentials => ("integration_credentials", "company_id || ':' || kind", "sealed", "1 = 1"),
            Self::MailJobs => ("jobs", "id", "payload", "kind = 'mail.send' AND state IN ('pending', 'running')"),
        }
    }

    /// The name in the report.
    pub fn as_str(self) -> &'static str {
        self.sql().0
    }
}

/// One sealed value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    /// Where it is.
    pub store: Store,
    /// Its row key (`company:kind` for credentials).
    pub key: String,
    /// The column's text as read (for mail jobs the whole JSON payload).
    pub stored: String,
}

/// Why a reseal stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A value could not be opened (its key is not in the ring) or is malformed.
    #[error("{store} {key}: {source}")]
    Seal {
        /// Where.
        store: &'static str,
        /// Which row.
        key: String,
        /// Why.
        source: ponte_identity::Error,
    },
}

impl SealedRow {
    fn context(&self) -> String {
        match self.store {
            Store::SigningKeys => self.key.clone(),
            Store::WebhookReceivers => format!("webhook_receiver:{}", self.key),
            Store::Credentials => format!("integration_credentials:{}", self.key),
            Store::MailJobs => ponte_identity::outbox::MAIL_SEND.to_owned(),
        }
    }

    fn sealed(&self) -> Option<String> {
        match self.store {
            Store::MailJobs => {
                serde_json::from_str::<serde_json::Value>(&self.stored).ok()?.get("sealed")?.as_str().map(str::to_owned)
            }
            _ => Some(self.stored.clone()),
        }
    }

    /// The column's new text, sealed with the active key; `None` if it already is.
    pub fn resealed(&self, keys: &MasterKeys) -> Result<Option<String>, ResealError> {
        let error = |source| ResealError::Seal { store: self.store.as_str(), key: self.key.clone(), source };
        let sealed = self.sealed().ok_or_else(|| error(ponte_identity::Error::Corrupt("not a sealed value".into())))?;
        let Some(new) = keys.reseal(&sealed, &self.context()).map_err(error)? else { return Ok(None) };
        Ok(Some(match self.store {
            Store::MailJobs => {
                let mut payload: serde_json::Value = serde_json::from_str(&self.stored)
                    .map_err(|e| error(ponte_identity::Error::Corrupt(e.to_string())))?;
                payload["sealed"] = serde_json::Value::String(new);
                payload.to_string()
            }
            _ => new,
        }))
    }
}

/// The values of `store` not sealed with the active key, after row key `after`, at most `limit`.
pub async fn stale(
    db: &Database,
    keys: &MasterKeys,
    store: Store,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let (table, key, column, filter) = store.sql();
    // The active key's prefix, in the column itself or inside a mail job's JSON.
    let current = match store {
        Store::MailJobs => format!("%\"v1.{}.%", keys.id()),
        _ => format!("v1.{}.%", keys.id()),
    };
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT {key}, {column} FROM {table} WHERE {filter} AND {column} NOT LIKE $1 AND {key} > $2 \
         ORDER BY {key} LIMIT $3"
    ))
    .bind(current)
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(key, stored)| SealedRow { store, key, stored }).collect())
}

/// Writes `new` over the row if it still holds what was read; `false` when another writer
/// changed it meanwhile (its value stays).
pub async fn compare_and_set(db: &Database, row: &SealedRow, new: &str) -> Result<bool, sqlx::Error> {
    let (table, key, column, _) = row.store.sql();
    let done = sqlx::query(&format!("UPDATE {table} SET {column} = $1 WHERE {key} = $2 AND {column} = $3"))
        .bind(new)
        .bind(&row.key)
        .bind(&row.stored)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What a reseal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Rows moved to the active key.
    pub resealed: u64,
    /// Rows another writer changed between read and write (left as they were).
    pub skipped: u64,
    /// Rows still under an old key id after the run (0: the retired keys can go).
    pub remaining: u64,
}

/// Re-seals every store with the active key, `batch` rows at a time.
pub async fn reseal_all(db: &Database, keys: &MasterKeys, batch: i64) -> Result<Report, ResealError> {
    let mut report = Report::default();
    for store in Store::ALL {
        let mut after = String::new();
        loop {
            let rows = stale(db, keys, store, &after, batch).await?;
            let Some(last) = rows.last() else { break };
            after = last.key.clone();
            for row in &rows {
                let Some(new) = row.resealed(keys)? else { continue };
                if compare_and_set(db, row, &new).await? {
                    report.resealed += 1;
                } else {
                    report.skipped += 1;
                }
            }
        }
    }
    report.remaining = remaining(db, keys).await?;
    Ok(report)
}

/// How many rows are still under a key other than the active one.
pub async fn remaining(db: &Database, keys: &MasterKeys) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for store in Store::ALL {
        n += stale(db, keys, store, "", i64::MAX).await?.len() as u64;
    }
    Ok(n)
}
