//! The background worker: claims due jobs with a lease, runs each through the handler
//! registered for its kind, and records the outcome by the queue's rules
//! (`ponte_identity::jobs`). It runs inside `ponte serve` unless `worker.enabled = false`,
//! or alone as `ponte worker`.
//!
//! Idle, it sleeps until an enqueue in this process wakes it, a PostgreSQL `NOTIFY` from
//! any replica does, or the poll interval passes. On shutdown it stops claiming, gives
//! in-flight jobs the grace period, and releases the leases of those that did not finish.

pub mod mail;
pub mod platform;
pub mod registry;
pub mod seats;
pub mod smtp;

pub use registry::{JobHandler, Registry};
pub use seats::{Periodic, SeatSweep};

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use ponte_identity::clock::Clock;
use ponte_identity::db::Backend;
use ponte_identity::jobs::sql::wall_clock_ms;
use ponte_identity::jobs::{AfterFailure, Backoff, Job, JobFailure, JobId, JobState, JobStore, SqlJobs, after_failure};
use ponte_identity::outbox::MAIL_SEND;
use time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Secret, WorkerConfig};
use crate::state::AppState;
use crate::webhooks::deliver::{DeliverHandler, FanoutHandler, WEBHOOK_DELIVER, WEBHOOK_FANOUT};
use ponte_linking::integration::jobs;

/// How the worker runs (from `[worker]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs at the same time.
    pub concurrency: usize,
    /// Sleep between polls when nothing wakes the worker.
    pub poll_interval: StdDuration,
    /// Length of a claim.
    pub lease: Duration,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// How long in-flight jobs may take to finish at shutdown.
    pub shutdown_grace: StdDuration,
    /// How long done jobs are kept.
    pub retain_done: Duration,
    /// A PostgreSQL URL to `LISTEN` on for enqueues by other processes.
    pub listen_url: Option<Secret>,
    /// How often the `jobs` gauge is refreshed and old done jobs pruned.
    pub housekeeping_every: StdDuration,
}

impl Settings {
    /// The settings of `[worker]`, listening on `database_url` when it is PostgreSQL.
    pub fn from_config(w: &WorkerConfig, backend: Backend, database_url: &str) -> Self {
        Self {
            concurrency: w.concurrency.max(1),
            poll_interval: StdDuration::from_millis(w.poll_interval_ms.max(1)),
            lease: Duration::seconds(i64::try_from(w.lease_secs).unwrap_or(60)),
            backoff: Backoff {
                base: Duration::seconds(i64::try_from(w.backoff_base_secs).unwrap_or(2)),
                max: Duration::seconds(i64::try_from(w.backoff_max_secs).unwrap_or(3600)),
            },
            shutdown_grace: StdDuration::from_secs(w.shutdown_grace_secs),
            retain_done: Duration::days(i64::try_from(w.retain_done_days).unwrap_or(7)),
            listen_url: (backend == Backend::Postgres).then(|| Secret::from(database_url)),
            housekeeping_every: housekeeping_every(w),
        }
    }
}

/// The worker, ready to run.
#[derive(Debug)]
pub struct Worker {
    store: Arc<SqlJobs>,
    registry: Registry,
    settings: Settings,
    clock: Arc<dyn Clock>,
    /// Work on a timer beside the queue (the seat sweep), each on a task of its own.
    periodic: Vec<Arc<dyn Periodic>>,
}

/// Jobs claimed by this worker and not yet finished: their leases are released at shutdown.
type InFlight = Arc<Mutex<HashMap<JobId, Job>>>;

/// How often the `jobs` gauge is refreshed and old done jobs pruned (`worker.housekeeping_secs`).
pub fn housekeeping_every(w: &WorkerConfig) -> StdDuration {
    StdDuration::from_secs(w.housekeeping_secs.max(1))
}

impl Worker {
    /// A worker over `store` running the handlers in `registry`.
    pub fn new(store: Arc<SqlJobs>, registry: Registry, settings: Settings, clock: Arc<dyn Clock>) -> Self {
        Self { store, registry, settings, clock, periodic: Vec::new() }
    }

    /// Also runs `task` every `task.every()` until shutdown.
    pub fn with_periodic(mut self, task: Arc<dyn Periodic>) -> Self {
        self.periodic.push(task);
        self
    }

