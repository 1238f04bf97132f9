//! Ponte's published metadata: discovery and JWKS.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use ponte_identity::keys::PublicJwk;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Registers discovery and JWKS.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/.well-known/openid-configuration").get(discovery))
        .service(web::resource("/.well-known/oauth-authorization-server").get(discovery))
        .service(web::resource("/oauth2/jwks").get(jwks));
}

/// The provider metadata (OpenID Connect Discovery 1.0, RFC 8414).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderMetadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    jwks_uri: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
    end_session_endpoint: String,
    response_types_supported: Vec<&'static str>,
    response_modes_supported: Vec<&'static str>,
    grant_types_supported: Vec<&'static str>,
    subject_types_supported: Vec<&'static str>,
    id_token_signing_alg_values_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    code_challenge_methods_supported: Vec<&'static str>,
    authorization_response_iss_parameter_supported: bool,
    prompt_values_supported: Vec<&'static str>,
    scopes_supported: Vec<&'static str>,
    claims_supported: Vec<&'static str>,
    claims_parameter_supported: bool,
    request_parameter_supported: bool,
    request_uri_parameter_supported: bool,
    service_documentation: String,
}

/// Provider metadata.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oauth2", responses((status = 200, body = ProviderMetadata)))]
pub async fn discovery(state: web::Data<AppState>) -> HttpResponse {
    let iss = state.issuer();
    let client_auth = vec!["client_secret_basic", "client_secret_post"];
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "public, max-age=300")).json(ProviderMetadata {
        issuer: iss.to_owned(),
        authorization_endpoint: format!("{iss}/oauth2/authorize"),
        token_endpoint: format!("{iss}/oauth2/token"),
        userinfo_endpoint: format!("{iss}/oauth2/userinfo"),
        jwks_uri: format!("{iss}/oauth2/jwks"),
        introspection_endpoint: format!("{iss}/oauth2/introspect"),
        revocation_endpoint: format!("{iss}/oauth2/revoke"),
        end_session_endpoint: format!("{iss}/oauth2/logout"),
        response_types_supported: vec!["code"],
        response_modes_supported: vec!["query"],
        grant_types_supported: vec!["authorization_code", "refresh_token", "client_credentials"],
        subject_types_supported: vec!["public"],
        id_token_signing_alg_values_supported: vec![state.keys.ring().signing_alg().as_str()],
        token_endpoint_auth_methods_supported: vec!["client_secret_basic", "client_secret_post", "none"],
        introspection_endpoint_auth_methods_supported: client_auth.clone(),
        revocation_endpoint_auth_methods_supported: vec!["client_secret_basic", "client_secret_post", "none"],
        code_challenge_methods_supported: vec!["S256"],
        authorization_response_iss_parameter_supported: true,
        prompt_values_supported: vec!["none", "login", "consent"],
        scopes_supported: vec![
            "openid",
            "profile",
            "email",
            "offline_access",
            crate::auth::API_SCOPE,
            crate::auth::ADMIN_SCOPE,
        ],
        claims_supported: vec![
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "amr",
            "sid",
            "azp",
            "email",
            "email_verified",
            "name",
            "account_id",
        ],
        claims_parameter_supported: false,
        request_parameter_supported: false,
        request_uri_parameter_supported: false,
        service_documentation: format!("{iss}/openapi.json"),
    })
}

/// A JSON Web Key Set.
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwks {
    /// The published public keys: current, next and previous.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<PublicJwk>,
}

/// The public keys that verify Ponte's tokens.
#[utoipa::path(get, path = "/oauth2/jwks", tag = "oauth2", responses((status = 200, body = Jwks)))]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .json(Jwks { keys: state.keys.ring().jwks().to_vec() })
}
