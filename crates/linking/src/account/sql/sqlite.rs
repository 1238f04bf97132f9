//! The account aggregate's SQL where SQLite must differ.

use sqlx::{Any, Transaction};

use crate::Result;
use crate::ids::AccountId;

/// SQLite has no row locks (`FOR UPDATE` is a syntax error) and one writer per database,
/// so the write lock is the account lock. But a transaction begins deferred: it reads
/// under a snapshot and takes the write lock only at its first write, and a write after a
/// stale read fails (`SQLITE_BUSY_SNAPSHOT`) instead of waiting. A no-op write as the
/// first statement takes the write lock up front (waiting out the busy timeout for the
/// current writer), so everything read after it is current until the commit.
pub(super) async fn lock_account(tx: &mut Transaction<'_, Any>, account: AccountId) -> Result<bool> {
    let done = sqlx::query("UPDATE accounts SET updated_at = updated_at WHERE id = $1")
        .bind(account.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}
