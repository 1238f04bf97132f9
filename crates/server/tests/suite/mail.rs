//! Mail leaves through the outbox: jobs delivered over SMTP to a sink written here and to
//! aiosmtpd, surviving a killed process, two replicas, refusing servers and an outage.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ponte_identity::clock::{Clock, SystemClock};
use ponte_identity::jobs::{JobId, JobState, JobStore, SqlJobs};
use ponte_identity::outbox::{Lang, Message, OutgoingMail, message_id};
use ponte_identity::seal::MasterKeys;
use ponte_server::config::Secret;
use serde_json::json;

use crate::federation::{PASSWORD, World};
use crate::harness::{NowForTest, TestApp, TestDb, backend_env};
use crate::process::{PonteProcess, free_port};
use crate::sink::{Sink, message_id_of};

/// The domain of the default `smtp.from`, which Message-IDs carry.
const FROM_DOMAIN: &str = "localhost";

pub fn link_code(to: &str, code: &str) -> OutgoingMail {
    OutgoingMail {
        to: to.into(),
        lang: Lang::En,
        message: Message::LinkCode {
            code: code.into(),
            provider_name: "TeamSystem ID".into(),
            upstream_email: "mario.rossi@gruppo.it".into(),
        },
    }
}

/// The first `.eml` the file outbox holds, once the worker has written it.
pub async fn wait_for_outbox_file(dir: &Path) -> String {
    for _ in 0..200 {
        let found = std::fs::read_dir(dir)
            .ok()
            .and_then(|mut entries| entries.find_map(|e| e.ok().map(|e| e.path())))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"));
        if let Some(path) = found {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a mail in the outbox carries a code: only its owner reads it");
            return std::fs::read_to_string(path).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no mail reached {}", dir.display());
}

/// The 8-digit code in a rendered link-code mail (either language).
pub fn code_in(raw: &str) -> String {
    let after = raw.split("Code: ").nth(1).or_else(|| raw.split("Codice: ").nth(1)).expect("a code line");
    let code: String = after.chars().take(8).collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code:?} in {raw}");
    code
}

async fn job_state(store: &SqlJobs, id: JobId) -> (JobState, u32) {
    let job = store.get(id).await.unwrap().unwrap();
    (job.state, job.attempts)
}

pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_mail_queued_in_a_rolled_back_transaction_never_leaves() {
    let sink = Sink::start().await;
    let app =
        TestApp::spawn_with(TestDb::sqlite(), None, |c| c.smtp.url = Some(Secret::from(sink.url().as_str()))).await;
    let pool = app.state.db.pool().clone();
    let mut tx = pool.begin().await.unwrap();
    let dropped = app.state.outbox.send_in(&mut tx, &link_code("gone@esempio.it", "1"), app.clock.now_for_test()).await;
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let kept = app.state.outbox.send_in(&mut tx, &link_code("kept@esempio.it", "2"), app.clock.now_for_test()).await;
    tx.commit().await.unwrap();
    sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(sink.distinct_message_ids(), BTreeSet::from([message_id(kept.unwrap(), FROM_DOMAIN)]));
    assert!(app.state.jobs.get(dropped.unwrap()).await.unwrap().is_none());
    assert!(sink.deliveries().iter().all(|d| d.to == ["kept@esempio.it"]));
}

#[tokio::test]
async fn a_mail_sealed_under_another_master_key_goes_dead_without_leaving_or_quoting_itself() {
    let sink = Sink::start().await;
    let app =
        TestApp::spawn_with(TestDb::sqlite(), None, |c| c.smtp.url = Some(Secret::from(sink.url().as_str()))).await;
    let foreign = link_code("mario@esempio.it", "24682468").to_job(&MasterKeys::generate()).unwrap();
    let stored = serde_json::to_string(&foreign.payload).unwrap();
    assert!(!stored.contains("24682468") && !stored.contains("mario@"), "the jobs table holds it sealed: {stored}");
    let id = app.state.jobs.enqueue(foreign, app.clock.now_for_test()).await.unwrap().job.id;
    let ours = app.state.outbox.send(link_code("anna@esempio.it", "13571357")).await.unwrap();
    sink.wait_for(1, Duration::from_secs(20)).await;
    eventually("the foreign mail is dead", Duration::from_secs(20), || async {
        job_state(&app.state.jobs, id).await.0 == JobState::Dead
    })
    .await;
    let dead = app.state.jobs.get(id).await.unwrap().unwrap();
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("could not be opened") && !error.contains("2468"), "{error}");
    assert_eq!(sink.distinct_message_ids(), BTreeSet::from([message_id(ours, FROM_DOMAIN)]), "only ours left");
}

