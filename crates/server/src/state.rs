//! What every handler shares.

use std::sync::Arc;

use ponte_identity::client::ClientRepo;
use ponte_identity::clock::Clock;
use ponte_identity::db::Database;
use ponte_identity::keys::Keys;
use ponte_identity::oidc::ConsentRepo;
use ponte_identity::refresh::RefreshRepo;
use ponte_identity::seal::MasterKeys;
use ponte_identity::session::Sessions;
use ponte_identity::upstream::Upstream;
use ponte_linking::audit::AuditLog;
use ponte_linking::links::Links;
use time::OffsetDateTime;

use ponte_linking::account::{AccountStore, User, UserStore, active_user};
use ponte_linking::ids::{AccountId, UserId};

use crate::config::Config;
use crate::problem::Problem;

/// Shared application state, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The OpenID Provider's settings (issuer, token lifetimes), from the configuration.
    pub op_settings: Arc<ponte_identity::op::OpSettings>,
    /// The relational store (for readiness).
    pub db: Database,
    /// Accounts (tenants).
    pub accounts: Arc<dyn AccountStore>,
    /// The users of accounts, and password-login lookup.
    pub users: Arc<dyn UserStore>,
    /// The audit trail, for entries not written by a store's own transaction.
    pub audit: Arc<dyn AuditLog>,
    /// OAuth clients.
    pub clients: Arc<dyn ClientRepo>,
    /// Browser sessions.
    pub sessions: Sessions,
    /// Signing and verification keys, reloaded as they rotate.
    pub keys: Arc<Keys>,
    /// Seals secrets at rest: the master-key ring (active and retired keys).
    pub master: MasterKeys,
    /// Refresh-token families.
    pub refresh: Arc<dyn RefreshRepo>,
    /// Consents to third-party clients.
    pub consents: Arc<dyn ConsentRepo>,
    /// Upstream providers by id.
    pub providers: Arc<std::collections::BTreeMap<String, Arc<Upstream>>>,
    /// External-identity links.
    pub links: Arc<dyn Links>,
    /// Where emails go: queued as `mail.send` jobs, delivered by the worker.
    pub outbox: Arc<dyn ponte_identity::outbox::Outbox>,
    /// The durable job queue (support's REST view, and enqueues).
    pub jobs: Arc<ponte_identity::jobs::SqlJobs>,
    /// The companies of accounts.
    pub companies: Arc<dyn ponte_linking::company::CompanyStore>,
    /// Companies' integrations and their invites.
    pub integrations: Arc<dyn ponte_linking::integration::Integrations>,
    /// The same store without the directory cache, for background jobs: a job decides
    /// from the database itself, since it may run before this replica has heard of the
    /// change that queued it.
    pub integrations_for_jobs: Arc<dyn ponte_linking::integration::Integrations>,
    /// Companies' platform credentials, sealed.
    pub credentials: Arc<dyn ponte_linking::integration::credentials::CredentialStore>,
    /// The platform's credentials operations (check, issue an API key).
    pub credentials_platform: Arc<dyn ponte_linking::integration::credentials::CredentialsPlatform>,
    /// The invoicing platform's connector (`[platform]`), if configured.
    pub platform: Option<Arc<dyn crate::connectors::platform::Platform>>,
    /// The invoicing platform's directory, asked before a reactivation.
    pub platform_lookup: Arc<dyn ponte_linking::integration::actions::PlatformLookup>,
    /// The POS backend's webhook receivers (`[webhooks.<id>]` and those stored over REST).
    pub webhooks: Arc<dyn crate::webhooks::receivers::Receivers>,
    /// What `POST /webhooks/platform` does with an authentic, new platform event.
    pub platform_events: Arc<dyn crate::webhooks::platform_event::PlatformEventHandler>,
    /// Seat grants of accounts.
    pub seats: Arc<dyn ponte_linking::seats::SeatStore>,
    /// Password resets (`/password/forgot`, `/password/reset`).
    pub resets: Arc<dyn ponte_linking::recovery::ResetStore>,
    /// The one clock.
    pub clock: Arc<dyn Clock>,
    /// This replica's cache of what hot paths read about accounts (the stores above read
    /// through it).
    pub directory: crate::directory::Directory,
    /// This replica's cache of session records, when the sessions are on one Redis node
    /// (the session store above reads through it).
    pub session_cache: Option<crate::session_cache::SessionCache>,
    /// Set when the process starts to stop: `/readyz` then answers 503.
    pub draining: Draining,
}

/// Whether this process is stopping, shared by the signal handler and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<std::sync::atomic::AtomicBool>);

impl Draining {
    /// From now on `/readyz` answers 503, so load balancers take this replica out.
    pub fn start(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Draining::start`] was called.
    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl AppState {
    /// `iss` of everything Ponte signs (the OP's settings hold it).
    pub fn issuer(&self) -> &str {
        &self.op_settings.issuer
    }

    /// The current time from the injected clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Password recovery over this state's stores.
    pub fn recovery(&self) -> ponte_linking::recovery::Recovery<'_> {
        ponte_linking::recovery::Recovery {
            sessions: &self.sessions,
            refresh: self.refresh.as_ref(),
            accounts: self.accounts.as_ref(),
            users: self.users.as_ref(),
            resets: self.resets.as_ref(),
            public_url: self.issuer(),
            limits: ponte_linking::recovery::Limits::with_max(
                self.config.recovery.max_per_email,
                self.config.recovery.max_per_ip,
            ),
        }
    }

    /// The user, if it and its account may still sign in (both active).
    pub async fn active_user(&self, account_id: AccountId, user_id: UserId) -> Result<Option<User>, Problem> {
        Ok(active_user(self.accounts.as_ref(), self.users.as_ref(), account_id, user_id).await?)
    }
}
