//! REST for support: the job queue, seen and nudged by the POS backend (`ponte.admin`).
//! Payloads are never shown: a mail's carries its code.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use ponte_identity::jobs::{Job, JobId, JobState, JobStore, RetryOutcome};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Need};
use crate::problem::Problem;
use crate::state::AppState;

const PROBLEM: &str = "application/problem+json";

/// Registers the `/api/v1/jobs` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/jobs")
            .service(web::resource("").get(list_jobs))
            .service(web::resource("/{job}/retry").post(retry_job)),
    );
}

/// A job's state, as in a query.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateParam {
    /// Waiting to run (new or retrying).
    Pending,
    /// Claimed by a worker.
    Running,
    /// Finished.
    Done,
    /// Failed for good.
    Dead,
}

impl From<StateParam> for JobState {
    fn from(s: StateParam) -> Self {
        match s {
            StateParam::Pending => JobState::Pending,
            StateParam::Running => JobState::Running,
            StateParam::Done => JobState::Done,
            StateParam::Dead => JobState::Dead,
        }
    }
}

/// Which jobs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<StateParam>,
    /// How many, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Only jobs older than this job id (the previous page's `next_before`).
    #[param(value_type = Option<String>, format = Uuid)]
    pub before: Option<JobId>,
}

/// A job as support sees it (never its payload).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id (UUID); also the idempotency key handed to external systems.
    pub id: String,
    /// What it does, e.g. `mail.send`.
    pub kind: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When it runs next (pending) or ran (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    /// When it was enqueued (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its last change (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        Self {
            id: j.id.to_string(),
            kind: j.kind,
            state: j.state.as_str().into(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            last_error: j.last_error,
            run_at: j.run_at,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `before` for the next page; absent on the last one.
    pub next_before: Option<String>,
}

/// `{job}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct JobPath {
    /// Job id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub job: JobId,
}

/// Jobs, newest first, optionally of one state.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = JobList),
        (status = 400, description = "invalid_query", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 403, description = "forbidden: only the POS backend's own token", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn list_jobs(
    caller: Caller,
    query: web::Query<JobQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Backend)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::validation("limit", "limit must be between 1 and 200"));
    }
    let jobs = state.jobs.list(query.state.map(Into::into), query.before, limit).await?;
    let next_before = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id.to_string())).flatten();
    Ok(HttpResponse::Ok().json(JobList { jobs: jobs.into_iter().map(Into::into).collect(), next_before }))
}

/// Sends a dead job back to the queue, due now, with its attempts reset.
#[utoipa::path(post, path = "/api/v1/jobs/{job}/retry", tag = "jobs", params(JobPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = JobView),
        (status = 403, description = "forbidden: only the POS backend's own token", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 404, description = "job_not_found", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "job_not_dead", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn retry_job(
    caller: Caller,
    path: web::Path<JobPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.check(None, Need::Backend)?;
    match state.jobs.retry(path.job, state.now()).await? {
        RetryOutcome::Retried(job) => Ok(HttpResponse::Ok().json(JobView::from(*job))),
        RetryOutcome::NotFound => Err(Problem::not_found("job_not_found", "No such job.")),
        RetryOutcome::NotDead(s) => Err(Problem::new(StatusCode::CONFLICT, "job_not_dead", "Conflict")
            .detail(format!("Only a dead job can be retried; this one is {}.", s.as_str()))),
    }
}
