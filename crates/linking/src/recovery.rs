//! Password recovery: "I forgot my password" mails a single-use link, and the link sets a
//! new password, ends every session and refresh-token family of the user and says so by
//! mail. The token rules are [`ponte_identity::recovery`]; this is who asks and for whom.
//!
//! What the caller of [`Recovery::forgot`] learns is the same whether the email belongs to
//! an active user, a disabled one, one in a suspended account, or nobody: both rate-limit
//! counters move, the user is looked up and a token is drawn in every case; only for an
//! active user is the token stored and its mail enqueued (one short transaction more, no
//! hashing: a reset request never runs argon2). The mail itself leaves through the
//! outbox, so neither the answer nor its timing waits for the mail server.

pub mod sql;

use async_trait::async_trait;
use ponte_identity::outbox::{Message, OutgoingMail};
use ponte_identity::password;
use ponte_identity::ratelimit::RateLimit;
use ponte_identity::recovery::{self as tokens, IssuedToken, TOKEN_TTL};
use ponte_identity::refresh::RefreshRepo;
use ponte_identity::session::Sessions;
use ponte_identity::signout::end_everywhere;
use time::{Duration, OffsetDateTime};

use crate::account::{AccountStore, User, UserStore, active_user, may_sign_in};
use crate::audit::{Actor, AuditEntry};
use crate::email::Email;
use crate::ids::{AccountId, UserId};
use crate::{Error, Result};

/// How long a new member's set-password link works.
pub const SETUP_LINK_TTL: Duration = Duration::days(7);

/// Reset requests per email address.
pub const FORGOT_PER_EMAIL: RateLimit = RateLimit { name: "forgot-email", max: 5, window: Duration::minutes(15) };
/// Reset requests per client address.
pub const FORGOT_PER_IP: RateLimit = RateLimit { name: "forgot-ip", max: 30, window: Duration::minutes(15) };

/// The two limits a reset request is counted against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per normalized email address.
    pub per_email: RateLimit,
    /// Per client address.
    pub per_ip: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_email: FORGOT_PER_EMAIL, per_ip: FORGOT_PER_IP }
    }
}

impl Limits {
    /// The default windows with `per_email` and `per_ip` requests in each (at least one).
    pub fn with_max(per_email: u64, per_ip: u64) -> Self {
        Self {
            per_email: RateLimit { max: per_email.max(1), ..FORGOT_PER_EMAIL },
            per_ip: RateLimit { max: per_ip.max(1), ..FORGOT_PER_IP },
        }
    }
}

/// What the forgot-password form submitted.
#[derive(Debug, Clone, Copy)]
pub struct ForgotRequest<'a> {
    /// The email as typed.
    pub email: &'a str,
    /// The client address, counted for the per-address limit.
    pub ip: Option<&'a str>,
}

/// What a reset request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgot {
    /// Taken: if the address is an active user's, a link is on its way. The same answer
    /// for every address.
    Accepted,
    /// Too many requests for this email or from this address; nothing was looked up.
    RateLimited {
        /// Seconds until the limit that was hit opens again.
        retry_after_secs: u32,
    },
}

/// What redeeming a reset link comes to (a password that breaks the policy is
/// [`Error::Invalid`] naming `password`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The password is set; `sessions_ended` browser sessions (and every refresh-token
    /// family) of the user were ended.
    Done {
        /// Whose password it was.
        user: UserId,
        /// How many browser sessions ended.
        sessions_ended: usize,
    },
    /// Unknown, used, superseded or expired token, or a user that may no longer sign in:
    /// one answer for all, so it tells nothing about which.
    TokenInvalid,
}

/// A stored reset, as found by its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReset {
    /// The user it resets.
    pub user_id: UserId,
    /// That user's account.
    pub account_id: AccountId,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was redeemed or superseded, if it was.
    pub used_at: Option<OffsetDateTime>,
}

/// A redemption to write in one transaction.
#[derive(Debug, Clone)]
pub struct Redemption<'a> {
    /// The token's digest.
    pub digest: &'a str,
    /// The user whose password changes.
    pub user: &'a User,
    /// The new password, hashed.
    pub password_hash: &'a str,
    /// The "your password was changed" mail.
    pub mail: &'a OutgoingMail,
    /// The audit line.
    pub audit: &'a AuditEntry,
}

