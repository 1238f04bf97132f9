//! Operations: liveness, readiness, metrics and the OpenAPI document.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::Problem;
use crate::state::AppState;
use crate::telemetry::metrics_handle;

/// Registers the operations routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").get(healthz))
        .service(web::resource("/readyz").get(readyz))
        .service(web::resource("/metrics").get(metrics))
        .service(web::resource("/openapi.json").get(openapi));
}

/// Health of the process or of a dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database and the session store answer, and the process is not stopping.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Health),
    (status = 503, description = "not_ready: a dependency is unreachable; shutting_down: the process is stopping", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    if state.draining.is_on() {
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "Service unavailable")
            .detail("This replica is stopping; other replicas take its requests."));
    }
    let (db, sessions) = tokio::join!(state.db.ping(), state.sessions.store().ping());
    let mut down = Vec::new();
    if let Err(e) = db {
        tracing::warn!(error = %e, "readiness: database");
        down.push("database");
    }
    if let Err(e) = sessions {
        tracing::warn!(error = %e, "readiness: session store");
        down.push("session store");
    }
    if down.is_empty() {
        Ok(HttpResponse::Ok().json(Health { status: "ok" }))
    } else {
        Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "Service unavailable")
            .detail(format!("Unreachable: {}.", down.join(", ")))
            .retry_after(5))
    }
}

/// Prometheus text exposition.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics_handle().render())
}

/// The REST contract (the same document as `openapi/openapi.json`). It is built once at
/// start-up from these handlers' annotations and handed over as app data, so this module
/// does not depend on the one that describes it.
pub async fn openapi(document: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(document.get_ref())
}
