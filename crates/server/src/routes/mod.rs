//! Every route Ponte serves, in one place.

pub mod api;
pub mod authorize;
pub mod companies;
pub mod federation;
pub mod integrations;
pub mod invites;
pub mod jobs;
pub mod oauth;
pub mod ops;
pub mod pages;
pub mod permissions;
pub mod recovery;
pub mod seats;
pub mod token;

use actix_web::{HttpResponse, web};

use crate::problem::Problem;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    ops::configure(cfg);
    oauth::configure(cfg);
    token::configure(cfg);
    authorize::configure(cfg);
    federation::configure(cfg);
    invites::configure(cfg);
    pages::configure(cfg);
    recovery::configure(cfg);
    // One scope for everything under an account: actix does not fall through from one
    // scope to another with the same prefix.
    cfg.service(
        web::scope("/api/v1/accounts")
            .configure(api::configure)
            .configure(seats::configure)
            .configure(companies::configure)
            .configure(integrations::configure),
    );
    jobs::configure(cfg);
    permissions::configure(cfg);
    crate::webhooks::configure(cfg);
}

/// Anything unrouted.
pub async fn not_found() -> Result<HttpResponse, Problem> {
    Err(Problem::not_found("not_found", "Nothing here."))
}
