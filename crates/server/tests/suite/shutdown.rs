//! `ponte serve` at SIGTERM: readiness turns 503 while the listener still answers, then
//! the listener closes, requests in flight finish within the grace, and the worker gives
//! back the leases of jobs it could not finish.

use std::time::{Duration, Instant};

use ponte_identity::clock::{Clock, SystemClock};
use ponte_identity::jobs::{JobState, JobStore, SqlJobs};
use ponte_identity::seal::MasterKeys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestDb;
use crate::mail::{eventually, link_code};
use crate::process::PonteProcess;
use crate::sink::Sink;

const BODY: &str = r#"{"email":"anna@esempio.it"}"#;

/// A password-reset request whose headers and first bytes are sent, the rest held back:
/// the server is in the middle of it.
async fn request_in_flight(base: &str) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /api/v1/password/forgot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        BODY.len(),
        &BODY[..5]
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Sends the rest of the body and reads whatever comes back until the server closes.
async fn finish(mut stream: TcpStream) -> String {
    let _ = stream.write_all(&BODY.as_bytes()[5..]).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn status(http: &reqwest::Client, url: String) -> Option<(u16, serde_json::Value)> {
    let response = http.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn sigterm_turns_readiness_off_then_closes_the_listener_and_lets_requests_in_flight_finish() {
    let sink = Sink::start().await;
    sink.hold(true);
    let db = TestDb::sqlite();
    let store = SqlJobs::new(db.open_migrated().await, 8);
    let master = MasterKeys::generate();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SMTP_URL", sink.url()),
        ("PONTE_MASTER_KEY", master.encode()),
        ("PONTE_WORKER__POLL_INTERVAL_MS", "100".into()),
        ("PONTE_WORKER__SHUTDOWN_GRACE_SECS", "1".into()),
        ("PONTE_SHUTDOWN_DELAY_SECS", "3".into()),
        ("PONTE_SHUTDOWN_GRACE_SECS", "20".into()),
    ];
    let mut ponte = PonteProcess::serve(db.dir.path(), &env).await;
    // No pooled connections: each probe is a new connection, as a load balancer's would be.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(status(&http, format!("{}/readyz", ponte.base)).await.unwrap().0, 200);
    // A mail is stuck at the SMTP server, and a request is half sent.
    let job = store.enqueue(link_code("bea@esempio.it", "20202020").to_job(&master).unwrap(), SystemClock.now()).await;
    let job = job.unwrap().job.id;
    sink.wait_for(1, Duration::from_secs(20)).await;
    let in_flight = request_in_flight(&ponte.base).await;

    let signalled = Instant::now();
    ponte.sigterm();
    eventually("/readyz answers 503 shutting_down", Duration::from_secs(2), || async {
        status(&http, format!("{}/readyz", ponte.base))
            .await
            .is_some_and(|(s, body)| s == 503 && body["code"] == "shutting_down")
    })
    .await;
    assert!(signalled.elapsed() < Duration::from_secs(3), "readiness turned off before the listener closed");
    assert_eq!(status(&http, format!("{}/healthz", ponte.base)).await.unwrap().0, 200, "alive, only not ready");

    eventually("the listener is closed", Duration::from_secs(10), || async {
        TcpStream::connect(ponte.base.trim_start_matches("http://")).await.is_err()
    })
    .await;
    assert!(signalled.elapsed() >= Duration::from_secs(3), "not before shutdown_delay_secs");
    let response = finish(in_flight).await;
    assert!(response.starts_with("HTTP/1.1 202"), "the request in flight was answered: {response}");

    let exit = ponte.exited(Duration::from_secs(20)).await;
    assert!(exit.success(), "a clean exit: {exit}");
    let released = store.get(job).await.unwrap().unwrap();
    assert_eq!((released.state, released.attempts, released.lease_token), (JobState::Pending, 0, None));
}

#[tokio::test]
async fn a_request_still_running_after_the_grace_is_cut_off() {
    let db = TestDb::sqlite();
    let env = [
        ("PONTE_DATABASE_URL", db.url.clone()),
        ("PONTE_SHUTDOWN_DELAY_SECS", "0".into()),
        ("PONTE_SHUTDOWN_GRACE_SECS", "1".into()),
    ];
    let mut ponte = PonteProcess::serve(db.dir.path(), &env).await;
    let mut stuck = request_in_flight(&ponte.base).await;
    let signalled = Instant::now();
    ponte.sigterm();
    let exit = ponte.exited(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "the grace bounds the wait, not the slow client");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).contains(" 202 "), "it was never answered");
}
