//! The Ponte service: configuration, routes, pages, extractors, telemetry.

pub mod adapters;
pub mod app;
pub mod auth;
pub mod browser;
pub mod config;
pub mod connectors;
pub mod contract;
pub mod directory;
pub mod extract;
pub mod forwarded;
pub mod html;
pub mod op;
pub mod openapi;
pub mod problem;
pub mod reseal;
pub mod routes;
pub mod session_cache;
pub mod state;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

pub use app::Application;
pub use config::Config;

/// Installs the one TLS crypto provider (ring) for the whole process. Call first in
/// `main` and in test harnesses; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