#[tokio::test]
async fn ponte_killed_mid_delivery_delivers_the_mail_once_after_restart() {
    let sink = Sink::start().await;
    sink.hold(true);
    let db = TestDb::sqlite();
    let store = SqlJobs::new(db.open_migrated().await, 8);
    let master = MasterKeys::generate();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SMTP_URL", sink.url()),
        ("PONTE_SMTP__TIMEOUT_SECS", "2".into()),
        ("PONTE_WORKER__LEASE_SECS", "3".into()),
        ("PONTE_WORKER__POLL_INTERVAL_MS", "100".into()),
        ("PONTE_MASTER_KEY", master.encode()),
    ];
    let mut first = PonteProcess::serve(db.dir.path(), &env).await;
    let id = store.enqueue(link_code("mario@esempio.it", "11112222").to_job(&master).unwrap(), SystemClock.now()).await;
    let id = id.unwrap().job.id;

    // The sink has the whole message but holds its "250": the job is running when killed.
    sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(job_state(&store, id).await, (JobState::Running, 1));
    first.kill();
    sink.hold(false);
    assert_eq!(job_state(&store, id).await.0, JobState::Running, "SIGKILL released nothing");

    let _second = PonteProcess::serve(db.dir.path(), &env).await;
    eventually("the job is done after the restart", Duration::from_secs(30), || async {
        job_state(&store, id).await.0 == JobState::Done
    })
    .await;
    let deliveries = sink.deliveries();
    assert_eq!(deliveries.len(), 2, "the interrupted attempt and the one after the restart");
    assert_eq!(
        sink.distinct_message_ids(),
        BTreeSet::from([message_id(id, FROM_DOMAIN)]),
        "both carry the job's Message-ID"
    );
    assert_eq!(deliveries.iter().filter(|d| d.acknowledged).count(), 1, "exactly one delivery completed");
    assert!(deliveries.iter().all(|d| d.raw.contains("Code: 11112222")), "the same mail both times");
    assert_eq!(job_state(&store, id).await, (JobState::Done, 2));
}

#[tokio::test]
async fn ponte_worker_alone_delivers_and_at_sigterm_releases_what_it_could_not_finish() {
    let sink = Sink::start().await;
    let db = TestDb::sqlite();
    let store = SqlJobs::new(db.open_migrated().await, 8);
    let master = MasterKeys::generate();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SMTP_URL", sink.url()),
        ("PONTE_WORKER__POLL_INTERVAL_MS", "100".into()),
        ("PONTE_WORKER__SHUTDOWN_GRACE_SECS", "1".into()),
        ("PONTE_MASTER_KEY", master.encode()),
    ];
    let mut worker = PonteProcess::worker(db.dir.path(), &env);
    let first =
        store.enqueue(link_code("anna@esempio.it", "10101010").to_job(&master).unwrap(), SystemClock.now()).await;
    let first = first.unwrap().job.id;
    eventually("ponte worker delivered the first mail", Duration::from_secs(30), || async {
        job_state(&store, first).await.0 == JobState::Done
    })
    .await;

    // The second is stuck at the sink when SIGTERM arrives: after the grace its lease is given back.
    sink.hold(true);
    let second =
        store.enqueue(link_code("bea@esempio.it", "20202020").to_job(&master).unwrap(), SystemClock.now()).await;
    let second = second.unwrap().job.id;
    sink.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(job_state(&store, second).await, (JobState::Running, 1));
    let status = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "a clean exit: {status}");
    let released = store.get(second).await.unwrap().unwrap();
    assert_eq!((released.state, released.attempts, released.lease_token), (JobState::Pending, 0, None));
    sink.hold(false);
}

