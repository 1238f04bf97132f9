//! The token endpoint and its companions: introspection (RFC 7662), revocation
//! (RFC 7009) and userinfo.
//!
//! Errors here follow RFC 6749 §5.2 (`{"error", "error_description"}` as
//! `application/json`), because that is what every OAuth client library parses.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ponte_identity::client::{Client, GrantType};
use ponte_identity::oidc::{CodeGrant, RedeemedCode, pkce_matches};
use ponte_identity::refresh::{Family, NewFamily, Verdict, family_of, judge};
use ponte_identity::secret::digest;
use ponte_identity::token::{API_AUDIENCE, AccessTokenClaims, IdTokenClaims};
use ponte_linking::account::User;
use serde::Serialize;
use serde_json::{Value, json};
use time::Duration;
use utoipa::ToSchema;

use crate::problem::Problem;
use crate::routes::authorize::code_key;
use crate::state::AppState;

/// Registers the token, introspection, revocation and userinfo endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/oauth2/token").post(token))
        .service(web::resource("/oauth2/introspect").post(introspect))
        .service(web::resource("/oauth2/revoke").post(revoke))
        .service(web::resource("/oauth2/userinfo").get(userinfo).post(userinfo));
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// An RFC 6749 §5.2 error.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    /// The RFC 6749 error code.
    error: &'static str,
    /// For a developer.
    error_description: String,
    #[serde(skip)]
    status: u16,
    #[serde(skip)]
    basic_challenge: bool,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self { error, error_description: description.into(), status: 400, basic_challenge: false }
    }

    fn invalid_client(used_basic: bool) -> Self {
        Self {
            status: 401,
            basic_challenge: used_basic,
            ..Self::new("invalid_client", "Client authentication failed.")
        }
    }

    fn invalid_grant(description: &str) -> Self {
        Self::new("invalid_grant", description)
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.error_description)
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        r.insert_header((header::CACHE_CONTROL, "no-store"));
        if self.basic_challenge {
            r.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"ponte\""));
        }
        r.json(self)
    }
}

type Params = HashMap<String, String>;

/// Parses a form body, refusing repeated parameters (RFC 6749 §3.2).
fn parse_form(req: &HttpRequest, body: &[u8]) -> Result<Params, OAuthError> {
    let form_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form_type {
        return Err(OAuthError::new("invalid_request", "The body must be application/x-www-form-urlencoded."));
    }
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::new("invalid_request", format!("Parameter {k} is repeated.")));
        }
    }
    Ok(params)
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// Authenticates the calling client: `client_secret_basic`, `client_secret_post`, or
/// `none` for public clients (a `client_id` alone).
async fn authenticate_client(req: &HttpRequest, params: &Params, state: &AppState) -> Result<Client, actix_web::Error> {
    let basic = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim().to_owned())
    });
    let (client_id, secret, used_basic) = match basic {
        Some(_) if params.contains_key("client_secret") => {
            return Err(OAuthError::new("invalid_request", "Use one client authentication method, not two.").into());
        }
        Some(encoded) => {
            let decoded = STANDARD.decode(encoded).ok().and_then(|b| String::from_utf8(b).ok());
            let (id, secret) = decoded
                .as_deref()
                .and_then(|d| d.split_once(':'))
                .map(|(id, secret)| (form_decode(id), form_decode(secret)))
                .ok_or_else(|| OAuthError::invalid_client(true))?;
            if params.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id in the body differs from the one authenticated.",
                )
                .into());
            }
            (id, Some(secret), true)
        }
        None => match params.get("client_id") {
            Some(id) => (id.clone(), params.get("client_secret").cloned(), false),
            None => return Err(OAuthError::invalid_client(false).into()),
        },
    };
    if client_id.len() > 64 {
        return Err(OAuthError::invalid_client(used_basic).into());
    }
    let client = state.clients.find(&client_id).await.map_err(Problem::from)?;
    let authenticated = match (&client, secret) {
        (Some(c), Some(secret)) => c.secret_matches(&secret),
        (Some(c), None) => !c.is_confidential(),
        (None, _) => false,
    };
    match client {
        Some(c) if authenticated => Ok(c),
        _ => {
            metrics::counter!("oauth_client_auth_failures_total").increment(1);
            Err(OAuthError::invalid_client(used_basic).into())
        }
    }
}

