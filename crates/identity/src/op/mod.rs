//! Ponte as an OpenID Provider: the use cases behind `/oauth2/*`.
//!
//! Each flow is a method of [`Provider`], which holds the stores the flows need (as
//! traits) and the settings they follow; time is always a parameter. The server parses
//! HTTP, calls one method and maps the typed outcome to a redirect, a page or JSON.
//!
//! - [`authorize`]: the authorization endpoint, the return from sign-in, consent.
//! - [`grants`]: the token endpoint's grants and the claims they mint.
//! - [`access`]: access-token verification, introspection, revocation, userinfo.
//! - [`logout`]: RP-initiated logout.
//!
//! The short-lived records of these flows each have one home that alone knows their
//! session-store key: [`pending`] (requests waiting for sign-in or consent), [`codes`]
//! (authorization codes and their redemptions) and [`denylist`] (revoked access tokens).

pub mod access;
pub mod authorize;
pub mod codes;
pub mod denylist;
pub mod grants;
pub mod logout;
pub mod pending;

#[cfg(test)]
pub(crate) mod fakes;

use std::sync::Arc;

use async_trait::async_trait;
use time::{Duration, OffsetDateTime};

use crate::Result;
use crate::client::ClientRepo;
use crate::ids::{AccountId, UserId};
use crate::keys::KeyRing;
use crate::oidc::ConsentRepo;
use crate::refresh::RefreshRepo;
use crate::session::{Session, SessionStore, Sessions};

/// A user as the OP sees it: someone who may sign in now, with what tokens say about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The user.
    pub id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// The user's role in the account (`owner`, `admin`, `member`).
    pub role: String,
    /// The user's email.
    pub email: String,
    /// The user's display name.
    pub name: String,
    /// What the user may do, as tokens carry it in the `access` claim: the role and the
    /// permissions per company, built by the directory (the identity crate does not read it).
    pub access: serde_json::Value,
}

/// Who may sign in. Implemented outside this crate, over the directory of users: the
/// identity crate knows nothing of accounts and roles beyond what tokens carry.
#[async_trait]
pub trait Subjects: Send + Sync + std::fmt::Debug {
    /// The user, if it and its account are both active; `None` otherwise (disabled,
    /// deleted, or never there).
    async fn active_subject(&self, account: AccountId, user: UserId) -> Result<Option<Subject>>;

    /// Whether [`Subjects::active_subject`] would find the user, for checks that need no
    /// more (an implementation may answer it without building the claims).
    async fn is_active(&self, account: AccountId, user: UserId) -> Result<bool> {
        Ok(self.active_subject(account, user).await?.is_some())
    }
}

/// What the OP's flows follow, from the configuration.
#[derive(Debug, Clone)]
pub struct OpSettings {
    /// `iss` of everything Ponte signs.
    pub issuer: String,
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Lifetime of ID tokens.
    pub id_token_ttl: Duration,
    /// Lifetime of a refresh-token family.
    pub refresh_token_ttl: Duration,
    /// Whether ID tokens and userinfo say `email_verified: true`.
    pub assert_email_verified: bool,
}

/// The OP: its settings, its keys and the stores its flows read and write.
#[derive(Debug)]
pub struct Provider<'a> {
    /// Settings in force (built once, with the application).
    pub settings: &'a OpSettings,
    /// The signing and verification keys of this moment.
    pub keys: Arc<KeyRing>,
    /// Short-lived state: pending requests, codes, the deny-list, rate limits.
    pub store: &'a dyn SessionStore,
    /// Browser sessions.
    pub sessions: &'a Sessions,
    /// Registered clients.
    pub clients: &'a dyn ClientRepo,
    /// Consents to third-party clients.
    pub consents: &'a dyn ConsentRepo,
    /// Refresh-token families.
    pub refresh: &'a dyn RefreshRepo,
    /// Who may sign in.
    pub subjects: &'a dyn Subjects,
}

impl Provider<'_> {
    /// Ends one browser session and the refresh families that came from it.
    pub async fn end_session(&self, session: &Session, now: OffsetDateTime) -> Result<()> {
        self.refresh.revoke_session(&session.id, now).await?;
        self.sessions.revoke(session.user_id, &session.id).await?;
        Ok(())
    }
}
