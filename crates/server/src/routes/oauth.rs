//! Ponte's OAuth/OIDC face: discovery, JWKS and the token endpoint.
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
use ponte_identity::keys::PublicJwk;
use ponte_identity::token::AccessTokenClaims;
use serde::Serialize;
use time::Duration;
use utoipa::ToSchema;

use crate::state::AppState;

/// Registers the OAuth/OIDC routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/.well-known/openid-configuration").get(discovery))
        .service(web::resource("/.well-known/oauth-authorization-server").get(discovery))
        .service(web::resource("/oauth2/jwks").get(jwks))
        .service(web::resource("/oauth2/token").post(token));
}

/// The provider metadata (OpenID Connect Discovery / RFC 8414): what exists today.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderMetadata {
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    grant_types_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    scopes_supported: Vec<&'static str>,
    service_documentation: String,
}

/// Provider metadata.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oauth2", responses((status = 200, body = ProviderMetadata)))]
pub async fn discovery(state: web::Data<AppState>) -> HttpResponse {
    let iss = &state.issuer;
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(ProviderMetadata {
            issuer: iss.clone(),
            jwks_uri: format!("{iss}/oauth2/jwks"),
            token_endpoint: format!("{iss}/oauth2/token"),
            grant_types_supported: vec!["client_credentials"],
            token_endpoint_auth_methods_supported: vec![
                "client_secret_basic",
                "client_secret_post",
            ],
            scopes_supported: vec![crate::auth::ADMIN_SCOPE],
            service_documentation: format!("{iss}/openapi.json"),
        })
}

/// A JSON Web Key Set.
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwks {
    /// The published public keys.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<PublicJwk>,
}

/// The public keys that verify Ponte's tokens.
#[utoipa::path(get, path = "/oauth2/jwks", tag = "oauth2", responses((status = 200, body = Jwks)))]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(Jwks {
            keys: state.keys.jwks().to_vec(),
        })
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
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
        Self {
            error,
            error_description: description.into(),
            status: 400,
            basic_challenge: false,
        }
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

/// Parses a form body, refusing repeated parameters (RFC 6749 §3.2).
fn parse_form(req: &HttpRequest, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(OAuthError::new(
            "invalid_request",
            "The body must be application/x-www-form-urlencoded.",
        ));
    }
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::new(
                "invalid_request",
                format!("Parameter {k} is repeated."),
            ));
        }
    }
    Ok(params)
}

/// The credentials a client presented: (`client_id`, `client_secret`, came by Basic).
fn client_credentials(
    req: &HttpRequest,
    params: &HashMap<String, String>,
) -> Result<(String, String, bool), OAuthError> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| rest.trim().to_owned())
        });
    let in_body = params.contains_key("client_secret");
    match basic {
        Some(_) if in_body => Err(OAuthError::new(
            "invalid_request",
            "Use one client authentication method, not two.",
        )),
        Some(encoded) => {
            let decoded = STANDARD
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let (id, secret) = decoded
                .as_deref()
                .and_then(|d| d.split_once(':'))
                .map(|(id, secret)| (form_decode(id), form_decode(secret)))
                .ok_or_else(|| OAuthError::invalid_client(true))?;
            if params
                .get("client_id")
                .is_some_and(|body_id| *body_id != id)
            {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id in the body differs from the one authenticated.",
                ));
            }
            Ok((id, secret, true))
        }
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone(), false)),
            _ => Err(OAuthError::invalid_client(false)),
        },
    }
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Which of the client's scopes to grant: all when none asked, else exactly those asked,
/// if the client may have them.
fn granted_scope(client: &Client, requested: Option<&String>) -> Result<String, OAuthError> {
    let Some(requested) = requested.map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(client.scopes.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !client.scopes.iter().any(|s| s == scope) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("Scope {scope} is not allowed for this client."),
            ));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// Issues tokens. Today: `client_credentials` with `client_secret_basic` or `client_secret_post`.
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth2",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials, optional scope; client_id and client_secret in the body or as HTTP Basic"),
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
    let (client_id, secret, used_basic) = client_credentials(&req, &params)?;
    let client = state
        .clients
        .find(&client_id)
        .await
        .map_err(crate::problem::Problem::from)?;
    let client = match client {
        Some(c) if c.secret_matches(&secret) => c,
        _ => {
            metrics::counter!("oauth_client_auth_failures_total").increment(1);
            return Err(OAuthError::invalid_client(used_basic).into());
        }
    };
    let grant = params
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant.is_empty() {
        return Err(OAuthError::new("invalid_request", "grant_type is required.").into());
    }
    if GrantType::parse(grant) != Some(GrantType::ClientCredentials) {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant_type {grant} is not supported here."),
        )
        .into());
    }
    if !client.allows_grant(GrantType::ClientCredentials) {
        return Err(OAuthError::new(
            "unauthorized_client",
            "This client may not use client_credentials.",
        )
        .into());
    }
    let scope = granted_scope(&client, params.get("scope"))?;
    let ttl = state.config.access_token_ttl_secs;
    let claims = AccessTokenClaims::for_client(
        &state.issuer,
        &client.id,
        &scope,
        state.now(),
        Duration::seconds(ttl as i64),
    );
    let access_token = state
        .keys
        .sign_access_token(&claims)
        .map_err(crate::problem::Problem::from)?;
    metrics::counter!("oauth_tokens_issued_total", "grant_type" => "client_credentials")
        .increment(1);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
        .json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: ttl,
            scope,
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
}
