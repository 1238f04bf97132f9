//! Where accounts, users and the audit trail are kept.

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::{Database, is_unique_violation};
use sqlx::{Any, Transaction};
use time::OffsetDateTime;

use crate::account::{Account, AccountStatus, NewUser, Role, User, UserPatch, UserStatus, check_delete, check_patch};
use crate::audit::{Actor, AuditEntry};
use crate::ids::{AccountId, UserId};
use crate::{Error, Result};

/// What password login needs to know about a user.
#[derive(Debug, Clone)]
pub struct LoginCandidate {
    /// The user.
    pub user: User,
    /// Its argon2id hash, if it has a password.
    pub password_hash: Option<String>,
    /// Its account's status.
    pub account_status: AccountStatus,
    /// Its account's name, for pages.
    pub account_name: String,
}

/// Accounts, users and audit. Every user operation is scoped by account: a user id from
/// another account is simply not found.
#[async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Creates an account and its owner in one transaction.
    async fn create_account(
        &self,
        name: String,
        owner: NewUser,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<(Account, User)>;
    /// An account by id.
    async fn account(&self, id: AccountId) -> Result<Option<Account>>;
    /// The account's users, oldest first.
    async fn users(&self, account: AccountId) -> Result<Vec<User>>;
    /// One user of the account.
    async fn user(&self, account: AccountId, user: UserId) -> Result<Option<User>>;
    /// Adds a user to the account.
    async fn create_user(&self, account: AccountId, new: NewUser, actor: &Actor, now: OffsetDateTime) -> Result<User>;
    /// Changes a user, enforcing [`check_patch`].
    async fn update_user(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User>;
    /// Deletes a user, enforcing [`check_delete`].
    async fn delete_user(&self, account: AccountId, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<()>;
    /// The user with this email (any case), for password login.
    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>>;
    /// Appends to the audit trail.
    async fn record(&self, entry: &AuditEntry) -> Result<()>;
    /// The account's audit trail, newest first.
    async fn audit(&self, account: AccountId, limit: u32) -> Result<Vec<AuditEntry>>;
}

/// [`Directory`] on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlDirectory {
    db: Database,
}

impl SqlDirectory {
    /// A directory kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

type UserRow = (String, String, String, String, String, String, Option<String>, i64, i64);
const USER_COLUMNS: &str = "id, account_id, email, name, role, status, password_hash, created_at, updated_at";

fn parse_user(row: UserRow) -> Result<(User, Option<String>)> {
    let (id, account_id, email, name, role, status, password_hash, created_at, updated_at) = row;
    let corrupt = |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("user {id}: {what}")));
    let user = User {
        id: id.parse().map_err(|_| corrupt("id"))?,
        account_id: account_id.parse().map_err(|_| corrupt("account_id"))?,
        email,
        name,
        role: Role::parse(&role).ok_or_else(|| corrupt("role"))?,
        status: UserStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        has_password: password_hash.is_some(),
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
        created_at: now,
        updated_at: now,
    };
    let result = sqlx::query(
        "INSERT INTO users (id, account_id, email, email_normalized, name, role, status, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(user.id.to_string())
    .bind(account.to_string())
    .bind(&user.email)
    .bind(new.email.normalized())
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(user.status.as_str())
    .bind(new.password_hash.clone())
    .bind(to_unix(now))
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(user),
        Err(e) if is_unique_violation(&e) => Err(Error::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn insert_audit(executor: impl sqlx::Executor<'_, Database = Any>, entry: &AuditEntry) -> Result<()> {
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

fn entry(
    account: AccountId,
    actor: &Actor,
    action: &str,
    user: UserId,
    detail: Option<String>,
    now: OffsetDateTime,
) -> AuditEntry {
    AuditEntry {
        account_id: Some(account),
        actor: actor.clone(),
        action: action.to_owned(),
        target: Some(format!("user:{user}")),
        detail,
        at: now,
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
impl Directory for SqlDirectory {
    async fn create_account(
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
        insert_audit(
            &mut *tx,
            &AuditEntry {
                account_id: Some(account.id),
                actor: actor.clone(),
                action: "account.created".into(),
                target: Some(format!("account:{}", account.id)),
                detail: None,
                at: now,
            },
        )
        .await?;
        insert_audit(
            &mut *tx,
            &entry(account.id, actor, "user.created", user.id, Some(r#"{"role":"owner"}"#.into()), now),
        )
        .await?;
        tx.commit().await?;
        Ok((account, user))
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>> {
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

    async fn users(&self, account: AccountId) -> Result<Vec<User>> {
        let rows: Vec<UserRow> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE account_id = $1 ORDER BY created_at, id"))
                .bind(account.to_string())
                .fetch_all(self.db.pool())
                .await?;
        rows.into_iter().map(|r| parse_user(r).map(|(u, _)| u)).collect()
    }

    async fn user(&self, account: AccountId, user: UserId) -> Result<Option<User>> {
        select_user(self.db.pool(), account, user).await
    }

    async fn create_user(&self, account: AccountId, new: NewUser, actor: &Actor, now: OffsetDateTime) -> Result<User> {
        let mut tx = self.db.begin().await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1")
            .bind(account.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound("account"));
        }
        let user = insert_user(&mut tx, account, &new, now).await?;
        let detail = format!(r#"{{"role":"{}"}}"#, user.role.as_str());
        insert_audit(&mut *tx, &entry(account, actor, "user.created", user.id, Some(detail), now)).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn update_user(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let mut tx = self.db.begin().await?;
        let current = select_user(&mut *tx, account, user).await?.ok_or(Error::NotFound("user"))?;
        check_patch(&current, &patch)?;
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
            changed.push("status");
        }
        if patch.password_hash.is_some() {
            next.has_password = true;
            changed.push("password");
        }
        next.updated_at = now;
        let result = sqlx::query(
            "UPDATE users SET email = $1, email_normalized = $2, name = $3, role = $4, status = $5, \
             password_hash = COALESCE($6, password_hash), updated_at = $7 WHERE account_id = $8 AND id = $9",
        )
        .bind(&next.email)
        .bind(next.email.to_lowercase())
        .bind(&next.name)
        .bind(next.role.as_str())
        .bind(next.status.as_str())
        .bind(patch.password_hash)
        .bind(to_unix(now))
        .bind(account.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Error::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        let detail = format!(r#"{{"changed":["{}"]}}"#, changed.join(r#"",""#));
        insert_audit(&mut *tx, &entry(account, actor, "user.updated", user, Some(detail), now)).await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn delete_user(&self, account: AccountId, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let current = select_user(&mut *tx, account, user).await?.ok_or(Error::NotFound("user"))?;
        check_delete(&current)?;
        sqlx::query("DELETE FROM users WHERE account_id = $1 AND id = $2")
            .bind(account.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut *tx, &entry(account, actor, "user.deleted", user, None, now)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>> {
        let row: Option<(String, String, String, String, String, String, Option<String>, i64, i64, String, String)> = sqlx::query_as(
            "SELECT u.id, u.account_id, u.email, u.name, u.role, u.status, u.password_hash, u.created_at, u.updated_at, \
             a.status, a.name FROM users u JOIN accounts a ON a.id = u.account_id WHERE u.email_normalized = $1",
        )
        .bind(email.to_lowercase())
        .fetch_optional(self.db.pool())
        .await?;
        let Some((id, account_id, email, name, role, status, hash, created, updated, account_status, account_name)) =
            row
        else {
            return Ok(None);
        };
        let (user, password_hash) = parse_user((id, account_id, email, name, role, status, hash, created, updated))?;
        Ok(Some(LoginCandidate {
            user,
            password_hash,
            account_status: AccountStatus::parse(&account_status).unwrap_or(AccountStatus::Disabled),
            account_name,
        }))
    }

    async fn record(&self, entry: &AuditEntry) -> Result<()> {
        insert_audit(self.db.pool(), entry).await
    }

    async fn audit(&self, account: AccountId, limit: u32) -> Result<Vec<AuditEntry>> {
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
