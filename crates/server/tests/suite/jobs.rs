//! The durable job queue: the store's conformance suite on every engine, the worker's
//! behaviour with handlers that succeed, fail for good, keep failing or hang, and the
//! support API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use ponte_identity::clock::{Clock, ManualClock, SystemClock};
use ponte_identity::jobs::{
    AfterFailure, Backoff, Job, JobFailure, JobId, JobState, JobStore, NewJob, RetryOutcome, SqlJobs,
};
use ponte_server::worker::{JobHandler, Registry, Settings, Worker};
use serde_json::{Value, json};
use time::Duration;

use crate::harness::{TestApp, TestDb, now};

const LEASE: Duration = Duration::seconds(30);

fn job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({"n": 1}))
}

#[tokio::test]
async fn the_job_store_conforms_on_every_engine() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let store = SqlJobs::new(db.clone(), 3);
        let t = now();

        // Enqueue, then the same idempotency key again: the same job, not a second one.
        let first = store.enqueue(job("a").idempotency_key("order-1"), t).await.unwrap();
        assert!(first.created);
        assert_eq!((first.job.state, first.job.attempts, first.job.max_attempts), (JobState::Pending, 0, 3));
        let again =
            store.enqueue(NewJob::new("a", json!({"other": true})).idempotency_key("order-1"), t).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.job.id, first.job.id);
        assert_eq!(again.job.payload, json!({"n": 1}), "the first payload stays");
        assert_eq!(store.list(None, None, 100).await.unwrap().len(), 1);

        // A claim takes it with a lease; nobody else gets it meanwhile.
        let claimed = store.claim(10, LEASE, t).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let a = &claimed[0];
        assert_eq!((a.id, a.state, a.attempts), (first.job.id, JobState::Running, 1));
        assert_eq!(a.lease_until, Some(t + LEASE));
        assert!(a.lease_token.is_some());
        assert!(store.claim(10, LEASE, t).await.unwrap().is_empty(), "no double claim");
        assert!(store.complete(a, t).await.unwrap());
        assert_eq!(store.get(a.id).await.unwrap().unwrap().state, JobState::Done);
        assert!(!store.complete(a, t).await.unwrap(), "a finished claim cannot finish again");

        // A retryable failure waits for its backoff; the last attempt makes it dead.
        let b = store.enqueue(job("b").max_attempts(2), t).await.unwrap().job;
        let claim = store.claim(10, LEASE, t).await.unwrap().pop().unwrap();
        assert!(store.fail(&claim, AfterFailure::RetryAt(t + Duration::seconds(5)), "peer down", t).await.unwrap());
        let waiting = store.get(b.id).await.unwrap().unwrap();
        assert_eq!((waiting.state, waiting.attempts), (JobState::Pending, 1));
        assert_eq!(waiting.last_error.as_deref(), Some("peer down"));
        assert!(store.claim(10, LEASE, t + Duration::seconds(4)).await.unwrap().is_empty(), "not before its backoff");
        let claim = store.claim(10, LEASE, t + Duration::seconds(5)).await.unwrap().pop().unwrap();
        assert_eq!((claim.id, claim.attempts), (b.id, 2));
        assert!(store.fail(&claim, AfterFailure::Dead, "peer still down", t).await.unwrap());
        let dead = store.get(b.id).await.unwrap().unwrap();
        assert_eq!((dead.state, dead.last_error.as_deref()), (JobState::Dead, Some("peer still down")));

        // A lease that runs out (the worker was killed) makes the job claimable again, and
        // the old claim can no longer finish it.
        let c = store.enqueue(job("c"), t).await.unwrap().job;
        let lost = store.claim(10, LEASE, t).await.unwrap().pop().unwrap();
        assert!(store.claim(10, LEASE, t + LEASE).await.unwrap().is_empty(), "the lease's last second");
        let reclaimed = store.claim(10, LEASE, t + LEASE + Duration::seconds(1)).await.unwrap().pop().unwrap();
        assert_eq!((reclaimed.id, reclaimed.attempts), (c.id, 2));
        assert_ne!(reclaimed.lease_token, lost.lease_token);
        assert!(!store.complete(&lost, t).await.unwrap(), "the expired claim lost the job");
        assert!(store.complete(&reclaimed, t).await.unwrap());

        // Released at shutdown: pending again at once, the cut-short attempt not counted.
        let d = store.enqueue(job("d"), t).await.unwrap().job;
        let held = store.claim(10, LEASE, t).await.unwrap().pop().unwrap();
        assert!(store.release(&held, t).await.unwrap());
        let released = store.get(d.id).await.unwrap().unwrap();
        assert_eq!((released.state, released.attempts, released.lease_token), (JobState::Pending, 0, None));

        // Listing by state, newest first, paged by id.
        let dead_jobs = store.list(Some(JobState::Dead), None, 10).await.unwrap();
        assert_eq!(dead_jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
        let all: Vec<JobId> = store.list(None, None, 10).await.unwrap().iter().map(|j| j.id).collect();
        assert_eq!(all, vec![d.id, c.id, b.id, first.job.id]);
        let page: Vec<JobId> = store.list(None, Some(c.id), 2).await.unwrap().iter().map(|j| j.id).collect();
        assert_eq!(page, vec![b.id, first.job.id]);
        assert_eq!(store.list(Some(JobState::Pending), None, 10).await.unwrap().len(), 1);

        // An operator's retry revives a dead job only.
        match store.retry(b.id, t).await.unwrap() {
            RetryOutcome::Retried(j) => assert_eq!((j.state, j.attempts, j.run_at), (JobState::Pending, 0, t)),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.retry(b.id, t).await.unwrap(), RetryOutcome::NotDead(JobState::Pending));
        assert_eq!(store.retry(c.id, t).await.unwrap(), RetryOutcome::NotDead(JobState::Done));
        assert_eq!(store.retry(JobId::new(), t).await.unwrap(), RetryOutcome::NotFound);

        let counts = store.counts().await.unwrap();
        let count = |kind: &str, state| counts.iter().find(|c| c.kind == kind && c.state == state).map(|c| c.count);
        assert_eq!((count("a", JobState::Done), count("b", JobState::Pending)), (Some(1), Some(1)));

        // Old done jobs are pruned; nothing else is.
        assert_eq!(store.prune_done(t + Duration::seconds(1)).await.unwrap(), 2);
        assert!(store.get(a.id).await.unwrap().is_none() && store.get(b.id).await.unwrap().is_some());
        db.close().await;
    }
}

