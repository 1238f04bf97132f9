//! External-identity links: which upstream identity (issuer + subject) signs in as which
//! Ponte user. The rules that keep the wrong person from ever being linked live in
//! [`decide`]; storage enforces the same with unique constraints.

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::{Database, is_unique_violation};
use ponte_identity::upstream::UpstreamIdentity;
use sqlx::Any;
use time::OffsetDateTime;

use crate::account::User;
use crate::audit::{Actor, AuditEntry};
use crate::ids::{AccountId, UserId};
use crate::{Error, Result};

/// A stored link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// Link id.
    pub id: String,
    /// The Ponte user.
    pub user_id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// The configured provider id.
    pub provider: String,
    /// The upstream issuer.
    pub issuer: String,
    /// The upstream subject.
    pub subject: String,
    /// Upstream email, refreshed at each login.
    pub email: Option<String>,
    /// Upstream name, refreshed at each login.
    pub name: Option<String>,
    /// When the link was made.
    pub linked_at: OffsetDateTime,
    /// Last login through it.
    pub last_login_at: Option<OffsetDateTime>,
}

/// What linking an upstream identity to a user comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// New: write the link.
    Link,
    /// Already tied to this very user: nothing to do.
    AlreadyLinked,
    /// Tied to someone else: refuse.
    LinkedElsewhere,
    /// The user already has another identity at this provider: unlink it first.
    ProviderTaken,
}

/// The linking rules, given what is stored for this identity and for this user.
pub fn decide(
    existing: Option<&ExternalIdentity>,
    user_links: &[ExternalIdentity],
    user: UserId,
    provider: &str,
) -> Decision {
    match existing {
        Some(link) if link.user_id == user => Decision::AlreadyLinked,
        Some(_) => Decision::LinkedElsewhere,
        None if user_links.iter().any(|l| l.provider == provider) => Decision::ProviderTaken,
        None => Decision::Link,
    }
}