#[tokio::test]
async fn an_enqueue_in_another_process_wakes_an_idle_worker_through_notify() {
    let Some(db) = TestDb::postgres().await else { return };
    let sink = Sink::start().await;
    let store = SqlJobs::new(db.open_migrated().await, 8);
    // Polling once a minute: only LISTEN/NOTIFY can make this quick.
    let master = MasterKeys::generate();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SMTP_URL", sink.url()),
        ("PONTE_WORKER__POLL_INTERVAL_MS", "60000".into()),
        ("PONTE_MASTER_KEY", master.encode()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let _ponte = PonteProcess::serve(dir.path(), &env).await;
    // Give the worker its first (empty) claim and the listener its connection, then enqueue.
    eventually("the listener is connected", Duration::from_secs(10), || async {
        let listening: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
            .fetch_one(store.database().pool())
            .await
            .unwrap();
        listening.0 > 0
    })
    .await;
    let started = std::time::Instant::now();
    let id = store.enqueue(link_code("carla@esempio.it", "30303030").to_job(&master).unwrap(), SystemClock.now()).await;
    let id = id.unwrap().job.id;
    eventually("the mail is delivered", Duration::from_secs(10), || async {
        job_state(&store, id).await.0 == JobState::Done
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "woken, not polled");
    assert_eq!(sink.distinct_message_ids(), BTreeSet::from([message_id(id, FROM_DOMAIN)]));
}

#[tokio::test]
async fn two_replicas_on_one_postgres_deliver_500_mails_once_each() {
    let Some(db) = TestDb::postgres().await else { return };
    let sink = Sink::start().await;
    let database = db.open_migrated().await;
    let store = SqlJobs::new(database.clone(), 8);
    let master = MasterKeys::generate();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SMTP_URL", sink.url()),
        ("PONTE_WORKER__CONCURRENCY", "8".into()),
        // Replicas of one database share its master key.
        ("PONTE_MASTER_KEY", master.encode()),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = PonteProcess::serve(dir_a.path(), &env).await;
    let b = PonteProcess::serve(dir_b.path(), &env).await;

    // Enqueued from this process, in transactions of 50: only NOTIFY (or a poll) tells the replicas.
    let mut ids = BTreeSet::new();
    for batch in 0..10 {
        let mut tx = database.pool().begin().await.unwrap();
        for n in 0..50 {
            let mail = link_code(&format!("user{batch}-{n}@esempio.it"), "12345678");
            ids.insert(
                store.enqueue_in(&mut tx, mail.to_job(&master).unwrap(), SystemClock.now()).await.unwrap().job.id,
            );
        }
        tx.commit().await.unwrap();
    }
    eventually("500 jobs are done", Duration::from_secs(120), || async {
        store.list(Some(JobState::Done), None, 1000).await.unwrap().len() == 500
    })
    .await;

    let deliveries = sink.deliveries();
    let expected: BTreeSet<String> = ids.iter().map(|id| message_id(*id, FROM_DOMAIN)).collect();
    assert_eq!(sink.distinct_message_ids(), expected, "every job's mail, and only those");
    assert_eq!(deliveries.len(), 500, "no raw duplicate: nothing was interrupted");
    let jobs = store.list(None, None, 1000).await.unwrap();
    assert!(jobs.iter().all(|j| j.state == JobState::Done && j.attempts == 1), "each job ran exactly once");
    let sample = "jobs_finished_total{kind=\"mail.send\",outcome=\"done\"}";
    let (by_a, by_b) = (a.metric(sample).await, b.metric(sample).await);
    assert_eq!(by_a + by_b, 500.0, "the replicas' own counts add up");
    assert!(by_a > 0.0 && by_b > 0.0, "both replicas worked: {by_a} + {by_b}");
}

#[tokio::test]
async fn a_refused_recipient_is_dead_at_once_a_busy_one_after_its_attempts_and_the_rest_arrive() {
    let sink = Sink::start().await;
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| {
        c.smtp.url = Some(Secret::from(sink.url().as_str()));
        c.worker.max_attempts = 3;
        c.worker.poll_interval_ms = 50;
    })
    .await;
    let rejected = app.state.outbox.send(link_code("rejected@esempio.it", "00000001")).await.unwrap();
    let busy = app.state.outbox.send(link_code("busy@esempio.it", "00000002")).await.unwrap();
    let mut good = BTreeSet::new();
    for n in 0..10 {
        good.insert(app.state.outbox.send(link_code(&format!("ok{n}@esempio.it"), "12345678")).await.unwrap());
    }
    sink.wait_for(10, Duration::from_secs(20)).await;
    let store = app.state.jobs.clone();
    eventually("the good jobs are done", Duration::from_secs(20), || {
        let (store, good) = (store.clone(), good.clone());
        async move {
            let done = store.list(Some(JobState::Done), None, 100).await.unwrap();
            good.iter().all(|id| done.iter().any(|j| j.id == *id))
        }
    })
    .await;
    let dead = store.get(rejected).await.unwrap().unwrap();
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 1), "a 5xx is permanent");
    assert!(dead.last_error.as_deref().unwrap().contains("550"), "{:?}", dead.last_error);

    // The busy one waits out its backoff on the app's clock; move it on until it gives up.
    eventually("the busy recipient's job is dead", Duration::from_secs(20), || {
        app.clock.advance(time::Duration::seconds(10));
        let store = store.clone();
        async move { store.get(busy).await.unwrap().unwrap().state == JobState::Dead }
    })
    .await;
    let busy = store.get(busy).await.unwrap().unwrap();
    assert_eq!(busy.attempts, 3, "a 4xx is retried up to max_attempts");
    assert!(busy.last_error.as_deref().unwrap().contains("451"), "{:?}", busy.last_error);
    let expected: BTreeSet<String> = good.iter().map(|id| message_id(*id, FROM_DOMAIN)).collect();
    assert_eq!(sink.distinct_message_ids(), expected);
    assert_eq!(sink.deliveries().len(), 10);
    assert!(sink.deliveries().iter().all(|d| d.to.len() == 1 && d.to[0].starts_with("ok")));
}

