//! The queue on SQLite or PostgreSQL. SQL both engines agree on is here; the claim (and
//! PostgreSQL's cross-replica wake-up) live in `postgres.rs` and `sqlite.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::AnyConnection;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;

use super::{AfterFailure, Enqueued, Job, JobCount, JobId, JobState, JobStore, NewJob, RetryOutcome};
use crate::clock::{from_unix, to_unix};
use crate::db::{Backend, Database};
use crate::{Error, Result};

const COLUMNS: &str = "id, kind, payload, idempotency_key, state, attempts, max_attempts, run_at, lease_until, \
                       lease_token, last_error, created_at, updated_at, enqueued_at_ms";

/// `last_error` of a job whose lease ran out on its last attempt.
pub const LEASE_RAN_OUT: &str =
    "its lease ran out on its last attempt: the worker running it stopped (crashed or was killed) before finishing";

type Row =
    (String, String, String, String, String, i64, i64, i64, Option<i64>, Option<String>, Option<String>, i64, i64, i64);

fn parse(row: Row) -> Result<Job> {
    let (id, kind, payload, key, state, attempts, max, run_at, lease_until, token, last_error, created, updated, ms) =
        row;
    Ok(Job {
        id: id.parse().map_err(|e| Error::Corrupt(format!("job id {id:?}: {e}")))?,
        kind,
        payload: serde_json::from_str(&payload).map_err(|e| Error::Corrupt(format!("job payload: {e}")))?,
        idempotency_key: key,
        state: JobState::parse(&state)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        max_attempts: u32::try_from(max).unwrap_or(1),
        run_at: from_unix(run_at),
        lease_until: lease_until.map(from_unix),
        lease_token: token,
        last_error,
        created_at: from_unix(created),
        updated_at: from_unix(updated),
        enqueued_at_ms: ms,
    })
}

/// The job queue in the relational store.
#[derive(Debug, Clone)]
pub struct SqlJobs {
    db: Database,
    default_max_attempts: u32,
    wake: Arc<Notify>,
}

impl SqlJobs {
    /// The queue in `db`; jobs that do not say otherwise get `default_max_attempts`.
    pub fn new(db: Database, default_max_attempts: u32) -> Self {
        Self { db, default_max_attempts: default_max_attempts.max(1), wake: Arc::new(Notify::new()) }
    }

    /// Signalled on every enqueue in this process: the worker waits on it between polls.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The database the queue lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a job inside the caller's transaction (pass `&mut *tx`), so it exists if and
    /// only if the change that causes it commits. Workers wake at commit: on PostgreSQL
    /// through `NOTIFY` (every process), on SQLite in this process (its claim waits for the
    /// transaction's write lock; other processes poll).
    pub async fn enqueue_in(&self, conn: &mut AnyConnection, job: NewJob, now: OffsetDateTime) -> Result<Enqueued> {
        let id = JobId::new();
        let key = job.idempotency_key.unwrap_or_else(|| id.to_string());
        let max = job.max_attempts.unwrap_or(self.default_max_attempts).max(1);
        let run_at = job.run_at.unwrap_or(now);
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, idempotency_key, state, attempts, max_attempts, run_at, \
                               created_at, updated_at, enqueued_at_ms) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7, $7, $8) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(&job.kind)
        .bind(job.payload.to_string())
        .bind(&key)
        .bind(i64::from(max))
        .bind(to_unix(run_at))
        .bind(to_unix(now))
        .bind(wall_clock_ms())
        .execute(&mut *conn)
        .await?;
        let row: Row = sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE idempotency_key = $1"))
            .bind(&key)
            .fetch_one(&mut *conn)
            .await?;
        let stored = parse(row)?;
        let created = stored.id == id;
        if created {
            match self.db.backend() {
                // Delivered at commit, to every listening worker in every process.
                Backend::Postgres => {
                    sqlx::query(super::postgres::NOTIFY).execute(&mut *conn).await?;
                }
                // A woken worker's claim waits for this transaction's write lock, then sees the job.
                Backend::Sqlite => self.wake.notify_one(),
            }
        }
        Ok(Enqueued { job: stored, created })
    }

    /// Deletes `done` jobs last changed before `before`; returns how many.
    pub async fn prune_done(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM jobs WHERE state = 'done' AND updated_at < $1")
            .bind(to_unix(before))
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn finish(&self, job: &Job, set: &str, binds: FinishBinds<'_>) -> Result<bool> {
        let Some(token) = &job.lease_token else { return Ok(false) };
        let sql = format!(
            "UPDATE jobs SET {set}, lease_until = NULL, lease_token = NULL, updated_at = $1 \
             WHERE id = $2 AND lease_token = $3 AND state = 'running'"
        );
        let mut query = sqlx::query(&sql).bind(to_unix(binds.now)).bind(job.id.to_string()).bind(token);
        if let Some(run_at) = binds.run_at {
            query = query.bind(to_unix(run_at));
        }
        if let Some(error) = binds.error {
            query = query.bind(error.to_owned());
        }
        Ok(query.execute(self.db.pool()).await?.rows_affected() == 1)
    }
}

