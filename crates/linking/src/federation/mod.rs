//! Upstream federation, the linking half: who may start a link, what a validated upstream
//! identity leads to (sign-in, a confirmation, an offer to prove an existing account, or a
//! refusal), confirmation and proof ([`confirm`]), unlink, and back-channel logout.
//!
//! Nothing here ever links silently. A link is written only after the person who started
//! the flow, in the browser that started it, saw the upstream identity and clicked
//! "Continue" (or proved they own the existing account).

pub mod confirm;
pub mod pending;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use ponte_identity::federation::{self as flow, CallbackParams, Completion, Initiator, Intent, Refusal, StartRequest};
use ponte_identity::refresh::RefreshRepo;
use ponte_identity::session::{Session, SessionStore, Sessions};
use ponte_identity::signout::end_everywhere;
use ponte_identity::upstream::{Provider, UpstreamIdentity};
use time::OffsetDateTime;

pub use confirm::{
    ConfirmAction, ConfirmOutcome, ConfirmView, LinkCode, LinkCodeMail, MailUnavailable, Notice, confirm, confirmation,
};
pub use pending::{Pending, PendingKind, void_pending_links};

use crate::Result;
use crate::account::LoginCandidate;
use crate::account::{User, may_sign_in};
use crate::audit::Actor;
use crate::ids::{AccountId, UserId};
use crate::integration::Integrations;
use crate::links::{Decision, Links};

/// The users the federation use cases look at.
#[async_trait]
pub trait FederationUsers: Send + Sync {
    /// The user, if it and its account may still sign in.
    async fn active_user(&self, account: AccountId, user: UserId) -> Result<Option<User>>;
    /// The user with this email (any account), with its password hash and account status.
    async fn by_email(&self, email: &str) -> Result<Option<LoginCandidate>>;
    /// The account's display name.
    async fn account_name(&self, account: AccountId) -> Result<Option<String>>;
}

/// The stores every federation use case works with.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    /// Flow state, pending links, counters.
    pub store: &'a dyn SessionStore,
    /// External-identity links.
    pub links: &'a dyn Links,
    /// Users and accounts.
    pub users: &'a dyn FederationUsers,
}

impl std::fmt::Debug for Stores<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// What the request says about the browser making it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Browser<'a> {
    /// The flow-binding cookie's value.
    pub binding: Option<&'a str>,
    /// The browser's live Ponte session.
    pub session: Option<&'a Session>,
    /// The client address, for the audit trail.
    pub ip: Option<&'a str>,
}

impl Browser<'_> {
    fn session_id(&self) -> Option<&str> {
        self.session.map(|s| s.id.as_str())
    }

    fn actor(&self, user: UserId) -> Actor {
        Actor::user(user, self.ip.map(str::to_owned))
    }
}

/// Decides whether a flow may start: a known intent, a `return_to` inside Ponte, and for
/// link and register a signed-in owner or admin.
pub async fn plan_start(
    users: &dyn FederationUsers,
    intent: Option<&str>,
    return_to: Option<&str>,
    session: Option<&Session>,
) -> Result<std::result::Result<StartRequest, Refusal>> {
    let Some(intent) = Intent::parse(intent) else { return Ok(Err(Refusal::InvalidRequest)) };
    let Some(return_to) = flow::check_return_to(return_to) else { return Ok(Err(Refusal::InvalidReturnTo)) };
    let mut initiator = None;
    if intent != Intent::Login {
        let Some(session) = session else { return Ok(Err(Refusal::SignInFirst)) };
        match users.active_user(session.account_id, session.user_id).await? {
            Some(user) if user.role.is_admin() => {}
            Some(_) => return Ok(Err(Refusal::LinkNotAllowed)),
            None => return Ok(Err(Refusal::UserDisabled)),
        }
        initiator = Some(Initiator {
            account_id: session.account_id,
            user_id: session.user_id,
            session_id: session.id.clone(),
        });
    }
    Ok(Ok(StartRequest { intent, initiator, return_to, fresh: false, invite_digest: None }))
}

/// The flow the invite page starts for the invite whose token has `token_digest`: a fresh
/// upstream sign-in, whoever (if anyone) is signed in to Ponte in this browser.
pub fn plan_invite(token_digest: String) -> StartRequest {
    StartRequest {
        intent: Intent::AcceptInvite,
        initiator: None,
        return_to: "/".into(),
        fresh: true,
        invite_digest: Some(token_digest),
    }
}

/// What the provider's answer leads to.
// Made once per callback and matched at once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// A linked identity of an active user: start a session, then go to `return_to`.
    SignIn {
        /// Who signs in.
        user: User,
        /// Through which upstream identity (its `sid` names the upstream session).
        identity: UpstreamIdentity,
        /// Where to go afterwards.
        return_to: String,
    },
    /// An admin's link or register flow: show the confirmation page.
    ConfirmLink {
        /// The pending link's id.
        pending_id: String,
    },
    /// Not linked, but the verified email is an existing user's: ask for proof.
    ProveExisting {
        /// The pending link's id.
        pending_id: String,
    },
    /// A fresh upstream sign-in for a collaboration invite: accept it as `identity`
    /// (nothing about the browser's Ponte sessions counts).
    AcceptInvite {
        /// Who just signed in upstream.
        identity: UpstreamIdentity,
        /// Digest of the invite's token, as the flow kept it.
        invite_digest: String,
    },
    /// Stopped; nothing was linked or signed in.
    Refused(Refusal),
}

