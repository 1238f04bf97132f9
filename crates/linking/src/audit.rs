//! The append-only audit trail: who did what to what, when, from where.

use time::OffsetDateTime;

use crate::ids::AccountId;

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
