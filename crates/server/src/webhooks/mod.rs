//! Signed webhooks both ways: Ponte's events out to the POS backend's receivers through the
//! job queue ([`deliver`]), and the invoicing platform's events in at
//! `POST /webhooks/platform` ([`inbound`]). Both sign with [`signing`].

pub mod api;
pub mod deliver;
pub mod inbound;
pub mod platform_event;
pub mod processed;
pub mod receivers;
pub mod rules;
pub mod signing;

use actix_web::web;

/// Registers the webhook routes: the receivers' REST and the platform's inbound route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    api::configure(cfg);
    inbound::configure(cfg);
}
