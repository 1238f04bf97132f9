//! Ponte as a relying party to upstream OpenID Providers (the company-wide ID).
//!
//! One [`Upstream`] per configured provider: discovery is cached and refreshed, every
//! request goes through one HTTP client with redirects off (SSRF) and timeouts, and the
//! code flow always uses PKCE S256, a one-time state and nonce, the RFC 9207 `iss` check
//! and full ID-token validation (issuer, audience, azp, signature and algorithm, expiry,
//! bounded `iat`, nonce, and `auth_time` when `max_age` was sent).

use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, LoginHint, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secret::random_token;
use crate::text;

/// The discovery fields openidconnect does not model that we need (RFC 9207).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssSupport {
    #[serde(default)]
    authorization_response_iss_parameter_supported: Option<bool>,
}

impl openidconnect::AdditionalProviderMetadata for IssSupport {}

type Metadata = openidconnect::ProviderMetadata<
    IssSupport,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// One upstream provider, as configured under `[providers.<id>]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's issuer URL (discovery is fetched from it).
    pub issuer: String,
    /// Ponte's client id at the provider.
    pub client_id: String,
    /// Ponte's client secret at the provider (or `client_secret_file`).
    #[serde(default, skip_serializing)]
    pub client_secret: Option<String>,
    /// A file holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Shown on buttons and pages, e.g. "TeamSystem ID".
    pub display_name: String,
    /// Scopes to ask for.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Whether the provider understands `prompt=create` ("I don't have an ID yet").
    #[serde(default)]
    pub supports_prompt_create: bool,
    /// Which claim holds the email: `email` or `preferred_username`.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Which claim holds the name: `name`, `preferred_username` or `given_family`.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Seconds discovery metadata is cached.
    #[serde(default = "default_discovery_ttl")]
    pub discovery_ttl_secs: u64,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_email_claim() -> String {
    "email".into()
}

fn default_name_claim() -> String {
    "name".into()
}

fn default_discovery_ttl() -> u64 {
    3600
}

/// Why an upstream step failed. Each has its own page and code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Discovery, JWKS or the token endpoint could not be reached or made no sense.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// The provider answered the authorization request with an error.
    #[error("provider returned {error}")]
    Returned {
        /// The OAuth error code (`access_denied`, …).
        error: String,
    },
    /// The response did not pass validation (wrong `iss`, bad ID token, nonce, …).
    #[error("invalid response from provider: {0}")]
    Invalid(String),
    /// Configuration is unusable.
    #[error("provider configuration: {0}")]
    Config(String),
}

/// What the provider told us about who signed in, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamIdentity {
    /// The configured provider id.
    pub provider: String,
    /// The verified issuer.
    pub issuer: String,
    /// The subject at that issuer.
    pub subject: String,
    /// Email, by the configured claim.
    pub email: Option<String>,
    /// Whether the provider says the email is verified.
    pub email_verified: bool,
    /// Display name, by the configured claim.
    pub name: Option<String>,
    /// When the person authenticated upstream.
    pub auth_time: Option<i64>,
    /// The upstream session id, for back-channel logout.
    pub sid: Option<String>,
}

/// What `start` hands back: where to send the browser, and what to keep for the callback.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's authorization URL.
    pub url: String,
    /// The state value (the key of the stored flow).
    pub state: String,
    /// The nonce sent.
    pub nonce: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
}

/// How to ask the provider to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Reuse an upstream session if there is one.
    Login,
    /// Force a fresh sign-in: `prompt=login` and `max_age=0`.
    FreshLogin,
    /// Account creation: `prompt=create` when supported, else a fresh sign-in.
    Create,
}

/// A configured upstream provider with its cached discovery.
#[derive(Debug)]
pub struct Upstream {
    /// The provider id (`[providers.<id>]`).
    pub id: String,
    /// Its configuration.
    pub config: ProviderConfig,
    secret: Option<String>,
    http: reqwest::Client,
    metadata: RwLock<Option<(Metadata, Instant)>>,
}

/// The one HTTP client for talking to providers: no redirects, short timeouts.
pub fn http_client() -> Result<reqwest::Client, UpstreamError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| UpstreamError::Config(e.to_string()))
}

/// Tolerated clock skew for upstream `iat` and `auth_time`.
const SKEW_SECS: i64 = 120;

