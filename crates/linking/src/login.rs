//! Password sign-in and the signed-in page's subject: who the email and password name,
//! within the attempt limits, and who a browser's session belongs to.

use ponte_identity::password;
use ponte_identity::ratelimit::RateLimit;
use ponte_identity::session::{SessionStore, Sessions};
use time::{Duration, OffsetDateTime};

use crate::Result;
use crate::account::{Account, AccountStore, User, UserStore, may_sign_in};

/// Sign-in attempts per email address.
pub const LOGIN_PER_EMAIL: RateLimit = RateLimit { name: "login-email", max: 10, window: Duration::minutes(15) };
/// Sign-in attempts per client address.
pub const LOGIN_PER_IP: RateLimit = RateLimit { name: "login-ip", max: 100, window: Duration::minutes(15) };

/// What a sign-in form submitted.
#[derive(Debug, Clone, Copy)]
pub struct PasswordAttempt<'a> {
    /// The email as typed (trimmed and lower-cased here).
    pub email: &'a str,
    /// The password as typed.
    pub password: &'a str,
    /// The client address, counted for the per-address limit.
    pub ip: Option<&'a str>,
}

/// What a password sign-in comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordLogin {
    /// The password is right and the user and its account may sign in.
    SignedIn(User),
    /// Wrong password, unknown email, no password set, or a user that may not sign in:
    /// one answer for all, so the answer does not tell which.
    Refused,
    /// Too many attempts for this email or from this address; nothing was checked.
    Limited,
}

/// Checks an email and password: counts the attempt against both limits, then verifies
/// the password (against a dummy hash when there is no user, so an unknown email costs the
/// same time as a wrong password). [`ponte_identity::Error::Busy`] when the hashing queue
/// is full.
pub async fn password_login(
    store: &dyn SessionStore,
    users: &dyn UserStore,
    attempt: PasswordAttempt<'_>,
    now: OffsetDateTime,
) -> Result<PasswordLogin> {
    let email = attempt.email.trim().to_lowercase();
    // Both counters move on every attempt (no short circuit), so neither limit can be
    // dodged by tripping the other first.
    let within_limits = LOGIN_PER_EMAIL.allow(store, &email, now).await?
        & LOGIN_PER_IP.allow_address(store, attempt.ip.unwrap_or("unknown"), now).await?;
    if !within_limits {
        return Ok(PasswordLogin::Limited);
    }
    let candidate = if email.is_empty() { None } else { users.login_candidate(&email).await? };
    let stored_hash = candidate.as_ref().and_then(|c| c.password_hash.clone());
    let password_ok = password::verify(attempt.password.to_owned(), stored_hash).await?;
    Ok(match candidate {
        Some(c) if password_ok && may_sign_in(&c.user, c.account_status) => PasswordLogin::SignedIn(c.user),
        _ => PasswordLogin::Refused,
    })
}

/// The user and account behind a browser's session token, if the session is live. A live
/// session whose user or account is gone is ended here, so it is not looked up again.
pub async fn signed_in(
    sessions: &Sessions,
    accounts: &dyn AccountStore,
    users: &dyn UserStore,
    token: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<(User, Account)>> {
    let Some(token) = token else { return Ok(None) };
    let Some(session) = sessions.get(token, now).await? else { return Ok(None) };
    let (account_id, user_id) = (session.account_id, session.user_id);
    let (user, account) = tokio::try_join!(users.get(account_id, user_id), accounts.get(account_id))?;
    match (user, account) {
        (Some(user), Some(account)) => Ok(Some((user, account))),
        _ => {
            sessions.revoke_token(token).await?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
