//! The durable job queue: anything with an effect outside the database is a job, written
//! in the same transaction as the change that causes it and run by the worker.
//!
//! A job is `pending` until a worker claims it with a lease (`running`); it ends `done`,
//! or goes back to `pending` with a later `run_at` after a retryable failure, or `dead`
//! after a permanent failure or its last attempt. A lease that runs out (the worker was
//! killed) makes the job claimable again, so every handler must be idempotent: the job
//! id is the idempotency key it passes to anything external. A lease that runs out on the
//! job's last attempt makes it `dead` instead: a job that kills its process every time
//! (out of memory, say) must not be run forever.
//!
//! The rules (backoff, what a failure leads to, when a job is claimable) are pure
//! functions below; [`sql::SqlJobs`] applies them.

pub mod postgres;
pub mod sql;
mod sqlite;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::Result;

pub use sql::SqlJobs;

pub use crate::ids::JobId;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at` and a free worker (new, or retrying after a failure).
    Pending,
    /// Claimed by a worker whose lease has not run out.
    Running,
    /// Finished successfully.
    Done,
    /// Failed permanently or ran out of attempts; only an operator's retry revives it.
    Dead,
}

impl JobState {
    /// Every state, for metrics.
    pub const ALL: [JobState; 4] = [JobState::Pending, JobState::Running, JobState::Done, JobState::Dead];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            other => return Err(crate::Error::Corrupt(format!("job state {other:?}"))),
        })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// What handler runs it, e.g. `mail.send`.
    pub kind: String,
    /// The handler's input.
    pub payload: serde_json::Value,
    /// Enqueueing the same key again returns the existing job; `None` uses the job id.
    pub idempotency_key: Option<String>,
    /// Attempts before the job is dead; `None` takes the store's default.
    pub max_attempts: Option<u32>,
    /// Not before this instant; `None` means now.
    pub run_at: Option<OffsetDateTime>,
}

impl NewJob {
    /// A job of `kind` with `payload`, to run now with the default attempts.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self { kind: kind.into(), payload, idempotency_key: None, max_attempts: None, run_at: None }
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the number of attempts before the job is dead.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What handler runs it.
    pub kind: String,
    /// The handler's input (may hold secrets such as codes: never shown through the API).
    pub payload: serde_json::Value,
    /// Unique across jobs.
    pub idempotency_key: String,
    /// Where it is in its life.
    pub state: JobState,
    /// Attempts started so far (a claim counts one).
    pub attempts: u32,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// Not claimed before this instant.
    pub run_at: OffsetDateTime,
    /// While `running`: the lease's end, after which another worker may claim it.
    pub lease_until: Option<OffsetDateTime>,
    /// While `running`: the claim's token; only its holder may finish the job.
    pub lease_token: Option<String>,
    /// The last failure, as the handler reported it.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: OffsetDateTime,
    /// Its last change.
    pub updated_at: OffsetDateTime,
    /// Wall-clock milliseconds at enqueue: only for the enqueue-to-done histogram, whose
    /// useful resolution is finer than the clock's whole seconds.
    pub enqueued_at_ms: i64,
}

impl Job {
    /// Whether a worker may claim it at `now`: due and pending, or running on a lease that
    /// has run out with attempts left. The claim SQL applies the same rule.
    pub fn is_claimable(&self, now: OffsetDateTime) -> bool {
        match self.state {
            JobState::Pending => self.run_at <= now,
            JobState::Running => lease_expired(self.lease_until, now) && self.attempts < self.max_attempts,
            JobState::Done | JobState::Dead => false,
        }
    }

    /// Whether at `now` it is dead without anyone saying so: running on a lease that ran
    /// out on its last attempt more than `grace` ago, so whatever ran it died with it (a
    /// job that crashes the process every time). The claim makes such jobs dead (with
    /// [`sql::LEASE_RAN_OUT`]) instead of claiming them, with a whole lease as the grace.
    pub fn lease_ran_out_on_last_attempt(&self, now: OffsetDateTime, grace: Duration) -> bool {
        self.state == JobState::Running
            && lease_expired(self.lease_until, now - grace)
            && self.attempts >= self.max_attempts
    }
}

/// Whether a lease ending at `lease_until` has run out at `now` (no lease counts as run out).
pub fn lease_expired(lease_until: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    lease_until.is_none_or(|until| until < now)
}

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// Worth trying again later (a peer is down, a timeout, a 4xx SMTP reply).
    Retry(String),
    /// Trying again cannot help (a rejected recipient, a malformed payload): dead at once.
    Permanent(String),
}

impl JobFailure {
    /// The failure's text, as recorded in `last_error`.
    pub fn message(&self) -> &str {
        match self {
            JobFailure::Retry(m) | JobFailure::Permanent(m) => m,
        }
    }
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::Retry(m) => write!(f, "retryable: {m}"),
            JobFailure::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (before jitter).
    pub base: Duration,
    /// No delay exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::seconds(2), max: Duration::hours(1) }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based): `base · 2^(attempt-1)`
    /// capped at `max`, of which the upper half is scaled by `jitter` (in `[0, 1)`, from
    /// the caller's randomness) so that jobs failing together do not retry together, while
    /// the delay still never drops below half its exponential step.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let step = self.base.saturating_mul(1_i32 << exp.min(30));
        let step = if step > self.max || step.is_negative() { self.max } else { step };
        let half: Duration = step / 2_i32;
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        let spread = Duration::seconds_f64(half.as_seconds_f64() * jitter);
        // Whole seconds, like every stored instant; at least one so a retry is never immediate.
        let total = (half + spread).whole_seconds().max(1);
        Duration::seconds(total)
    }
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to `pending`, claimable from this instant.
    RetryAt(OffsetDateTime),
    /// `dead`: permanent, or the last attempt failed.
    Dead,
}

/// Decides what a failed attempt leads to: a permanent failure or the last attempt makes
/// the job dead, anything else is retried after the backoff (with `jitter` in `[0, 1)`).
pub fn after_failure(
    attempts: u32,
    max_attempts: u32,
    failure: &JobFailure,
    backoff: &Backoff,
    now: OffsetDateTime,
    jitter: f64,
) -> AfterFailure {
    match failure {
        JobFailure::Permanent(_) => AfterFailure::Dead,
        JobFailure::Retry(_) if attempts >= max_attempts => AfterFailure::Dead,
        JobFailure::Retry(_) => AfterFailure::RetryAt(now + backoff.delay(attempts, jitter)),
    }
}

/// What an operator's retry found.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryOutcome {
    /// The job is pending again with its attempts reset.
    Retried(Box<Job>),
    /// No such job.
    NotFound,
    /// The job is not dead (it is pending, running or done): nothing changed.
    NotDead(JobState),
}

/// The result of an enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The job, new or the one already stored under the same idempotency key.
    pub job: Job,
    /// Whether this call created it.
    pub created: bool,
}

/// How many jobs of a kind are in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    /// The kind.
    pub kind: String,
    /// The state.
    pub state: JobState,
    /// How many.
    pub count: i64,
}

/// The queue's storage.
#[async_trait]
pub trait JobStore: Send + Sync + fmt::Debug {
    /// Stores a job in a transaction of its own, or returns the one with the same
    /// idempotency key, and wakes the workers.
    async fn enqueue(&self, job: NewJob, now: OffsetDateTime) -> Result<Enqueued>;

    /// Claims up to `limit` claimable jobs, oldest due first, each with a lease of `lease`.
    async fn claim(&self, limit: u32, lease: Duration, now: OffsetDateTime) -> Result<Vec<Job>>;

    /// Marks a claimed job done; `false` when the claim was lost (its lease ran out and
    /// another worker took it).
    async fn complete(&self, job: &Job, now: OffsetDateTime) -> Result<bool>;

    /// Records a failed attempt of a claimed job; `false` when the claim was lost.
    async fn fail(&self, job: &Job, next: AfterFailure, error: &str, now: OffsetDateTime) -> Result<bool>;

    /// Gives a claimed job back unfinished (shutdown): pending now, the attempt not counted.
    async fn release(&self, job: &Job, now: OffsetDateTime) -> Result<bool>;

    /// One job.
    async fn get(&self, id: JobId) -> Result<Option<Job>>;

    /// Jobs newest first, optionally of one state, older than `before` (paging), at most `limit`.
    async fn list(&self, state: Option<JobState>, before: Option<JobId>, limit: u32) -> Result<Vec<Job>>;

    /// An operator's retry: a dead job back to pending, due now, attempts reset.
    async fn retry(&self, id: JobId, now: OffsetDateTime) -> Result<RetryOutcome>;

    /// How many jobs of each kind are in each state.
    async fn counts(&self) -> Result<Vec<JobCount>>;
}

#[cfg(test)]
mod tests;
