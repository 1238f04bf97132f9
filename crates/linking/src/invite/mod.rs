//! Collaboration invites: the link that, accepted by the right person, moves a company's
//! integration from `invite_pending` to `activating`.
//!
//! Single-use, and only a digest of the token is stored. Bound to the integration, the
//! invited user and that user's external-ID email. A resend rotates the token and
//! restarts the expiry (even of an expired invite), so the old link stops working; disable
//! and a new invite revoke it. Whatever is wrong with an invite (unknown, expired, revoked,
//! used) fails closed: nothing is linked or activated. Acceptance needs the invitee signed
//! in upstream, just now, with the external ID linked to the invited user, whose verified
//! email is the invited one; any other session the browser holds counts for nothing.
//!
//! The rules are pure functions here; invites are stored with their integration
//! ([`crate::integration::sql`]), because they change in the same transactions.

pub mod accept;
pub mod offer;

use ponte_identity::upstream::UpstreamIdentity;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::email::Email;
use crate::ids::{AccountId, CompanyId, InviteId, UserId};
use crate::integration::IntegrationKind;

pub use accept::{
    Accepted, accept, accept_by_digest, accept_offered, accepted_on_platform, by_digest, by_token, lookup, offered,
};

/// How long an invite link works unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::days(7);

/// Where an invite is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteState {
    /// Sent, not yet accepted (it may have expired: see [`Invite::usable`]).
    Pending,
    /// Accepted: used up.
    Accepted,
    /// Revoked (disable, a newer invite): dead.
    Revoked,
}

impl InviteState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Accepted, Self::Revoked].into_iter().find(|v| v.as_str() == s)
    }
}

/// A stored invite (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Its id.
    pub id: InviteId,
    /// The company's account.
    pub account_id: AccountId,
    /// The company whose integration it activates.
    pub company_id: CompanyId,
    /// Which integration.
    pub kind: IntegrationKind,
    /// The user who must accept it.
    pub invitee: UserId,
    /// The address it went to: the invitee's external-ID email.
    pub email: String,
    /// Where it is in its life.
    pub state: InviteState,
    /// Its link stops working then.
    pub expires_at: OffsetDateTime,
    /// How many times it was sent (1 + resends).
    pub sent_count: u32,
    /// When it was first issued.
    pub created_at: OffsetDateTime,
    /// When it was accepted, if it was.
    pub accepted_at: Option<OffsetDateTime>,
}

/// Why an invite cannot be accepted. Every case fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteRefusal {
    /// No invite has this token (never had, or a resend replaced it).
    Unknown,
    /// Past its expiry: ask for a resend.
    Expired,
    /// Revoked (the integration was disabled, or a newer invite replaced it).
    Revoked,
    /// Already accepted.
    Used,
    /// The upstream identity is not the external ID linked to the invited user.
    WrongPerson,
    /// The provider does not vouch for the identity's email, or it is not the invited one.
    EmailMismatch,
}

impl InviteRefusal {
    /// The stable code, for pages and problems.
    pub fn code(self) -> &'static str {
        match self {
            Self::Unknown => "invite_unknown",
            Self::Expired => "invite_expired",
            Self::Revoked => "invite_revoked",
            Self::Used => "invite_used",
            Self::WrongPerson => "invite_wrong_person",
            Self::EmailMismatch => "invite_email_mismatch",
        }
    }
}

impl Invite {
    /// Whether the link still works at `now`.
    pub fn usable(&self, now: OffsetDateTime) -> Result<(), InviteRefusal> {
        match self.state {
            InviteState::Accepted => Err(InviteRefusal::Used),
            InviteState::Revoked => Err(InviteRefusal::Revoked),
            InviteState::Pending if now >= self.expires_at => Err(InviteRefusal::Expired),
            InviteState::Pending => Ok(()),
        }
    }

    /// The invited address as the status and pages show it.
    pub fn masked_email(&self) -> String {
        mask_email(&self.email)
    }
}

/// Whether `identity`, just verified upstream and linked (if at all) to `linked_user`,
/// may accept `invite`: it must be the external ID of the invited user, and the provider
/// must vouch for an email equal (case-insensitively) to the invited one.
pub fn judge_acceptor(
    invite: &Invite,
    identity: &UpstreamIdentity,
    linked_user: Option<UserId>,
) -> Result<(), InviteRefusal> {
    if linked_user != Some(invite.invitee) {
        return Err(InviteRefusal::WrongPerson);
    }
    let same_email = identity
        .email
        .as_deref()
        .and_then(|e| Email::parse(e).ok())
        .zip(Email::parse(&invite.email).ok())
        .is_some_and(|(got, invited)| got.normalized() == invited.normalized());
    if !identity.email_verified || !same_email {
        return Err(InviteRefusal::EmailMismatch);
    }
    Ok(())
}

