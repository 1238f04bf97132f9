//! Random tokens, digests and constant-time comparison.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// `N` bytes from aws-lc's CSPRNG (a CTR-DRBG seeded and periodically reseeded from the
/// operating system), the generator that also makes the signatures' nonces: no system
/// call per token.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The generator failing is unrecoverable: nothing secure can be issued.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(&mut buf).expect("random generator failed");
    buf
}

/// A 256-bit random token, base64url without padding (43 characters).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// SHA-256 of `input`, base64url without padding. Used as the stored form of
/// high-entropy secrets (session ids, client secrets), never for passwords.
pub fn digest(input: &str) -> String {
    // aws-lc's SHA-256 (SHA-NI/AVX where the CPU has them): the same bytes as any other.
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes()))
}

/// Whether `stored` is [`digest`] of `input`, compared in constant time (the digest is
/// written on the stack: nothing is allocated on the token endpoint's path).
pub fn digest_matches(input: &str, stored: &str) -> bool {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    let mut encoded = [0u8; 43];
    match URL_SAFE_NO_PAD.encode_slice(hash, &mut encoded) {
        Ok(written) => constant_time_eq(&encoded[..written], stored.as_bytes()),
        Err(_) => false,
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bits_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn digest_is_stable_and_distinguishes_inputs() {
        assert_eq!(digest("x"), digest("x"));
        assert_ne!(digest("x"), digest("y"));
        assert!(constant_time_eq(digest("x").as_bytes(), digest("x").as_bytes()));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn digest_matches_agrees_with_digest() {
        assert!(digest_matches("s3cret", &digest("s3cret")));
        assert!(!digest_matches("s3cret", &digest("s3cre")));
        assert!(!digest_matches("s3cret", &digest("s3cret")[..42]));
        assert!(!digest_matches("", "x"));
    }
}
