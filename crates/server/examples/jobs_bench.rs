//! The job queue's benchmark (issue #7): jobs per second the worker sustains with no-op
//! jobs, and enqueue-to-done latency with an idle queue, on SQLite and PostgreSQL.
//!
//! ```sh
//! cargo run --release -p ponte-server --example jobs_bench
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p ponte-server --example jobs_bench
//! ```
//!
//! SQLite runs in a temp folder. With `BENCH_DATABASE_URL` (a PostgreSQL server URL) it
//! also runs on a fresh database created there and dropped afterwards. `BENCH_JOBS`
//! (default 5000) no-op jobs are enqueued first, then the worker (`BENCH_CONCURRENCY`,
//! default 8) drains them; then `BENCH_SAMPLES` (default 200) single jobs are enqueued
//! one at a time into the idle queue, each timed from the enqueue call until its row
//! reads `done`. The worker's poll interval is one second, so the latency is the wake-up
//! path (in-process notify), not polling. Figures are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use ponte_identity::clock::{Clock, SystemClock};
use ponte_identity::db::{Backend, Database};
use ponte_identity::jobs::{Backoff, Job, JobFailure, JobState, JobStore, NewJob, SqlJobs};
use ponte_server::config::Secret;
use ponte_server::worker::{JobHandler, Registry, Settings, Worker};
use sqlx::Connection;
use time::Duration;

#[derive(Debug)]
struct NoOp;

#[async_trait]
impl JobHandler for NoOp {
    async fn run(&self, _job: &Job) -> Result<(), JobFailure> {
        Ok(())
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(label: &str, url: &str) {
    let db = Database::connect_lazy(url).expect("database url");
    ponte_server::app::migrate(&db).await.expect("migrations");
    let store = Arc::new(SqlJobs::new(db.clone(), 3));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (jobs, concurrency, samples) =
        (env_usize("BENCH_JOBS", 5000), env_usize("BENCH_CONCURRENCY", 8), env_usize("BENCH_SAMPLES", 200));

    // Throughput: a full queue, drained.
    let mut tx = db.pool().begin().await.unwrap();
    for _ in 0..jobs {
        store.enqueue_in(&mut tx, NewJob::new("noop", serde_json::json!({})), clock.now()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let settings = Settings {
        concurrency,
        poll_interval: StdDuration::from_secs(1),
        lease: Duration::seconds(60),
        backoff: Backoff::default(),
        shutdown_grace: StdDuration::from_secs(5),
        retain_done: Duration::days(7),
        listen_url: (db.backend() == Backend::Postgres).then(|| Secret::from(url)),
        housekeeping_every: StdDuration::from_secs(15),
    };
    let registry = Registry::new().with("noop", Arc::new(NoOp));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(Worker::new(store.clone(), registry, settings, clock.clone()).run(stopped));
    loop {
        let counts = store.counts().await.unwrap();
        let done: i64 = counts.iter().filter(|c| c.state == JobState::Done).map(|c| c.count).sum();
        if done as usize >= jobs {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {jobs} no-op jobs drained in {secs:.2} s = {:.0} jobs/s (concurrency {concurrency})",
        jobs as f64 / secs
    );

    // Latency: one job at a time into the idle queue.
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        let id = store.enqueue(NewJob::new("noop", serde_json::json!({})), clock.now()).await.unwrap().job.id;
        loop {
            if store.get(id).await.unwrap().is_some_and(|j| j.state == JobState::Done) {
                break;
            }
            tokio::time::sleep(StdDuration::from_micros(500)).await;
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Let the worker go back to sleep, so every sample starts from an idle queue.
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label}: enqueue to done, idle queue, {samples} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    stop.send(true).unwrap();
    worker.await.unwrap();
    db.close().await;
}

#[tokio::main]
async fn main() {
    ponte_server::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    run("sqlite", &sqlite).await;
    if let Ok(admin) = std::env::var("BENCH_DATABASE_URL") {
        let name = format!("ponte_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("BENCH_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        run("postgres", url.as_str()).await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    }
}
