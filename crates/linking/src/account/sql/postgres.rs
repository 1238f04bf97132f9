//! The account aggregate's SQL that only PostgreSQL speaks.

use sqlx::{Any, Transaction};

use crate::Result;
use crate::ids::AccountId;

/// A row lock on the account until the transaction ends: concurrent writers of the same
/// account queue here, other accounts are not held up.
pub(super) async fn lock_account(tx: &mut Transaction<'_, Any>, account: AccountId) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(account.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}
