//! JWT access tokens (RFC 9068), signed with the key ring.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Header, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ids::{AccountId, UserId};
use crate::keys::KeyRing;
use crate::{Error, Result};

/// The audience of tokens for Ponte's own REST API.
pub const API_AUDIENCE: &str = "ponte-api";

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Issuer: Ponte's public URL.
    pub iss: String,
    /// Subject: the user, or the client itself for `client_credentials`.
    pub sub: String,
    /// Audience: the resource the token is for.
    pub aud: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The user's account, for user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The user's role, for user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For user tokens: the role and the permissions per company when the token was
    /// issued (`{"role": …, "permissions": {…}}`; see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<serde_json::Value>,
}

/// A token's `jti`: 128 random bits, base64url (22 characters). An identifier, not a
/// secret: drawn from the thread's ChaCha12 generator (reseeded from the OS every 64 KiB),
/// not from aws-lc's DRBG, which asks the CPU (RDRAND) on every call: 1.4 µs of a 76 µs
/// token issuance on the bench machine. Secrets (codes, session ids, refresh tokens) still
/// come from [`crate::secret::random_bytes`].
fn token_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

impl AccessTokenClaims {
    /// Claims for a `client_credentials` token: the client is the subject.
    pub fn for_client(issuer: &str, client_id: &str, scope: &str, now: OffsetDateTime, ttl: Duration) -> Self {
        Self {
            iss: issuer.to_owned(),
            sub: client_id.to_owned(),
            aud: API_AUDIENCE.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            iat: now.unix_timestamp(),
            exp: (now + ttl).unix_timestamp(),
            jti: token_id(),
            account_id: None,
            role: None,
            access: None,
        }
    }

    /// Claims for a user's token obtained by `client_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn for_user(
        issuer: &str,
        user_id: UserId,
        account_id: AccountId,
        role: &str,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Self {
        Self {
            sub: user_id.to_string(),
            account_id: Some(account_id.to_string()),
            role: Some(role.to_owned()),
            ..Self::for_client(issuer, client_id, scope, now, ttl)
        }
    }

    /// Whether this token stands for a user (rather than a client acting for itself).
    pub fn is_user_token(&self) -> bool {
        self.account_id.is_some()
    }

