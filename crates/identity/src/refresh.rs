//! Refresh tokens: opaque, rotated at every use, grouped in families so that the reuse of
//! an old token revokes the whole family (RFC 9700 §4.14.2).
//!
//! A token reads `<family id>.<secret>`; the store keeps the digest of the token in use
//! and of the one just before it. The rules are in [`judge`], a pure function.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::clock::{from_unix, to_unix};
use crate::db::Database;
use crate::ids::{AccountId, UserId};
use crate::secret::{constant_time_eq, digest, random_token};
use crate::{Error, Result};

/// How long an immediately previous token still works after a rotation, so a client
/// whose response was lost can retry.
pub const RETRY_GRACE: Duration = Duration::seconds(10);

/// A family as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    /// Family id (the token's prefix).
    pub id: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user.
    pub user_id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// Granted scopes (space-separated).
    pub scope: String,
    /// The Ponte session it came from.
    pub sid: Option<String>,
    /// When the user authenticated.
    pub auth_time: i64,
    /// Authentication methods (space-separated).
    pub amr: String,
    /// Digest of the token in use.
    pub current_digest: String,
    /// Digest of the token before it.
    pub previous_digest: Option<String>,
    /// When the current token was issued.
    pub rotated_at: OffsetDateTime,
    /// When the family was started.
    pub created_at: OffsetDateTime,
    /// When the family ends regardless of use.
    pub expires_at: OffsetDateTime,
    /// When (if ever) it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

impl Family {
    /// A new family with a fresh id and its first token, as every store starts one.
    pub fn start(new: NewFamily, lifetime: Duration, now: OffsetDateTime) -> (Self, String) {
        let id = random_token()[..22].to_owned();
        let token = new_token(&id);
        let family = Self {
            id,
            client_id: new.client_id,
            user_id: new.user_id,
            account_id: new.account_id,
            scope: new.scope,
            sid: new.sid,
            auth_time: new.auth_time,
            amr: new.amr,
            current_digest: digest(&token),
            previous_digest: None,
            rotated_at: now,
            created_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
        };
        (family, token)
    }
}

/// What to do with a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token in use: rotate.
    Rotate,
    /// The immediately previous token within the grace: issue again, keep the previous.
    RetryWithinGrace,
    /// An old token: someone replayed it. Revoke the family.
    Reuse,
    /// The family ended (expired or revoked).
    Dead,
}

/// The family rules.
pub fn judge(family: &Family, presented: &str, now: OffsetDateTime) -> Verdict {
    if family.revoked_at.is_some() || now >= family.expires_at {
        return Verdict::Dead;
    }
    let presented = digest(presented);
    if constant_time_eq(presented.as_bytes(), family.current_digest.as_bytes()) {
        return Verdict::Rotate;
    }
    let is_previous =
        family.previous_digest.as_ref().is_some_and(|p| constant_time_eq(presented.as_bytes(), p.as_bytes()));
    if is_previous && now <= family.rotated_at + RETRY_GRACE { Verdict::RetryWithinGrace } else { Verdict::Reuse }
}

/// The family id a token claims to belong to.
pub fn family_of(token: &str) -> Option<&str> {
    token.split_once('.').map(|(id, _)| id).filter(|id| id.len() == 22)
}

/// A fresh token for family `id`.
pub fn new_token(id: &str) -> String {
    format!("{id}.{}", random_token())
}

/// What a new family starts with.
#[derive(Debug, Clone)]
pub struct NewFamily {
    /// The client.
    pub client_id: String,
    /// The user.
    pub user_id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// Granted scopes (space-separated).
    pub scope: String,
    /// The Ponte session.
    pub sid: Option<String>,
    /// When the user authenticated.
    pub auth_time: i64,
    /// Authentication methods (space-separated).
    pub amr: String,
}

/// Where families are kept.
#[async_trait]
pub trait RefreshRepo: Send + Sync + std::fmt::Debug {
    /// Starts a family; returns it and its first token.
    async fn start(&self, new: NewFamily, lifetime: Duration, now: OffsetDateTime) -> Result<(Family, String)>;
    /// A family by id.
    async fn find(&self, id: &str) -> Result<Option<Family>>;
    /// Applies a [`Verdict::Rotate`] or [`Verdict::RetryWithinGrace`]; `None` if another
    /// request changed the family first (the caller judges again).
    async fn advance(&self, family: &Family, verdict: Verdict, now: OffsetDateTime) -> Result<Option<String>>;
    /// Revokes one family.
    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<()>;
    /// Revokes every family started from a Ponte session.
    async fn revoke_session(&self, sid: &str, now: OffsetDateTime) -> Result<u64>;
    /// Revokes every family of a user.
    async fn revoke_user(&self, user: UserId, now: OffsetDateTime) -> Result<u64>;
}

/// Families in the relational store.
#[derive(Debug, Clone)]
pub struct SqlRefresh {
    db: Database,
}

impl SqlRefresh {
    /// Families kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    Option<i64>,
);