/// Which of the client's scopes to grant: all when none asked, else exactly those asked,
/// if the client may have them.
fn granted_scope(allowed: &[String], requested: Option<&String>) -> Result<String, OAuthError> {
    let Some(requested) = requested.map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed.iter().any(|s| s == scope) {
            return Err(OAuthError::new("invalid_scope", format!("Scope {scope} is not allowed here.")));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

fn token_response(body: TokenResponse) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
        .json(body)
}

/// Issues tokens: `authorization_code` (with PKCE), `refresh_token` (rotating), and
/// `client_credentials`.
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth2",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials|authorization_code|refresh_token and its parameters; \
                       client_id and client_secret in the body or as HTTP Basic (public clients: client_id only)"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, body = OAuthError),
        (status = 401, body = OAuthError),
    ))]
pub async fn token(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_form(&req, &body)?;
    let client = authenticate_client(&req, &params, &state).await?;
    let grant = params.get("grant_type").map(String::as_str).unwrap_or_default();
    let grant_type = match GrantType::parse(grant) {
        Some(g) => g,
        None if grant.is_empty() => return Err(OAuthError::new("invalid_request", "grant_type is required.").into()),
        None => {
            return Err(
                OAuthError::new("unsupported_grant_type", format!("grant_type {grant} is not supported.")).into()
            );
        }
    };
    if !client.allows_grant(grant_type) {
        return Err(OAuthError::new("unauthorized_client", format!("This client may not use {grant}.")).into());
    }
    let response = match grant_type {
        GrantType::ClientCredentials => client_credentials(&state, &client, &params)?,
        GrantType::AuthorizationCode => authorization_code(&state, &client, &params).await?,
        GrantType::RefreshToken => refresh_token(&state, &client, &params).await?,
    };
    metrics::counter!("oauth_tokens_issued_total", "grant_type" => grant_type.as_str()).increment(1);
    Ok(token_response(response))
}

fn client_credentials(state: &AppState, client: &Client, params: &Params) -> Result<TokenResponse, actix_web::Error> {
    if !client.is_confidential() {
        return Err(OAuthError::new("unauthorized_client", "A public client cannot use client_credentials.").into());
    }
    let scope = granted_scope(&client.scopes, params.get("scope"))?;
    let ttl = state.config.access_token_ttl_secs;
    let claims =
        AccessTokenClaims::for_client(&state.issuer, &client.id, &scope, state.now(), Duration::seconds(ttl as i64));
    let access_token = state.keys.ring().sign_access_token(&claims).map_err(Problem::from)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        scope,
        id_token: None,
        refresh_token: None,
    })
}

/// What a user token is minted from: a redeemed code or a refresh family.
struct Grant<'a> {
    user: User,
    scope: &'a str,
    nonce: Option<&'a str>,
    auth_time: i64,
    amr: Vec<String>,
    sid: Option<&'a str>,
}

fn mint(
    state: &AppState,
    client: &Client,
    grant: &Grant<'_>,
    refresh_token: Option<String>,
) -> Result<(TokenResponse, AccessTokenClaims), Problem> {
    let now = state.now();
    let ring = state.keys.ring();
    let ttl = state.config.access_token_ttl_secs;
    let user = &grant.user;
    let claims = AccessTokenClaims::for_user(
        &state.issuer,
        user.id,
        user.account_id,
        user.role.as_str(),
        &client.id,
        grant.scope,
        now,
        Duration::seconds(ttl as i64),
    );
    let access_token = ring.sign_access_token(&claims)?;
    let scopes: Vec<&str> = grant.scope.split(' ').collect();
    let id_token = if scopes.contains(&"openid") {
        let email = scopes.contains(&"email");
        let id = IdTokenClaims {
            iss: state.issuer.clone(),
            sub: user.id.to_string(),
            aud: client.id.clone(),
            exp: (now + Duration::seconds(state.config.id_token_ttl_secs as i64)).unix_timestamp(),
            iat: now.unix_timestamp(),
            auth_time: grant.auth_time,
            nonce: grant.nonce.map(str::to_owned),
            amr: grant.amr.clone(),
            sid: grant.sid.map(str::to_owned),
            azp: client.id.clone(),
            email: email.then(|| user.email.clone()),
            email_verified: email.then_some(state.config.assert_email_verified),
            name: scopes.contains(&"profile").then(|| user.name.clone()),
            account_id: Some(user.account_id.to_string()),
        };
        Some(ring.sign_id_token(&id)?)
    } else {
        None
    };
    let response = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        scope: grant.scope.to_owned(),
        id_token,
        refresh_token,
    };
    Ok((response, claims))
}

