//! Password hashing with argon2id, off the async threads, with no timing oracle.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::secret::random_bytes;
use crate::{Error, Result};

/// Shortest password we accept.
pub const MIN_LENGTH: usize = 10;
/// Longest password we accept (argon2 would take more, but nobody types this much).
pub const MAX_LENGTH: usize = 256;

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks length rules; returns a message a person can act on.
pub fn check_policy(password: &str) -> Result<()> {
    let len = password.chars().count();
    if len < MIN_LENGTH {
        return Err(Error::Invalid(format!("password must have at least {MIN_LENGTH} characters")));
    }
    if len > MAX_LENGTH {
        return Err(Error::Invalid(format!("password must have at most {MAX_LENGTH} characters")));
    }
    Ok(())
}

/// Hashes `password` into a PHC string, on a blocking thread.
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await.map_err(|e| Error::Crypto(e.to_string()))?
}

fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| Error::Crypto(e.to_string()))?;
    hasher().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| Error::Crypto(e.to_string()))
}

/// Verifies `password` against `stored`, on a blocking thread. With no stored hash
/// (unknown user, or a user without a password) the same work is done against a dummy
/// hash and the answer is `false`, so response time does not tell whether a user exists.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let (hash, real) = match stored {
            Some(h) => (h, true),
            None => (dummy_hash().to_owned(), false),
        };
        let ok = PasswordHash::new(&hash)
            .map(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("ponte-dummy-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hash("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify("wrong horse battery".into(), Some(h)).await);
    }

    #[tokio::test]
    async fn unknown_user_never_verifies_even_with_dummy_password() {
        assert!(!verify("ponte-dummy-password".into(), None).await);
    }

    #[test]
    fn policy_rejects_short_and_huge() {
        assert!(check_policy("short").is_err());
        assert!(check_policy(&"x".repeat(257)).is_err());
        assert!(check_policy("long enough pw").is_ok());
    }
}