/// Finishes a flow at the callback: completes it upstream, then by intent.
pub async fn callback(
    stores: Stores<'_>,
    provider: &dyn Provider,
    redirect_uri: &str,
    params: CallbackParams<'_>,
    browser: Browser<'_>,
    now: OffsetDateTime,
) -> Result<CallbackOutcome> {
    let (flow, identity) =
        match flow::complete(stores.store, provider, redirect_uri, params, browser.binding, now).await? {
            Completion::Verified { flow, identity } => (flow, identity),
            Completion::Refused(refusal) => return Ok(CallbackOutcome::Refused(refusal)),
        };
    match flow.intent {
        Intent::Link | Intent::Register => {
            // The admin who started it, in the session that started it, confirms.
            if browser.session_id() != flow.initiating_sid.as_deref() {
                return Ok(CallbackOutcome::Refused(Refusal::FlowOtherBrowser));
            }
            let (Some(account_id), Some(user_id)) = (flow.account_id, flow.user_id) else {
                return Ok(CallbackOutcome::Refused(Refusal::FlowExpired));
            };
            let pending = Pending {
                kind: PendingKind::Confirm,
                epoch: pending::link_epoch(stores.store, user_id).await?,
                identity,
                account_id,
                user_id,
                initiating_sid: flow.initiating_sid,
                binding: flow.binding,
                return_to: flow.return_to,
                code_digest: None,
            };
            Ok(CallbackOutcome::ConfirmLink { pending_id: pending::create(stores.store, &pending).await? })
        }
        Intent::Login => login_with(stores, identity, flow.binding, flow.return_to, browser, now).await,
        Intent::AcceptInvite => Ok(match flow.invite_digest {
            Some(invite_digest) => CallbackOutcome::AcceptInvite { identity, invite_digest },
            None => CallbackOutcome::Refused(Refusal::FlowExpired),
        }),
    }
}

async fn login_with(
    stores: Stores<'_>,
    identity: UpstreamIdentity,
    binding: String,
    return_to: String,
    browser: Browser<'_>,
    now: OffsetDateTime,
) -> Result<CallbackOutcome> {
    if let Some(link) = stores.links.find(&identity.issuer, &identity.subject).await? {
        let Some(user) = stores.users.active_user(link.account_id, link.user_id).await? else {
            return Ok(CallbackOutcome::Refused(Refusal::UserDisabled));
        };
        stores.links.record_login(&link, &identity, &browser.actor(user.id), now).await?;
        return Ok(CallbackOutcome::SignIn { user, identity, return_to });
    }
    // Not linked. A verified email that matches an existing user earns an offer to link,
    // with proof of that account; never a silent link.
    if identity.email_verified
        && let Some(email) = &identity.email
        && let Some(candidate) = stores.users.by_email(email).await?
        && may_sign_in(&candidate.user, candidate.account_status)
    {
        let user_id = candidate.user.id;
        let pending = Pending {
            kind: PendingKind::ProveExisting,
            epoch: pending::link_epoch(stores.store, user_id).await?,
            identity,
            account_id: candidate.user.account_id,
            user_id,
            initiating_sid: None,
            binding,
            return_to,
            code_digest: None,
        };
        return Ok(CallbackOutcome::ProveExisting { pending_id: pending::create(stores.store, &pending).await? });
    }
    Ok(CallbackOutcome::Refused(Refusal::NotLinked))
}

/// The refusal a link decision comes to, if any.
fn refusal_of(decision: Decision) -> Option<Refusal> {
    match decision {
        Decision::Link | Decision::AlreadyLinked => None,
        Decision::LinkedElsewhere => Some(Refusal::IdentityLinkedElsewhere),
        Decision::ProviderTaken => Some(Refusal::ProviderTaken),
    }
}

/// Removes the user's link at `provider`, voids their pending links and revokes the
/// collaboration invites waiting for them (each went to an external-ID email that no
/// longer signs in as them); `false` if there was no such link (nothing changes then).
#[allow(clippy::too_many_arguments)]
pub async fn unlink(
    store: &dyn SessionStore,
    links: &dyn Links,
    integrations: &dyn Integrations,
    account: AccountId,
    user: UserId,
    provider: &str,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<bool> {
    let unlinked = links.unlink(account, user, provider, actor, now).await?;
    if unlinked {
        void_pending_links(store, user).await?;
        integrations.revoke_invites_of(user, actor, now).await?;
    }
    Ok(unlinked)
}

/// Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the provider says an
/// upstream session ended, so the Ponte sessions it opened end too; a token naming only
/// `sub` ends every session of the linked user. `None` if the token is not acceptable
/// (invalid or replayed), else how many sessions ended.
pub async fn backchannel_logout(
    store: &dyn SessionStore,
    sessions: &Sessions,
    refresh: &dyn RefreshRepo,
    links: &dyn Links,
    provider: &dyn Provider,
    token: &str,
    now: OffsetDateTime,
) -> Result<Option<usize>> {
    let Some(request) = flow::accept_logout(store, provider, token, now).await? else { return Ok(None) };
    let mut ended = 0;
    if let Some(sid) = &request.sid {
        ended += flow::end_upstream_session(store, sessions, refresh, provider.id(), sid, now).await?;
    } else if let Some(sub) = &request.sub
        && let Some(link) = links.find(&request.issuer, sub).await?
    {
        ended += end_everywhere(sessions, refresh, link.user_id, now).await?;
    }
    Ok(Some(ended))
}