    /// The worker `ponte serve` and `ponte worker` run: every built-in job kind, on the
    /// stores of `state`.
    pub fn from_state(state: &AppState) -> Result<Self, String> {
        let config = &state.config;
        let clock = state.clock.clone();
        // One client for every delivery: redirects are not followed.
        let http = ponte_identity::upstream::http_client().map_err(|e| e.to_string())?;
        let registry = Registry::new()
            .with(MAIL_SEND, Arc::new(mail::MailHandler::from_config(config, state.master.clone())?))
            .with(
                WEBHOOK_FANOUT,
                Arc::new(FanoutHandler::new(state.webhooks.clone(), state.jobs.clone(), clock.clone())),
            )
            .with(WEBHOOK_DELIVER, Arc::new(DeliverHandler::new(state.webhooks.clone(), http, clock.clone())));
        let settings =
            Settings::from_config(&config.worker, state.jobs.database().backend(), &config.effective_database_url());
        let backoff = settings.backoff;
        let platform_job = |step| {
            Arc::new(platform::PlatformJob::new(
                step,
                state.platform.clone(),
                state.integrations_for_jobs.clone(),
                backoff,
                clock.clone(),
            ))
        };
        let registry = registry
            .with(jobs::CREATE_ACCOUNT, platform_job(platform::Step::CreateAccount))
            .with(jobs::LINK_ACCOUNT, platform_job(platform::Step::LinkAccount))
            .with(jobs::ACTIVATE, platform_job(platform::Step::Activate))
            .with(
                jobs::CHECK_CREDENTIALS,
                Arc::new(platform::CheckCredentialsJob {
                    credentials: state.credentials.clone(),
                    platform: state.credentials_platform.clone(),
                    companies: state.companies.clone(),
                    clock: clock.clone(),
                }),
            );
        let sweep = SeatSweep::of(state);
        Ok(Self::new(state.jobs.clone(), registry, settings, state.clock.clone()).with_periodic(Arc::new(sweep)))
    }

    /// Runs until `shutdown` turns true, then drains as described in the module docs.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let wake = self.store.waker();
        let periodic: Vec<_> =
            self.periodic.iter().map(|p| tokio::spawn(seats::run_periodic(p.clone(), shutdown.clone()))).collect();
        let mut listener = None;
        if let Some(url) = self.settings.listen_url.clone() {
            listener = Some(tokio::spawn(listen(url, wake.clone(), shutdown.clone())));
        }
        let ctx = Arc::new(Ctx {
            store: self.store.clone(),
            registry: self.registry,
            backoff: self.settings.backoff,
            // A little less than the lease, so a slow handler gives up before another
            // worker may claim its job.
            deadline: StdDuration::from_secs(
                u64::try_from(self.settings.lease.whole_seconds() - 1).unwrap_or(1).max(1),
            ),
            clock: self.clock.clone(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        // Claims run ahead of the handlers: up to twice `concurrency` jobs are held (the
        // extra ones wait for a permit), and the queue is asked again only once half of
        // that has drained, so claims come in batches rather than one per finished job.
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let (low, high) = (self.settings.concurrency, self.settings.concurrency * 2);
        let in_flight: InFlight = Arc::default();
        let mut tasks = JoinSet::new();
        let mut housekeeping = Housekeeping::default();
        let mut stop = shutdown.clone();
        tracing::info!(concurrency = self.settings.concurrency, "worker started");
        loop {
            if *stop.borrow() {
                break;
            }
            while let Some(ended) = tasks.try_join_next() {
                note_task_end(ended);
            }
            housekeeping.maybe_run(&self.store, &self.settings, self.clock.now()).await;
            if tasks.len() > low {
                tokio::select! {
                    ended = tasks.join_next() => ended.into_iter().for_each(note_task_end),
                    _ = stopping(&mut stop) => {}
                }
                continue;
            }
            let limit = u32::try_from(high - tasks.len()).unwrap_or(1);
            match self.store.claim(limit, self.settings.lease, self.clock.now()).await {
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        lock(&in_flight).insert(job.id, job.clone());
                        tasks.spawn(run_one(ctx.clone(), job, permits.clone(), in_flight.clone()));
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                        _ = stopping(&mut stop) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "worker: cannot claim jobs; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                        _ = stopping(&mut stop) => {}
                    }
                }
            }
        }
        // Claimed jobs still waiting for a permit do not start now; their leases are released.
        ctx.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(in_flight = tasks.len(), "worker stopping: no new claims");
        let drained =
            tokio::time::timeout(self.settings.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let unfinished: Vec<Job> = lock(&in_flight).drain().map(|(_, j)| j).collect();
        for job in unfinished {
            match self.store.release(&job, self.clock.now()).await {
                Ok(_) => tracing::info!(job = %job.id, kind = %job.kind, "lease released at shutdown"),
                Err(e) => tracing::warn!(job = %job.id, error = %e, "could not release a lease; it runs out by itself"),
            }
        }
        if let Some(l) = listener {
            l.abort();
        }
        for p in periodic {
            p.abort();
        }
        tracing::info!("worker stopped");
    }
}

/// What every job task needs.
#[derive(Debug)]
struct Ctx {
    store: Arc<SqlJobs>,
    registry: Registry,
    backoff: Backoff,
    deadline: StdDuration,
    clock: Arc<dyn Clock>,
    /// Set at shutdown: claimed jobs that have not started yet stay unstarted.
    stopping: std::sync::atomic::AtomicBool,
}

fn lock(m: &Mutex<HashMap<JobId, Job>>) -> std::sync::MutexGuard<'_, HashMap<JobId, Job>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves when `rx` says stop; never, if its sender is gone without saying so.
async fn stopping(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Logs a job task that did not end normally. Handler panics are caught in `run_handler`;
/// this is a panic in the worker's own bookkeeping, whose job is released at shutdown or
/// claimed again when its lease runs out.
fn note_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(error = %e, "a job task panicked outside its handler");
    }
}

