//! The ids of the invoicing platform's events already processed: a delivery the platform
//! retries (it did not see our 204) is answered without acting twice.

use ponte_identity::clock::to_unix;
use ponte_identity::db::{Database, is_unique_violation};
use time::OffsetDateTime;

/// `platform_events` on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlProcessedEvents {
    db: Database,
}

impl SqlProcessedEvents {
    /// Ids kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Whether the event `id` was processed already.
    pub async fn seen(&self, id: &str) -> ponte_identity::Result<bool> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM platform_events WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Records the event `id` as processed. A concurrent duplicate that recorded it first
    /// is no error: the event was processed either way.
    pub async fn record(&self, id: &str, type_: &str, now: OffsetDateTime) -> ponte_identity::Result<()> {
        let inserted = sqlx::query("INSERT INTO platform_events (id, type, received_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(type_)
            .bind(to_unix(now))
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