#[tokio::test]
async fn a_lease_that_runs_out_on_the_last_attempt_makes_the_job_dead_not_claimed_again() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let store = SqlJobs::new(db.clone(), 3);
        let t = now();
        // Two jobs whose worker dies under them every time (a job that kills the process).
        let crashy = store.enqueue(job("crashy").max_attempts(2), t).await.unwrap().job;
        let spare = store.enqueue(job("spare").max_attempts(3), t).await.unwrap().job;
        assert_eq!(store.claim(10, LEASE, t).await.unwrap().len(), 2);

        // First crash: both have attempts left, so both are claimed again.
        let t2 = t + LEASE + Duration::seconds(1);
        let again = store.claim(10, LEASE, t2).await.unwrap();
        let attempts: Vec<(JobId, u32)> = again.iter().map(|j| (j.id, j.attempts)).collect();
        assert_eq!(attempts, vec![(crashy.id, 2), (spare.id, 2)]);

        // Second crash: `crashy` has used its two attempts and is not claimed again; `spare`
        // goes on. Within a lease of its end `crashy` is not yet taken for dead (a live
        // worker that claimed it ahead may still give it back)...
        let t3 = t2 + LEASE + Duration::seconds(1);
        let third = store.claim(10, LEASE, t3).await.unwrap();
        assert_eq!(third.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), vec![(spare.id, 3)]);
        assert_eq!(store.get(crashy.id).await.unwrap().unwrap().state, JobState::Running);
        assert!(store.release(&again[0], t3).await.unwrap(), "its live holder can still give it back");
        let back = store.claim(10, LEASE, t3).await.unwrap();
        assert_eq!(back.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), vec![(crashy.id, 2)]);
        // ...and once a whole lease more has passed, it is dead.
        let t3 = t3 + LEASE + LEASE + Duration::seconds(1);
        assert!(store.claim(10, LEASE, t3).await.unwrap().is_empty(), "nothing left to claim");
        let dead = store.get(crashy.id).await.unwrap().unwrap();
        assert_eq!((dead.state, dead.attempts, dead.lease_token.as_deref()), (JobState::Dead, 2, None));
        assert!(dead.last_error.as_deref().unwrap().contains("lease ran out on its last attempt"), "{dead:?}");
        assert!(!store.complete(&back[0], t3).await.unwrap(), "the dead job's last claim cannot finish it");
        // The last attempt's lease of `spare` ran out in the same time: dead too.
        assert_eq!(store.get(spare.id).await.unwrap().unwrap().state, JobState::Dead);
        let t4 = t3;
        // An operator's retry still revives such a job.
        assert!(matches!(store.retry(crashy.id, t4).await.unwrap(), RetryOutcome::Retried(_)));
        db.close().await;
    }
}