/// `mario.rossi@esempio.it` → `m***i@esempio.it`: enough to recognise, not to harvest.
pub fn mask_email(email: &str) -> String {
    let Some((local, domain)) = email.rsplit_once('@') else { return "***".into() };
    let mut chars = local.chars();
    match (chars.next(), chars.next_back()) {
        (Some(first), Some(last)) => format!("{first}***{last}@{domain}"),
        (Some(first), None) => format!("{first}***@{domain}"),
        _ => format!("***@{domain}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::NOW;

    fn invite(state: InviteState) -> Invite {
        Invite {
            id: InviteId::new(),
            account_id: AccountId::new(),
            company_id: CompanyId::new(),
            kind: IntegrationKind::DigitalInvoice,
            invitee: UserId::new(),
            email: "Mario.Rossi@Gruppo.it".into(),
            state,
            expires_at: NOW + DEFAULT_TTL,
            sent_count: 1,
            created_at: NOW,
            accepted_at: None,
        }
    }

    fn identity(email: &str, verified: bool) -> UpstreamIdentity {
        UpstreamIdentity {
            provider: "tsid".into(),
            issuer: "https://id.example".into(),
            subject: "s-1".into(),
            email: Some(email.into()),
            email_verified: verified,
            name: None,
            auth_time: Some(NOW.unix_timestamp()),
            sid: None,
        }
    }

    #[test]
    fn an_invite_works_until_it_expires_and_never_after_use_or_revocation() {
        let i = invite(InviteState::Pending);
        assert_eq!(i.usable(NOW), Ok(()));
        assert_eq!(i.usable(i.expires_at - Duration::seconds(1)), Ok(()));
        assert_eq!(i.usable(i.expires_at), Err(InviteRefusal::Expired));
        assert_eq!(invite(InviteState::Accepted).usable(NOW), Err(InviteRefusal::Used));
        assert_eq!(invite(InviteState::Revoked).usable(NOW), Err(InviteRefusal::Revoked));
    }

    #[test]
    fn only_the_invited_users_external_id_with_the_invited_verified_email_may_accept() {
        let i = invite(InviteState::Pending);
        let me = Some(i.invitee);
        assert_eq!(judge_acceptor(&i, &identity("mario.rossi@gruppo.it", true), me), Ok(()));
        let other = Some(UserId::new());
        assert_eq!(
            judge_acceptor(&i, &identity("mario.rossi@gruppo.it", true), other),
            Err(InviteRefusal::WrongPerson)
        );
        assert_eq!(judge_acceptor(&i, &identity("mario.rossi@gruppo.it", true), None), Err(InviteRefusal::WrongPerson));
        assert_eq!(
            judge_acceptor(&i, &identity("mario.rossi@gruppo.it", false), me),
            Err(InviteRefusal::EmailMismatch)
        );
        assert_eq!(judge_acceptor(&i, &identity("luigi@gruppo.it", true), me), Err(InviteRefusal::EmailMismatch));
        let mut no_email = identity("x@y.it", true);
        no_email.email = None;
        assert_eq!(judge_acceptor(&i, &no_email, me), Err(InviteRefusal::EmailMismatch));
    }

    #[test]
    fn emails_are_masked_to_first_and_last_letter() {
        assert_eq!(mask_email("mario.rossi@esempio.it"), "m***i@esempio.it");
        assert_eq!(mask_email("a@esempio.it"), "a***@esempio.it");
        assert_eq!(mask_email("nonsense"), "***");
        assert_eq!(invite(InviteState::Pending).masked_email(), "M***i@Gruppo.it");
    }

    #[test]
    fn refusal_codes_are_stable() {
        assert_eq!(InviteRefusal::Expired.code(), "invite_expired");
        assert_eq!(InviteRefusal::WrongPerson.code(), "invite_wrong_person");
        assert_eq!(InviteState::parse("revoked"), Some(InviteState::Revoked));
        assert_eq!(InviteState::parse("x"), None);
    }
}
