//! The authorization-code flow's rules: request validation, PKCE, codes, consent.
//! Pure functions and plain types; the server applies them.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::client::{Client, GrantType, is_valid_scope_token};
use crate::clock::to_unix;
use crate::db::Database;
use crate::ids::{AccountId, UserId};
use crate::secret::constant_time_eq;
use crate::{Error, Result};

/// What `prompt` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Fail rather than show any page.
    None,
    /// Sign in again even with a session.
    Login,
    /// Ask for consent again.
    Consent,
}

/// A validated authorization request, kept while the user signs in or consents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    /// The client.
    pub client_id: String,
    /// Exactly as registered.
    pub redirect_uri: String,
    /// Granted scopes, deduplicated, in request order.
    pub scope: Vec<String>,
    /// Echoed to the client.
    pub state: Option<String>,
    /// Carried into the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// `prompt` values.
    pub prompt: Vec<Prompt>,
    /// Maximum authentication age in seconds.
    pub max_age: Option<i64>,
    /// Email to prefill on the login page.
    pub login_hint: Option<String>,
    /// When the request arrived (Unix seconds): a forced login must be newer.
    pub received_at: i64,
    /// Set when the browser was sent to the login page for this request: the session it
    /// had then (if any). A different session on return is a fresh sign-in, even within
    /// the same second.
    #[serde(default)]
    pub sent_to_login: Option<SentToLogin>,
    /// The session the consent page was shown to; the decision must come from it.
    #[serde(default)]
    pub consent_sid: Option<String>,
}

/// The session a browser had when it was sent to sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentToLogin {
    /// The session id then, if there was one.
    pub stale_sid: Option<String>,
}

/// Why an authorization request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The client or redirect URI cannot be trusted: show a page, never redirect.
    Untrusted(String),
    /// Tell the client, at its registered redirect URI (RFC 6749 §4.1.2.1).
    Redirect {
        /// Where to send it (already checked).
        redirect_uri: String,
        /// `state` to echo.
        state: Option<String>,
        /// The RFC 6749 error code.
        error: &'static str,
        /// For a developer.
        description: String,
    },
}

fn single<'a>(params: &'a HashMap<String, Vec<String>>, name: &str) -> Result<Option<&'a str>, String> {
    match params.get(name).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([one]) => Ok(Some(one.as_str())),
        Some(_) => Err(format!("{name} is repeated")),
    }
}

/// Validates an authorization request against its client. `params` holds every value of
/// each query parameter, so repeats are caught.
pub fn validate_request(
    params: &HashMap<String, Vec<String>>,
    client: Option<&Client>,
    now: OffsetDateTime,
) -> Result<AuthorizationRequest, RequestError> {
    let untrusted = |m: &str| RequestError::Untrusted(m.to_owned());
    let Some(client) = client else { return Err(untrusted("Unknown client.")) };
    let redirect_uri = single(params, "redirect_uri").map_err(|e| untrusted(&e))?;
    let redirect_uri = match redirect_uri {
        Some(uri) if client.has_redirect_uri(uri) => uri.to_owned(),
        Some(_) => return Err(untrusted("The redirect_uri is not registered for this client.")),
        None => return Err(untrusted("redirect_uri is required.")),
    };
    let state = single(params, "state").ok().flatten().map(str::to_owned);
    let fail = |error: &'static str, description: String| RequestError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description,
    };
    let get = |name: &str| single(params, name).map_err(|e| fail("invalid_request", e));

    match get("response_type")? {
        Some("code") => {}
        None => return Err(fail("invalid_request", "response_type is required.".into())),
        Some(_) => return Err(fail("unsupported_response_type", "Only response_type=code is supported.".into())),
    }
    if !client.allows_grant(GrantType::AuthorizationCode) {
        return Err(fail("unauthorized_client", "This client may not use the authorization code flow.".into()));
    }
    if get("request")?.is_some() || get("request_uri")?.is_some() {
        return Err(fail("request_not_supported", "Request objects are not supported.".into()));
    }
    let code_challenge = match (get("code_challenge")?, get("code_challenge_method")?) {
        (Some(c), Some("S256")) if is_pkce_value(c) && c.len() == 43 => c.to_owned(),
        (Some(_), Some("S256")) => return Err(fail("invalid_request", "code_challenge is malformed.".into())),
        (Some(_), Some(m)) => {
            return Err(fail("invalid_request", format!("code_challenge_method {m} is not allowed; use S256.")));
        }
        (Some(_), None) => return Err(fail("invalid_request", "code_challenge_method=S256 is required.".into())),
        (None, _) => return Err(fail("invalid_request", "PKCE is required: send code_challenge with S256.".into())),
    };
    let mut scope: Vec<String> = Vec::new();
    for s in get("scope")?.unwrap_or_default().split(' ').filter(|s| !s.is_empty()) {
        if !is_valid_scope_token(s) || !client.scopes.iter().any(|c| c == s) {
            return Err(fail("invalid_scope", format!("Scope {s} is not allowed for this client.")));
        }
        if !scope.iter().any(|x| x == s) {
            scope.push(s.to_owned());
        }
    }
    if scope.is_empty() {
        return Err(fail("invalid_scope", "scope is required.".into()));
    }
    let mut prompt = Vec::new();
    for p in get("prompt")?.unwrap_or_default().split(' ').filter(|s| !s.is_empty()) {
        prompt.push(match p {
            "none" => Prompt::None,
            "login" => Prompt::Login,
            "consent" => Prompt::Consent,
            other => return Err(fail("invalid_request", format!("prompt={other} is not supported."))),
        });
    }
    if prompt.contains(&Prompt::None) && prompt.len() > 1 {
        return Err(fail("invalid_request", "prompt=none cannot be combined.".into()));
    }
    let max_age = match get("max_age")? {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| fail("invalid_request", "max_age must be a non-negative integer.".into()))?,
        ),
    };
    let nonce = get("nonce")?.map(str::to_owned);
    if nonce.as_ref().is_some_and(|n| n.len() > 512) || state.as_ref().is_some_and(|s| s.len() > 2048) {
        return Err(fail("invalid_request", "state or nonce is too long.".into()));
    }
    let login_hint = get("login_hint")?.map(|h| h.chars().take(254).collect());
    Ok(AuthorizationRequest {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.clone(),
        scope,
        state: state.clone(),
        nonce,
        code_challenge,
        prompt,
        max_age,
        login_hint,
        received_at: to_unix(now),
        sent_to_login: None,
        consent_sid: None,
    })
}

