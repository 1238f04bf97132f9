//! The REST contract, generated from the handlers. `openapi/openapi.json` is this
//! document checked in; a test fails when they differ.

use std::collections::BTreeSet;

use utoipa::openapi::link::Link;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
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
    components(schemas(crate::problem::ProblemBody, crate::problem::FieldError, jobs::StateParam)),
    modifiers(&BearerAuth, &SharedStatuses, &Links),
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

/// The statuses that come from what every route shares rather than from its handler: the
/// request-head limits ([`crate::extract::head_problem`]) on every path, the 400 of a
/// path, query or body that does not parse, the 413 of a body over `max_body_bytes`, the
/// 401 and 403 of the bearer check ([`crate::auth`]) and the 503 of a store that is away.
/// Each is added where the operation's shape says it can happen, unless the route's own
/// annotation already describes that status.
struct SharedStatuses;

/// `(component name, status, description)` of the shared problem responses.
const SHARED: [(&str, &str, &str); 7] = [
    (
        "BadRequest",
        "400",
        "invalid_path, invalid_query or invalid_json: a path id, the query or the body does not parse",
    ),
    ("Unauthorized", "401", "unauthorized: no bearer token, or one that is invalid or expired (see WWW-Authenticate)"),
    ("Forbidden", "403", "forbidden or insufficient_scope: the token does not allow this"),
    ("PayloadTooLarge", "413", "payload_too_large: the body is over max_body_bytes"),
    ("UriTooLong", "414", "uri_too_long: the query string is over 8 KiB"),
    ("HeadersTooLarge", "431", "headers_too_large: the request headers are over 32 KiB"),
    ("Unavailable", "503", "database_unavailable, session_store_unavailable or busy: try again (Retry-After)"),
];

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .filter_map(Option::as_mut)
}

impl Modify for SharedStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        crate::contract::refine(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, _, description) in SHARED {
            let content = Content::new(Some(Ref::from_schema_name("ProblemBody")));
            let response = Response::builder().description(description).content(crate::problem::PROBLEM_JSON, content);
            components.responses.insert(name.to_owned(), RefOr::T(response.build()));
        }
        for item in openapi.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let parsed = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let body = op.request_body.is_some();
                for (name, status, _) in SHARED {
                    let applies = match status {
                        "400" => parsed || body,
                        "401" | "403" => secured,
                        "413" => body,
                        "503" => secured || body,
                        _ => true,
                    };
                    if applies {
                        let shared = RefOr::Ref(Ref::from_response_name(name));
                        op.responses.responses.entry(status.to_owned()).or_insert(shared);
                    }
                }
            }
        }
    }
}

/// OpenAPI links from each response that creates something to every operation whose path
/// parameters it then provides, so that a client (and schemathesis's stateful phase) can
/// go from a new account to its users, companies and seat grants.
struct Links;

/// `(operation id, status, [(path parameter, runtime expression or value)])`: what each
/// creation provides. The last parameter is the new one: only operations that use it are linked.
type Creation = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

const CREATES: [Creation; 5] = [
    ("create_account", "201", &[("user", "$response.body#/owner/id"), ("account", "$response.body#/id")]),
    ("create_user", "201", &[("account", "$response.body#/account_id"), ("user", "$response.body#/id")]),
    (
        "create_company",
        "201",
        &[("account", "$request.path.account"), ("kind", "digital_invoice"), ("company", "$response.body#/id")],
    ),
    ("create_seats", "201", &[("account", "$request.path.account"), ("grant", "$response.body#/id")]),
    ("put_receiver", "200", &[("receiver", "$request.path.receiver")]),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // Every operation with its path parameters.
        let mut targets: Vec<(String, BTreeSet<String>)> = Vec::new();
        for item in openapi.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let params = op.parameters.iter().flatten().filter(|p| p.parameter_in == ParameterIn::Path);
                let names = params.map(|p| p.name.clone()).collect();
                targets.extend(op.operation_id.clone().map(|id| (id, names)));
            }
        }
        for item in openapi.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let Some((_, status, provides)) = CREATES.iter().find(|c| op.operation_id.as_deref() == Some(c.0))
                else {
                    continue;
                };
                let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else { continue };
                let new = provides.last().map(|(name, _)| *name);
                for (target, names) in &targets {
                    let usable = names.iter().all(|n| provides.iter().any(|(p, _)| p == n));
                    if !usable || !names.iter().any(|n| Some(n.as_str()) == new) {
                        continue;
                    }
                    // utoipa's `Link` writes `operation_id` in snake case; OpenAPI says
                    // `operationId`, so that one field goes in as it must be spelled (a
                    // single extension, so the document's key order stays fixed).
                    let operation_id = [("operationId", serde_json::Value::from(target.as_str()))];
                    let link = provides
                        .iter()
                        .filter(|(p, _)| names.contains(*p))
                        .fold(Link::builder(), |l, (p, expr)| l.parameter(*p, *expr))
                        .extensions(Some(operation_id.into_iter().collect()))
                        .build();
                    response.links.insert(target.clone(), RefOr::T(link));
                }
            }
        }
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