/// Where links are kept.
#[async_trait]
pub trait Links: Send + Sync + std::fmt::Debug {
    /// The link of an upstream identity, if any.
    async fn find(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>>;
    /// A user's links.
    async fn for_user(&self, account: AccountId, user: UserId) -> Result<Vec<ExternalIdentity>>;
    /// Links `identity` to `user` if [`decide`] allows; returns the decision.
    async fn link(
        &self,
        user: &User,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Decision>;
    /// Removes the user's link at `provider`; `false` if there was none.
    async fn unlink(
        &self,
        account: AccountId,
        user: UserId,
        provider: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<bool>;
    /// Records a login through a link and refreshes its email and name (audited when
    /// they changed).
    async fn record_login(
        &self,
        link: &ExternalIdentity,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<()>;
}

/// [`Links`] on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlLinks {
    db: Database,
}

impl SqlLinks {
    /// Links kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

type Row = (String, String, String, String, String, String, Option<String>, Option<String>, i64, Option<i64>);
const COLUMNS: &str = "id, user_id, account_id, provider, issuer, subject, email, name, linked_at, last_login_at";

fn parse(row: Row) -> Result<ExternalIdentity> {
    let corrupt = || Error::Identity(ponte_identity::Error::Corrupt(format!("link {}", row.0)));
    Ok(ExternalIdentity {
        user_id: row.1.parse().map_err(|_| corrupt())?,
        account_id: row.2.parse().map_err(|_| corrupt())?,
        id: row.0,
        provider: row.3,
        issuer: row.4,
        subject: row.5,
        email: row.6,
        name: row.7,
        linked_at: from_unix(row.8),
        last_login_at: row.9.map(from_unix),
    })
}

async fn audit(executor: impl sqlx::Executor<'_, Database = Any>, entry: AuditEntry) -> Result<()> {
    crate::audit::sql::append(executor, &entry).await
}

/// Audit detail: a JSON object of string values.
fn detail(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
    serde_json::Value::Object(map).to_string()
}

#[async_trait]
impl Links for SqlLinks {
    async fn find(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>> {
        let row: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM external_identities WHERE issuer = $1 AND subject = $2"))
                .bind(issuer)
                .bind(subject)
                .fetch_optional(self.db.pool())
                .await?;
        row.map(parse).transpose()
    }

    async fn for_user(&self, account: AccountId, user: UserId) -> Result<Vec<ExternalIdentity>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM external_identities WHERE account_id = $1 AND user_id = $2 ORDER BY linked_at, id"
        ))
        .bind(account.to_string())
        .bind(user.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(parse).collect()
    }

    async fn link(
        &self,
        user: &User,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Decision> {
        let existing = self.find(&identity.issuer, &identity.subject).await?;
        let user_links = self.for_user(user.account_id, user.id).await?;
        let decision = decide(existing.as_ref(), &user_links, user.id, &identity.provider);
        if decision != Decision::Link {
            let action = match decision {
                Decision::AlreadyLinked => "identity.link_noop",
                _ => "identity.link_refused",
            };
            let reason = format!("{decision:?}");
            audit(
                self.db.pool(),
                AuditEntry::for_user(user.account_id, user.id, actor, action, now)
                    .with_detail(detail(&[("provider", &identity.provider), ("reason", &reason)])),
            )
            .await?;
            return Ok(decision);
        }
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO external_identities (id, user_id, account_id, provider, issuer, subject, email, name, linked_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(user.id.to_string())
        .bind(user.account_id.to_string())
        .bind(&identity.provider)
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(identity.email.clone())
        .bind(identity.name.clone())
        .bind(to_unix(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // A concurrent link won the race: decide again on what is stored now.
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                let existing = self.find(&identity.issuer, &identity.subject).await?;
                let user_links = self.for_user(user.account_id, user.id).await?;
                return Ok(decide(existing.as_ref(), &user_links, user.id, &identity.provider));
            }
            Err(e) => return Err(e.into()),
        }
        let email = identity.email.clone().unwrap_or_default();
        audit(
            &mut *tx,
            AuditEntry::for_user(user.account_id, user.id, actor, "identity.linked", now).with_detail(detail(&[
                ("provider", &identity.provider),
                ("subject", &identity.subject),
                ("email", &email),
            ])),
        )
        .await?;
        tx.commit().await?;
        Ok(Decision::Link)
    }

    async fn unlink(
        &self,
        account: AccountId,
        user: UserId,
        provider: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let done =
            sqlx::query("DELETE FROM external_identities WHERE account_id = $1 AND user_id = $2 AND provider = $3")
                .bind(account.to_string())
                .bind(user.to_string())
                .bind(provider)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        audit(
            &mut *tx,
            AuditEntry::for_user(account, user, actor, "identity.unlinked", now)
                .with_detail(detail(&[("provider", provider)])),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_login(
        &self,
        link: &ExternalIdentity,
        identity: &UpstreamIdentity,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE external_identities SET email = $1, name = $2, last_login_at = $3 WHERE id = $4")
            .bind(identity.email.clone())
            .bind(identity.name.clone())
            .bind(to_unix(now))
            .bind(&link.id)
            .execute(&mut *tx)
            .await?;
        if link.email != identity.email || link.name != identity.name {
            let (email, name) = (identity.email.clone().unwrap_or_default(), identity.name.clone().unwrap_or_default());
            audit(
                &mut *tx,
                AuditEntry::for_user(link.account_id, link.user_id, actor, "identity.claims_changed", now)
                    .with_detail(detail(&[("provider", &link.provider), ("email", &email), ("name", &name)])),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(user: UserId, provider: &str) -> ExternalIdentity {
        ExternalIdentity {
            id: "l".into(),
            user_id: user,
            account_id: AccountId::new(),
            provider: provider.into(),
            issuer: "https://id.example".into(),
            subject: "sub".into(),
            email: None,
            name: None,
            linked_at: OffsetDateTime::UNIX_EPOCH,
            last_login_at: None,
        }
    }

    #[test]
    fn an_identity_never_moves_to_another_user() {
        let (me, other) = (UserId::new(), UserId::new());
        assert_eq!(decide(None, &[], me, "tsid"), Decision::Link);
        assert_eq!(decide(Some(&link(me, "tsid")), &[link(me, "tsid")], me, "tsid"), Decision::AlreadyLinked);
        assert_eq!(decide(Some(&link(other, "tsid")), &[], me, "tsid"), Decision::LinkedElsewhere);
        assert_eq!(decide(None, &[link(me, "tsid")], me, "tsid"), Decision::ProviderTaken, "one identity per provider");
        assert_eq!(decide(None, &[link(me, "other")], me, "tsid"), Decision::Link);
    }

    #[test]
    fn audit_details_are_escaped_json() {
        assert_eq!(detail(&[("a", "x\"y"), ("b", "\\")]), r#"{"a":"x\"y","b":"\\"}"#);
    }
}
