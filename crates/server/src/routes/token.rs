//! The token endpoint and its companions: introspection (RFC 7662), revocation
//! (RFC 7009) and userinfo.
//!
//! Errors here follow RFC 6749 §5.2 (`{"error", "error_description"}` as
//! `application/json`), because that is what every OAuth client library parses.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ponte_identity::client::{Client, GrantType};
use ponte_identity::op::Provider;
use ponte_identity::op::access::{Introspection, UserInfoOutcome};
use ponte_identity::op::grants::{GrantFailure, Refusal, TokenSet};
use ponte_identity::token::AccessTokenClaims;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::bearer_token;
use crate::op::provider;
use crate::problem::Problem;
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

/// The token request's form (its schema: [`crate::contract::token_form`]).
#[derive(Debug)]
pub struct TokenForm;

impl utoipa::PartialSchema for TokenForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::token_form()
    }
}

impl ToSchema for TokenForm {}

/// The form of introspection and revocation (its schema: [`crate::contract::token_use_form`]).
#[derive(Debug)]
pub struct TokenUseForm;

impl utoipa::PartialSchema for TokenUseForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::token_use_form()
    }
}

impl ToSchema for TokenUseForm {}

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

impl From<Refusal> for OAuthError {
    fn from(r: Refusal) -> Self {
        Self::new(r.error, r.description)
    }
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
    // Room for a token request's parameters without growing.
    let mut params = HashMap::with_capacity(4);
    for (k, v) in url::form_urlencoded::parse(body) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::new("invalid_request", format!("Parameter {k} is repeated.")));
        }
    }
    Ok(params)
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64 (borrowed when
/// nothing is encoded, as is usual).
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default(),
    )
}

/// The client credentials a request presents: `client_secret_basic`, `client_secret_post`,
/// or a `client_id` alone (public clients).
struct Presented<'a> {
    id: Cow<'a, str>,
    secret: Option<Cow<'a, str>>,
    /// They came as HTTP Basic (a refusal then carries the Basic challenge).
    basic: bool,
}

/// The HTTP Basic credentials, decoded (`id:secret`) and kept while the request is handled:
/// `None` without Basic, `Some(None)` when they do not decode (refused after the check that
/// only one method is used, as before).
fn basic_credentials(req: &HttpRequest) -> Option<Option<String>> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("basic")
        .then(|| STANDARD.decode(rest.trim()).ok().and_then(|b| String::from_utf8(b).ok()))
}

fn client_credentials_of<'a>(basic: Option<Option<&'a str>>, params: &'a Params) -> Result<Presented<'a>, OAuthError> {
    match basic {
        Some(_) if params.contains_key("client_secret") => {
            Err(OAuthError::new("invalid_request", "Use one client authentication method, not two."))
        }
        Some(decoded) => {
            let (id, secret) = decoded
                .and_then(|d| d.split_once(':'))
                .map(|(id, secret)| (form_decode(id), form_decode(secret)))
                .ok_or_else(|| OAuthError::invalid_client(true))?;
            if params.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id in the body differs from the one authenticated.",
                ));
            }
            Ok(Presented { id, secret: Some(secret), basic: true })
        }
        None => match params.get("client_id") {
            Some(id) => Ok(Presented {
                id: Cow::Borrowed(id),
                secret: params.get("client_secret").map(|s| Cow::Borrowed(s.as_str())),
                basic: false,
            }),
            None => Err(OAuthError::invalid_client(false)),
        },
    }
}

/// Authenticates the calling client.
async fn authenticate_client(
    req: &HttpRequest,
    params: &Params,
    op: &Provider<'_>,
) -> Result<Arc<Client>, actix_web::Error> {
    let basic = basic_credentials(req);
    let presented = client_credentials_of(basic.as_ref().map(Option::as_deref), params)?;
    match op.authenticate_client(&presented.id, presented.secret.as_deref()).await.map_err(Problem::from)? {
        Some(client) => Ok(client),
        None => {
            metrics::counter!("oauth_client_auth_failures_total").increment(1);
            Err(OAuthError::invalid_client(presented.basic).into())
        }
    }
}

thread_local! {
    /// `oauth_tokens_issued_total` by grant type, looked up in the recorder once per thread.
    static TOKENS_ISSUED: [(GrantType, metrics::Counter); 3] =
        [GrantType::ClientCredentials, GrantType::AuthorizationCode, GrantType::RefreshToken].map(|grant| {
            (grant, metrics::counter!("oauth_tokens_issued_total", "grant_type" => grant.as_str()))
        });
}

