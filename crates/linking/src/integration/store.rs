//! Where integrations and their invites are kept. One trait for both: an invite is part of
//! its integration's aggregate (issued, revoked and accepted in the transactions that
//! move the integration).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Event, Illegal, Integration, IntegrationKind, IntegrationState, PlatformAccount};
use crate::Result;
use crate::account::Lang;
use crate::audit::Actor;
use crate::company::CompanyData;
use crate::ids::{AccountId, CompanyId, InviteId, UserId};
use crate::invite::{Invite, InviteRefusal};

/// The person a collaboration invite goes to: an owner or admin, at the email of the
/// external ID linked to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitee {
    /// The user.
    pub user: UserId,
    /// Their external-ID email.
    pub email: String,
    /// Their language, for the mail.
    pub lang: Lang,
}

/// One event to apply to one integration, with what its effects need.
#[derive(Debug, Clone)]
pub struct Change {
    /// The company's account.
    pub account: AccountId,
    /// The company.
    pub company: CompanyId,
    /// Which integration.
    pub kind: IntegrationKind,
    /// What happened.
    pub event: Event,
    /// Who did it.
    pub actor: Actor,
    /// When.
    pub now: OffsetDateTime,
    /// Reactivate: the reviewed company data to use at the platform.
    pub data: Option<CompanyData>,
    /// Reactivate and confirm: who the invite goes to.
    pub invitee: Option<Invitee>,
    /// An acceptance in Ponte: the invite and the digest of the token of the link it was
    /// accepted through (a resend since then makes the acceptance fail), or `None` for
    /// the offer made after an upstream sign-in.
    pub accepting: Option<(InviteId, Option<String>)>,
    /// A failed attempt that will be retried: when.
    pub next_retry_at: Option<OffsetDateTime>,
}

impl Change {
    /// A change with nothing but the event.
    pub fn new(
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        event: Event,
        actor: Actor,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            account,
            company,
            kind,
            event,
            actor,
            now,
            data: None,
            invitee: None,
            accepting: None,
            next_retry_at: None,
        }
    }
}

/// What applying a change came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event asked for what already holds: nothing was written.
    Unchanged(Integration),
    /// The integration moved (or recorded new facts); its effects were written with it.
    Moved {
        /// The state before.
        from: IntegrationState,
        /// The integration after.
        integration: Integration,
    },
}

impl Applied {
    /// The integration as it is now.
    pub fn integration(&self) -> &Integration {
        match self {
            Self::Unchanged(i) | Self::Moved { integration: i, .. } => i,
        }
    }
}

/// Why applying a change stopped without writing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such company (in this account).
    #[error("no such company")]
    NoCompany,
    /// The event makes no sense in the integration's state.
    #[error(transparent)]
    Illegal(#[from] Illegal),
    /// The invite being accepted is no longer the one the link named.
    #[error("the invite cannot be accepted: {}", .0.code())]
    Invite(InviteRefusal),
    /// The step issues an invite but nobody to invite was given.
    #[error("nobody to invite")]
    NoInvitee,
    /// The invitee is not an active owner or admin of the account.
    #[error("the invitee must be an active owner or admin of the account")]
    InviteeNotAllowed,
    /// The invitee has no external ID linked, so there is nobody to invite at the platform.
    #[error("the invitee has no external ID linked: connect one first")]
    InviteeWithoutExternalId,
    /// The platform could not be asked (reactivate looks the VAT number up first).
    #[error("the invoicing platform is unavailable: {0}")]
    PlatformUnavailable(String),
}

/// Integrations and their invites.
#[async_trait]
pub trait Integrations: Send + Sync + std::fmt::Debug {
    /// One company's integration; `None` if the company is not the account's.
    async fn get(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Option<Integration>>;
    /// Every integration of the account's companies, oldest company first.
    async fn for_account(&self, account: AccountId) -> Result<Vec<Integration>>;
    /// Applies `change` by the state machine, compare-and-setting the row, writing its
    /// audit entry, invites, jobs and event in the same transaction.
    async fn apply(&self, change: Change) -> Result<std::result::Result<Applied, Refused>>;
    /// Records the platform account a job created or linked; no state change.
    async fn set_platform_account(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        platform: &PlatformAccount,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// The integration's invites, newest first.
    async fn invites(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Vec<Invite>>;
    /// An invite by id.
    async fn invite_by_id(&self, invite: InviteId) -> Result<Option<Invite>>;
    /// The integrations of `kind` of companies with this VAT number (in any account)
    /// tied to the platform account `platform_account`: whom a platform event is about.
    async fn by_platform_account(
        &self,
        vat_number: &str,
        platform_account: &str,
        kind: IntegrationKind,
    ) -> Result<Vec<Integration>>;
    /// The invite whose token has this digest.
    async fn invite_by_token_digest(&self, digest: &str) -> Result<Option<Invite>>;
    /// Pending, unexpired invites to `user` at `email_normalized` (the fallback offer).
    async fn pending_invites_for(
        &self,
        user: UserId,
        email_normalized: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Invite>>;
    /// Revokes every pending invite to `user` (their external ID was unlinked), auditing
    /// each; returns how many were revoked.
    async fn revoke_invites_of(&self, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<u64>;
    /// Rotates the invite's token and restarts its expiry (even when it has expired) and
    /// mails the new link; the old link stops working. Only while the integration waits
    /// for that invite. An invite revoked because its invitee unlinked the external ID is
    /// revived at the address of the external ID linked now
    /// ([`Refused::InviteeWithoutExternalId`] while there is none).
    async fn resend(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        invite: InviteId,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<Invite, Refused>>;
}