fn redeemed_key(code: &str) -> String {
    format!("code-redeemed:{}", digest(code))
}

fn denied_key(jti: &str) -> String {
    format!("jti-revoked:{jti}")
}

/// Puts an access token on the deny-list until it expires.
async fn deny_access_token(state: &AppState, jti: &str, exp: i64) -> Result<(), Problem> {
    let ttl = (exp - state.now().unix_timestamp()).max(1) as u64 + 60;
    state.sessions.store().put_once(&denied_key(jti), "1", ttl).await?;
    Ok(())
}

async fn authorization_code(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, actix_web::Error> {
    let (Some(code), Some(redirect_uri), Some(verifier)) =
        (params.get("code"), params.get("redirect_uri"), params.get("code_verifier"))
    else {
        return Err(OAuthError::new("invalid_request", "code, redirect_uri and code_verifier are required.").into());
    };
    let store = state.sessions.store();
    let Some(json) = store.take_once(&code_key(code)).await.map_err(Problem::from)? else {
        // A replayed code: whatever its first redemption issued is revoked (RFC 9700 §4.5).
        if let Some(redeemed) = store.take_once(&redeemed_key(code)).await.map_err(Problem::from)?
            && let Ok(redeemed) = serde_json::from_str::<RedeemedCode>(&redeemed)
        {
            if let Some(family) = &redeemed.family_id {
                state.refresh.revoke(family, state.now()).await.map_err(Problem::from)?;
            }
            deny_access_token(state, &redeemed.access_jti, redeemed.access_exp).await?;
            tracing::warn!(client_id = %client.id, "authorization code replayed; its tokens were revoked");
        }
        return Err(OAuthError::invalid_grant("The code is invalid, expired or already used.").into());
    };
    let grant: CodeGrant = serde_json::from_str(&json).map_err(|e| Problem::internal(&e))?;
    if grant.client_id != client.id || grant.redirect_uri != *redirect_uri {
        return Err(OAuthError::invalid_grant("The code was issued to another client or redirect_uri.").into());
    }
    if !pkce_matches(verifier, &grant.code_challenge) {
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge.").into());
    }
    // Logout between the code and its redemption: the session's tokens were revoked, so
    // the code must not start new ones.
    if store.get(&grant.sid).await.map_err(Problem::from)?.is_none() {
        return Err(OAuthError::invalid_grant("The session this code came from has ended.").into());
    }
    let Some(user) = state.active_user(grant.account_id, grant.user_id).await? else {
        return Err(OAuthError::invalid_grant("The user can no longer sign in.").into());
    };
    let scope = grant.scope.join(" ");
    let mut family_id = None;
    let refresh_token =
        if client.allows_grant(GrantType::RefreshToken) && grant.scope.iter().any(|s| s == "offline_access") {
            let new = NewFamily {
                client_id: client.id.clone(),
                user_id: grant.user_id,
                account_id: grant.account_id,
                scope: scope.clone(),
                sid: Some(grant.sid.clone()),
                auth_time: grant.auth_time,
                amr: grant.amr.join(" "),
            };
            let lifetime = Duration::seconds(state.config.refresh_token_ttl_secs as i64);
            let (family, token) = state.refresh.start(new, lifetime, state.now()).await.map_err(Problem::from)?;
            family_id = Some(family.id);
            Some(token)
        } else {
            None
        };
    let minted = Grant {
        user,
        scope: &scope,
        nonce: grant.nonce.as_deref(),
        auth_time: grant.auth_time,
        amr: grant.amr.clone(),
        sid: Some(&grant.sid),
    };
    let (response, claims) = mint(state, client, &minted, refresh_token)?;
    let redeemed = RedeemedCode { family_id, access_jti: claims.jti.clone(), access_exp: claims.exp };
    let redeemed = serde_json::to_string(&redeemed).map_err(|e| Problem::internal(&e))?;
    store.put_once(&redeemed_key(code), &redeemed, 600).await.map_err(Problem::from)?;
    Ok(response)
}

async fn refresh_token(state: &AppState, client: &Client, params: &Params) -> Result<TokenResponse, actix_web::Error> {
    let Some(presented) = params.get("refresh_token") else {
        return Err(OAuthError::new("invalid_request", "refresh_token is required.").into());
    };
    let invalid = || OAuthError::invalid_grant("The refresh token is invalid, expired or revoked.");
    let Some(id) = family_of(presented) else { return Err(invalid().into()) };
    let mut family = match state.refresh.find(id).await.map_err(Problem::from)? {
        Some(f) if f.client_id == client.id => f,
        _ => return Err(invalid().into()),
    };
    // Two tries: a concurrent refresh of the same family may change it under us.
    let mut new_token = None;
    for _ in 0..2 {
        match judge(&family, presented, state.now()) {
            verdict @ (Verdict::Rotate | Verdict::RetryWithinGrace) => {
                if let Some(t) = state.refresh.advance(&family, verdict, state.now()).await.map_err(Problem::from)? {
                    new_token = Some(t);
                    break;
                }
                family = state.refresh.find(id).await.map_err(Problem::from)?.ok_or_else(invalid)?;
            }
            Verdict::Reuse => {
                state.refresh.revoke(&family.id, state.now()).await.map_err(Problem::from)?;
                tracing::warn!(client_id = %client.id, family = %family.id, "refresh token reused; family revoked");
                metrics::counter!("oauth_refresh_reuse_total").increment(1);
                return Err(invalid().into());
            }
            Verdict::Dead => return Err(invalid().into()),
        }
    }
    let Some(new_token) = new_token else { return Err(invalid().into()) };
    let allowed: Vec<String> = family.scope.split(' ').map(str::to_owned).collect();
    let scope = granted_scope(&allowed, params.get("scope"))?;
    let Some(user) = state.active_user(family.account_id, family.user_id).await? else {
        state.refresh.revoke(&family.id, state.now()).await.map_err(Problem::from)?;
        return Err(OAuthError::invalid_grant("The user can no longer sign in.").into());
    };
    let Family { auth_time, amr, sid, .. } = &family;
    let minted = Grant {
        user,
        scope: &scope,
        nonce: None,
        auth_time: *auth_time,
        amr: amr.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        sid: sid.as_deref(),
    };
    Ok(mint(state, client, &minted, Some(new_token))?.0)
}

/// Verifies one of our access tokens and checks the deny-list.
pub async fn verify_access(state: &AppState, token: &str) -> Result<Option<AccessTokenClaims>, Problem> {
    let Ok(claims) = state.keys.ring().verify_access_token(token, &state.issuer, API_AUDIENCE, state.now()) else {
        return Ok(None);
    };
    if state.sessions.store().peek(&denied_key(&claims.jti)).await?.is_some() {
        return Ok(None);
    }
    Ok(Some(claims))
}

fn inactive() -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({"active": false}))
}