fn count_issued(grant: GrantType) {
    TOKENS_ISSUED.with(|counters| {
        if let Some((_, counter)) = counters.iter().find(|(g, _)| *g == grant) {
            counter.increment(1);
        }
    });
}

fn token_response(tokens: TokenSet) -> HttpResponse {
    let body = TokenResponse {
        access_token: tokens.access_token,
        token_type: "Bearer",
        expires_in: tokens.expires_in,
        scope: tokens.scope,
        id_token: tokens.id_token,
        refresh_token: tokens.refresh_token,
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
        .insert_header(header::ContentType::json())
        .body(body.to_json())
}

impl TokenResponse {
    /// The same JSON as serde's, written in one allocation of the right size: the tokens
    /// are base64url and dots, which JSON takes as they are, so they are copied instead
    /// of being scanned for escapes one byte at a time (a third of the response's cost).
    fn to_json(&self) -> String {
        let strings =
            [Some(&self.access_token), Some(&self.scope), self.id_token.as_ref(), self.refresh_token.as_ref()];
        let mut out = String::with_capacity(128 + strings.iter().flatten().map(|s| s.len()).sum::<usize>());
        out.push_str("{\"access_token\":");
        push_json_str(&mut out, &self.access_token);
        out.push_str(",\"token_type\":");
        push_json_str(&mut out, self.token_type);
        out.push_str(",\"expires_in\":");
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", self.expires_in);
        out.push_str(",\"scope\":");
        push_json_str(&mut out, &self.scope);
        for (name, value) in [("id_token", &self.id_token), ("refresh_token", &self.refresh_token)] {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                push_json_str(&mut out, value);
            }
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string: copied between quotes when nothing in it needs escaping
/// (no control character, quote or backslash; checked without an early exit, so the
/// compiler can check many bytes at once), else escaped by serde_json.
fn push_json_str(out: &mut String, s: &str) {
    let plain = s.bytes().fold(true, |plain, b| plain & (b >= 0x20 && b != b'"' && b != b'\\'));
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serialising a string into a String cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Issues tokens: `authorization_code` (with PKCE), `refresh_token` (rotating), and
/// `client_credentials`.
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth2",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded",
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
    let op = provider(&state);
    let client = authenticate_client(&req, &params, &op).await?;
    match op.token(&client, &params, state.now()).await {
        Ok(tokens) => {
            count_issued(tokens.grant_type);
            Ok(token_response(tokens))
        }
        Err(GrantFailure::Refused(refusal)) => {
            if refusal.reuse_detected {
                metrics::counter!("oauth_refresh_reuse_total").increment(1);
            }
            Err(OAuthError::from(refusal).into())
        }
        Err(GrantFailure::Fault(e)) => Err(Problem::from(e).into()),
    }
}

/// An active access token as introspection describes it: its claims beside `active` and
/// `token_type` (written straight out, not built as a JSON tree first).
#[derive(Serialize)]
struct ActiveAccessToken<'a> {
    active: bool,
    token_type: &'static str,
    #[serde(flatten)]
    claims: &'a AccessTokenClaims,
}

fn no_store_json(body: &impl Serialize) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

/// Token introspection (RFC 7662), for authenticated confidential clients. Inactive or
/// unknown tokens answer `{"active": false}` and nothing else.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth2",
    request_body(content = TokenUseForm, content_type = "application/x-www-form-urlencoded", description = "token=…, client authentication"),
    responses((status = 200, body = Object), (status = 400, body = OAuthError), (status = 401, body = OAuthError)))]
pub async fn introspect(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_form(&req, &body)?;
    let op = provider(&state);
    let client = authenticate_client(&req, &params, &op).await?;
    if !client.is_confidential() {
        return Err(OAuthError::invalid_client(false).into());
    }
    let Some(token) = params.get("token") else {
        return Err(OAuthError::new("invalid_request", "token is required.").into());
    };
    Ok(match op.introspect(&client, token, state.now()).await.map_err(Problem::from)? {
        Introspection::Access(claims) => {
            no_store_json(&ActiveAccessToken { active: true, token_type: "Bearer", claims: &claims })
        }
        Introspection::Refresh(family) => no_store_json(&json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "sub": family.user_id,
            "scope": family.scope,
            "exp": family.expires_at.unix_timestamp(),
            "iat": family.rotated_at.unix_timestamp(),
            "iss": state.issuer(),
        })),
        Introspection::Inactive => no_store_json(&json!({"active": false})),
    })
}

