//! `GET /api/v1/permissions`: the permission catalogue members are granted from.

use actix_web::{HttpResponse, web};
use ponte_linking::access::Permission;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Caller, Need};
use crate::problem::{Problem, ProblemBody};
use crate::routes::integrations::NextStep as Words;

const PROBLEM: &str = crate::problem::PROBLEM_JSON;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/permissions").get(list_permissions));
}

/// One permission of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionView {
    /// Its spelling in grants, e.g. `invoices:read`.
    pub permission: &'static str,
    /// What it allows, in Italian and English.
    pub description: Words,
    /// `company` (granted on all companies or a list) or `account` (granted on `all` only).
    pub scope: &'static str,
}

/// The catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionList {
    /// In the documented order.
    pub permissions: Vec<PermissionView>,
}

/// The permissions a member can be granted, each on every company (`"all"`) or on a list.
#[utoipa::path(get, path = "/api/v1/permissions", tag = "permissions", security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = PermissionList), (status = 401, body = ProblemBody, content_type = PROBLEM)))]
pub async fn list_permissions(caller: Caller) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Member)?;
    let permissions = Permission::ALL
        .into_iter()
        .map(|p| {
            let (it, en) = p.describe();
            PermissionView {
                permission: p.as_str(),
                description: Words { it: it.to_owned(), en: en.to_owned() },
                scope: if p.is_account_wide() { "account" } else { "company" },
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(PermissionList { permissions }))
}
