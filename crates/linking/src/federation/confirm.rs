//! The confirmation page's use cases: show what will be linked to what, then "Continue"
//! (an admin's own link), a password or an emailed code (proof of an existing account),
//! or "Cancel".

use async_trait::async_trait;
use ponte_identity::federation::Refusal;
use ponte_identity::upstream::UpstreamIdentity;
use time::OffsetDateTime;

use super::pending::{self, Pending, PendingKind};
use super::{Browser, Stores, refusal_of};
use crate::Result;
use crate::account::{Lang, User};

/// The link-proof code email could not be handed over.
#[derive(Debug, thiserror::Error)]
#[error("the link code email could not be sent: {0}")]
pub struct MailUnavailable(pub String);

/// The code email a person asks for to prove an existing account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCode<'a> {
    /// The existing user's email.
    pub to: &'a str,
    /// The recipient's language: the user's own, whoever asked for the code.
    pub lang: Lang,
    /// The single-use code.
    pub code: &'a str,
    /// The provider id of the identity to be linked.
    pub provider: &'a str,
    /// The upstream identity's email, so the reader knows what would be linked.
    pub upstream_email: &'a str,
}

/// Sends the link-proof code.
#[async_trait]
pub trait LinkCodeMail: Send + Sync {
    /// Sends (or queues) the code email.
    async fn send_link_code(&self, mail: LinkCode<'_>) -> std::result::Result<(), MailUnavailable>;
}

/// What the confirmation page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmView {
    /// Continue or prove.
    pub kind: PendingKind,
    /// The upstream identity to be linked.
    pub identity: UpstreamIdentity,
    /// The Ponte user it would be linked to.
    pub user: User,
    /// That user's account name.
    pub account_name: String,
    /// Whether a code was emailed already (then the code field shows).
    pub code_sent: bool,
}

/// A line above the form when the page is shown again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A code was emailed.
    CodeSent,
    /// The password or code was wrong.
    WrongProof,
}

/// What the form asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmAction {
    /// "Continue" on an admin's own link.
    Continue,
    /// "Cancel".
    Cancel,
    /// Prove with the existing account's password.
    Password(String),
    /// Email me a code.
    SendCode,
    /// Prove with the emailed code.
    Code(String),
    /// Anything else.
    Unknown,
}

impl ConfirmAction {
    /// From the form's `action` and its fields.
    pub fn parse(action: &str, password: Option<String>, code: Option<String>) -> Self {
        match action {
            "continue" => Self::Continue,
            "cancel" => Self::Cancel,
            "password" => Self::Password(password.unwrap_or_default()),
            "send_code" => Self::SendCode,
            "code" => Self::Code(code.unwrap_or_default()),
            _ => Self::Unknown,
        }
    }
}

/// What a confirmation post comes to.
// Made once per post and matched at once: boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// Linked (or already linked): go to `return_to`.
    Linked {
        /// Where to go.
        return_to: String,
    },
    /// Proved and linked: start a session for `user`, then go to `return_to`.
    SignIn {
        /// Who signs in.
        user: User,
        /// Through which upstream identity.
        identity: UpstreamIdentity,
        /// Where to go afterwards.
        return_to: String,
    },
    /// Cancelled: the pending link is gone; go to `return_to`.
    Cancelled {
        /// Where to go.
        return_to: String,
    },
    /// Show the page again with a notice.
    Ask {
        /// The page.
        view: ConfirmView,
        /// What to say above the form.
        notice: Notice,
    },
    /// The code email could not be sent; try again shortly.
    MailUnavailable,
    /// Stopped.
    Refused(Refusal),
}

async fn view(stores: Stores<'_>, pending: &Pending, user: User) -> Result<ConfirmView> {
    let account_name = stores.users.account_name(user.account_id).await?.unwrap_or_default();
    Ok(ConfirmView {
        kind: pending.kind,
        identity: pending.identity.clone(),
        user,
        account_name,
        code_sent: pending.code_digest.is_some(),
    })
}