/// Token revocation (RFC 7009): refresh tokens end their family; access tokens go on the
/// deny-list. Always 200 for an authenticated client, whatever the token.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth2",
    request_body(content = TokenUseForm, content_type = "application/x-www-form-urlencoded", description = "token=…, client authentication"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke"),
        (status = 400, body = OAuthError),
        (status = 401, body = OAuthError),
    ))]
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_form(&req, &body)?;
    let op = provider(&state);
    let client = authenticate_client(&req, &params, &op).await?;
    let Some(token) = params.get("token") else {
        return Err(OAuthError::new("invalid_request", "token is required.").into());
    };
    op.revoke(&client, token, state.now()).await.map_err(Problem::from)?;
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
    /// With scope `profile`: `{"role": …, "permissions": {"<permission>": "all" | [company ids]}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    access: Option<serde_json::Value>,
}

fn bearer_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::WWW_AUTHENTICATE, format!("Bearer realm=\"ponte\", error=\"{error}\"")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"error": error, "error_description": description}))
}

/// The user an access token stands for, by the scopes it carries.
#[utoipa::path(method(get, post), path = "/oauth2/userinfo", tag = "oauth2", security(("bearer" = ["openid"])),
    responses(
        (status = 200, body = UserInfo),
        (status = 401, description = "invalid_request (no Bearer token) or invalid_token", body = OAuthError),
        (status = 403, description = "insufficient_scope: the token lacks openid", body = OAuthError),
    ))]
pub async fn userinfo(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let Some(token) = token else {
        return Ok(bearer_error(StatusCode::UNAUTHORIZED, "invalid_request", "Send a Bearer token."));
    };
    Ok(match provider(&state).userinfo(token, state.now()).await? {
        UserInfoOutcome::Claims(c) => no_store_json(&UserInfo {
            sub: c.sub,
            email: c.email,
            email_verified: c.email_verified,
            name: c.name,
            account_id: c.account_id,
            role: c.role,
            access: c.access,
        }),
        UserInfoOutcome::InvalidToken(why) => bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", why),
        UserInfoOutcome::InsufficientScope => {
            bearer_error(StatusCode::FORBIDDEN, "insufficient_scope", "The token needs the openid scope.")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_are_the_json_serde_writes() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbF94In0.c2lnbmF0dXJlLV8";
        let cases = [
            (jwt, "ponte.admin", None, None),
            (jwt, "openid profile offline_access", Some("eyJ0eXAiOiJKV1QifQ.e30.c2ln"), Some("rt_abc.def-ghi_jkl")),
            (jwt, "", None, Some("rt_only")),
            // Nothing Ponte mints looks like this, and it must still come out as valid JSON.
            ("a\"b\\c\u{1}d", "scope \"quoted\" \\ e\u{0}\u{7f}é", Some("\n"), None),
        ];
        for (access, scope, id, refresh) in cases {
            let response = TokenResponse {
                access_token: access.into(),
                token_type: "Bearer",
                expires_in: 3600,
                scope: scope.into(),
                id_token: id.map(Into::into),
                refresh_token: refresh.map(Into::into),
            };
            let ours = response.to_json();
            assert_eq!(ours, serde_json::to_string(&response).unwrap(), "{access:?} {scope:?}");
            let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(parsed["access_token"], access);
            assert_eq!(parsed["scope"], scope);
        }
    }

    #[test]
    fn two_methods_are_refused_before_undecodable_basic_credentials() {
        let params: Params = [("client_secret".to_owned(), "s".to_owned())].into();
        let refused = |basic| client_credentials_of(basic, &params).err().unwrap();
        assert_eq!(refused(Some(None)).error, "invalid_request");
        assert_eq!(refused(Some(Some("id:secret"))).error, "invalid_request");
        let none = Params::new();
        let refused = client_credentials_of(Some(None), &none).err().unwrap();
        assert_eq!((refused.error, refused.status, refused.basic_challenge), ("invalid_client", 401, true));
        let presented = client_credentials_of(Some(Some("cl_a:s%3Ac")), &none).ok().unwrap();
        assert_eq!((&*presented.id, presented.secret.as_deref(), presented.basic), ("cl_a", Some("s:c"), true));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("plain"), "plain");
        assert_eq!(form_decode("cl_x-Y_z.~"), "cl_x-Y_z.~");
        assert_eq!(form_decode("a+b%2Bc%25"), "a b+c%");
    }
}
