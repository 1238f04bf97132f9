//! REST for the POS backend (`ponte.admin`): its webhook receivers. Secrets go in, never out.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_linking::audit::AuditEntry;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::receivers::{ReceiverError, WebhookReceiver, check_id};
use crate::auth::{Caller, Need};
use crate::config::Secret;
use crate::problem::Problem;
use crate::state::AppState;

const PROBLEM: &str = "application/problem+json";

/// Registers the `/api/v1/webhooks` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/webhooks")
            .service(web::resource("").get(list_receivers))
            .service(web::resource("/{receiver}").put(put_receiver).delete(delete_receiver)),
    );
}

impl From<ReceiverError> for Problem {
    fn from(e: ReceiverError) -> Self {
        match e {
            ReceiverError::FromConfig(id) => Problem::new(StatusCode::CONFLICT, "receiver_from_config", "Conflict")
                .detail(format!("Receiver {id:?} is defined in the configuration; change it there.")),
            ReceiverError::Invalid { field, message } => Problem::validation(field, message),
            ReceiverError::Store(inner) => inner.into(),
        }
    }
}

/// A webhook receiver as the API shows it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiverView {
    /// Receiver id, `[a-z0-9_-]{1,64}`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// `config` (from `[webhooks.<id>]`, read-only here) or `api`.
    pub source: String,
    /// When it was stored (RFC 3339; absent for `config`).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<OffsetDateTime>,
    /// Its last change (RFC 3339; absent for `config`).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<OffsetDateTime>,
}

impl From<WebhookReceiver> for ReceiverView {
    fn from(r: WebhookReceiver) -> Self {
        Self {
            id: r.id,
            url: r.url,
            source: r.source.as_str().to_owned(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Every webhook receiver.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiverList {
    /// By id.
    pub receivers: Vec<ReceiverView>,
}

/// A receiver to create or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutReceiver {
    /// `https://…`, or `http://` to a loopback host; no user or password in it.
    #[schema(schema_with = crate::contract::receiver_url)]
    pub url: String,
    /// The signing secret, at least 32 characters; never shown again.
    #[schema(schema_with = crate::contract::receiver_secret)]
    pub secret: String,
}

/// `{receiver}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReceiverPath {
    /// Receiver id, `[a-z0-9_-]{1,64}`.
    #[param(schema_with = crate::contract::receiver_id)]
    pub receiver: String,
}

fn audit(
    req: &HttpRequest,
    caller: &Caller,
    action: &str,
    id: &str,
    detail: Option<String>,
    at: OffsetDateTime,
) -> AuditEntry {
    AuditEntry {
        account_id: None,
        actor: caller.actor(req),
        action: action.to_owned(),
        target: Some(format!("webhook_receiver:{id}")),
        detail,
        at,
    }
}

/// The POS backend's webhook receivers, those from the configuration included.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = ReceiverList),
        (status = 403, description = "forbidden: only the POS backend's own token", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn list_receivers(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Backend)?;
    let receivers = state.webhooks.list().await?;
    Ok(HttpResponse::Ok().json(ReceiverList { receivers: receivers.into_iter().map(Into::into).collect() }))
}

/// Creates or replaces a webhook receiver. Events from now on are signed with its secret.
#[utoipa::path(put, path = "/api/v1/webhooks/{receiver}", tag = "webhooks", params(ReceiverPath),
    request_body = PutReceiver,
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = ReceiverView),
        (status = 403, description = "forbidden: only the POS backend's own token", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "receiver_from_config", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed: id, url or secret", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn put_receiver(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<ReceiverPath>,
    body: web::Json<PutReceiver>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Backend)?;
    let now = state.now();
    let body = body.into_inner();
    let receiver = state.webhooks.put(&path.receiver, &body.url, &Secret::from(body.secret.as_str()), now).await?;
    let detail = serde_json::json!({ "url": receiver.url }).to_string();
    state.audit.append(&audit(&req, &caller, "webhook_receiver.put", &receiver.id, Some(detail), now)).await?;
    Ok(HttpResponse::Ok().json(ReceiverView::from(receiver)))
}

/// Removes a webhook receiver; deliveries to it still queued are dropped.
#[utoipa::path(delete, path = "/api/v1/webhooks/{receiver}", tag = "webhooks", params(ReceiverPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "forbidden: only the POS backend's own token", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 404, description = "receiver_not_found", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "receiver_from_config", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn delete_receiver(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<ReceiverPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Backend)?;
    let not_found = || Problem::not_found("receiver_not_found", "No such webhook receiver.");
    check_id(&path.receiver).map_err(|_| not_found())?;
    if !state.webhooks.delete(&path.receiver).await? {
        return Err(not_found());
    }
    state.audit.append(&audit(&req, &caller, "webhook_receiver.deleted", &path.receiver, None, state.now())).await?;
    Ok(HttpResponse::NoContent().finish())
}