/// Token introspection (RFC 7662), for authenticated confidential clients. Inactive or
/// unknown tokens answer `{"active": false}` and nothing else.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth2",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=…, client authentication"),
    responses((status = 200, body = Object), (status = 401, body = OAuthError)))]
pub async fn introspect(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_form(&req, &body)?;
    let client = authenticate_client(&req, &params, &state).await?;
    if !client.is_confidential() {
        return Err(OAuthError::invalid_client(false).into());
    }
    let Some(token) = params.get("token") else {
        return Err(OAuthError::new("invalid_request", "token is required.").into());
    };
    if let Some(claims) = verify_access(&state, token).await? {
        let mut body = serde_json::to_value(&claims).map_err(|e| Problem::internal(&e))?;
        if let Value::Object(map) = &mut body {
            map.insert("active".into(), Value::Bool(true));
            map.insert("token_type".into(), Value::String("Bearer".into()));
        }
        return Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body));
    }
    // Refresh tokens are only described to the client they were issued to.
    if let Some(id) = family_of(token)
        && let Some(family) = state.refresh.find(id).await.map_err(Problem::from)?
        && family.client_id == client.id
        && judge(&family, token, state.now()) == Verdict::Rotate
    {
        return Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "sub": family.user_id,
            "scope": family.scope,
            "exp": family.expires_at.unix_timestamp(),
            "iat": family.rotated_at.unix_timestamp(),
            "iss": state.issuer,
        })));
    }
    Ok(inactive())
}

