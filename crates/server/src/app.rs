//! Building the service from its configuration, and running it.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use ponte_identity::client::{CachedClients, SqlClients};
use ponte_identity::clock::{Clock, SystemClock};
use ponte_identity::db::{Backend, Database};
use ponte_identity::jobs::SqlJobs;
use ponte_identity::keys::{KeyRing, Keys, SqlKeys};
use ponte_identity::oidc::SqlConsents;
use ponte_identity::outbox::JobOutbox;
use ponte_identity::refresh::SqlRefresh;
use ponte_identity::seal::{MasterKey, MasterKeys};
use ponte_identity::session::{MemoryStore, RedisStore, SessionPolicy, SessionStore, Sessions};
use ponte_identity::upstream::{Upstream, http_client};
use ponte_linking::account::sql::{SqlAccounts, SqlUsers};
use ponte_linking::audit::sql::SqlAudit;
use ponte_linking::company::sql::SqlCompanies;
use ponte_linking::integration::sql::SqlIntegrations;
use ponte_linking::links::SqlLinks;
use ponte_linking::recovery::sql::SqlResets;
use time::Duration;
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::connectors::platform::HttpPlatform;
use crate::directory::Directory;
use crate::directory::stores::Cached;
use crate::session_cache::{CachedSessions, SessionCache};
use crate::state::AppState;
use crate::worker::Worker;
use crate::{extract, routes, telemetry};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data folder or the master key file could not be prepared.
    #[error("{0}")]
    Setup(String),
    /// The database, session store or keys could not be prepared.
    #[error(transparent)]
    Identity(#[from] ponte_identity::Error),
    /// Migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The listener could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The worker could not be built (e.g. an unusable `[smtp]` table).
    #[error("worker: {0}")]
    Worker(String),
}

/// Opens the configured database (SQLite under the data folder by default).
pub fn open_database(config: &Config) -> Result<Database, StartError> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Setup(format!("cannot create data_dir {}: {e}", config.data_dir.display())))?;
    }
    Ok(Database::connect_lazy(&config.effective_database_url())?)
}

/// Applies pending migrations for the database's engine.
pub async fn migrate(db: &Database) -> Result<(), StartError> {
    match db.backend() {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(db.pool()).await?,
        Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(db.pool()).await?,
    }
    Ok(())
}

/// The master-key ring: the active key (configured, or generated into and later read from
/// the data folder) and the retired ones (`master_keys_retired`, and in embedded mode the
/// data folder's `master.key.retired`, one key a line).
pub fn master_key(config: &Config) -> Result<MasterKeys, StartError> {
    let mut retired = Vec::new();
    for key in &config.master_keys_retired {
        retired.push(MasterKey::parse(key.expose())?);
    }
    let active = if let Some(key) = &config.master_key {
        MasterKey::parse(key.expose())?
    } else {
        let retired_path = config.data_dir.join(RETIRED_KEY_FILE);
        if retired_path.exists() {
            retired.extend(MasterKeys::parse_list(&read(&retired_path)?)?);
        }
        embedded_master_key(config)?
    };
    Ok(MasterKeys::new(active, retired))
}

/// The data folder's file of retired master keys (embedded mode).
const RETIRED_KEY_FILE: &str = "master.key.retired";

fn read(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| StartError::Setup(format!("cannot read {}: {e}", path.display())))
}

fn embedded_master_key(config: &Config) -> Result<MasterKey, StartError> {
    let path = config.data_dir.join("master.key");
    if path.exists() {
        return Ok(MasterKey::parse(&read(&path)?)?);
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::Setup(format!("cannot create data_dir {}: {e}", config.data_dir.display())))?;
    let key = MasterKey::generate();
    write_private(&path, &key.encode())?;
    tracing::warn!(
        path = %path.display(),
        "NO MASTER KEY CONFIGURED: generated one into the data folder. Anyone who can read that file can read \
         every secret Ponte stores. In production set PONTE_MASTER_KEY (or PONTE_MASTER_KEY_FILE) from a secret store."
    );
    Ok(key)
}

