//! The REST contract, generated from the handlers. `openapi/openapi.json` is this
//! document checked in; a test fails when they differ.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{api, companies, integrations, jobs, oauth, ops, permissions, recovery, seats, token};
use crate::webhooks::api as webhooks;

#[derive(OpenApi)]
#[openapi(
    info(title = "Ponte", description = "Identity bridge for POS and e-invoicing: REST API for the POS backend, OAuth 2.0 / OpenID Connect endpoints, operations.", version = "0.1.0"),
    paths(
        ops::healthz, ops::readyz,
        oauth::discovery, oauth::jwks, token::token, token::introspect, token::revoke, token::userinfo,
        api::create_account, api::get_account,
        api::list_users, api::create_user, api::get_user, api::update_user, api::delete_user,
        api::put_permissions, api::send_password_link,
        seats::list_seats, seats::create_seats, seats::pay_seats, seats::delete_seats,
        api::list_sessions, api::revoke_session,
        api::list_identities, api::unlink_identity,
        api::list_audit,
        companies::list_companies, companies::create_company, companies::get_company,
        companies::update_company, companies::delete_company,
        integrations::list_integrations, integrations::get_integration,
        integrations::disable, integrations::reactivate, integrations::confirm, integrations::retry,
        integrations::list_invites, integrations::resend_invite,
        permissions::list_permissions,
        integrations::put_credentials, integrations::check_credentials, integrations::issue_api_key,
        jobs::list_jobs, jobs::retry_job,
        recovery::forgot, recovery::reset,
        webhooks::list_receivers, webhooks::put_receiver, webhooks::delete_receiver,
    ),
    components(schemas(crate::problem::ProblemBody, crate::problem::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "POS customers (tenants)"),
        (name = "users", description = "Owners, admins and members of an account"),
        (name = "sessions", description = "Browser sessions of a user"),
        (name = "identities", description = "Upstream identities linked to a user"),
        (name = "audit", description = "Who did what"),
        (name = "seats", description = "Additional-user seats bought for an account, each counting for a year from its payment"),
        (name = "permissions", description = "The permission catalogue members are granted from"),
        (name = "companies", description = "The companies (legal entities, points of sale) of an account"),
        (name = "integrations", description = "Each company's e-invoicing integration: status, actions, invites"),
        (name = "jobs", description = "The durable job queue (mail and other side effects), for support"),
        (name = "webhooks", description = "Where Ponte POSTs its signed events for the POS backend"),
        (name = "password", description = "Password recovery: no bearer token (whoever forgot the password has none)"),
        (name = "oauth2", description = "Tokens and keys"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        scheme.description =
            Some("An access token from POST /oauth2/token (client_credentials) with scope ponte.admin.".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as checked in: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