impl Upstream {
    /// A provider from its configuration; reads `client_secret_file` now.
    pub fn new(id: &str, config: ProviderConfig, http: reqwest::Client) -> Result<Self, UpstreamError> {
        let secret = match (&config.client_secret, &config.client_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| UpstreamError::Config(format!("{}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        IssuerUrl::new(config.issuer.clone()).map_err(|e| UpstreamError::Config(format!("issuer: {e}")))?;
        // A typo here must not quietly change what counts as a verified email.
        if !matches!(config.email_claim.as_str(), "email" | "preferred_username") {
            return Err(UpstreamError::Config(format!(
                "email_claim must be email or preferred_username, not {:?}",
                config.email_claim
            )));
        }
        if !matches!(config.name_claim.as_str(), "name" | "preferred_username" | "given_family") {
            return Err(UpstreamError::Config(format!(
                "name_claim must be name, preferred_username or given_family, not {:?}",
                config.name_claim
            )));
        }
        Ok(Self { id: id.to_owned(), config, secret, http, metadata: RwLock::new(None) })
    }

    async fn metadata(&self) -> Result<Metadata, UpstreamError> {
        let ttl = Duration::from_secs(self.config.discovery_ttl_secs);
        if let Some((meta, at)) = self.metadata.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && at.elapsed() < ttl
        {
            return Ok(meta.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| UpstreamError::Config(e.to_string()))?;
        let meta = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("discovery: {e}")))?;
        *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), Instant::now()));
        Ok(meta)
    }

    /// Forgets cached discovery (after a signature failure, keys may have rotated).
    pub fn forget_metadata(&self) {
        *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn client(&self, redirect_uri: &str) -> Result<(Client, Metadata), UpstreamError> {
        let meta = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            meta.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| UpstreamError::Config(e.to_string()))?);
        Ok((client, meta))
    }

    /// Builds the authorization URL for a new flow.
    pub async fn start(
        &self,
        redirect_uri: &str,
        ask: Ask,
        login_hint: Option<&str>,
    ) -> Result<Started, UpstreamError> {
        let (client, _) = self.client(redirect_uri).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let nonce = random_token();
        let (state_c, nonce_c) = (state.clone(), nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_c),
                move || Nonce::new(nonce_c),
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        match ask {
            Ask::Login => {}
            Ask::FreshLogin => {
                request = request.add_prompt(CoreAuthPrompt::Login).set_max_age(Duration::ZERO);
            }
            // max_age=0 makes the provider report auth_time (OIDC Core §2), which the
            // callback checks against the start of the flow.
            Ask::Create if self.config.supports_prompt_create => {
                // Not set_max_age: openidconnect then adds prompt=login, which would turn
                // the sign-up page into a sign-in page.
                request =
                    request.add_prompt(CoreAuthPrompt::Extension("create".into())).add_extra_param("max_age", "0");
            }
            Ask::Create => {
                request = request.add_prompt(CoreAuthPrompt::Login).set_max_age(Duration::ZERO);
            }
        }
        if let Some(hint) = login_hint {
            request = request.set_login_hint(LoginHint::new(hint.to_owned()));
        }
        let (url, _, _) = request.url();
        Ok(Started { url: url.to_string(), state, nonce, pkce_verifier: verifier.secret().clone() })
    }

    /// Completes a flow: checks `iss`, redeems the code with PKCE, validates the ID token
    /// fully, and reads email and name (from userinfo when the ID token lacks them).
    /// `fresh_after` (Unix seconds) demands an upstream sign-in no older than the flow.
    pub async fn finish(
        &self,
        redirect_uri: &str,
        code: &str,
        iss: Option<&str>,
        flow: &FlowSecrets,
        fresh_after: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let (client, meta) = self.client(redirect_uri).await?;
        let issuer = meta.issuer().as_str().to_owned();
        // RFC 9207: a provider that announces `iss` must send it, and it must match.
        let announces_iss = meta.additional_metadata().authorization_response_iss_parameter_supported.unwrap_or(false);
        match iss {
            Some(i) if i != issuer => return Err(UpstreamError::Invalid("iss does not match the provider".into())),
            None if announces_iss => {
                return Err(UpstreamError::Invalid("iss missing from the authorization response".into()));
            }
            _ => {}
        }
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| UpstreamError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    UpstreamError::Returned { error: r.error().to_string() }
                }
                other => UpstreamError::Unreachable(format!("token endpoint: {other}")),
            })?;
        let id_token = tokens.id_token().ok_or_else(|| UpstreamError::Invalid("no ID token".into()))?;
        let now_s = now.unix_timestamp();
        let verifier = client
            .id_token_verifier()
            .set_time_fn(move || chrono_from_unix(now_s))
            .set_issue_time_verifier_fn(move |iat| {
                let iat = iat.timestamp();
                if iat > now_s + SKEW_SECS || iat < now_s - 600 { Err("iat is out of bounds".into()) } else { Ok(()) }
            });
        let claims = id_token
            .claims(&verifier, &Nonce::new(flow.nonce.clone()))
            .map_err(|e| UpstreamError::Invalid(format!("ID token: {e}")))?;
        let auth_time = claims.auth_time().map(|t| t.timestamp());
        if let Some(after) = fresh_after {
            match auth_time {
                Some(t) if t + SKEW_SECS >= after => {}
                Some(_) => return Err(UpstreamError::Invalid("the provider reused an old sign-in".into())),
                None => return Err(UpstreamError::Invalid("auth_time missing though max_age was sent".into())),
            }
        }
        let raw = extra_claims(&id_token.to_string());
        let mut identity = UpstreamIdentity {
            provider: self.id.clone(),
            issuer,
            subject: claims.subject().as_str().to_owned(),
            email: None,
            email_verified: false,
            name: pick_name(&self.config.name_claim, &raw),
            auth_time,
            sid: raw.get("sid").and_then(|v| v.as_str()).map(str::to_owned),
        };
        (identity.email, identity.email_verified) = pick_email(
            &self.config.email_claim,
            claims.email().map(|e| e.as_str()),
            claims.preferred_username().map(|u| u.as_str()),
            claims.email_verified(),
        );
        if identity.email.is_none() || identity.name.is_none() {
            match self.fill_from_userinfo(&client, tokens.access_token().clone(), &mut identity).await {
                // Only the display name was missing: sign-in does not depend on it.
                Err(e) if identity.email.is_some() => tracing::warn!(error = %e, "userinfo for the name failed"),
                other => other?,
            }
        }
        Ok(identity)
    }

    async fn fill_from_userinfo(
        &self,
        client: &Client,
        access_token: openidconnect::AccessToken,
        identity: &mut UpstreamIdentity,
    ) -> Result<(), UpstreamError> {
        let Ok(request) =
            client.user_info(access_token, Some(openidconnect::SubjectIdentifier::new(identity.subject.clone())))
        else {
            return Ok(());
        };
        let info: openidconnect::core::CoreUserInfoClaims = request
            .request_async(&self.http)
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("userinfo: {e}")))?;
        if identity.email.is_none() {
            (identity.email, identity.email_verified) = pick_email(
                &self.config.email_claim,
                info.email().map(|e| e.as_str()),
                info.preferred_username().map(|u| u.as_str()),
                info.email_verified(),
            );
        }
        if identity.name.is_none() {
            let raw = serde_json::to_value(&info).unwrap_or_default();
            identity.name = pick_name(&self.config.name_claim, &raw);
        }
        Ok(())
    }
}

