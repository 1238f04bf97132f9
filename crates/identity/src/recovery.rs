//! The rules of password-reset tokens: 256 random bits handed out once, only their
//! digest kept, usable once and for [`TOKEN_TTL`]. The use case (who asks, which user,
//! the mail) lives in `ponte_linking::recovery`.

use time::{Duration, OffsetDateTime};

use crate::secret::{digest, random_token};

/// How long a reset link works.
pub const TOKEN_TTL: Duration = Duration::minutes(30);

/// A freshly issued reset token: the secret goes into the mail, the digest into the store.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The secret for the link (43 base64url characters, 256 bits): never stored.
    pub secret: String,
    /// What the store keeps and looks up by ([`token_digest`] of the secret).
    pub digest: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
}

/// Issues a token that works until `now + TOKEN_TTL`.
pub fn issue(now: OffsetDateTime) -> IssuedToken {
    issue_for(now, TOKEN_TTL)
}

/// Issues a token that works until `now + ttl` (a new member's set-password link lasts
/// days, not minutes).
pub fn issue_for(now: OffsetDateTime, ttl: Duration) -> IssuedToken {
    let secret = random_token();
    IssuedToken { digest: token_digest(&secret), secret, expires_at: now + ttl }
}

/// The stored form of a token as presented. Anything that is not the shape we issue still
/// gets a digest (and then matches nothing), so a malformed token costs the same lookup.
pub fn token_digest(secret: &str) -> String {
    digest(secret.trim())
}

/// Whether a stored token may still be redeemed at `now`: never used and not yet expired.
pub fn usable(expires_at: OffsetDateTime, used_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    used_at.is_none() && now < expires_at
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn an_issued_token_is_random_and_only_its_digest_is_kept() {
        let now = datetime!(2026-12-01 10:00 UTC);
        let (a, b) = (issue(now), issue(now));
        assert_eq!(a.secret.len(), 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.digest, token_digest(&a.secret));
        assert_ne!(a.digest, a.secret);
        assert_eq!(a.expires_at, now + Duration::minutes(30));
    }

    #[test]
    fn a_token_works_once_and_until_it_expires() {
        let now = datetime!(2026-12-01 10:00 UTC);
        let expires = now + TOKEN_TTL;
        assert!(usable(expires, None, now));
        assert!(usable(expires, None, expires - Duration::seconds(1)));
        assert!(!usable(expires, None, expires), "expiry is exclusive");
        assert!(!usable(expires, Some(now), now), "used once is used up");
    }
}