#[async_trait]
impl RefreshRepo for SqlRefresh {
    async fn start(&self, new: NewFamily, lifetime: Duration, now: OffsetDateTime) -> Result<(Family, String)> {
        let (family, token) = Family::start(new, lifetime, now);
        sqlx::query(
            "INSERT INTO refresh_families (id, client_id, user_id, account_id, scope, sid, auth_time, amr, \
             current_digest, previous_digest, rotated_at, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $10, $11, NULL)",
        )
        .bind(&family.id)
        .bind(&family.client_id)
        .bind(family.user_id.to_string())
        .bind(family.account_id.to_string())
        .bind(&family.scope)
        .bind(family.sid.clone())
        .bind(family.auth_time)
        .bind(&family.amr)
        .bind(&family.current_digest)
        .bind(to_unix(now))
        .bind(to_unix(family.expires_at))
        .execute(self.db.pool())
        .await?;
        Ok((family, token))
    }

    async fn find(&self, id: &str) -> Result<Option<Family>> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, client_id, user_id, account_id, scope, sid, auth_time, amr, current_digest, previous_digest, \
             rotated_at, created_at, expires_at, revoked_at FROM refresh_families WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let corrupt = |what: &str| Error::Corrupt(format!("refresh family {}: {what}", r.0));
        Ok(Some(Family {
            user_id: r.2.parse().map_err(|_| corrupt("user_id"))?,
            account_id: r.3.parse().map_err(|_| corrupt("account_id"))?,
            id: r.0,
            client_id: r.1,
            scope: r.4,
            sid: r.5,
            auth_time: r.6,
            amr: r.7,
            current_digest: r.8,
            previous_digest: r.9,
            rotated_at: from_unix(r.10),
            created_at: from_unix(r.11),
            expires_at: from_unix(r.12),
            revoked_at: r.13.map(from_unix),
        }))
    }

    async fn advance(&self, family: &Family, verdict: Verdict, now: OffsetDateTime) -> Result<Option<String>> {
        let token = new_token(&family.id);
        let result = match verdict {
            Verdict::Rotate => {
                sqlx::query(
                    "UPDATE refresh_families SET previous_digest = current_digest, current_digest = $1, rotated_at = $2 \
                     WHERE id = $3 AND current_digest = $4 AND revoked_at IS NULL",
                )
                .bind(digest(&token))
                .bind(to_unix(now))
                .bind(&family.id)
                .bind(&family.current_digest)
                .execute(self.db.pool())
                .await?
            }
            Verdict::RetryWithinGrace => {
                sqlx::query(
                    "UPDATE refresh_families SET current_digest = $1 WHERE id = $2 AND current_digest = $3 AND revoked_at IS NULL",
                )
                .bind(digest(&token))
                .bind(&family.id)
                .bind(&family.current_digest)
                .execute(self.db.pool())
                .await?
            }
            other => return Err(Error::Invalid(format!("cannot advance a family on {other:?}"))),
        };
        Ok((result.rows_affected() == 1).then_some(token))
    }

    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(to_unix(now))
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    async fn revoke_session(&self, sid: &str, now: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE sid = $2 AND revoked_at IS NULL")
            .bind(to_unix(now))
            .bind(sid)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_user(&self, user: UserId, now: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
            .bind(to_unix(now))
            .bind(user.to_string())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 10:00 UTC);

    fn family(current: &str, previous: Option<&str>, rotated_at: OffsetDateTime) -> Family {
        Family {
            id: "f".repeat(22),
            client_id: "c".into(),
            user_id: UserId::new(),
            account_id: AccountId::new(),
            scope: "openid offline_access".into(),
            sid: None,
            auth_time: 0,
            amr: "pwd".into(),
            current_digest: digest(current),
            previous_digest: previous.map(digest),
            rotated_at,
            created_at: T0,
            expires_at: T0 + Duration::days(30),
            revoked_at: None,
        }
    }

    #[test]
    fn the_current_token_rotates() {
        assert_eq!(judge(&family("new", Some("old"), T0), "new", T0 + Duration::hours(1)), Verdict::Rotate);
    }

    #[test]
    fn the_previous_token_is_forgiven_only_briefly() {
        let f = family("new", Some("old"), T0);
        assert_eq!(judge(&f, "old", T0 + Duration::seconds(3)), Verdict::RetryWithinGrace);
        assert_eq!(judge(&f, "old", T0 + RETRY_GRACE), Verdict::RetryWithinGrace);
        assert_eq!(judge(&f, "old", T0 + RETRY_GRACE + Duration::seconds(1)), Verdict::Reuse);
    }

    #[test]
    fn older_tokens_are_reuse() {
        let f = family("newest", Some("newer"), T0);
        assert_eq!(judge(&f, "oldest", T0), Verdict::Reuse);
        assert_eq!(judge(&f, "", T0), Verdict::Reuse);
    }

    #[test]
    fn revoked_or_expired_families_are_dead_even_for_the_current_token() {
        let mut f = family("new", None, T0);
        assert_eq!(judge(&f, "new", T0 + Duration::days(30)), Verdict::Dead);
        f.revoked_at = Some(T0);
        assert_eq!(judge(&f, "new", T0), Verdict::Dead);
    }

    #[test]
    fn tokens_name_their_family() {
        let token = new_token(&"x".repeat(22));
        assert_eq!(family_of(&token), Some("x".repeat(22).as_str()));
        assert_eq!(family_of("nodot"), None);
        assert_eq!(family_of("short.abc"), None);
    }
}