/// Token revocation (RFC 7009): refresh tokens end their family; access tokens go on the
/// deny-list. Always 200 for an authenticated client, whatever the token.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth2",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=…, client authentication"),
    responses((status = 200, description = "Revoked, or nothing to revoke"), (status = 401, body = OAuthError)))]
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_form(&req, &body)?;
    let client = authenticate_client(&req, &params, &state).await?;
    let Some(token) = params.get("token") else {
        return Err(OAuthError::new("invalid_request", "token is required.").into());
    };
    if let Some(id) = family_of(token) {
        if let Some(family) = state.refresh.find(id).await.map_err(Problem::from)?
            && family.client_id == client.id
            && judge(&family, token, state.now()) != Verdict::Dead
        {
            state.refresh.revoke(&family.id, state.now()).await.map_err(Problem::from)?;
        }
    } else if let Some(claims) = verify_access(&state, token).await?
        && claims.client_id == client.id
    {
        deny_access_token(&state, &claims.jti, claims.exp).await?;
    }
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).finish())
}

/// Claims about the signed-in user (OpenID Connect Core §5.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserInfo {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    account_id: String,
    role: String,
}

fn bearer_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::WWW_AUTHENTICATE, format!("Bearer realm=\"ponte\", error=\"{error}\"")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"error": error, "error_description": description}))
}

/// The user an access token stands for, by the scopes it carries.
#[utoipa::path(get, path = "/oauth2/userinfo", tag = "oauth2", security(("bearer" = ["openid"])),
    responses((status = 200, body = UserInfo), (status = 401, description = "invalid_token")))]
pub async fn userinfo(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let token =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer_token);
    let Some(token) = token else {
        return Ok(bearer_error(StatusCode::UNAUTHORIZED, "invalid_request", "Send a Bearer token."));
    };
    let Some(claims) = verify_access(&state, token).await? else {
        return Ok(bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", "The access token is invalid or expired."));
    };
    if !claims.has_scope("openid") || !claims.is_user_token() {
        return Ok(bearer_error(StatusCode::FORBIDDEN, "insufficient_scope", "The token needs the openid scope."));
    }
    let Some((account, user)) = claims.user_ids() else {
        return Ok(bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", "The access token is invalid or expired."));
    };
    let Some(user) = state.active_user(account, user).await? else {
        return Ok(bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", "The user can no longer sign in."));
    };
    let email = claims.has_scope("email");
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(UserInfo {
        sub: user.id.to_string(),
        email: email.then(|| user.email.clone()),
        email_verified: email.then_some(state.config.assert_email_verified),
        name: claims.has_scope("profile").then(|| user.name.clone()),
        account_id: user.account_id.to_string(),
        role: user.role.as_str().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("plain"), "plain");
    }

    #[test]
    fn scopes_are_a_subset_of_what_is_allowed() {
        let allowed = vec!["openid".to_owned(), "email".to_owned()];
        assert_eq!(granted_scope(&allowed, None).unwrap(), "openid email");
        assert_eq!(granted_scope(&allowed, Some(&"email email".to_owned())).unwrap(), "email");
        assert!(granted_scope(&allowed, Some(&"openid admin".to_owned())).is_err());
    }
}