/// What a valid back-channel logout token says to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// The issuer.
    pub issuer: String,
    /// The upstream session to end, if named.
    pub sid: Option<String>,
    /// The upstream subject whose sessions end, if named.
    pub sub: Option<String>,
    /// The token id, to refuse replays.
    pub jti: String,
}

/// The event a back-channel logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Upstream {
    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6):
    /// signature by the provider's keys, `iss`, `aud`, a recent `iat`, `exp`, `jti`, the
    /// logout event, no `nonce`, and a `sid` or `sub`. Replay of `jti` is the caller's check.
    pub async fn validate_logout_token(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<LogoutRequest, UpstreamError> {
        let bad = |m: &str| UpstreamError::Invalid(format!("logout token: {m}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a JWT"))?;
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("logout+jwt") && !t.eq_ignore_ascii_case("jwt"))
        {
            return Err(bad("wrong typ"));
        }
        let meta = self.metadata().await?;
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::to_value(meta.jwks())
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| bad("provider keys unreadable"))?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid),
            None if jwks.keys.len() == 1 => jwks.keys.first(),
            None => None,
        }
        .ok_or_else(|| bad("unknown key"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| bad("unusable key"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "aud", "iat"]);
        validation.set_issuer(&[meta.issuer().as_str()]);
        validation.set_audience(&[self.config.client_id.as_str()]);
        let claims: serde_json::Value =
            jsonwebtoken::decode(token, &key, &validation).map_err(|e| bad(&e.to_string()))?.claims;
        let now_s = now.unix_timestamp();
        let iat = claims["iat"].as_i64().ok_or_else(|| bad("iat"))?;
        if iat > now_s + SKEW_SECS || iat < now_s - 300 {
            return Err(bad("iat is not recent"));
        }
        match claims.get("exp").and_then(|e| e.as_i64()) {
            Some(exp) if exp + SKEW_SECS >= now_s => {}
            Some(_) => return Err(bad("expired")),
            None => return Err(bad("exp is required")),
        }
        if claims.get("nonce").is_some() {
            return Err(bad("nonce is not allowed"));
        }
        if claims["events"].get(BACKCHANNEL_EVENT).is_none_or(|e| !e.is_object()) {
            return Err(bad("missing the back-channel logout event"));
        }
        let jti = claims["jti"].as_str().ok_or_else(|| bad("jti is required"))?.to_owned();
        let sid = claims["sid"].as_str().map(str::to_owned);
        let sub = claims["sub"].as_str().map(str::to_owned);
        if sid.is_none() && sub.is_none() {
            return Err(bad("neither sid nor sub"));
        }
        Ok(LogoutRequest { issuer: meta.issuer().as_str().to_owned(), sid, sub, jti })
    }
}