#[tokio::test]
async fn a_job_exists_only_if_the_transaction_that_wrote_it_commits() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let store = SqlJobs::new(db.clone(), 3);
        let mut tx = db.pool().begin().await.unwrap();
        let rolled_back = store.enqueue_in(&mut tx, job("x"), now()).await.unwrap().job.id;
        tx.rollback().await.unwrap();
        assert!(store.get(rolled_back).await.unwrap().is_none());
        let mut tx = db.pool().begin().await.unwrap();
        let committed = store.enqueue_in(&mut tx, job("x"), now()).await.unwrap().job.id;
        assert!(store.get(committed).await.unwrap().is_none(), "invisible before the commit");
        tx.commit().await.unwrap();
        assert_eq!(store.get(committed).await.unwrap().unwrap().state, JobState::Pending);
        db.close().await;
    }
}

#[tokio::test]
async fn concurrent_claimers_never_get_the_same_job() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let store = Arc::new(SqlJobs::new(db.clone(), 3));
        let t = now();
        for _ in 0..200 {
            store.enqueue(job("n"), t).await.unwrap();
        }
        let mut claimers = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            claimers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim(5, LEASE, t).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    for j in batch {
                        assert!(store.complete(&j, t).await.unwrap());
                        mine.push(j.id);
                    }
                }
            }));
        }
        let mut seen = HashMap::new();
        let mut busy_claimers = 0;
        for c in claimers {
            let mine = c.await.unwrap();
            busy_claimers += usize::from(!mine.is_empty());
            for id in mine {
                *seen.entry(id).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 200, "every job claimed");
        assert!(seen.values().all(|&n| n == 1), "no job claimed twice");
        assert!(busy_claimers > 1, "the claimers really ran side by side");
        db.close().await;
    }
}

/// Counts runs per job; can be told to fail or to hang.
#[derive(Debug, Default)]
struct Probe {
    runs: Mutex<HashMap<JobId, u32>>,
}

