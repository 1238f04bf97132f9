//! [`ResetStore`] on SQLite or PostgreSQL. Redeeming is a compare-and-set on `used_at`
//! (`… WHERE used_at IS NULL AND expires_at > now`), so two requests racing with one link
//! cannot both set a password, with no row lock; both engines agree on all of this SQL.

use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::Database;
use ponte_identity::outbox::{Outbox, OutgoingMail};
use ponte_identity::recovery::IssuedToken;
use time::OffsetDateTime;

use super::{Redemption, ResetStore, StoredReset};
use crate::account::User;
use crate::audit::{AuditEntry, sql::append as audit};
use crate::{Error, Result};

/// Resets kept in the relational store, their mail enqueued through `outbox` in the same
/// transaction.
#[derive(Debug, Clone)]
pub struct SqlResets {
    db: Database,
    outbox: Arc<dyn Outbox>,
}

impl SqlResets {
    /// Resets in `db`, mailing through `outbox`.
    pub fn new(db: Database, outbox: Arc<dyn Outbox>) -> Self {
        Self { db, outbox }
    }
}

impl SqlResets {
    /// Stores `token` with its audit line and mail in one transaction; with
    /// `replace_others`, the user's outstanding links stop working in it too.
    async fn store(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        entry: &AuditEntry,
        now: OffsetDateTime,
        replace_others: bool,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        if replace_others {
            sqlx::query("UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
                .bind(to_unix(now))
                .bind(user.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO password_resets (digest, user_id, account_id, expires_at, used_at, created_at) \
             VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(&token.digest)
        .bind(user.id.to_string())
        .bind(user.account_id.to_string())
        .bind(to_unix(token.expires_at))
        .bind(to_unix(now))
        .execute(&mut *tx)
        .await;
        inserted?;
        audit(&mut *tx, entry).await?;
        self.outbox.send_in(&mut tx, mail, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ResetStore for SqlResets {
    async fn issue(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        entry: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.store(user, token, mail, entry, now, false).await
    }

    async fn rotate(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        entry: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.store(user, token, mail, entry, now, true).await
    }

    async fn find(&self, digest: &str) -> Result<Option<StoredReset>> {
        let row: Option<(String, String, i64, Option<i64>)> =
            sqlx::query_as("SELECT user_id, account_id, expires_at, used_at FROM password_resets WHERE digest = $1")
                .bind(digest)
                .fetch_optional(self.db.pool())
                .await?;
        let Some((user, account, expires_at, used_at)) = row else { return Ok(None) };
        let bad = |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("password reset: {what}")));
        Ok(Some(StoredReset {
            user_id: user.parse().map_err(|_| bad("user_id"))?,
            account_id: account.parse().map_err(|_| bad("account_id"))?,
            expires_at: from_unix(expires_at),
            used_at: used_at.map(from_unix),
        }))
    }

    async fn redeem(&self, r: Redemption<'_>, now: OffsetDateTime) -> Result<bool> {
        let now_s = to_unix(now);
        let user = r.user.id.to_string();
        let mut tx = self.db.begin().await?;
        let won = sqlx::query(
            "UPDATE password_resets SET used_at = $1 WHERE digest = $2 AND user_id = $3 AND used_at IS NULL \
             AND expires_at > $1",
        )
        .bind(now_s)
        .bind(r.digest)
        .bind(&user)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(r.password_hash)
            .bind(now_s)
            .bind(&user)
            .execute(&mut *tx)
            .await?;
        // Every other link of the user stops working: one reset, one password.
        sqlx::query("UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
            .bind(now_s)
            .bind(&user)
            .execute(&mut *tx)
            .await?;
        audit(&mut *tx, r.audit).await?;
        self.outbox.send_in(&mut tx, r.mail, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}