    /// The account and user a user's token stands for, parsed from `account_id` and
    /// `sub`; `None` for a client's own token or ids that are not ours.
    pub fn user_ids(&self) -> Option<(AccountId, UserId)> {
        Some((self.account_id.as_deref()?.parse().ok()?, self.sub.parse().ok()?))
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Why a presented token was refused. Callers answer all of them the same way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejection {
    /// Not a JWT, wrong `typ`, unknown `kid` or algorithm, or a bad signature.
    #[error("malformed or unverifiable token")]
    Invalid,
    /// Issued by someone else or for another audience.
    #[error("token not meant for us")]
    WrongAudienceOrIssuer,
    /// Past its expiry, or issued in the future.
    #[error("token expired or not yet valid")]
    Expired,
}

/// Tolerated clock skew between replicas, in seconds.
const LEEWAY: i64 = 30;

/// Claims of an ID token (OpenID Connect Core §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    /// Issuer.
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The client.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// When the user authenticated (Unix seconds).
    pub auth_time: i64,
    /// The client's nonce, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// The Ponte session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Authorized party: the client.
    pub azp: String,
    /// With scope `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// With scope `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// With scope `profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's account (Ponte-specific).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// With scope `profile`: the role and the permissions per company (Ponte-specific).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<serde_json::Value>,
}

/// The base64url JOSE header of a token signed with `alg` by key `kid`, of type `typ`.
pub(crate) fn encoded_header(alg: jsonwebtoken::Algorithm, typ: &str, kid: &str) -> Result<String> {
    let mut header = Header::new(alg);
    header.typ = Some(typ.to_owned());
    header.kid = Some(kid.to_owned());
    let json = serde_json::to_vec(&header).map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

impl KeyRing {
    /// Signs arbitrary claims with the current key and the given `typ` (logout tokens,
    /// tests).
    pub fn sign<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String> {
        let (_, alg) = self.signing_key();
        self.sign_with_header(&encoded_header(alg, typ, self.signing_kid())?, claims)
    }

    /// `header.claims.signature`, written into one string: `header` is already encoded.
    fn sign_with_header<T: Serialize>(&self, header: &str, claims: &T) -> Result<String> {
        let (key, _) = self.signing_key();
        let claims = serde_json::to_vec(claims).map_err(|e| Error::Crypto(e.to_string()))?;
        // Sized exactly (unpadded base64url of n bytes: ⌈4n/3⌉ characters): a larger
        // allocation than needed leaves the allocator's fast path (measured: 1 k instructions).
        let encoded_len = |n: usize| (n * 4).div_ceil(3);
        let mut jws =
            String::with_capacity(header.len() + encoded_len(claims.len()) + encoded_len(key.signature_len()) + 2);
        jws.push_str(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jws);
        let signature = key.sign(jws.as_bytes())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        debug_assert_eq!(jws.len(), jws.capacity(), "sized exactly");
        Ok(jws)
    }

    /// Signs access token claims with the current key.
    pub fn sign_access_token(&self, claims: &AccessTokenClaims) -> Result<String> {
        self.sign_with_header(self.access_token_header(), claims)
    }

    /// Signs ID token claims with the current key.
    pub fn sign_id_token(&self, claims: &IdTokenClaims) -> Result<String> {
        self.sign(claims, "JWT")
    }

    /// Verifies an ID token we issued, as an `id_token_hint`: signature, issuer and
    /// audience `client_id` (if given) are checked; expiry is not (OIDC RP-Initiated
    /// Logout §2 accepts expired hints).
    pub fn verify_id_token_hint(&self, token: &str, issuer: &str) -> Result<IdTokenClaims, TokenRejection> {
        let header = decode_header(token).map_err(|_| TokenRejection::Invalid)?;
        let (alg, key) =
            header.kid.as_deref().and_then(|kid| self.verifying_key(kid)).ok_or(TokenRejection::Invalid)?;
        if header.alg != alg {
            return Err(TokenRejection::Invalid);
        }
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        validation.set_issuer(&[issuer]);
        decode::<IdTokenClaims>(token, key, &validation).map(|d| d.claims).map_err(|_| TokenRejection::Invalid)
    }

    /// Verifies an access token: `typ`, `kid`, ES256 signature, `iss`, `aud`, and expiry
    /// against the injected `now`.
    pub fn verify_access_token(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<AccessTokenClaims, TokenRejection> {
        let header = decode_header(token).map_err(|_| TokenRejection::Invalid)?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenRejection::Invalid);
        }
        let (alg, key) =
            header.kid.as_deref().and_then(|kid| self.verifying_key(kid)).ok_or(TokenRejection::Invalid)?;
        // The algorithm comes from our key, never from the token's header.
        if header.alg != alg {
            return Err(TokenRejection::Invalid);
        }
        let data = with_access_validation(alg, issuer, audience, |validation| {
            decode::<AccessTokenClaims>(token, key, validation)
        })
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidIssuer | jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                TokenRejection::WrongAudienceOrIssuer
            }
            _ => TokenRejection::Invalid,
        })?;
        let now = now.unix_timestamp();
        if data.claims.exp + LEEWAY <= now || data.claims.iat - LEEWAY > now {
            return Err(TokenRejection::Expired);
        }
        Ok(data.claims)
    }
}

