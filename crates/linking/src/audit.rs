//! The append-only audit trail: who did what to what, when, from where.
//!
//! [`AuditLog`] is for callers outside any transaction (handlers); a store that changes
//! state appends its entry inside its own write transaction with [`sql::append`], so the
//! change and its line of the trail commit or roll back together.

pub mod sql;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::Result;
use crate::ids::{AccountId, UserId};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `client:<id>`, `user:<id>` or `system`.
    pub who: String,
    /// Client address, when a request carried one.
    pub ip: Option<String>,
}

impl Actor {
    /// An OAuth client acting through the REST API.
    pub fn client(client_id: &str, ip: Option<String>) -> Self {
        Self { who: format!("client:{client_id}"), ip }
    }

    /// A signed-in user.
    pub fn user(user_id: impl std::fmt::Display, ip: Option<String>) -> Self {
        Self { who: format!("user:{user_id}"), ip }
    }

    /// Ponte itself (jobs, start-up).
    pub fn system() -> Self {
        Self { who: "system".into(), ip: None }
    }
}

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The account concerned, if any.
    pub account_id: Option<AccountId>,
    /// Who acted.
    pub actor: Actor,
    /// What happened, e.g. `user.created`, `login.failed`.
    pub action: String,
    /// What it happened to, e.g. `user:<id>`.
    pub target: Option<String>,
    /// Extra facts as JSON text (never secrets).
    pub detail: Option<String>,
    /// When.
    pub at: OffsetDateTime,
}

impl AuditEntry {
    /// Something `actor` did to a user of `account`, without detail (add it with
    /// [`AuditEntry::with_detail`]).
    pub fn for_user(account: AccountId, user: UserId, actor: &Actor, action: &str, at: OffsetDateTime) -> Self {
        Self::new(account, format!("user:{user}"), actor, action, at)
    }

    /// Something `actor` did to the account itself.
    pub fn for_account(account: AccountId, actor: &Actor, action: &str, at: OffsetDateTime) -> Self {
        Self::new(account, format!("account:{account}"), actor, action, at)
    }

    /// Something `actor` did to a company of `account` (or its integration).
    pub fn for_company(
        account: AccountId,
        company: crate::ids::CompanyId,
        actor: &Actor,
        action: &str,
        at: OffsetDateTime,
    ) -> Self {
        Self::new(account, format!("company:{company}"), actor, action, at)
    }

    /// The same entry with `detail` (JSON text, never secrets).
    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        Self { detail: Some(detail.into()), ..self }
    }

    fn new(account: AccountId, target: String, actor: &Actor, action: &str, at: OffsetDateTime) -> Self {
        Self {
            account_id: Some(account),
            actor: actor.clone(),
            action: action.to_owned(),
            target: Some(target),
            detail: None,
            at,
        }
    }
}

/// Where the trail is kept: appended to, never changed.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends one entry on its own (not part of another write).
    async fn append(&self, entry: &AuditEntry) -> Result<()>;
    /// The account's trail, newest first, at most `limit` entries.
    async fn list(&self, account: AccountId, limit: u32) -> Result<Vec<AuditEntry>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_target_by_kind_and_id() {
        let (account, user) = (AccountId::new(), UserId::new());
        let actor = Actor::client("cl_pos", Some("10.0.0.1".into()));
        let at = OffsetDateTime::UNIX_EPOCH;
        let e = AuditEntry::for_user(account, user, &actor, "user.created", at).with_detail(r#"{"role":"admin"}"#);
        assert_eq!(e.account_id, Some(account));
        assert_eq!(e.target, Some(format!("user:{user}")));
        assert_eq!((e.action.as_str(), e.detail.as_deref()), ("user.created", Some(r#"{"role":"admin"}"#)));
        assert_eq!(e.actor, actor);
        let a = AuditEntry::for_account(account, &Actor::system(), "account.created", at);
        assert_eq!((a.target, a.detail), (Some(format!("account:{account}")), None));
    }
}