/// Embedded mode's `ponte keys rotate-master`: a new active key file in the data folder,
/// the old key appended to the retired file (kept until `ponte keys reseal` reports 0).
/// `Err` when the master key is configured from outside (then the operator rotates it).
pub fn rotate_embedded_master_key(config: &Config) -> Result<MasterKeys, StartError> {
    if config.master_key.is_some() {
        return Err(StartError::Setup("the master key is configured (PONTE_MASTER_KEY), not embedded".into()));
    }
    let old = embedded_master_key(config)?;
    let retired_path = config.data_dir.join(RETIRED_KEY_FILE);
    let mut retired = if retired_path.exists() { read(&retired_path)? } else { String::new() };
    if !retired.is_empty() && !retired.ends_with('\n') {
        retired.push('\n');
    }
    retired.push_str(&old.encode());
    retired.push('\n');
    // The retired file first: a crash between the two writes leaves the old key still
    // active and also retired, which reads everything.
    replace_private(&retired_path, &retired)?;
    let new = MasterKey::generate();
    replace_private(&config.data_dir.join("master.key"), &new.encode())?;
    master_key(config)
}

/// Writes `contents` to `path` through a private temporary file renamed over it.
fn replace_private(path: &Path, contents: &str) -> Result<(), StartError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, contents)?;
    std::fs::rename(&tmp, path).map_err(|e| StartError::Setup(format!("cannot write {}: {e}", path.display())))
}

fn write_private(path: &Path, contents: &str) -> Result<(), StartError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(path).map_err(|e| StartError::Setup(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes()).map_err(|e| StartError::Setup(format!("cannot write {}: {e}", path.display())))
}

/// The configured session store: Redis when `redis_url` is set, else in-process.
pub fn session_store(config: &Config) -> Result<Arc<dyn SessionStore>, StartError> {
    Ok(match &config.redis_url {
        Some(url) if !url.expose().is_empty() => Arc::new(
            RedisStore::new(url.expose(), &config.redis_key_prefix)?.announcing(config.session_cache_ttl_secs > 0),
        ),
        _ => Arc::new(MemoryStore::new()),
    })
}

/// The session store of `ponte serve`: [`session_store`], with session reads cached in
/// this replica ([`crate::session_cache`]) when it is one Redis node and
/// `session_cache_ttl_secs` is not 0.
fn serving_session_store(config: &Config) -> Result<(Arc<dyn SessionStore>, Option<SessionCache>), StartError> {
    let url = match &config.redis_url {
        Some(url) if !url.expose().is_empty() && config.session_cache_ttl_secs > 0 => url,
        _ => return Ok((session_store(config)?, None)),
    };
    let redis = Arc::new(RedisStore::new(url.expose(), &config.redis_key_prefix)?.announcing(true));
    if redis.is_cluster() {
        return Ok((redis, None));
    }
    let cache = SessionCache::new(std::time::Duration::from_secs(config.session_cache_ttl_secs), redis.clone());
    Ok((Arc::new(CachedSessions::new(redis, cache.clone())), Some(cache)))
}

