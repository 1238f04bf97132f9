//! [`AuditLog`] on SQLite or PostgreSQL.
//!
//! An append-only insert and one ordered read: both engines agree on all of it, so there
//! is no per-engine file here yet. When something must differ (a partitioned table, a
//! retention job), it goes into `audit/sql/{postgres,sqlite}.rs` as in
//! [`crate::account::sql`].

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::Database;
use sqlx::Any;

use super::{Actor, AuditEntry, AuditLog};
use crate::Result;
use crate::ids::AccountId;

/// Appends `entry` through `executor`: pass `&mut *tx` to make it part of a caller's write
/// transaction (the usual case for a store), or a pool for a line of its own.
pub async fn append(executor: impl sqlx::Executor<'_, Database = Any>, entry: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_entries (id, account_id, actor, action, target, detail, ip, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(entry.account_id.map(|a| a.to_string()))
    .bind(&entry.actor.who)
    .bind(&entry.action)
    .bind(entry.target.clone())
    .bind(entry.detail.clone())
    .bind(entry.actor.ip.clone())
    .bind(to_unix(entry.at))
    .execute(executor)
    .await?;
    Ok(())
}

/// The audit trail kept in the relational store.
#[derive(Debug, Clone)]
pub struct SqlAudit {
    db: Database,
}

impl SqlAudit {
    /// A trail kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AuditLog for SqlAudit {
    async fn append(&self, entry: &AuditEntry) -> Result<()> {
        append(self.db.pool(), entry).await
    }

    async fn list(&self, account: AccountId, limit: u32) -> Result<Vec<AuditEntry>> {
        // Ids are UUIDv7 text, ordered by creation (within a process): of two entries in the
        // same second, the later one comes first.
        let rows: Vec<(String, String, Option<String>, Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT actor, action, target, detail, ip, at FROM audit_entries WHERE account_id = $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(account.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(who, action, target, detail, ip, at)| AuditEntry {
                account_id: Some(account),
                actor: Actor { who, ip },
                action,
                target,
                detail,
                at: from_unix(at),
            })
            .collect())
    }
}