/// An upstream provider as the federation use cases see it: [`Upstream`] over HTTP, or a
/// stand-in in tests.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider id (`[providers.<id>]`).
    fn id(&self) -> &str;
    /// Builds the authorization URL for a new flow.
    async fn start(&self, redirect_uri: &str, ask: Ask, login_hint: Option<&str>) -> Result<Started, UpstreamError>;
    /// Redeems the code and validates the answer fully (see [`Upstream::finish`]).
    async fn finish(
        &self,
        redirect_uri: &str,
        code: &str,
        iss: Option<&str>,
        flow: &FlowSecrets,
        fresh_after: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<UpstreamIdentity, UpstreamError>;
    /// Validates a back-channel logout token (see [`Upstream::validate_logout_token`]).
    async fn validate_logout_token(&self, token: &str, now: OffsetDateTime) -> Result<LogoutRequest, UpstreamError>;
}

#[async_trait::async_trait]
impl Provider for Upstream {
    fn id(&self) -> &str {
        &self.id
    }

    async fn start(&self, redirect_uri: &str, ask: Ask, login_hint: Option<&str>) -> Result<Started, UpstreamError> {
        Upstream::start(self, redirect_uri, ask, login_hint).await
    }

    async fn finish(
        &self,
        redirect_uri: &str,
        code: &str,
        iss: Option<&str>,
        flow: &FlowSecrets,
        fresh_after: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        Upstream::finish(self, redirect_uri, code, iss, flow, fresh_after, now).await
    }

    async fn validate_logout_token(&self, token: &str, now: OffsetDateTime) -> Result<LogoutRequest, UpstreamError> {
        Upstream::validate_logout_token(self, token, now).await
    }
}

/// The secret halves of a flow, kept server-side until the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSecrets {
    /// The nonce sent.
    pub nonce: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
}