/// The confirmation page for pending link `id`, if this browser may see it.
pub async fn confirmation(
    stores: Stores<'_>,
    id: &str,
    browser: Browser<'_>,
) -> Result<std::result::Result<ConfirmView, Refusal>> {
    let pending = match pending::load(stores.store, id, browser.binding).await? {
        Ok(p) => p,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let Some(user) = stores.users.active_user(pending.account_id, pending.user_id).await? else {
        return Ok(Err(Refusal::UserDisabled));
    };
    Ok(Ok(view(stores, &pending, user).await?))
}

/// Acts on the confirmation form of pending link `id`.
pub async fn confirm(
    stores: Stores<'_>,
    mail: &dyn LinkCodeMail,
    id: &str,
    action: ConfirmAction,
    browser: Browser<'_>,
    now: OffsetDateTime,
) -> Result<ConfirmOutcome> {
    let refused = |r| Ok(ConfirmOutcome::Refused(r));
    let pending = match pending::load(stores.store, id, browser.binding).await? {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    if action == ConfirmAction::Cancel {
        pending::take(stores.store, id).await?;
        return Ok(ConfirmOutcome::Cancelled { return_to: pending.return_to });
    }
    let Some(user) = stores.users.active_user(pending.account_id, pending.user_id).await? else {
        return refused(Refusal::UserDisabled);
    };
    let proved = match (pending.kind, action) {
        (PendingKind::Confirm, ConfirmAction::Continue) => {
            if browser.session_id() != pending.initiating_sid.as_deref() || !user.role.is_admin() {
                return refused(Refusal::FlowOtherBrowser);
            }
            if !pending::take(stores.store, id).await? {
                return refused(Refusal::FlowExpired);
            }
            let decision = stores.links.link(&user, &pending.identity, &browser.actor(user.id), now).await?;
            return match refusal_of(decision) {
                Some(refusal) => refused(refusal),
                None => Ok(ConfirmOutcome::Linked { return_to: pending.return_to }),
            };
        }
        (
            PendingKind::ProveExisting,
            action @ (ConfirmAction::Password(_) | ConfirmAction::SendCode | ConfirmAction::Code(_)),
        ) => {
            if !pending::count_attempt(stores.store, id, pending.user_id, now).await? {
                pending::take(stores.store, id).await?;
                return refused(Refusal::TooManyAttempts);
            }
            match action {
                ConfirmAction::SendCode => return send_code(stores, mail, id, pending, user).await,
                ConfirmAction::Password(password) => {
                    let hash = stores.users.by_email(&user.email).await?.and_then(|c| c.password_hash);
                    ponte_identity::password::verify(password, hash).await?
                }
                ConfirmAction::Code(code) => pending.code_matches(id, &code),
                _ => false,
            }
        }
        _ => return refused(Refusal::InvalidRequest),
    };
    if !proved {
        return Ok(ConfirmOutcome::Ask { view: view(stores, &pending, user).await?, notice: Notice::WrongProof });
    }
    if !pending::take(stores.store, id).await? {
        return refused(Refusal::FlowExpired);
    }
    let decision = stores.links.link(&user, &pending.identity, &browser.actor(user.id), now).await?;
    match refusal_of(decision) {
        Some(refusal) => refused(refusal),
        None => Ok(ConfirmOutcome::SignIn { user, identity: pending.identity, return_to: pending.return_to }),
    }
}

async fn send_code(
    stores: Stores<'_>,
    mail: &dyn LinkCodeMail,
    id: &str,
    mut pending: Pending,
    user: User,
) -> Result<ConfirmOutcome> {
    let (code, kept) = pending::new_code(id);
    let upstream_email = pending.identity.email.clone().unwrap_or_default();
    let message = LinkCode {
        to: &user.email,
        lang: user.lang,
        code: &code,
        provider: &pending.identity.provider,
        upstream_email: &upstream_email,
    };
    if let Err(e) = mail.send_link_code(message).await {
        tracing::error!(error = %e, "could not queue the link code email");
        return Ok(ConfirmOutcome::MailUnavailable);
    }
    // Kept only once the mail is queued: a code saved for a mail that never left would
    // have the page ask for it (and a code sent earlier still works).
    pending.code_digest = Some(kept);
    if !pending::update(stores.store, id, &pending).await? {
        return Ok(ConfirmOutcome::Refused(Refusal::FlowExpired));
    }
    Ok(ConfirmOutcome::Ask { view: view(stores, &pending, user).await?, notice: Notice::CodeSent })
}
