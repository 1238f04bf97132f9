//! Webhook signatures, both ways: `v1=<lowercase hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
//!
//! The timestamp is signed with the body so an old request cannot be replayed with a new
//! timestamp, and it must lie within [`TOLERANCE_SECS`] of the receiver's clock, either
//! way. A header may carry several comma-separated `v1=` values: while a secret is being
//! rotated the sender signs with both, and any one that verifies is enough.

use hmac::{Hmac, Mac};
use ponte_identity::secret::constant_time_eq;
use sha2::Sha256;

/// How far a timestamp may be from the receiver's clock, in seconds, into the past or the future.
pub const TOLERANCE_SECS: i64 = 300;

/// The scheme prefix of a signature value.
const SCHEME: &str = "v1=";

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    /// No timestamp header.
    #[error("the timestamp header is missing")]
    MissingTimestamp,
    /// The timestamp is not whole Unix seconds.
    #[error("the timestamp is not Unix seconds")]
    MalformedTimestamp,
    /// No signature header, or no `v1=` value in it.
    #[error("the signature header is missing or has no v1= value")]
    MissingSignature,
    /// No `v1=` value matches the body and timestamp under the secret.
    #[error("no signature matches")]
    Mismatch,
    /// Correctly signed, but the timestamp is more than [`TOLERANCE_SECS`] away from now.
    #[error("the timestamp is outside the {TOLERANCE_SECS} s window")]
    OutsideWindow,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { unreachable!("HMAC accepts any key length") };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The signature header value for `body` sent at `timestamp` (Unix seconds): `v1=<hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("{SCHEME}{}", mac(secret, timestamp, body))
}

/// Checks a signed request against `secret` at `now_unix`. The signature is checked before
/// the window, so only a caller holding the secret learns that its clock is off.
pub fn verify(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureRefusal> {
    let timestamp = timestamp_header.map(str::trim).ok_or(SignatureRefusal::MissingTimestamp)?;
    if timestamp.is_empty() || timestamp.len() > 19 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureRefusal::MalformedTimestamp);
    }
    let timestamp: i64 = timestamp.parse().map_err(|_| SignatureRefusal::MalformedTimestamp)?;
    let candidates: Vec<&str> =
        signature_header.unwrap_or_default().split(',').filter_map(|value| value.trim().strip_prefix(SCHEME)).collect();
    if candidates.is_empty() {
        return Err(SignatureRefusal::MissingSignature);
    }
    let expected = mac(secret, timestamp, body);
    // Every candidate is compared, so the time taken does not tell which one matched.
    let matched = candidates
        .iter()
        .fold(false, |found, candidate| found | constant_time_eq(candidate.as_bytes(), expected.as_bytes()));
    if !matched {
        return Err(SignatureRefusal::Mismatch);
    }
    if now_unix.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureRefusal::OutsideWindow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret_0123456789abcdef";
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;
    const TS: i64 = 1_700_000_000;

    #[test]
    fn the_signature_matches_openssl() {
        // printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac 'whsec_test_secret_0123456789abcdef'
        assert_eq!(sign(SECRET, TS, BODY), "v1=900e419229bdedbac3b3352e7feabcd1180d850a9e49229725c8cf20c6a10d09");
    }

    #[test]
    fn a_signed_request_verifies_within_the_window_both_ways() {
        let sig = sign(SECRET, TS, BODY);
        let ts = TS.to_string();
        for now in [TS, TS + TOLERANCE_SECS, TS - TOLERANCE_SECS] {
            assert_eq!(verify(SECRET, Some(&ts), Some(&sig), BODY, now), Ok(()), "at {now}");
        }
    }

    #[test]
    fn a_tampered_body_or_another_secret_or_timestamp_is_a_mismatch() {
        let sig = sign(SECRET, TS, BODY);
        let ts = TS.to_string();
        let refused = |secret: &[u8], ts: &str, body: &[u8]| verify(secret, Some(ts), Some(&sig), body, TS);
        assert_eq!(refused(SECRET, &ts, br#"{"id":"evt_2"}"#), Err(SignatureRefusal::Mismatch));
        assert_eq!(refused(b"another secret entirely, 32 chars", &ts, BODY), Err(SignatureRefusal::Mismatch));
        assert_eq!(refused(SECRET, &(TS + 1).to_string(), BODY), Err(SignatureRefusal::Mismatch));
        let upper = sig.to_uppercase().replacen("V1=", "v1=", 1);
        assert_eq!(verify(SECRET, Some(&ts), Some(&upper), BODY, TS), Err(SignatureRefusal::Mismatch));
    }

    #[test]
    fn old_and_future_timestamps_are_outside_the_window() {
        let ts = TS.to_string();
        let sig = sign(SECRET, TS, BODY);
        let at = |now| verify(SECRET, Some(&ts), Some(&sig), BODY, now);
        assert_eq!(at(TS + TOLERANCE_SECS + 1), Err(SignatureRefusal::OutsideWindow), "6 minutes late");
        assert_eq!(at(TS - TOLERANCE_SECS - 1), Err(SignatureRefusal::OutsideWindow), "from the future");
        assert_eq!(at(TS + 360), Err(SignatureRefusal::OutsideWindow));
    }

    #[test]
    fn a_forged_old_request_hears_only_that_its_signature_is_wrong() {
        let ts = TS.to_string();
        let forged = sign(b"not the secret", TS, BODY);
        assert_eq!(verify(SECRET, Some(&ts), Some(&forged), BODY, TS + 3600), Err(SignatureRefusal::Mismatch));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let ts = TS.to_string();
        let sig = sign(SECRET, TS, BODY);
        assert_eq!(verify(SECRET, None, Some(&sig), BODY, TS), Err(SignatureRefusal::MissingTimestamp));
        assert_eq!(verify(SECRET, Some(&ts), None, BODY, TS), Err(SignatureRefusal::MissingSignature));
        assert_eq!(verify(SECRET, Some(&ts), Some(""), BODY, TS), Err(SignatureRefusal::MissingSignature));
        let bare = sig.trim_start_matches("v1=");
        assert_eq!(verify(SECRET, Some(&ts), Some(bare), BODY, TS), Err(SignatureRefusal::MissingSignature));
        for bad in ["", "-1700000000", "1700000000.5", "17e8", "99999999999999999999"] {
            assert_eq!(
                verify(SECRET, Some(bad), Some(&sig), BODY, TS),
                Err(SignatureRefusal::MalformedTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn any_of_several_signatures_is_enough_during_a_rotation() {
        let ts = TS.to_string();
        let old = sign(b"the old secret, rotated out soon", TS, BODY);
        let new = sign(SECRET, TS, BODY);
        assert_eq!(verify(SECRET, Some(&ts), Some(&format!("{old}, {new}")), BODY, TS), Ok(()));
        assert_eq!(verify(SECRET, Some(&ts), Some(&format!("{new},{old}")), BODY, TS), Ok(()));
        assert_eq!(
            verify(SECRET, Some(&ts), Some(&format!("v0=abc, {old}")), BODY, TS),
            Err(SignatureRefusal::Mismatch)
        );
    }
}
