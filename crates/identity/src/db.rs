//! The relational store handle shared by every repository.
//!
//! One SQL text serves SQLite and PostgreSQL through sqlx's `Any` driver: ids are TEXT,
//! instants are BIGINT Unix seconds, and placeholders are `$1…`, which both accept. Where
//! the dialects must differ, a repository matches on [`Backend`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::Result;
use crate::error::is_unavailable;

/// How long a request waits for a connection while the database is up: long enough that
/// a merely busy pool queues requests rather than refusing them.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits while the database seems down: an outage answers 503 fast.
const DOWN_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the database is probed while it is up, and while it seems down.
const PROBE_UP: Duration = Duration::from_secs(1);
const PROBE_DOWN: Duration = Duration::from_millis(250);

/// Which engine sits behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: a file under the data directory.
    Sqlite,
    /// Production.
    Postgres,
}

/// A pool on SQLite or PostgreSQL.
///
/// On PostgreSQL a probe watches the server: while it seems down, [`Database::pool`]
/// hands out a small pool with a short acquire timeout, so requests get their 503 in a
/// fraction of a second instead of each waiting out the normal pool's timeout. The probe
/// also finds the server back, and requests return to the normal pool by themselves.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    health: Arc<Health>,
}

#[derive(Debug)]
struct Health {
    down: AtomicBool,
    closed: AtomicBool,
    /// PostgreSQL only: the small pool requests use while the server seems down.
    fallback: Option<AnyPool>,
}

impl Database {
    /// Connects lazily: the service starts (and reports not-ready) while the database is away.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(crate::Error::Invalid("database_url must start with sqlite: or postgres:".into()));
        };
        let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let (pool, fallback) = match backend {
            Backend::Sqlite => {
                let pool = options
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_lazy(url)?;
                (pool, None)
            }
            Backend::Postgres => {
                let pool = options.max_connections(16).connect_lazy(url)?;
                let fallback =
                    AnyPoolOptions::new().max_connections(2).acquire_timeout(DOWN_ACQUIRE_TIMEOUT).connect_lazy(url)?;
                // The probe's own connection: requests never queue in front of it, so a
                // busy service is never taken for a dead database.
                let probe = AnyPoolOptions::new().max_connections(1).acquire_timeout(PROBE_UP).connect_lazy(url)?;
                (pool, Some((fallback, probe)))
            }
        };
        let (fallback, probe_pool) = fallback.unzip();
        let health = Arc::new(Health {
            down: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fallback: fallback.clone(),
        });
        if let (Some(probe_pool), Ok(runtime)) = (probe_pool, tokio::runtime::Handle::try_current()) {
            runtime.spawn(probe(Arc::downgrade(&health), probe_pool));
        }
        Ok(Self { pool, backend, health })
    }

    /// The pool, for repositories.
    pub fn pool(&self) -> &AnyPool {
        match &self.health.fallback {
            Some(fallback) if self.health.down.load(Ordering::Relaxed) => fallback,
            _ => &self.pool,
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), where the busy timeout makes a second writer wait; a deferred
    /// transaction that reads first and then writes fails at once with "database is
    /// locked" when another writer got in between, whatever the busy timeout.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool().begin().await?,
        };
        Ok(tx)
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the last probe found the database unreachable (always `false` on SQLite).
    pub fn seems_down(&self) -> bool {
        self.health.down.load(Ordering::Relaxed)
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    /// Closes every connection (tests drop their database afterwards).
    pub async fn close(&self) {
        self.health.closed.store(true, Ordering::Relaxed);
        // Requests must now see the closed pool, not the probe's.
        self.health.down.store(false, Ordering::Relaxed);
        if let Some(fallback) = &self.health.fallback {
            fallback.close().await;
        }
        self.pool.close().await;
    }
}

/// Watches the server on a connection of its own until the database handle is gone or
/// closed. Only a connection failure marks it down: a slow answer is load, and a server
/// that refuses more connections (53300) still serves the ones the pool holds.
async fn probe(health: std::sync::Weak<Health>, probe_pool: AnyPool) {
    loop {
        let Some(current) = health.upgrade() else { return };
        if current.closed.load(Ordering::Relaxed) {
            return;
        }
        let answer = tokio::time::timeout(PROBE_UP * 2, sqlx::query("SELECT 1").execute(&probe_pool)).await;
        let was_down = current.down.load(Ordering::Relaxed);
        let down = match answer {
            Ok(Ok(_)) => false,
            Ok(Err(e)) if is_unavailable(&e) && !is_too_many_connections(&e) => {
                if !was_down {
                    tracing::warn!(error = %e, "database unreachable: failing fast until it answers again");
                }
                true
            }
            Ok(Err(_)) | Err(_) => was_down,
        };
        if was_down && !down {
            tracing::info!("database reachable again");
        }
        if !current.closed.load(Ordering::Relaxed) {
            current.down.store(down, Ordering::Relaxed);
        }
        drop(current);
        tokio::time::sleep(if down { PROBE_DOWN } else { PROBE_UP }).await;
    }
}

/// PostgreSQL's `too_many_connections`: the server is up, only full.
fn is_too_many_connections(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("53300"))
}

/// Whether a sqlx error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