impl Probe {
    fn runs(&self, id: JobId) -> u32 {
        self.runs.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
enum Behaviour {
    Succeed,
    FailForGood,
    KeepFailing,
    Hang,
    Panic,
}

#[derive(Debug)]
struct TestHandler(Arc<Probe>, Behaviour);

#[async_trait]
impl JobHandler for TestHandler {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        *self.0.runs.lock().unwrap().entry(job.id).or_insert(0) += 1;
        match self.1 {
            Behaviour::Succeed => Ok(()),
            Behaviour::FailForGood => Err(JobFailure::Permanent("the recipient does not exist".into())),
            Behaviour::KeepFailing => Err(JobFailure::Retry("the peer is down".into())),
            Behaviour::Hang => {
                tokio::time::sleep(StdDuration::from_secs(3600)).await;
                Ok(())
            }
            Behaviour::Panic => panic!("the handler met a bug"),
        }
    }
}

fn settings() -> Settings {
    Settings {
        concurrency: 2,
        poll_interval: StdDuration::from_millis(50),
        lease: Duration::seconds(30),
        backoff: Backoff { base: Duration::seconds(1), max: Duration::seconds(1) },
        shutdown_grace: StdDuration::from_millis(300),
        retain_done: Duration::days(7),
        listen_url: None,
        housekeeping_every: StdDuration::from_secs(15),
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn poison_jobs_go_dead_while_the_others_finish() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let store = Arc::new(SqlJobs::new(db.clone(), 3));
        let probe = Arc::new(Probe::default());
        let registry = Registry::new()
            .with("ok", Arc::new(TestHandler(probe.clone(), Behaviour::Succeed)))
            .with("poison", Arc::new(TestHandler(probe.clone(), Behaviour::FailForGood)))
            .with("flaky", Arc::new(TestHandler(probe.clone(), Behaviour::KeepFailing)))
            .with("buggy", Arc::new(TestHandler(probe.clone(), Behaviour::Panic)));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // The bad jobs go in first: they must not hold up the good ones behind them.
        let poison = store.enqueue(job("poison"), clock.now()).await.unwrap().job.id;
        let flaky = store.enqueue(job("flaky"), clock.now()).await.unwrap().job.id;
        let unknown = store.enqueue(job("nobody-handles-this"), clock.now()).await.unwrap().job.id;
        let buggy = store.enqueue(job("buggy"), clock.now()).await.unwrap().job.id;
        let mut good = Vec::new();
        for _ in 0..20 {
            good.push(store.enqueue(job("ok"), clock.now()).await.unwrap().job.id);
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(Worker::new(store.clone(), registry, settings(), clock).run(stopped));

        wait_until("every good job is done", || {
            let (store, good) = (store.clone(), good.clone());
            async move {
                let done = store.list(Some(JobState::Done), None, 100).await.unwrap();
                good.iter().all(|id| done.iter().any(|j| j.id == *id))
            }
        })
        .await;
        assert!(good.iter().all(|id| probe.runs(*id) == 1), "each good job ran once");
        let p = store.get(poison).await.unwrap().unwrap();
        assert_eq!((p.state, p.attempts), (JobState::Dead, 1), "a permanent failure is dead at once");
        assert_eq!(p.last_error.as_deref(), Some("the recipient does not exist"));
        let u = store.get(unknown).await.unwrap().unwrap();
        assert_eq!(u.state, JobState::Dead);
        assert!(u.last_error.unwrap().contains("no handler"));
        wait_until("the panicking job is dead", || {
            let store = store.clone();
            async move { store.get(buggy).await.unwrap().unwrap().state == JobState::Dead }
        })
        .await;
        let b = store.get(buggy).await.unwrap().unwrap();
        assert_eq!((b.attempts, probe.runs(buggy)), (1, 1), "a panic is permanent: the same bug would panic again");
        assert_eq!(b.last_error.as_deref(), Some("handler panicked: the handler met a bug"));

        wait_until("the flaky job has used its attempts", || {
            let store = store.clone();
            async move { store.get(flaky).await.unwrap().unwrap().state == JobState::Dead }
        })
        .await;
        let f = store.get(flaky).await.unwrap().unwrap();
        assert_eq!((f.attempts, probe.runs(flaky)), (3, 3), "retried up to max_attempts, then dead");
        assert_eq!(f.last_error.as_deref(), Some("the peer is down"));
        stop.send(true).unwrap();
        worker.await.unwrap();
        db.close().await;
    }
}

#[tokio::test]
async fn shutdown_releases_the_lease_of_a_job_that_did_not_finish_in_the_grace() {
    let test_db = TestDb::sqlite();
    let db = test_db.open_migrated().await;
    let store = Arc::new(SqlJobs::new(db.clone(), 3));
    let probe = Arc::new(Probe::default());
    let registry = Registry::new().with("slow", Arc::new(TestHandler(probe.clone(), Behaviour::Hang)));
    let clock = Arc::new(ManualClock::new(now()));
    let id = store.enqueue(job("slow"), clock.now()).await.unwrap().job.id;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(Worker::new(store.clone(), registry, settings(), clock.clone()).run(stopped));
    wait_until("the slow job runs", || {
        let probe = probe.clone();
        async move { probe.runs(id) == 1 }
    })
    .await;
    assert_eq!(store.get(id).await.unwrap().unwrap().state, JobState::Running);
    stop.send(true).unwrap();
    tokio::time::timeout(StdDuration::from_secs(5), worker).await.expect("the worker stops after its grace").unwrap();
    let j = store.get(id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempts, j.lease_token), (JobState::Pending, 0, None), "released, claimable at once");
    assert_eq!(store.claim(1, LEASE, clock.now()).await.unwrap().len(), 1, "the next worker takes it at once");
}

#[tokio::test]
async fn support_lists_and_retries_jobs_with_an_admin_token_only() {
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| c.worker.housekeeping_secs = 1).await;
    let admin = app.admin_token().await;
    let http = app.browser();
    // A job nobody handles dies at the worker; a mail is delivered to the file outbox.
    let orphan =
        app.state.jobs.enqueue(NewJob::new("nobody.handles", json!({"secret": "s3cr3t"})), app.clock.now()).await;
    let orphan = orphan.unwrap().job.id;
    let mail = ponte_identity::outbox::OutgoingMail {
        to: "mario@esempio.it".into(),
        lang: ponte_identity::outbox::Lang::It,
        message: ponte_identity::outbox::Message::LinkCode {
            code: "12345678".into(),
            provider_name: "ID".into(),
            upstream_email: "m@gruppo.it".into(),
        },
    };
    let mail_job = app.state.outbox.send(mail).await.unwrap();
    let get = |path: String| {
        let (http, admin) = (http.clone(), admin.clone());
        let url = app.url(&path);
        async move { http.get(url).bearer_auth(admin).send().await.unwrap() }
    };
    wait_until("both jobs have finished", || async move {
        let body: Value = get("/api/v1/jobs".into()).await.json().await.unwrap();
        body["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "dead" || j["state"] == "done")
    })
    .await;

    let response = get("/api/v1/jobs?state=dead".into()).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("s3cr3t") && !text.contains("payload"), "payloads are never shown: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let dead = body["jobs"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], orphan.to_string());
    assert_eq!((dead[0]["kind"].as_str(), dead[0]["attempts"].as_u64()), (Some("nobody.handles"), Some(1)));
    assert!(dead[0]["last_error"].as_str().unwrap().contains("no handler"));
    for key in ["max_attempts", "run_at", "created_at", "updated_at"] {
        assert!(dead[0].get(key).is_some(), "{key} missing");
    }
    let done: Value = get("/api/v1/jobs?state=done&limit=1".into()).await.json().await.unwrap();
    assert_eq!(done["jobs"][0]["id"], mail_job.to_string());
    assert_eq!(done["jobs"][0]["kind"], "mail.send");
    assert!(!done.to_string().contains("12345678"), "a mail's code never leaves through the API");
    let bad = get("/api/v1/jobs?state=failed".into()).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["code"], "invalid_query");
    let bad = get("/api/v1/jobs?limit=0".into()).await;
    assert_eq!(bad.status(), 422);

