//! [`AccountStore`] and [`UserStore`] on SQLite or PostgreSQL.
//!
//! The SQL both engines agree on is written once, here. What must differ lives in
//! [`postgres`] and [`sqlite`], chosen by [`Backend`]: today the account lock.
//! Case-insensitive email matching needs no per-engine SQL: the folded form is computed
//! in Rust ([`Email::normalized`](crate::email::Email::normalized)) and stored in
//! `email_normalized` with a unique index, so neither engine's `lower()` (ASCII-only on
//! SQLite) is ever relied on.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::{Backend, Database, is_unique_violation};
use sqlx::{Any, Transaction};
use time::OffsetDateTime;

use std::collections::BTreeSet;

use super::store::{AccountStore, LoginCandidate, UserStore};
use super::{
    Account, AccountStatus, Lang, NewUser, Role, User, UserPatch, UserStatus, check_delete, check_grants_target,
    check_patch,
};
use crate::access::{Companies, Grant, GrantJson};
use crate::audit::{Actor, AuditEntry, sql::append as audit};
use crate::email::Email;
use crate::ids::{AccountId, CompanyId, UserId};
use crate::seats::{self, SeatUsage};
use crate::{Error, Result};

/// Locks the account for the rest of `tx`, so the rules checked after it (the owner, the
/// seat count) see rows no concurrent writer of this account can change before the
/// commit. Call it first in the transaction. `false` if there is no such account.
pub async fn lock_account(backend: Backend, tx: &mut Transaction<'_, Any>, account: AccountId) -> Result<bool> {
    match backend {
        Backend::Postgres => postgres::lock_account(tx, account).await,
        Backend::Sqlite => sqlite::lock_account(tx, account).await,
    }
}

/// [`AccountStore`] in the relational store.
#[derive(Debug, Clone)]
pub struct SqlAccounts {
    db: Database,
}

