//! Accepting a collaboration invite: through its link (after the fresh upstream sign-in
//! Ponte starts for it), or from the offer shown right after a sign-in with the external
//! ID it was sent to (the seed's "no email arrived").

use ponte_identity::secret::digest;
use ponte_identity::upstream::UpstreamIdentity;
use time::OffsetDateTime;

use super::{Invite, InviteRefusal, judge_acceptor};
use crate::Result;
use crate::audit::Actor;
use crate::email::Email;
use crate::ids::InviteId;
use crate::integration::Event;
use crate::integration::store::{Applied, Change, Integrations, Refused};
use crate::links::Links;

/// What an acceptance came to.
// Made once per acceptance and matched at once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// The invite is used and the integration is activating (or already was).
    Done {
        /// The invite, as it was when accepted.
        invite: Invite,
        /// The integration after.
        applied: Applied,
    },
    /// Nothing was linked or activated.
    Refused(InviteRefusal),
}

/// The invite a link's token names, if it can still be used at `now`.
pub async fn by_token(
    integrations: &dyn Integrations,
    token: &str,
    now: OffsetDateTime,
) -> Result<Result<Invite, InviteRefusal>> {
    by_digest(integrations, &digest(token), now).await
}

/// The invite whose token has `token_digest`, if it can still be used at `now`.
pub async fn by_digest(
    integrations: &dyn Integrations,
    token_digest: &str,
    now: OffsetDateTime,
) -> Result<Result<Invite, InviteRefusal>> {
    Ok(match lookup(integrations, token_digest).await? {
        Some(invite) => invite.usable(now).map(|()| invite),
        None => Err(InviteRefusal::Unknown),
    })
}

/// The stored invite whose token has `token_digest`, usable or not (the refusal page of a
/// dead link still names what it was for, in the audit trail).
pub async fn lookup(integrations: &dyn Integrations, token_digest: &str) -> Result<Option<Invite>> {
    integrations.invite_by_token_digest(token_digest).await
}

/// Accepts the invite whose link carries `token`, on behalf of `identity`, who just signed
/// in upstream. Fails closed on anything wrong with the invite or the person.
pub async fn accept(
    integrations: &dyn Integrations,
    links: &dyn Links,
    token: &str,
    identity: &UpstreamIdentity,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    accept_by_digest(integrations, links, &digest(token), identity, actor, now).await
}

/// [`accept`] for a flow that kept only the token's digest (the upstream sign-in Ponte
/// started from the invite page).
pub async fn accept_by_digest(
    integrations: &dyn Integrations,
    links: &dyn Links,
    token_digest: &str,
    identity: &UpstreamIdentity,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    let invite = match by_digest(integrations, token_digest, now).await? {
        Ok(invite) => invite,
        Err(refusal) => return Ok(Accepted::Refused(refusal)),
    };
    take(integrations, links, invite, Some(token_digest.to_owned()), identity, actor, now).await
}

/// The pending invites offered to `identity` right after it signed in: those sent to the
/// user it is linked to, at its verified email.
pub async fn offered(
    integrations: &dyn Integrations,
    links: &dyn Links,
    identity: &UpstreamIdentity,
    now: OffsetDateTime,
) -> Result<Vec<Invite>> {
    let Some(email) = identity.email.as_deref().filter(|_| identity.email_verified).and_then(|e| Email::parse(e).ok())
    else {
        return Ok(Vec::new());
    };
    let Some(link) = links.find(&identity.issuer, &identity.subject).await? else { return Ok(Vec::new()) };
    integrations.pending_invites_for(link.user_id, &email.normalized(), now).await
}

/// Accepts one of the invites [`offered`] to `identity`.
pub async fn accept_offered(
    integrations: &dyn Integrations,
    links: &dyn Links,
    invite: InviteId,
    identity: &UpstreamIdentity,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    let Some(invite) = offered(integrations, links, identity, now).await?.into_iter().find(|i| i.id == invite) else {
        return Ok(Accepted::Refused(InviteRefusal::Unknown));
    };
    take(integrations, links, invite, None, identity, actor, now).await
}

async fn take(
    integrations: &dyn Integrations,
    links: &dyn Links,
    invite: Invite,
    token_digest: Option<String>,
    identity: &UpstreamIdentity,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    let linked = links
        .find(&identity.issuer, &identity.subject)
        .await?
        .filter(|l| l.account_id == invite.account_id)
        .map(|l| l.user_id);
    if let Err(refusal) = judge_acceptor(&invite, identity, linked) {
        return Ok(Accepted::Refused(refusal));
    }
    apply_acceptance(integrations, invite, token_digest, actor, now).await
}

/// Moves the integration to `activating` with `invite` used up, in one transaction; the
/// store re-checks that the invite is still the pending one (`token_digest`, when the
/// acceptance came through a link).
async fn apply_acceptance(
    integrations: &dyn Integrations,
    invite: Invite,
    token_digest: Option<String>,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    let mut change =
        Change::new(invite.account_id, invite.company_id, invite.kind, Event::InviteAccepted, actor.clone(), now);
    change.accepting = Some((invite.id, token_digest));
    Ok(match integrations.apply(change).await? {
        Ok(applied) => Accepted::Done { invite, applied },
        Err(Refused::Invite(refusal)) => Accepted::Refused(refusal),
        // The integration was disabled (or moved on) since: its invites were revoked with it.
        Err(_) => Accepted::Refused(InviteRefusal::Revoked),
    })
}

/// The platform reports (in a signed webhook) that the invitee accepted invite `invite` on
/// its side: the same acceptance, with the platform vouching for the person.
pub async fn accepted_on_platform(
    integrations: &dyn Integrations,
    invite: InviteId,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Accepted> {
    let Some(stored) = integrations.invite_by_id(invite).await? else {
        return Ok(Accepted::Refused(InviteRefusal::Unknown));
    };
    if let Err(refusal) = stored.usable(now) {
        return Ok(Accepted::Refused(refusal));
    }
    apply_acceptance(integrations, stored, None, actor, now).await
}