    let retry = |id: String, token: String| {
        let http = http.clone();
        let url = app.url(&format!("/api/v1/jobs/{id}/retry"));
        async move { http.post(url).bearer_auth(token).send().await.unwrap() }
    };
    let revived = retry(orphan.to_string(), admin.clone()).await;
    assert_eq!(revived.status(), 200);
    let revived: Value = revived.json().await.unwrap();
    assert_eq!((revived["state"].as_str(), revived["attempts"].as_u64()), (Some("pending"), Some(0)));
    let not_dead = retry(mail_job.to_string(), admin.clone()).await;
    assert_eq!(not_dead.status(), 409);
    assert_eq!(not_dead.json::<Value>().await.unwrap()["code"], "job_not_dead");
    let missing = retry(JobId::new().to_string(), admin.clone()).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "job_not_found");

    // Anyone but the POS backend's own admin token is refused.
    let weak = app.token_with_scopes(&["ponte.read"]).await;
    let refused = http.get(app.url("/api/v1/jobs")).bearer_auth(&weak).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(retry(orphan.to_string(), weak).await.status(), 403);
    assert_eq!(http.get(app.url("/api/v1/jobs")).send().await.unwrap().status(), 401);

    let metrics = http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("jobs_finished_total{kind=\"mail.send\",outcome=\"done\"}"), "{metrics}");
    assert!(metrics.contains("job_enqueue_to_done_seconds_bucket{kind=\"mail.send\""), "{metrics}");
    assert!(metrics.contains("job_attempts_total{kind=\"nobody.handles\"}"), "{metrics}");
    // The queue's gauge, refreshed by the worker's housekeeping (every second here).
    wait_until("the jobs gauge shows the finished jobs", || {
        let (http, url) = (http.clone(), app.url("/metrics"));
        async move {
            let metrics = http.get(url).send().await.unwrap().text().await.unwrap();
            metrics.contains("jobs{kind=\"mail.send\",state=\"done\"} 1")
                && metrics.contains("jobs{kind=\"nobody.handles\",state=\"dead\"} 1")
        }
    })
    .await;
}

#[tokio::test]
async fn a_server_without_its_worker_still_shows_the_queue_on_metrics() {
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| {
        c.worker.enabled = false;
        c.worker.housekeeping_secs = 1;
    })
    .await;
    let id = app.state.jobs.enqueue(job("served.only"), app.clock.now()).await.unwrap().job.id;
    let http = app.browser();
    wait_until("the jobs gauge shows the pending job", || {
        let (http, url) = (http.clone(), app.url("/metrics"));
        async move {
            let metrics = http.get(url).send().await.unwrap().text().await.unwrap();
            metrics.contains("jobs{kind=\"served.only\",state=\"pending\"} 1")
        }
    })
    .await;
    let j = app.state.jobs.get(id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Pending, 0), "counted, never claimed: no worker runs here");
}