impl SqlAccounts {
    /// Accounts kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// [`UserStore`] in the relational store.
#[derive(Debug, Clone)]
pub struct SqlUsers {
    db: Database,
}

impl SqlUsers {
    /// Users kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

type UserRow =
    (String, String, String, String, String, String, Option<String>, String, String, Option<String>, i64, i64);
const USER_COLUMNS: &str = "id, account_id, email, name, role, status, password_hash, lang, permissions, status_reason, created_at, updated_at";

/// The stored form of a member's grants: the API's JSON.
pub(crate) fn grants_json(grants: &[Grant]) -> String {
    serde_json::to_string(&grants.iter().map(Grant::to_json).collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

fn parse_grants(stored: &str) -> Option<Vec<Grant>> {
    let wire: Vec<GrantJson> = serde_json::from_str(stored).ok()?;
    wire.iter().map(|g| Grant::parse(g).ok()).collect()
}

/// Every company a grant names must be one of `account`'s (checked inside the write
/// transaction, so a company cannot be granted by another tenant's id).
async fn check_grant_companies(tx: &mut Transaction<'_, Any>, account: AccountId, grants: &[Grant]) -> Result<()> {
    let named: BTreeSet<CompanyId> = grants
        .iter()
        .filter_map(|g| match &g.companies {
            Companies::All => None,
            Companies::Only(ids) => Some(ids.iter().copied()),
        })
        .flatten()
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM companies WHERE account_id = $1")
        .bind(account.to_string())
        .fetch_all(&mut **tx)
        .await?;
    let own: BTreeSet<String> = rows.into_iter().map(|(id,)| id).collect();
    if let Some(unknown) = named.iter().find(|id| !own.contains(&id.to_string())) {
        return Err(Error::invalid("permissions", format!("no company {unknown} in this account")));
    }
    Ok(())
}

/// The account's seats at `now`, read in `tx` (after its lock, for a rule that must hold
/// at the commit).
pub async fn seat_usage_in(
    tx: &mut Transaction<'_, Any>,
    account: AccountId,
    now: OffsetDateTime,
) -> Result<SeatUsage> {
    seat_usage(&mut **tx, account, now).await
}

/// The account's seats at `now`: paid grants still valid, and active members.
pub async fn seat_usage(
    executor: impl sqlx::Executor<'_, Database = Any>,
    account: AccountId,
    now: OffsetDateTime,
) -> Result<SeatUsage> {
    let (valid, used): (i64, i64) = sqlx::query_as(
        "SELECT CAST((SELECT COALESCE(SUM(quantity), 0) FROM seat_grants \
                      WHERE account_id = $1 AND paid_at IS NOT NULL AND valid_until > $2) AS BIGINT), \
                CAST((SELECT COUNT(*) FROM users \
                      WHERE account_id = $1 AND role = 'member' AND status = 'active') AS BIGINT)",
    )
    .bind(account.to_string())
    .bind(to_unix(now))
    .fetch_one(executor)
    .await?;
    Ok(SeatUsage { valid: u32::try_from(valid).unwrap_or(u32::MAX), used: u32::try_from(used).unwrap_or(u32::MAX) })
}

/// Takes `company` out of the grants of `account`'s members, in `tx` (the company's
/// removal): a grant list read back and written again must not name a company that is gone.
pub async fn forget_company(tx: &mut Transaction<'_, Any>, account: AccountId, company: CompanyId) -> Result<()> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, permissions FROM users WHERE account_id = $1 AND permissions LIKE $2")
            .bind(account.to_string())
            .bind(format!("%{company}%"))
            .fetch_all(&mut **tx)
            .await?;
    for (user, stored) in rows {
        let grants = parse_grants(&stored)
            .ok_or_else(|| Error::Identity(ponte_identity::Error::Corrupt(format!("user {user}: permissions"))))?;
        sqlx::query("UPDATE users SET permissions = $1 WHERE id = $2")
            .bind(grants_json(&crate::access::without_company(&grants, company)))
            .bind(&user)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The seat rule for a user going from `before` to `after`, checked after the account lock.
async fn check_seat(
    tx: &mut Transaction<'_, Any>,
    account: AccountId,
    before: Option<(Role, UserStatus)>,
    after: (Role, UserStatus),
    now: OffsetDateTime,
) -> Result<()> {
    if seats::needs_seat(before, after) {
        seats::check_free_seat(seat_usage_in(tx, account, now).await?)?;
    }
    Ok(())
}

fn parse_user(row: UserRow) -> Result<(User, Option<String>)> {
    let (
        id,
        account_id,
        email,
        name,
        role,
        status,
        password_hash,
        lang,
        permissions,
        status_reason,
        created_at,
        updated_at,
    ) = row;
    let corrupt = |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("user {id}: {what}")));
    let user = User {
        id: id.parse().map_err(|_| corrupt("id"))?,
        account_id: account_id.parse().map_err(|_| corrupt("account_id"))?,
        email,
        name,
        role: Role::parse(&role).ok_or_else(|| corrupt("role"))?,
        status: UserStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        has_password: password_hash.is_some(),
        lang: Lang::parse(&lang).ok_or_else(|| corrupt("lang"))?,
        grants: parse_grants(&permissions).ok_or_else(|| corrupt("permissions"))?,
        status_reason,
        created_at: from_unix(created_at),
        updated_at: from_unix(updated_at),
    };
    Ok((user, password_hash))
}

async fn insert_user(
    tx: &mut Transaction<'_, Any>,
    account: AccountId,
    new: &NewUser,
    now: OffsetDateTime,
) -> Result<User> {
    let user = User {
        id: UserId::new(),
        account_id: account,
        email: new.email.as_str().to_owned(),
        name: new.name.clone(),
        role: new.role,
        status: UserStatus::Active,
        has_password: new.password_hash.is_some(),
        lang: new.lang,
        grants: new.grants.clone(),
        status_reason: None,
        created_at: now,
        updated_at: now,
    };
    let result = sqlx::query(
        "INSERT INTO users (id, account_id, email, email_normalized, name, role, status, password_hash, lang, \
         permissions, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    )
    .bind(user.id.to_string())
    .bind(account.to_string())
    .bind(&user.email)
    .bind(new.email.normalized())
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(user.status.as_str())
    .bind(new.password_hash.clone())
    .bind(new.lang.as_str())
    .bind(grants_json(&new.grants))
    .bind(to_unix(now))
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(user),
        Err(e) if is_unique_violation(&e) => Err(Error::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

async fn select_user(
    executor: impl sqlx::Executor<'_, Database = Any>,
    account: AccountId,
    user: UserId,
) -> Result<Option<User>> {
    let row: Option<UserRow> =
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE account_id = $1 AND id = $2"))
            .bind(account.to_string())
            .bind(user.to_string())
            .fetch_optional(executor)
            .await?;
    row.map(|r| parse_user(r).map(|(u, _)| u)).transpose()
}

#[async_trait]
impl AccountStore for SqlAccounts {
    async fn create(
        &self,
        name: String,
        owner: NewUser,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<(Account, User)> {
        let account =
            Account { id: AccountId::new(), name, status: AccountStatus::Active, created_at: now, updated_at: now };
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO accounts (id, name, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
            .bind(account.id.to_string())
            .bind(&account.name)
            .bind(account.status.as_str())
            .bind(to_unix(now))
            .execute(&mut *tx)
            .await?;
        let owner = NewUser { role: Role::Owner, ..owner };
        let user = insert_user(&mut tx, account.id, &owner, now).await?;
        audit(&mut *tx, &AuditEntry::for_account(account.id, actor, "account.created", now)).await?;
        let created =
            AuditEntry::for_user(account.id, user.id, actor, "user.created", now).with_detail(r#"{"role":"owner"}"#);
        audit(&mut *tx, &created).await?;
        tx.commit().await?;
        Ok((account, user))
    }

    async fn get(&self, id: AccountId) -> Result<Option<Account>> {
        let row: Option<(String, String, String, i64, i64)> =
            sqlx::query_as("SELECT id, name, status, created_at, updated_at FROM accounts WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(|(_, name, status, created_at, updated_at)| Account {
            id,
            name,
            status: AccountStatus::parse(&status).unwrap_or(AccountStatus::Disabled),
            created_at: from_unix(created_at),
            updated_at: from_unix(updated_at),
        }))
    }
}

#[async_trait]
impl UserStore for SqlUsers {
    async fn list(&self, account: AccountId) -> Result<Vec<User>> {
        let rows: Vec<UserRow> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE account_id = $1 ORDER BY created_at, id"))
                .bind(account.to_string())
                .fetch_all(self.db.pool())
                .await?;
        rows.into_iter().map(|r| parse_user(r).map(|(u, _)| u)).collect()
    }

    async fn get(&self, account: AccountId, user: UserId) -> Result<Option<User>> {
        select_user(self.db.pool(), account, user).await
    }

    async fn create(&self, account: AccountId, new: NewUser, actor: &Actor, now: OffsetDateTime) -> Result<User> {
        let mut tx = self.db.begin().await?;
        if !lock_account(self.db.backend(), &mut tx, account).await? {
            return Err(Error::NotFound("account"));
        }
        check_grant_companies(&mut tx, account, &new.grants).await?;
        check_seat(&mut tx, account, None, (new.role, UserStatus::Active), now).await?;
        let user = insert_user(&mut tx, account, &new, now).await?;
        let detail = format!(r#"{{"role":"{}"}}"#, user.role.as_str());
        audit(&mut *tx, &AuditEntry::for_user(account, user.id, actor, "user.created", now).with_detail(detail))
            .await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn update(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let mut tx = self.db.begin().await?;
        // No account means no such user in it: the lookup below answers that.
        lock_account(self.db.backend(), &mut tx, account).await?;
        let current = select_user(&mut *tx, account, user).await?.ok_or(Error::NotFound("user"))?;
        check_patch(&current, &patch)?;
        let after = (patch.role.unwrap_or(current.role), patch.status.unwrap_or(current.status));
        check_seat(&mut tx, account, Some((current.role, current.status)), after, now).await?;
        let mut changed = Vec::new();
        let mut next = current.clone();
        if let Some(email) = &patch.email {
            next.email = email.as_str().to_owned();
            changed.push("email");
        }
        if let Some(name) = &patch.name {
            next.name = name.clone();
            changed.push("name");
        }
        if let Some(role) = patch.role {
            next.role = role;
            changed.push("role");
        }
        if let Some(status) = patch.status {
            next.status = status;
            // A person decided the status now: the system's reason no longer holds.
            next.status_reason = None;
            changed.push("status");
        }
        if patch.password_hash.is_some() {
            next.has_password = true;
            changed.push("password");
        }
        if let Some(lang) = patch.lang {
            next.lang = lang;
            changed.push("lang");
        }
        next.updated_at = now;
        let result = sqlx::query(
            "UPDATE users SET email = $1, email_normalized = COALESCE($2, email_normalized), name = $3, role = $4, status = $5, \
             password_hash = COALESCE($6, password_hash), lang = $7, updated_at = $8, status_reason = $11 \
             WHERE account_id = $9 AND id = $10",
        )
        .bind(&next.email)
        .bind(patch.email.as_ref().map(|e| e.normalized()))
        .bind(&next.name)
        .bind(next.role.as_str())
        .bind(next.status.as_str())
        .bind(patch.password_hash)
        .bind(next.lang.as_str())
        .bind(to_unix(now))
        .bind(account.to_string())
        .bind(user.to_string())
        .bind(next.status_reason.clone())
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Error::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        let detail = format!(r#"{{"changed":["{}"]}}"#, changed.join(r#"",""#));
        audit(&mut *tx, &AuditEntry::for_user(account, user, actor, "user.updated", now).with_detail(detail)).await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn set_grants(
        &self,
        account: AccountId,
        user: UserId,
        grants: Vec<Grant>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let mut tx = self.db.begin().await?;
        lock_account(self.db.backend(), &mut tx, account).await?;
        let current = select_user(&mut *tx, account, user).await?.ok_or(Error::NotFound("user"))?;
        check_grants_target(&current)?;
        check_grant_companies(&mut tx, account, &grants).await?;
        let stored = grants_json(&grants);
        sqlx::query("UPDATE users SET permissions = $1, updated_at = $2 WHERE account_id = $3 AND id = $4")
            .bind(&stored)
            .bind(to_unix(now))
            .bind(account.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        let detail = format!(r#"{{"permissions":{stored}}}"#);
        let entry = AuditEntry::for_user(account, user, actor, "user.permissions_changed", now).with_detail(detail);
        audit(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(User { grants, updated_at: now, ..current })
    }

    async fn delete(&self, account: AccountId, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let mut tx = self.db.begin().await?;
        lock_account(self.db.backend(), &mut tx, account).await?;
        let current = select_user(&mut *tx, account, user).await?.ok_or(Error::NotFound("user"))?;
        check_delete(&current)?;
        sqlx::query("DELETE FROM users WHERE account_id = $1 AND id = $2")
            .bind(account.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        audit(&mut *tx, &AuditEntry::for_user(account, user, actor, "user.deleted", now)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>> {
        // Every stored address passed `Email::parse`, so one that does not parse matches
        // nobody; folding it the same way as on insert keeps lookup and uniqueness one rule
        // (and keeps text PostgreSQL refuses, such as NUL, away from the database).
        let Ok(email) = Email::parse(email) else { return Ok(None) };
        type CandidateRow = (
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            i64,
            i64,
            String,
            String,
        );
        let row: Option<CandidateRow> = sqlx::query_as(
            "SELECT u.id, u.account_id, u.email, u.name, u.role, u.status, u.password_hash, u.lang, u.permissions, \
             u.status_reason, u.created_at, u.updated_at, a.status, a.name \
             FROM users u JOIN accounts a ON a.id = u.account_id WHERE u.email_normalized = $1",
        )
        .bind(email.normalized())
        .fetch_optional(self.db.pool())
        .await?;
        let Some((
            id,
            account_id,
            email,
            name,
            role,
            status,
            hash,
            lang,
            permissions,
            reason,
            created,
            updated,
            account_status,
            account_name,
        )) = row
        else {
            return Ok(None);
        };
        let (user, password_hash) =
            parse_user((id, account_id, email, name, role, status, hash, lang, permissions, reason, created, updated))?;
        Ok(Some(LoginCandidate {
            user,
            password_hash,
            account_status: AccountStatus::parse(&account_status).unwrap_or(AccountStatus::Disabled),
            account_name,
        }))
    }
}