fn chrono_from_unix(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// Claims of an already verified JWT that the typed claims do not carry (`sid`, names).
fn extra_claims(jwt: &str) -> serde_json::Value {
    jwt.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The email by the configured claim and whether it counts as verified.
///
/// An address holding an invisible or direction-changing character (see
/// [`text::invisible`]) is taken as absent and unverified: it could look like another
/// person's address on the link confirmation page, and `Email::parse` would refuse it from
/// anyone else. `email_verified` speaks of the `email` claim only, never of
/// `preferred_username`.
fn pick_email(
    claim: &str,
    email: Option<&str>,
    preferred_username: Option<&str>,
    email_verified: Option<bool>,
) -> (Option<String>, bool) {
    let (picked, verified) = match claim {
        "email" => (email, email_verified.unwrap_or(false)),
        "preferred_username" => (preferred_username.filter(|u| u.contains('@')), false),
        // Refused when the provider is configured; never verified in any case.
        _ => (None, false),
    };
    match picked {
        Some(e) if !e.chars().any(text::invisible) => (Some(e.to_owned()), verified),
        _ => (None, false),
    }
}

/// The display name by the configured claim, with invisible and control characters
/// removed; a name left empty is absent.
///
/// Removed rather than replaced: the name is only shown, never compared or used to link,
/// so what matters is that it cannot hide or reorder text (a bidi override would turn the
/// rest of the line around) while the visible letters stay readable. Names that use a
/// joiner legitimately (ZWNJ in Persian, ZWJ in Indic scripts) lose at most how two
/// letters connect; a replacement mark would put a visible `�` into them.
fn pick_name(claim: &str, raw: &serde_json::Value) -> Option<String> {
    let get = |k: &str| raw.get(k).and_then(|v| v.as_str()).map(visible_only).filter(|v| !v.is_empty());
    match claim {
        "given_family" => match (get("given_name"), get("family_name")) {
            (Some(g), Some(f)) => Some(format!("{g} {f}")),
            (g, f) => g.or(f),
        },
        "preferred_username" => get("preferred_username"),
        _ => get("name"),
    }
}

/// `s` without invisible and control characters, trimmed.
fn visible_only(s: &str) -> String {
    s.chars().filter(|c| !text::invisible(*c) && !c.is_control()).collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_mapping() {
        let raw = serde_json::json!({"name": "Anna Bianchi", "given_name": "Anna", "family_name": "Bianchi", "preferred_username": "anna"});
        assert_eq!(pick_name("name", &raw).as_deref(), Some("Anna Bianchi"));
        assert_eq!(pick_name("given_family", &raw).as_deref(), Some("Anna Bianchi"));
        assert_eq!(pick_name("preferred_username", &raw).as_deref(), Some("anna"));
        assert_eq!(pick_email("email", Some("a@x.it"), Some("b@y.it"), Some(true)), (Some("a@x.it".into()), true));
        assert_eq!(pick_email("email", Some("a@x.it"), None, None), (Some("a@x.it".into()), false));
        assert_eq!(pick_email("preferred_username", None, Some("b@y.it"), Some(true)), (Some("b@y.it".into()), false));
        assert_eq!(pick_email("preferred_username", None, Some("anna"), None), (None, false));
    }

    #[test]
    fn an_unknown_claim_name_is_refused_at_configuration_and_never_verifies() {
        let config = |email_claim: &str, name_claim: &str| -> ProviderConfig {
            serde_json::from_value(serde_json::json!({
                "issuer": "https://id.example.com", "client_id": "ponte", "display_name": "ID",
                "email_claim": email_claim, "name_claim": name_claim,
            }))
            .unwrap()
        };
        let http = reqwest::Client::new();
        assert!(Upstream::new("up", config("email", "name"), http.clone()).is_ok());
        assert!(Upstream::new("up", config("preferred_username", "given_family"), http.clone()).is_ok());
        for (email_claim, name_claim) in [("mail", "name"), ("upn", "name"), ("email", "full_name")] {
            let refused = Upstream::new("up", config(email_claim, name_claim), http.clone());
            assert!(matches!(refused, Err(UpstreamError::Config(_))), "{email_claim}/{name_claim}");
        }
        assert_eq!(pick_email("mail", Some("a@x.it"), None, Some(true)), (None, false));
    }

    #[test]
    fn an_email_with_an_invisible_character_is_absent_and_unverified() {
        for c in ['\u{200B}', '\u{202E}', '\u{FEFF}', '\u{00AD}', '\u{2066}', '\u{E0041}'] {
            let email = format!("mario{c}@esempio.it");
            assert_eq!(pick_email("email", Some(&email), None, Some(true)), (None, false), "U+{:04X}", u32::from(c));
            assert_eq!(pick_email("preferred_username", None, Some(&email), Some(true)), (None, false));
        }
        assert_eq!(
            pick_email("email", Some("mario@esempio.it"), None, Some(true)),
            (Some("mario@esempio.it".into()), true)
        );
    }

    #[test]
    fn invisible_and_control_characters_leave_the_name() {
        let raw = serde_json::json!({
            "name": "Mario\u{200B} Ros\u{202E}si\n",
            "given_name": "\u{200B}\u{FEFF}",
            "family_name": "Bianchi\u{2066}",
            "preferred_username": "\u{200D}",
        });
        assert_eq!(pick_name("name", &raw).as_deref(), Some("Mario Rossi"));
        assert_eq!(pick_name("given_family", &raw).as_deref(), Some("Bianchi"));
        assert_eq!(pick_name("preferred_username", &raw), None);
    }

    #[test]
    fn extra_claims_come_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sid":"abc"}"#);
        assert_eq!(extra_claims(&format!("h.{payload}.s"))["sid"], "abc");
        assert!(extra_claims("garbage").is_null());
    }
}