/// aiosmtpd writing a Maildir, as a child process.
pub struct Aiosmtpd {
    bin: PathBuf,
    port: u16,
    maildir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Aiosmtpd {
    /// `None` (skipped) unless `PONTE_TEST_AIOSMTPD` names the binary; under CI a failure.
    pub async fn start() -> Option<Self> {
        let bin = PathBuf::from(backend_env("PONTE_TEST_AIOSMTPD")?);
        let mut server = Self { bin, port: free_port(), maildir: tempfile::tempdir().unwrap(), child: None };
        server.up().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub async fn up(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["-n", "-l", &format!("127.0.0.1:{}", self.port), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts");
        self.child = Some(child);
        // Ready when it greets.
        for _ in 0..200 {
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut greeting = [0u8; 3];
                use tokio::io::AsyncReadExt;
                let mut stream = stream;
                if stream.read_exact(&mut greeting).await.is_ok() && &greeting == b"220" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not come up");
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A folder aiosmtpd creates as a Maildir (it only does so for a folder that is not there).
    fn maildir(&self) -> PathBuf {
        self.maildir.path().join("Maildir")
    }

    /// Every message in the Maildir.
    pub fn messages(&self) -> Vec<String> {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir().join(sub)).ok())
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        self.down();
    }
}

/// Signs in upstream as someone whose verified email is a Ponte user's: the proof page.
async fn proof_page(world: &World) -> (reqwest::Client, String) {
    let token = world.upstream.admin_token().await;
    let created = world
        .upstream
        .browser()
        .post(world.upstream.url("/api/v1/accounts"))
        .bearer_auth(&token)
        .json(&json!({"name": "g", "owner": {"email": "MARIO@esempio.it", "name": "Mario", "password": PASSWORD}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let browser = world.ponte.browser();
    let (page, _) =
        world.browse(&browser, &world.ponte.url("/federation/up/start?intent=login"), "MARIO@esempio.it").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("link-send-code"), "{html}");
    (browser, html)
}

#[tokio::test]
async fn the_link_proof_code_arrives_through_aiosmtpd() {
    let Some(smtp) = Aiosmtpd::start().await else { return };
    let url = smtp.url();
    let world = World::configured(TestDb::sqlite(), None, |c| c.smtp.url = Some(Secret::from(url.as_str()))).await;
    let (browser, html) = proof_page(&world).await;
    let sent = world.press(&browser, &html, "send_code", &[]).await;
    assert_eq!(sent.status(), 200);
    let html = sent.text().await.unwrap();

    eventually("the mail is in aiosmtpd's Maildir", Duration::from_secs(20), || {
        let n = smtp.messages().len();
        async move { n == 1 }
    })
    .await;
    let raw = smtp.messages().remove(0);
    assert!(raw.contains("To: mario@esempio.it"), "{raw}");
    let store = world.ponte.state.jobs.clone();
    eventually("the mail job is done", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.list(Some(JobState::Done), None, 10).await.unwrap().len() == 1 }
    })
    .await;
    let jobs = store.list(None, None, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        message_id_of(&raw.replace('\n', "\r\n").replace("\r\r\n", "\r\n")),
        Some(message_id(jobs[0].id, FROM_DOMAIN))
    );
    let done = world.press(&browser, &html, "code", &[("code", &code_in(&raw))]).await;
    assert_eq!(done.status(), 303, "the emailed code links and signs in");
}

#[tokio::test]
async fn codes_asked_for_while_aiosmtpd_is_down_each_arrive_once_when_it_returns() {
    let Some(mut smtp) = Aiosmtpd::start().await else { return };
    let url = smtp.url();
    let world = World::configured(TestDb::sqlite(), None, |c| {
        c.smtp.url = Some(Secret::from(url.as_str()));
        c.worker.poll_interval_ms = 50;
    })
    .await;
    let (browser, mut html) = proof_page(&world).await;
    smtp.down();

    // Asking for a code never fails because the mail server is away.
    for _ in 0..3 {
        let sent = world.press(&browser, &html, "send_code", &[]).await;
        assert_eq!(sent.status(), 200, "the page answers while SMTP is down");
        html = sent.text().await.unwrap();
        assert!(html.contains("link-code"));
    }
    let store = world.ponte.state.jobs.clone();
    eventually("every mail job has failed once", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let pending = store.list(Some(JobState::Pending), None, 10).await.unwrap();
            pending.len() == 3 && pending.iter().all(|j| j.attempts == 1 && j.last_error.is_some())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself: the one deliberate wait
    assert!(smtp.messages().is_empty());
    smtp.up().await;

    // Retries are due on the app's clock after their backoff: move it past them.
    eventually("three mails arrived", Duration::from_secs(30), || {
        world.ponte.clock.advance(time::Duration::seconds(3));
        let n = smtp.messages().len();
        async move { n >= 3 }
    })
    .await;
    eventually("every job is done", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.list(Some(JobState::Done), None, 10).await.unwrap().len() == 3 }
    })
    .await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 3, "each mail arrived once");
    let ids: BTreeSet<String> = messages.iter().filter_map(|m| message_id_of(&m.replace('\n', "\r\n"))).collect();
    assert_eq!(ids.len(), 3);
    let codes: BTreeSet<String> = messages.iter().map(|m| code_in(m)).collect();
    assert_eq!(codes.len(), 3, "three different codes");
}