/// Runs `f` with the validation of access tokens for `alg`, `issuer` and `audience`: built
/// once per thread and kept (its sets of claim names cost a dozen allocations to build,
/// and every introspection and API call verifies a token).
fn with_access_validation<T>(
    alg: jsonwebtoken::Algorithm,
    issuer: &str,
    audience: &str,
    f: impl FnOnce(&Validation) -> T,
) -> T {
    thread_local! {
        static KEPT: std::cell::RefCell<Vec<(jsonwebtoken::Algorithm, String, String, Validation)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let found = kept.iter().position(|(a, i, aud, _)| *a == alg && i == issuer && aud == audience);
        let index = match found {
            Some(index) => index,
            None => {
                let mut validation = Validation::new(alg);
                validation.validate_exp = false;
                validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                // A handful of issuers and audiences at most; never grows without bound.
                if kept.len() >= 16 {
                    kept.clear();
                }
                kept.push((alg, issuer.to_owned(), audience.to_owned(), validation));
                kept.len() - 1
            }
        };
        f(&kept[index].3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyStatus, SigningAlg, generate};
    use crate::seal::MasterKeys;
    use jsonwebtoken::Algorithm;
    use time::macros::datetime;

    fn ring_of(alg: SigningAlg) -> KeyRing {
        let master = MasterKeys::generate();
        let key = generate(&master, alg, KeyStatus::Current, datetime!(2026-01-01 00:00 UTC)).unwrap();
        KeyRing::from_stored(&[key], &master).unwrap()
    }

    fn ring() -> KeyRing {
        ring_of(SigningAlg::ES256)
    }

    #[test]
    fn access_tokens_carry_the_header_that_generic_signing_writes() {
        let ring = ring();
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        let kept = ring.sign_access_token(&claims).unwrap();
        let generic = ring.sign(&claims, ACCESS_TOKEN_TYP).unwrap();
        assert_eq!(kept.split('.').next(), generic.split('.').next());
        assert_eq!(kept.split('.').nth(1), generic.split('.').nth(1), "same claims, same bytes");
        let header = decode_header(&kept).unwrap();
        assert_eq!(
            (header.typ.as_deref(), header.kid.as_deref(), header.alg),
            (Some(ACCESS_TOKEN_TYP), Some(ring.signing_kid()), Algorithm::ES256)
        );
        assert_eq!(claims.jti.len(), 22);
        assert_ne!(claims.jti, AccessTokenClaims::for_client(ISS, "cl_1", "", now, Duration::minutes(1)).jti);
    }

    #[test]
    fn rs256_deployments_sign_and_verify_too() {
        let ring = ring_of(SigningAlg::RS256);
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        let token = ring.sign_access_token(&claims).unwrap();
        assert_eq!(decode_header(&token).unwrap().alg, Algorithm::RS256);
        assert_eq!(ring.verify_access_token(&token, ISS, API_AUDIENCE, now).unwrap(), claims);
        let jwk = &ring.jwks()[0];
        assert_eq!((jwk.kty.as_str(), jwk.e.as_deref()), ("RSA", Some("AQAB")));
        assert!(jwk.n.as_ref().unwrap().len() > 300, "2048-bit modulus");
    }

    #[test]
    fn eddsa_deployments_sign_and_verify_too() {
        let ring = ring_of(SigningAlg::EdDSA);
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        let token = ring.sign_access_token(&claims).unwrap();
        assert_eq!(decode_header(&token).unwrap().alg, Algorithm::EdDSA);
        assert_eq!(ring.verify_access_token(&token, ISS, API_AUDIENCE, now).unwrap(), claims);
        assert_eq!(ring.jwks()[0].kty, "OKP");
    }

    const ISS: &str = "https://ponte.example";

    #[test]
    fn signed_token_verifies_until_it_expires() {
        let ring = ring();
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        let token = ring.sign_access_token(&claims).unwrap();
        let header = decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(ring.signing_kid()));

        assert_eq!(ring.verify_access_token(&token, ISS, API_AUDIENCE, now).unwrap(), claims);
        let later = now + Duration::minutes(11);
        assert_eq!(ring.verify_access_token(&token, ISS, API_AUDIENCE, later), Err(TokenRejection::Expired));
    }

    #[test]
    fn wrong_issuer_audience_key_or_tampering_is_refused() {
        let ring = ring();
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        let token = ring.sign_access_token(&claims).unwrap();
        assert_eq!(
            ring.verify_access_token(&token, "https://evil.example", API_AUDIENCE, now),
            Err(TokenRejection::WrongAudienceOrIssuer)
        );
        assert_eq!(ring.verify_access_token(&token, ISS, "other", now), Err(TokenRejection::WrongAudienceOrIssuer));
        let other = ring_other_token(now);
        assert_eq!(ring.verify_access_token(&other, ISS, API_AUDIENCE, now), Err(TokenRejection::Invalid));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'A');
        assert_eq!(ring.verify_access_token(&tampered, ISS, API_AUDIENCE, now), Err(TokenRejection::Invalid));
        assert_eq!(ring.verify_access_token("not.a.jwt", ISS, API_AUDIENCE, now), Err(TokenRejection::Invalid));
        // Validations are kept per thread by issuer and audience: each check still uses its own.
        for _ in 0..2 {
            assert_eq!(ring.verify_access_token(&token, ISS, API_AUDIENCE, now).unwrap(), claims);
            assert_eq!(ring.verify_access_token(&token, ISS, "other", now), Err(TokenRejection::WrongAudienceOrIssuer));
            assert_eq!(
                ring.verify_access_token(&token, "https://evil.example", API_AUDIENCE, now),
                Err(TokenRejection::WrongAudienceOrIssuer)
            );
        }
    }

    fn ring_other_token(now: OffsetDateTime) -> String {
        let claims = AccessTokenClaims::for_client(ISS, "cl_1", "ponte.admin", now, Duration::minutes(10));
        ring().sign_access_token(&claims).unwrap()
    }

    #[test]
    fn scopes_match_whole_words() {
        let now = datetime!(2026-01-01 10:00 UTC);
        let claims = AccessTokenClaims::for_client(ISS, "c", "ponte.admin openid", now, Duration::minutes(1));
        assert!(claims.has_scope("ponte.admin"));
        assert!(claims.has_scope("openid"));
        assert!(!claims.has_scope("ponte"));
    }
}