/// Builds the shared state: database (migrated unless disabled), session store, keys.
pub async fn build_state(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    // The hashing pool starts once per process (tests build many apps from one binary).
    let hashing = config.hashing.pool_size();
    let running = ponte_identity::password::configure(hashing);
    if running != hashing {
        tracing::warn!(?running, ?hashing, "the password hashing pool was already running; its size is unchanged");
    }
    let db = open_database(&config)?;
    if config.migrate_on_start {
        migrate(&db).await?;
    }
    let master = master_key(&config)?;
    let keys = KeyRing::load_or_create(&SqlKeys::new(db.clone()), &master, &config.key_policy(), clock.now()).await?;
    let policy = SessionPolicy {
        idle: Duration::seconds(config.session_idle_secs as i64),
        absolute: Duration::seconds(config.session_absolute_secs as i64),
    };
    let http = http_client().map_err(|e| StartError::Setup(e.to_string()))?;
    let mut providers = std::collections::BTreeMap::new();
    for (id, provider) in &config.providers {
        let upstream = Upstream::new(id, provider.clone(), http.clone())
            .map_err(|e| StartError::Setup(format!("providers.{id}: {e}")))?;
        providers.insert(id.clone(), Arc::new(upstream));
    }
    let (session_store, session_cache) = serving_session_store(&config)?;
    let directory = match db.backend() {
        Backend::Postgres => Directory::new(std::time::Duration::from_secs(config.cache_ttl_secs)),
        Backend::Sqlite => Directory::off(),
    };
    let jobs = Arc::new(SqlJobs::new(db.clone(), config.worker.max_attempts));
    let outbox = Arc::new(JobOutbox::new(jobs.clone(), master.clone(), clock.clone()));
    let invite_ttl = Duration::days(i64::try_from(config.invites.ttl_days).unwrap_or(7).max(1));
    let sql_integrations = SqlIntegrations::new(db.clone(), jobs.clone(), master.clone(), &config.issuer(), invite_ttl);
    let integrations: Arc<dyn ponte_linking::integration::Integrations> =
        Arc::new(Cached::new(sql_integrations.clone(), directory.clone()));
    let platform = HttpPlatform::from_config(&config.platform, http.clone())
        .map_err(|e| StartError::Setup(format!("platform: {e}")))?
        .map(|p| Arc::new(p) as Arc<dyn crate::connectors::platform::Platform>);
    Ok(AppState {
        companies: Arc::new(Cached::new(SqlCompanies::new(db.clone()), directory.clone())),
        integrations: integrations.clone(),
        integrations_for_jobs: Arc::new(sql_integrations),
        platform_lookup: Arc::new(crate::adapters::PlatformDirectory(platform.clone())),
        credentials: Arc::new(ponte_linking::integration::credentials::sql::SqlCredentials::new(
            db.clone(),
            jobs.clone(),
            master.clone(),
        )),
        credentials_platform: Arc::new(crate::adapters::PlatformCredentialsOps(platform.clone())),
        platform,
        op_settings: Arc::new(crate::op::settings(&config)),
        providers: Arc::new(providers),
        links: Arc::new(Cached::new(SqlLinks::new(db.clone()), directory.clone())),
        resets: Arc::new(Cached::new(SqlResets::new(db.clone(), outbox.clone()), directory.clone())),
        seats: Arc::new(Cached::new(
            ponte_linking::seats::sql::SqlSeats::new(db.clone(), outbox.clone()),
            directory.clone(),
        )),
        outbox,
        jobs,
        sessions: Sessions::new(session_store, policy),
        accounts: Arc::new(Cached::new(SqlAccounts::new(db.clone()), directory.clone())),
        users: Arc::new(Cached::new(SqlUsers::new(db.clone()), directory.clone())),
        audit: Arc::new(SqlAudit::new(db.clone())),
        clients: Arc::new(CachedClients::new(SqlClients::new(db.clone()), std::time::Duration::from_secs(30))),
        keys: Arc::new(Keys::new(keys)),
        master: master.clone(),
        refresh: Arc::new(SqlRefresh::new(db.clone())),
        consents: Arc::new(SqlConsents::new(db.clone())),
        webhooks: crate::webhooks::receivers::from_config(&config.webhooks, db.clone(), master.clone()),
        platform_events: Arc::new(crate::adapters::PlatformEvents {
            integrations: integrations.clone(),
            clock: clock.clone(),
        }),
        db,
        clock,
        config: Arc::new(config),
        draining: Default::default(),
        directory,
        session_cache,
    })
}

/// Reloads the key ring on a timer, so rotations by `ponte keys rotate` or another replica
/// reach this one, and rotates on schedule.
fn spawn_key_refresher(state: AppState) {
    let every = std::time::Duration::from_secs(state.config.key_reload_secs);
    tokio::spawn(async move {
        let repo = SqlKeys::new(state.db.clone());
        let policy = state.config.key_policy();
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = state.keys.refresh(&repo, &state.master, &policy, state.now()).await {
                tracing::warn!(error = %e, "could not reload signing keys; keeping the current ones");
            }
        }
    });
}