struct FinishBinds<'a> {
    now: OffsetDateTime,
    run_at: Option<OffsetDateTime>,
    error: Option<&'a str>,
}

/// Milliseconds since the epoch on the wall clock (telemetry only; see `Job::enqueued_at_ms`).
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl JobStore for SqlJobs {
    async fn enqueue(&self, job: NewJob, now: OffsetDateTime) -> Result<Enqueued> {
        let mut tx = self.db.begin().await?;
        let enqueued = self.enqueue_in(&mut tx, job, now).await?;
        tx.commit().await?;
        if enqueued.created {
            // Committed: this process's worker can claim it now, without waiting for NOTIFY.
            self.wake.notify_one();
        }
        Ok(enqueued)
    }

    async fn claim(&self, limit: u32, lease: Duration, now: OffsetDateTime) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (reap, sql) = match self.db.backend() {
            Backend::Postgres => (super::postgres::REAP, super::postgres::claim(COLUMNS)),
            Backend::Sqlite => (super::sqlite::REAP, super::sqlite::claim(COLUMNS)),
        };
        // Before claiming: a job whose lease ran out on its last attempt is dead, not claimed,
        // once a whole lease more has passed: a live worker that claimed it ahead (waiting
        // for a free slot) or is still recording its outcome gives it back or finishes it
        // well within that, so only a job whose worker died is taken for dead.
        let reaped: Vec<(String, String)> = sqlx::query_as(reap)
            .bind(to_unix(now))
            .bind(LEASE_RAN_OUT)
            .bind(to_unix(now - lease))
            .fetch_all(self.db.pool())
            .await?;
        for (id, kind) in reaped {
            tracing::warn!(job = %id, kind = %kind, "job dead: its lease ran out on its last attempt");
        }
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(uuid::Uuid::new_v4().simple().to_string())
            .bind(to_unix(now + lease))
            .bind(to_unix(now))
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        let mut jobs = rows.into_iter().map(parse).collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| (j.run_at, j.id));
        Ok(jobs)
    }

    async fn complete(&self, job: &Job, now: OffsetDateTime) -> Result<bool> {
        self.finish(job, "state = 'done'", FinishBinds { now, run_at: None, error: None }).await
    }

    async fn fail(&self, job: &Job, next: AfterFailure, error: &str, now: OffsetDateTime) -> Result<bool> {
        match next {
            AfterFailure::RetryAt(at) => {
                self.finish(
                    job,
                    "state = 'pending', run_at = $4, last_error = $5",
                    FinishBinds { now, run_at: Some(at), error: Some(error) },
                )
                .await
            }
            AfterFailure::Dead => {
                self.finish(
                    job,
                    "state = 'dead', last_error = $4",
                    FinishBinds { now, run_at: None, error: Some(error) },
                )
                .await
            }
        }
    }

    async fn release(&self, job: &Job, now: OffsetDateTime) -> Result<bool> {
        // The cut-short attempt does not count against the job.
        self.finish(
            job,
            "state = 'pending', run_at = $1, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END",
            FinishBinds { now, run_at: None, error: None },
        )
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(parse).transpose()
    }

    async fn list(&self, state: Option<JobState>, before: Option<JobId>, limit: u32) -> Result<Vec<Job>> {
        // Ids are time-ordered UUIDs, so "newest first" and the paging cursor are both the id.
        let mut conditions = Vec::new();
        let mut next = 1;
        if state.is_some() {
            conditions.push(format!("state = ${next}"));
            next += 1;
        }
        if before.is_some() {
            conditions.push(format!("id < ${next}"));
            next += 1;
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!("SELECT {COLUMNS} FROM jobs {filter} ORDER BY id DESC LIMIT ${next}");
        let mut query = sqlx::query_as::<_, Row>(&sql);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        if let Some(before) = before {
            query = query.bind(before.to_string());
        }
        let rows = query.bind(i64::from(limit)).fetch_all(self.db.pool()).await?;
        rows.into_iter().map(parse).collect()
    }

    async fn retry(&self, id: JobId, now: OffsetDateTime) -> Result<RetryOutcome> {
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'pending', attempts = 0, run_at = $1, updated_at = $1, \
                             lease_until = NULL, lease_token = NULL \
             WHERE id = $2 AND state = 'dead'",
        )
        .bind(to_unix(now))
        .bind(id.to_string())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        let Some(job) = self.get(id).await? else { return Ok(RetryOutcome::NotFound) };
        if changed == 0 {
            return Ok(RetryOutcome::NotDead(job.state));
        }
        if self.db.backend() == Backend::Postgres {
            sqlx::query(super::postgres::NOTIFY).execute(self.db.pool()).await?;
        }
        self.wake.notify_one();
        Ok(RetryOutcome::Retried(Box::new(job)))
    }

    async fn counts(&self) -> Result<Vec<JobCount>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind, state")
                .fetch_all(self.db.pool())
                .await?;
        rows.into_iter()
            .map(|(kind, state, count)| Ok(JobCount { kind, state: JobState::parse(&state)?, count }))
            .collect()
    }
}