/// Where resets are kept.
#[async_trait]
pub trait ResetStore: Send + Sync + std::fmt::Debug {
    /// Stores a new reset for `user` and enqueues its mail and audit line, in one transaction.
    async fn issue(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        audit: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// Like [`ResetStore::issue`], but every link of the user still outstanding stops
    /// working in the same transaction: a resent set-password link replaces the old one.
    async fn rotate(
        &self,
        user: &User,
        token: &IssuedToken,
        mail: &OutgoingMail,
        audit: &AuditEntry,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// The reset with this digest, used or not.
    async fn find(&self, digest: &str) -> Result<Option<StoredReset>>;
    /// In one transaction: marks the reset used if it still is usable at `now` (else
    /// `false` and nothing changes), sets the password, marks the user's other resets
    /// used, appends the audit line and enqueues the mail.
    async fn redeem(&self, redemption: Redemption<'_>, now: OffsetDateTime) -> Result<bool>;
}

/// What recovery needs, borrowed from the caller's state.
#[derive(Debug, Clone, Copy)]
pub struct Recovery<'a> {
    /// Browser sessions (their store also keeps the rate-limit counters).
    pub sessions: &'a Sessions,
    /// Refresh-token families, ended after a reset.
    pub refresh: &'a dyn RefreshRepo,
    /// Accounts, for their status.
    pub accounts: &'a dyn AccountStore,
    /// Users, looked up by email.
    pub users: &'a dyn UserStore,
    /// Stored resets.
    pub resets: &'a dyn ResetStore,
    /// Ponte's public URL, the base of the mailed link.
    pub public_url: &'a str,
    /// How many requests are taken.
    pub limits: Limits,
}

impl Recovery<'_> {
    /// Handles "I forgot my password" for `request.email`: counts it against both limits,
    /// then, for an active user of an active account, stores a new token and enqueues its
    /// mail. The answer is [`Forgot::Accepted`] for any address within the limits.
    pub async fn forgot(&self, request: ForgotRequest<'_>, now: OffsetDateTime) -> Result<Forgot> {
        let email = match Email::parse(request.email) {
            Ok(e) => e.normalized(),
            Err(_) => request.email.trim().to_lowercase(),
        };
        let store = self.sessions.store().as_ref();
        // Both counters move on every request (no short circuit), as for sign-in.
        let Limits { per_email: email_limit, per_ip: ip_limit } = self.limits;
        let per_email = email_limit.allow(store, &email, now).await?;
        let per_ip = ip_limit.allow_address(store, request.ip.unwrap_or("unknown"), now).await?;
        if !(per_email && per_ip) {
            let tripped = [(per_email, email_limit), (per_ip, ip_limit)];
            let retry_after_secs =
                tripped.iter().filter(|(ok, _)| !ok).map(|(_, l)| l.retry_after(now)).max().unwrap_or(1);
            return Ok(Forgot::RateLimited { retry_after_secs });
        }
        let candidate = self.users.login_candidate(&email).await?;
        // Drawn for every address, so an unknown one costs the random draw and digest too.
        let token = tokens::issue(now);
        if let Some(c) = candidate.filter(|c| may_sign_in(&c.user, c.account_status)) {
            let user = c.user;
            let mail = OutgoingMail {
                to: user.email.clone(),
                lang: user.lang,
                message: Message::PasswordReset {
                    link: reset_link(self.public_url, &token.secret),
                    expires_in_minutes: u32::try_from(TOKEN_TTL.whole_minutes()).unwrap_or(30),
                },
            };
            let actor = Actor { who: "anonymous".into(), ip: request.ip.map(str::to_owned) };
            let audit = AuditEntry::for_user(user.account_id, user.id, &actor, "password.reset_requested", now);
            self.resets.issue(&user, &token, &mail, &audit, now).await?;
        }
        Ok(Forgot::Accepted)
    }

    /// Mails `user` a single-use link to choose their password, valid for
    /// [`SETUP_LINK_TTL`]; any link the user still had stops working (a resend rotates it).
    /// The link is redeemed on the same page as a reset. Refused for a user who may not
    /// sign in (a disabled or suspended member would get a link that cannot work).
    pub async fn send_setup_link(
        &self,
        user: &User,
        account_name: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<()> {
        if user.status != crate::account::UserStatus::Active {
            return Err(Error::Conflict {
                code: "user_not_active",
                message: "the user is not active: enable them before sending a password link".into(),
            });
        }
        let token = tokens::issue_for(now, SETUP_LINK_TTL);
        let mail = OutgoingMail {
            to: user.email.clone(),
            lang: user.lang,
            message: Message::PasswordSetup {
                link: reset_link(self.public_url, &token.secret),
                account_name: account_name.to_owned(),
                expires_on: token.expires_at.date().to_string(),
            },
        };
        let audit = AuditEntry::for_user(user.account_id, user.id, actor, "password.setup_link_sent", now);
        self.resets.rotate(user, &token, &mail, &audit, now).await
    }

    /// Whether `token` could be redeemed now (for the page that shows the form): known,
    /// unused, unexpired.
    pub async fn token_usable(&self, token: &str, now: OffsetDateTime) -> Result<bool> {
        let stored = self.resets.find(&tokens::token_digest(token)).await?;
        Ok(stored.is_some_and(|s| tokens::usable(s.expires_at, s.used_at, now)))
    }

    /// Redeems a reset link: the token must be known, unused and unexpired and its user
    /// still able to sign in, and the password must pass
    /// [`password::check_policy_for`]. Then the password is set, the token and every
    /// other outstanding one of the user are used up, `password.reset` is audited and
    /// the user is mailed, all in one transaction; then every session and refresh-token
    /// family of the user ends.
    pub async fn reset(&self, token: &str, new_password: &str, ip: Option<&str>, now: OffsetDateTime) -> Result<Reset> {
        let digest = tokens::token_digest(token);
        let Some(stored) = self.resets.find(&digest).await? else { return Ok(Reset::TokenInvalid) };
        if !tokens::usable(stored.expires_at, stored.used_at, now) {
            return Ok(Reset::TokenInvalid);
        }
        let Some(user) = active_user(self.accounts, self.users, stored.account_id, stored.user_id).await? else {
            return Ok(Reset::TokenInvalid);
        };
        password::check_policy_for(new_password, &user.email).map_err(|e| match e {
            ponte_identity::Error::Invalid(message) => Error::invalid("password", message),
            other => Error::Identity(other),
        })?;
        let password_hash = password::hash(new_password.to_owned()).await?;
        let mail = OutgoingMail { to: user.email.clone(), lang: user.lang, message: Message::PasswordChanged {} };
        let actor = Actor::user(user.id, ip.map(str::to_owned));
        let audit = AuditEntry::for_user(user.account_id, user.id, &actor, "password.reset", now);
        let redemption =
            Redemption { digest: &digest, user: &user, password_hash: &password_hash, mail: &mail, audit: &audit };
        if !self.resets.redeem(redemption, now).await? {
            // Another request redeemed it (or it expired) since it was read.
            return Ok(Reset::TokenInvalid);
        }
        let sessions_ended = end_everywhere(self.sessions, self.refresh, user.id, now).await?;
        Ok(Reset::Done { user: user.id, sessions_ended })
    }
}

/// The mailed link: `{public_url}/password/reset?token=…` (the token is base64url, so it
/// needs no escaping).
pub fn reset_link(public_url: &str, secret: &str) -> String {
    format!("{}/password/reset?token={secret}", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_points_at_the_reset_page_of_the_public_url() {
        assert_eq!(reset_link("https://ponte.example/", "abc_-1"), "https://ponte.example/password/reset?token=abc_-1");
        assert_eq!(reset_link("http://127.0.0.1:8080", "t"), "http://127.0.0.1:8080/password/reset?token=t");
    }

    #[test]
    fn configured_limits_keep_the_windows_and_names_and_never_drop_to_zero() {
        let defaults = Limits::default();
        assert_eq!((defaults.per_email.max, defaults.per_ip.max), (5, 30));
        let custom = Limits::with_max(0, 1000);
        assert_eq!((custom.per_email.max, custom.per_ip.max), (1, 1000));
        assert_eq!(custom.per_email.window, Duration::minutes(15));
        assert_ne!(custom.per_email.name, custom.per_ip.name, "counted apart");
    }
}