/// A bound, not yet running, Ponte.
pub struct Application {
    port: u16,
    state: AppState,
    server: Server,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Application {
    /// Builds on the wall clock.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds with an injected clock (tests), binding `config.bind` (port 0 picks one).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let listener = TcpListener::bind(&config.bind)?;
        Self::build_on(listener, config, clock).await
    }

    /// Builds on a listener bound by the caller (tests that need the port before the
    /// configuration, e.g. to make it the issuer).
    pub async fn build_on(listener: TcpListener, config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        // Install the recorder before the first request so nothing is counted into the void.
        telemetry::metrics_handle();
        let port = listener.local_addr()?.port();
        let workers = config.workers;
        let state = build_state(config, clock).await?;
        let data = web::Data::new(state.clone());
        let api_document = web::Data::new(crate::openapi::document());
        let max_body = state.config.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(api_document.clone())
                .app_data(extract::json_config(max_body))
                .app_data(extract::form_config(max_body))
                .app_data(extract::path_config())
                .app_data(extract::query_config())
                .app_data(web::PayloadConfig::new(max_body))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
                // Refuses an oversized request head, rewrites bare errors as problems, counts.
                .wrap(telemetry::Observe)
                .wrap(TracingLogger::<telemetry::RequestSpan>::new())
        })
        .listen(listener)?
        // Signals are ours (run_until_stopped): readiness turns 503 before the listener closes.
        .disable_signals()
        .shutdown_timeout(state.config.shutdown_grace_secs)
        .keep_alive(std::time::Duration::from_secs(state.config.keep_alive_secs.max(1)));
        if let Some(n) = workers {
            server = server.workers(n.max(1));
        }
        spawn_key_refresher(state.clone());
        // Only a PostgreSQL directory with a TTL caches (`build_state`); it listens.
        if state.directory.caches() {
            let url = crate::config::Secret::from(state.config.effective_database_url().as_str());
            tokio::spawn(crate::directory::listen(state.directory.clone(), url));
        }
        if let (Some(cache), Some(url)) = (&state.session_cache, &state.config.redis_url) {
            tokio::spawn(crate::session_cache::listen(cache.clone(), url.clone()));
        }
        let worker = if state.config.worker.enabled {
            Some(Worker::from_state(&state).map_err(StartError::Worker)?)
        } else {
            // No worker here, but this replica's `/metrics` still shows the queue.
            let every = crate::worker::housekeeping_every(&state.config.worker);
            tokio::spawn(crate::worker::refresh_gauges(state.jobs.clone(), every));
            None
        };
        Ok(Self { port, state, server: server.run(), worker })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the stores through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves (and runs the worker) until the process is told to stop. At SIGTERM/SIGINT:
    /// `/readyz` answers 503 at once and the worker stops claiming (its in-flight jobs get
    /// `worker.shutdown_grace_secs`, then their leases are released); `shutdown_delay_secs`
    /// later the listener closes, and in-flight requests get `shutdown_grace_secs` to finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stop = Arc::new(stop);
        let on_signal = stop.clone();
        let (server, draining) = (self.server.handle(), self.state.draining.clone());
        let delay = std::time::Duration::from_secs(self.state.config.shutdown_delay_secs);
        tokio::spawn(async move {
            shutdown_signal().await;
            draining.start();
            let _ = on_signal.send(true);
            tracing::info!(delay_secs = delay.as_secs(), "stopping: /readyz answers 503, then the listener closes");
            tokio::time::sleep(delay).await;
            server.stop(true).await;
        });
        let worker = self.worker.map(|w| tokio::spawn(w.run(stopped)));
        let served = self.server.await;
        // The server may also end without a signal (its handle stopped it): stop the worker too.
        let _ = stop.send(true);
        if let Some(worker) = worker
            && let Err(e) = worker.await
        {
            tracing::error!(error = %e, "the worker ended abnormally");
        }
        served
    }
}

/// Resolves at the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