fn is_pkce_value(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks a PKCE verifier against an S256 challenge (RFC 7636 §4.6).
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !(43..=128).contains(&verifier.len()) || !is_pkce_value(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// What signing in must look like for this request to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginNeed {
    /// The current session will do.
    Satisfied,
    /// Show the login page (or fail with `login_required` under `prompt=none`).
    Required,
}

/// Decides whether the session (`sid`, signed in at `auth_time`) satisfies the request.
/// `prompt=login` needs a sign-in made for this request: a session that is new since the
/// browser was sent to the login page. `max_age=N` needs a sign-in in the last N seconds.
pub fn login_need(request: &AuthorizationRequest, session: Option<(&str, i64)>, now: OffsetDateTime) -> LoginNeed {
    let Some((sid, auth_time)) = session else { return LoginNeed::Required };
    let signed_in_for_this = request.sent_to_login.as_ref().is_some_and(|sent| sent.stale_sid.as_deref() != Some(sid));
    if signed_in_for_this {
        return LoginNeed::Satisfied;
    }
    if request.prompt.contains(&Prompt::Login) {
        return LoginNeed::Required;
    }
    match request.max_age {
        Some(age) if auth_time < to_unix(now) - age => LoginNeed::Required,
        _ => LoginNeed::Satisfied,
    }
}

/// What an authorization code stands for, kept in the session store until redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// Must be presented again at the token endpoint.
    pub redirect_uri: String,
    /// The user.
    pub user_id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// Granted scopes.
    pub scope: Vec<String>,
    /// For the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// When the user authenticated.
    pub auth_time: i64,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// The Ponte session.
    pub sid: String,
}

/// Remembered after a code is redeemed, so a replay can revoke what it issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemedCode {
    /// The refresh family it started, if any.
    pub family_id: Option<String>,
    /// The access token it issued.
    pub access_jti: String,
    /// When that access token expires.
    pub access_exp: i64,
}

/// Consents users gave to clients that are not first-party.
#[async_trait]
pub trait ConsentRepo: Send + Sync + std::fmt::Debug {
    /// The scopes `user_id` allowed `client_id`, if any.
    async fn granted(&self, user: UserId, client_id: &str) -> Result<Vec<String>>;
    /// Records (or widens) a consent.
    async fn grant(&self, user: UserId, client_id: &str, scopes: &[String], now: OffsetDateTime) -> Result<()>;
}

/// Consents in the relational store.
#[derive(Debug, Clone)]
pub struct SqlConsents {
    db: Database,
}

impl SqlConsents {
    /// Consents kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ConsentRepo for SqlConsents {
    async fn granted(&self, user: UserId, client_id: &str) -> Result<Vec<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT scopes FROM consents WHERE user_id = $1 AND client_id = $2")
                .bind(user.to_string())
                .bind(client_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(|(s,)| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default())
    }