/// A uniform number in `[0, 1)` for the backoff's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

async fn run_one(ctx: Arc<Ctx>, job: Job, permits: Arc<Semaphore>, in_flight: InFlight) {
    let Ok(_permit) = permits.acquire_owned().await else { return };
    if ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return; // left in `in_flight`: its lease is released
    }
    // A job claimed ahead may have waited for its permit: it runs only within what is
    // left of its lease (less a second), so no other worker can take it while it runs.
    let left = job.lease_until.map_or(Duration::ZERO, |until| until - ctx.clock.now() - Duration::SECOND);
    let Some(left) = StdDuration::try_from(left).ok().filter(|d| !d.is_zero()) else {
        if let Err(e) = ctx.store.release(&job, ctx.clock.now()).await {
            tracing::warn!(job = %job.id, error = %e, "could not release a lease; it runs out by itself");
        }
        lock(&in_flight).remove(&job.id);
        return;
    };
    let deadline = ctx.deadline.min(left);
    let kind = job.kind.clone();
    metrics::counter!("job_attempts_total", "kind" => kind.clone()).increment(1);
    let result = match ctx.registry.get(&job.kind) {
        None => Err(JobFailure::Permanent(format!("no handler for job kind {:?}", job.kind))),
        Some(handler) => run_handler(handler.clone(), job.clone(), deadline).await,
    };
    let (outcome, next) = match &result {
        Ok(()) => ("done", None),
        Err(failure) => {
            let next = after_failure(job.attempts, job.max_attempts, failure, &ctx.backoff, ctx.clock.now(), jitter());
            (if next == AfterFailure::Dead { "dead" } else { "retry" }, Some((next, failure)))
        }
    };
    // A database blip must not turn a finished job into one that runs again: try a few times.
    let mut recorded = Err(ponte_identity::Error::Invalid("not tried".into()));
    for attempt in 0..3 {
        let now = ctx.clock.now();
        recorded = match next {
            None => ctx.store.complete(&job, now).await,
            Some((next, failure)) => ctx.store.fail(&job, next, failure.message(), now).await,
        };
        if recorded.is_ok() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(200 * (attempt + 1))).await;
    }
    match recorded {
        Ok(true) => {
            metrics::counter!("jobs_finished_total", "kind" => kind.clone(), "outcome" => outcome).increment(1);
            if outcome == "done" {
                let secs = (wall_clock_ms() - job.enqueued_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("job_enqueue_to_done_seconds", "kind" => kind).record(secs);
            }
            match &result {
                Ok(()) => tracing::debug!(job = %job.id, kind = %job.kind, "job done"),
                Err(f) => tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempts, outcome, error = %f,
                    "job failed"),
            }
        }
        Ok(false) => tracing::warn!(job = %job.id, kind = %job.kind, "job finished after its lease was lost"),
        Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record a job's outcome; it will run again"),
    }
    lock(&in_flight).remove(&job.id);
}

