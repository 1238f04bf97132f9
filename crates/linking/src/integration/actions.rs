//! The integration use cases: what an admin does from the POS (disable, reactivate,
//! confirm, retry) and what the worker reports back from the platform (activated, an
//! attempt failed). Each resolves what the change needs, then lets the store apply the
//! state machine in one transaction.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::store::{Applied, Change, Integrations, Invitee, Refused};
use super::{Event, IntegrationKind, PlatformAccount};
use crate::Result;
use crate::account::{Role, UserStatus, UserStore};
use crate::audit::Actor;
use crate::company::CompanyData;
use crate::ids::{AccountId, CompanyId, UserId};
use crate::links::Links;

/// What a use case comes to: the integration as it is now, or why nothing was written.
pub type Outcome = std::result::Result<Applied, Refused>;

/// The platform's directory of accounts, asked before a reactivation.
#[async_trait]
pub trait PlatformLookup: Send + Sync + std::fmt::Debug {
    /// The account the platform has for this VAT number, if any; `Err` with a reason
    /// when the platform cannot be asked now.
    async fn find_account(&self, vat_number: &str) -> std::result::Result<Option<PlatformAccount>, String>;
}

/// The stores the admin actions need.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    /// Integrations and invites.
    pub integrations: &'a dyn Integrations,
    /// The account's users (who may be invited).
    pub users: &'a dyn UserStore,
    /// External-identity links (the invitee's address).
    pub links: &'a dyn Links,
}

impl std::fmt::Debug for Stores<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// Which integration, by whom, when.
#[derive(Debug, Clone)]
pub struct Target {
    /// The account.
    pub account: AccountId,
    /// The company.
    pub company: CompanyId,
    /// The integration kind.
    pub kind: IntegrationKind,
    /// Who acts.
    pub actor: Actor,
    /// When.
    pub now: OffsetDateTime,
}

impl Target {
    fn change(&self, event: Event) -> Change {
        Change::new(self.account, self.company, self.kind, event, self.actor.clone(), self.now)
    }
}

/// The person the invite goes to: `named` (or else the account's owner), who must be an
/// active owner or admin with an external ID linked, at that ID's email.
pub async fn invitee(
    users: &dyn UserStore,
    links: &dyn Links,
    account: AccountId,
    named: Option<UserId>,
) -> Result<std::result::Result<Invitee, Refused>> {
    let user = match named {
        Some(id) => users.get(account, id).await?,
        None => users.list(account).await?.into_iter().find(|u| u.role == Role::Owner),
    };
    let Some(user) = user.filter(|u| u.role.is_admin() && u.status == UserStatus::Active) else {
        return Ok(Err(Refused::InviteeNotAllowed));
    };
    let identities = links.for_user(account, user.id).await?;
    let Some(email) = identities.into_iter().find_map(|x| x.email) else {
        return Ok(Err(Refused::InviteeWithoutExternalId));
    };
    Ok(Ok(Invitee { user: user.id, email, lang: user.lang }))
}

/// Switches the integration off, revoking its invites.
pub async fn disable(integrations: &dyn Integrations, target: &Target) -> Result<Outcome> {
    integrations.apply(target.change(Event::Disable)).await
}

/// Switches a disabled integration back on with the reviewed `data`: asks the platform
/// whether it has an account for the VAT number; if it has, the admin must confirm
/// ("Continue"), otherwise the account is created and the invite goes out at once.
/// In any other state it changes nothing (or is refused), without asking the platform.
pub async fn reactivate(
    stores: Stores<'_>,
    platform: &dyn PlatformLookup,
    target: &Target,
    data: CompanyData,
    named_invitee: Option<UserId>,
) -> Result<Outcome> {
    let Some(current) = stores.integrations.get(target.account, target.company, target.kind).await? else {
        return Ok(Err(Refused::NoCompany));
    };
    if current.state != super::IntegrationState::Disabled {
        return stores.integrations.apply(target.change(Event::Reactivate { existing: None })).await;
    }
    let invitee = match invitee(stores.users, stores.links, target.account, named_invitee).await? {
        Ok(i) => i,
        Err(refused) => return Ok(Err(refused)),
    };
    let existing = match platform.find_account(data.vat_number().as_str()).await {
        Ok(found) => found,
        Err(reason) => return Ok(Err(Refused::PlatformUnavailable(reason))),
    };
    let mut change = target.change(Event::Reactivate { existing });
    change.data = Some(data);
    change.invitee = Some(invitee);
    stores.integrations.apply(change).await
}

/// The admin's "Continue": link the company to the platform's existing account and send
/// the invite (to `named_invitee`, or to whoever reactivation named).
pub async fn confirm(stores: Stores<'_>, target: &Target, named_invitee: Option<UserId>) -> Result<Outcome> {
    let Some(current) = stores.integrations.get(target.account, target.company, target.kind).await? else {
        return Ok(Err(Refused::NoCompany));
    };
    let mut change = target.change(Event::Confirm);
    if current.state == super::IntegrationState::AwaitingConfirmation {
        match invitee(stores.users, stores.links, target.account, named_invitee.or(current.invitee)).await? {
            Ok(i) => change.invitee = Some(i),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    stores.integrations.apply(change).await
}

/// Starts a failed activation again.
pub async fn retry(integrations: &dyn Integrations, target: &Target) -> Result<Outcome> {
    integrations.apply(target.change(Event::Retry)).await
}

/// The platform reports the activation done (the job's answer, or its webhook).
pub async fn activated(integrations: &dyn Integrations, target: &Target) -> Result<Outcome> {
    integrations.apply(target.change(Event::Activated)).await
}

/// An activation attempt failed; `next_attempt` is when the queue tries again, `None`
/// when no attempt is left (the integration becomes `failed`).
pub async fn activation_failed(
    integrations: &dyn Integrations,
    target: &Target,
    error: String,
    next_attempt: Option<OffsetDateTime>,
) -> Result<Outcome> {
    let mut change = target.change(Event::ActivationFailed { error, exhausted: next_attempt.is_none() });
    change.next_retry_at = next_attempt;
    integrations.apply(change).await
}