    async fn grant(&self, user: UserId, client_id: &str, scopes: &[String], now: OffsetDateTime) -> Result<()> {
        let mut all = self.granted(user, client_id).await?;
        for s in scopes {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = excluded.scopes, granted_at = excluded.granted_at",
        )
        .bind(user.to_string())
        .bind(client_id)
        .bind(all.join(" "))
        .bind(to_unix(now))
        .execute(self.db.pool())
        .await
        .map_err(Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn client() -> Client {
        let mut c = crate::client::tests::client_for_tests();
        c.id = "cl_test".into();
        c.grants = vec![GrantType::AuthorizationCode];
        c.scopes = vec!["openid".into(), "email".into()];
        c.redirect_uris = vec!["https://shop.example.com/cb".into()];
        c
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
        map
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const NOW: OffsetDateTime = datetime!(2026-01-01 10:00 UTC);

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("response_type", "code"),
            ("client_id", "cl_test"),
            ("redirect_uri", "https://shop.example.com/cb"),
            ("scope", "openid email openid"),
            ("state", "s1"),
            ("nonce", "n1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]
    }

    fn with(changes: &[(&'static str, Option<&'static str>)]) -> HashMap<String, Vec<String>> {
        let mut pairs = good();
        for (k, v) in changes {
            pairs.retain(|(pk, _)| pk != k);
            if let Some(v) = v {
                pairs.push((k, v));
            }
        }
        params(&pairs)
    }

    fn error_of(r: Result<AuthorizationRequest, RequestError>) -> &'static str {
        match r {
            Err(RequestError::Redirect { error, .. }) => error,
            Err(RequestError::Untrusted(_)) => "untrusted",
            Ok(_) => "ok",
        }
    }

    #[test]
    fn a_good_request_is_accepted_with_deduplicated_scopes() {
        let req = validate_request(&params(&good()), Some(&client()), NOW).unwrap();
        assert_eq!(req.scope, vec!["openid", "email"]);
        assert_eq!((req.state.as_deref(), req.nonce.as_deref()), (Some("s1"), Some("n1")));
        assert_eq!(req.received_at, NOW.unix_timestamp());
    }

    #[test]
    fn pkce_is_required_and_only_s256() {
        let c = client();
        assert_eq!(
            error_of(validate_request(
                &with(&[("code_challenge", None), ("code_challenge_method", None)]),
                Some(&c),
                NOW
            )),
            "invalid_request"
        );
        assert_eq!(
            error_of(validate_request(&with(&[("code_challenge_method", Some("plain"))]), Some(&c), NOW)),
            "invalid_request"
        );
        assert_eq!(
            error_of(validate_request(&with(&[("code_challenge_method", None)]), Some(&c), NOW)),
            "invalid_request"
        );
        assert_eq!(
            error_of(validate_request(&with(&[("code_challenge", Some("short"))]), Some(&c), NOW)),
            "invalid_request"
        );
    }

    #[test]
    fn untrusted_clients_and_redirects_never_redirect() {
        let c = client();
        assert_eq!(error_of(validate_request(&params(&good()), None, NOW)), "untrusted");
        assert_eq!(
            error_of(validate_request(&with(&[("redirect_uri", Some("https://shop.example.com/cb/"))]), Some(&c), NOW)),
            "untrusted"
        );
        assert_eq!(error_of(validate_request(&with(&[("redirect_uri", None)]), Some(&c), NOW)), "untrusted");
        let mut repeated = params(&good());
        repeated.get_mut("redirect_uri").unwrap().push("https://evil.example/cb".into());
        assert_eq!(error_of(validate_request(&repeated, Some(&c), NOW)), "untrusted");
    }

    #[test]
    fn other_errors_go_back_to_the_client() {
        let c = client();
        assert_eq!(
            error_of(validate_request(&with(&[("response_type", Some("token"))]), Some(&c), NOW)),
            "unsupported_response_type"
        );
        assert_eq!(
            error_of(validate_request(&with(&[("scope", Some("openid admin"))]), Some(&c), NOW)),
            "invalid_scope"
        );
        assert_eq!(
            error_of(validate_request(&with(&[("prompt", Some("none login"))]), Some(&c), NOW)),
            "invalid_request"
        );
        assert_eq!(error_of(validate_request(&with(&[("max_age", Some("-1"))]), Some(&c), NOW)), "invalid_request");
        assert_eq!(
            error_of(validate_request(&with(&[("request", Some("eyJ"))]), Some(&c), NOW)),
            "request_not_supported"
        );
    }

    #[test]
    fn pkce_verifier_must_match_the_challenge() {
        // RFC 7636 appendix B.
        assert!(pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", CHALLENGE));
        assert!(!pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj", CHALLENGE));
        assert!(!pkce_matches("short", CHALLENGE));
    }

    #[test]
    fn forced_and_aged_logins() {
        let mut req = validate_request(&params(&good()), Some(&client()), NOW).unwrap();
        let t = NOW.unix_timestamp();
        assert_eq!(login_need(&req, None, NOW), LoginNeed::Required);
        assert_eq!(login_need(&req, Some(("s1", t - 86_400)), NOW), LoginNeed::Satisfied);
        req.prompt = vec![Prompt::Login];
        assert_eq!(login_need(&req, Some(("s1", t)), NOW), LoginNeed::Required, "even a session from this very second");
        req.sent_to_login = Some(SentToLogin { stale_sid: Some("s1".into()) });
        assert_eq!(login_need(&req, Some(("s1", t)), NOW), LoginNeed::Required, "the same session came back");
        assert_eq!(login_need(&req, Some(("s2", t)), NOW), LoginNeed::Satisfied, "signed in anew for this request");
        req.prompt = vec![];
        req.sent_to_login = None;
        req.max_age = Some(300);
        assert_eq!(login_need(&req, Some(("s1", t - 301)), NOW), LoginNeed::Required);
        assert_eq!(login_need(&req, Some(("s1", t - 299)), NOW), LoginNeed::Satisfied);
    }
}
