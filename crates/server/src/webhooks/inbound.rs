//! `POST /webhooks/platform`: the invoicing platform reports an invite accepted on its side
//! or an activation done.
//!
//! The request is checked before anything is read from it: signature and timestamp window
//! (see [`super::signing`]), then the body. An event id already processed is answered 204
//! without acting again. Otherwise the [`PlatformEventHandler`] acts, and only then is the
//! id recorded: a handler that fails leaves it unrecorded, so the platform's retry is
//! processed.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::clock::to_unix;

pub use super::platform_event::{
    IgnoreEvents, InvalidEvent, PlatformEvent, PlatformEventData, PlatformEventHandler, PlatformEventType,
};
use super::processed::SqlProcessedEvents;
use super::signing::{SignatureRefusal, verify};
use crate::problem::Problem;
use crate::state::AppState;

/// The largest body the platform may send.
pub const MAX_BODY: usize = 64 * 1024;
/// Unix seconds the platform signed at.
pub const HEADER_TIMESTAMP: &str = "Platform-Timestamp";
/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`, possibly several, comma-separated.
pub const HEADER_SIGNATURE: &str = "Platform-Signature";

/// Registers `POST /webhooks/platform`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhooks/platform").app_data(web::PayloadConfig::new(MAX_BODY)).post(platform_webhook));
}

fn refusal(r: SignatureRefusal) -> Problem {
    let problem = match r {
        SignatureRefusal::OutsideWindow => {
            Problem::new(StatusCode::UNAUTHORIZED, "timestamp_outside_window", "Unauthorized")
        }
        _ => Problem::new(StatusCode::UNAUTHORIZED, "signature_invalid", "Unauthorized"),
    };
    problem.detail(r.to_string())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/platform`.
pub async fn platform_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let Some(secret) = state.config.platform.webhook_secret.as_ref().filter(|s| !s.expose().is_empty()) else {
        return Err(Problem::not_found(
            "platform_webhook_disabled",
            "No platform.webhook_secret is configured: platform webhooks are off.",
        ));
    };
    let now = state.now();
    verify(
        secret.expose().as_bytes(),
        header(&req, HEADER_TIMESTAMP),
        header(&req, HEADER_SIGNATURE),
        &body,
        to_unix(now),
    )
    .map_err(refusal)?;
    let event = PlatformEvent::parse(&body).map_err(|e| {
        Problem::bad_request("invalid_event", format!("Not a platform event: {e}.")).field(e.field, e.message)
    })?;
    let processed = SqlProcessedEvents::new(state.db.clone());
    if processed.seen(&event.id).await? {
        tracing::debug!(event = %event.id, "platform event already processed");
        return Ok(HttpResponse::NoContent().finish());
    }
    state.platform_events.handle(&event).await?;
    processed.record(&event.id, event.type_.as_str(), now).await?;
    Ok(HttpResponse::NoContent().finish())
}