/// Runs `handler` on `job` within `deadline`, in a task of its own so that a panic ends
/// only that task: it becomes a permanent failure (the same panic would happen again)
/// instead of leaving the job `running` until its lease runs out, attempt after attempt.
async fn run_handler(handler: Arc<dyn JobHandler>, job: Job, deadline: StdDuration) -> Result<(), JobFailure> {
    // A set of one rather than a bare handle: dropping it (a timeout, or this task aborted
    // at shutdown) aborts the handler too, instead of leaving it running detached.
    let mut task = JoinSet::new();
    task.spawn(async move { handler.run(&job).await });
    match tokio::time::timeout(deadline, task.join_next()).await {
        Ok(Some(Ok(result))) => result,
        Ok(Some(Err(e))) if e.is_panic() => {
            Err(JobFailure::Permanent(format!("handler panicked: {}", panic_message(e.into_panic()))))
        }
        Ok(Some(Err(e))) => Err(JobFailure::Retry(format!("handler stopped: {e}"))),
        Ok(None) => Err(JobFailure::Retry("handler did not start".into())),
        Err(_) => Err(JobFailure::Retry(format!("timed out after {} s", deadline.as_secs()))),
    }
}

/// The text a panic was raised with, when it has one.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

/// The `jobs{kind,state}` gauge of the whole queue.
#[derive(Debug, Default)]
pub struct JobGauges {
    kinds: BTreeSet<String>,
}

impl JobGauges {
    /// Counts the queue (one query) and sets the gauge.
    pub async fn refresh(&mut self, store: &dyn JobStore) {
        match store.counts().await {
            Ok(counts) => {
                self.kinds.extend(counts.iter().map(|c| c.kind.clone()));
                // Every known (kind, state) is set, so a state that emptied reads 0, not stale.
                for kind in &self.kinds {
                    for state in JobState::ALL {
                        let n = counts.iter().find(|c| &c.kind == kind && c.state == state).map_or(0, |c| c.count);
                        metrics::gauge!("jobs", "kind" => kind.clone(), "state" => state.as_str()).set(n as f64);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot count jobs"),
        }
    }
}

/// Keeps the `jobs` gauge fresh, every `every`, in a `ponte serve` that runs no worker
/// (`worker.enabled = false`), so its `/metrics` shows the queue too. It only counts:
/// claiming and pruning are left to the workers.
pub async fn refresh_gauges(store: Arc<SqlJobs>, every: StdDuration) {
    let mut gauges = JobGauges::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        gauges.refresh(store.as_ref()).await;
    }
}

/// The gauge, and pruning of old done jobs.
#[derive(Debug, Default)]
struct Housekeeping {
    last: Option<Instant>,
    gauges: JobGauges,
}

impl Housekeeping {
    async fn maybe_run(&mut self, store: &SqlJobs, settings: &Settings, now: time::OffsetDateTime) {
        if self.last.is_some_and(|t| t.elapsed() < settings.housekeeping_every) {
            return;
        }
        self.last = Some(Instant::now());
        self.gauges.refresh(store).await;
        if let Err(e) = store.prune_done(now - settings.retain_done).await {
            tracing::debug!(error = %e, "worker: cannot prune done jobs");
        }
    }
}

async fn listen_once(url: &str, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(ponte_identity::jobs::postgres::CHANNEL).await?;
    // Enqueues may have happened while we were not listening: look once.
    wake.notify_one();
    loop {
        listener.recv().await?;
        wake.notify_one();
    }
}

/// Turns PostgreSQL notifications of enqueues (from any replica) into wake-ups, and
/// reconnects when the connection drops.
async fn listen(url: Secret, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let session = listen_once(url.expose(), &wake);
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "worker: job notifications lost; reconnecting (polling meanwhile)");
                }
            }
            _ = stopping(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(StdDuration::from_secs(1)) => {}
            _ = stopping(&mut shutdown) => return,
        }
    }
}
