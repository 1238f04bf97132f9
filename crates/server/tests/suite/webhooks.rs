//! Signed webhooks both ways: the invoicing platform's events in at `POST /webhooks/platform`
//! (signature, window, once per event id), and Ponte's events out to receivers the POS
//! backend registers, delivered by the worker to a small HTTP receiver written here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, test, web};
use async_trait::async_trait;
use ponte_identity::jobs::{JobState, JobStore, NewJob};
use ponte_server::config::{Secret, WebhookConfig};
use ponte_server::problem::Problem;
use ponte_server::webhooks::deliver::{Event, WEBHOOK_DELIVER, WEBHOOK_FANOUT, fanout_job};
use ponte_server::webhooks::inbound::{PlatformEvent, PlatformEventHandler};
use ponte_server::webhooks::signing::{sign, verify};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{NowForTest, TestApp, TestDb};

const PLATFORM_SECRET: &str = "platform-webhook-secret-0123456789abcdef";
const RECEIVER_SECRET: &str = "pos-receiver-secret-0123456789abcdefgh";

// ---- inbound ----

async fn platform_app() -> TestApp {
    TestApp::spawn_with(TestDb::sqlite(), None, |c| c.platform.webhook_secret = Some(Secret::from(PLATFORM_SECRET)))
        .await
}

fn event_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "type": "invite.accepted", "occurred_at": "2026-12-01T10:00:00Z",
        "data": {"account_id": "pa_1", "vat_number": "IT01234567890", "reference": "inv_1", "email": "anna@esempio.it"}
    }))
    .unwrap()
}

fn unix_now(app: &TestApp) -> i64 {
    app.clock.now_for_test().unix_timestamp()
}

async fn post_platform(app: &TestApp, timestamp: i64, signature: &str, body: Vec<u8>) -> reqwest::Response {
    app.browser()
        .post(app.url("/webhooks/platform"))
        .header("Content-Type", "application/json")
        .header("Platform-Timestamp", timestamp.to_string())
        .header("Platform-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn signed(app: &TestApp, body: Vec<u8>) -> reqwest::Response {
    let ts = unix_now(app);
    post_platform(app, ts, &sign(PLATFORM_SECRET.as_bytes(), ts, &body), body).await
}

async fn code_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

async fn rows_for(app: &TestApp, id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM platform_events WHERE id = $1")
        .bind(id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn platform_events_are_taken_once_and_only_when_signed_within_the_window() {
    let app = platform_app().await;
    let ts = unix_now(&app);

    let forged = sign(b"not the platform's secret at all!!", ts, &event_body("evt_forged"));
    assert_eq!(
        code_of(post_platform(&app, ts, &forged, event_body("evt_forged")).await).await,
        (401, "signature_invalid".into())
    );
    let unsigned = app.browser().post(app.url("/webhooks/platform")).body(event_body("evt_forged")).send().await;
    assert_eq!(code_of(unsigned.unwrap()).await, (401, "signature_invalid".into()));
    // Signed over another body: the signature does not follow the bytes.
    let other = sign(PLATFORM_SECRET.as_bytes(), ts, &event_body("evt_other"));
    assert_eq!(
        code_of(post_platform(&app, ts, &other, event_body("evt_forged")).await).await,
        (401, "signature_invalid".into())
    );

    let old = ts - 6 * 60;
    let stale = sign(PLATFORM_SECRET.as_bytes(), old, &event_body("evt_stale"));
    assert_eq!(
        code_of(post_platform(&app, old, &stale, event_body("evt_stale")).await).await,
        (401, "timestamp_outside_window".into())
    );

    let malformed = signed(&app, br#"{"id": "evt_bad", "type": "invite.accepted"}"#.to_vec()).await;
    assert_eq!(malformed.status(), 400);
    let problem: Value = malformed.json().await.unwrap();
    assert_eq!(
        (problem["code"].as_str(), problem["errors"][0]["field"].as_str()),
        (Some("invalid_event"), Some("occurred_at"))
    );
    assert_eq!(code_of(signed(&app, b"not json".to_vec()).await).await, (400, "invalid_event".into()));

    for refused in ["evt_forged", "evt_other", "evt_stale", "evt_bad"] {
        assert_eq!(rows_for(&app, refused).await, 0, "{refused} was refused, not recorded");
    }

    let taken = signed(&app, event_body("evt_1")).await;
    assert_eq!(taken.status(), 204);
    assert_eq!(rows_for(&app, "evt_1").await, 1);
    // The platform did not see our 204 and sends it again, later and signed anew.
    app.clock.advance(time::Duration::seconds(30));
    assert_eq!(signed(&app, event_body("evt_1")).await.status(), 204);
    assert_eq!(rows_for(&app, "evt_1").await, 1);
    let (received_at,): (i64,) = sqlx::query_as("SELECT received_at FROM platform_events WHERE id = 'evt_1'")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(received_at, ts, "the first delivery is the one recorded");

    // An event type this Ponte does not know is taken (and recorded) all the same.
    let mut unknown: Value = serde_json::from_slice(&event_body("evt_unknown")).unwrap();
    unknown["type"] = "invoice.sent".into();
    assert_eq!(signed(&app, serde_json::to_vec(&unknown).unwrap()).await.status(), 204);
    assert_eq!(rows_for(&app, "evt_unknown").await, 1);
}

#[tokio::test]
async fn without_a_platform_secret_the_route_is_off() {
    let app = TestApp::spawn().await;
    let ts = unix_now(&app);
    let body = event_body("evt_1");
    let r = post_platform(&app, ts, &sign(PLATFORM_SECRET.as_bytes(), ts, &body), body).await;
    assert_eq!(code_of(r).await, (404, "platform_webhook_disabled".into()));
}

/// A handler whose integration is away.
#[derive(Debug)]
struct Failing;

#[async_trait]
impl PlatformEventHandler for Failing {
    async fn handle(&self, _: &PlatformEvent) -> Result<(), Problem> {
        Err(Problem::unavailable("integration_unavailable", "try again"))
    }
}

#[tokio::test]
async fn an_event_whose_handler_fails_is_not_recorded_and_is_processed_on_the_retry() {
    let app = platform_app().await;
    // The same state and database, with a handler that fails.
    let mut failing = app.state.clone();
    failing.platform_events = Arc::new(Failing);
    let service =
        test::init_service(App::new().app_data(web::Data::new(failing)).configure(ponte_server::webhooks::configure))
            .await;
    let ts = unix_now(&app);
    let body = event_body("evt_retried");
    let request = test::TestRequest::post()
        .uri("/webhooks/platform")
        .insert_header(("Platform-Timestamp", ts.to_string()))
        .insert_header(("Platform-Signature", sign(PLATFORM_SECRET.as_bytes(), ts, &body)))
        .set_payload(body.clone())
        .to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), 503);
    assert_eq!(rows_for(&app, "evt_retried").await, 0, "a failed event is not marked processed");

    assert_eq!(signed(&app, body).await.status(), 204, "the platform's retry reaches a working handler");
    assert_eq!(rows_for(&app, "evt_retried").await, 1);
}

// ---- outbound ----

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    /// Lowercase names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A tiny HTTP receiver: records each request and answers the statuses it is given, in
/// order, then 200.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let statuses = Arc::new(Mutex::new(statuses.iter().copied().collect::<VecDeque<u16>>()));
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, received.clone(), statuses.clone()));
                }
            })
        };
        Self { port, received, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.received().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver got {} of {n} requests",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received()
    }
}

/// One request per connection (`Connection: close`), which is all a delivery needs.
async fn serve(
    mut stream: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    received.lock().unwrap().push(Received { path, headers, body });
    let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Checks a delivery as a receiver would: the signature over the exact bytes received.
fn assert_signed(r: &Received, secret: &str) -> Event {
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    let ts = r.headers.get("ponte-timestamp").expect("Ponte-Timestamp");
    let signature = r.headers.get("ponte-signature").expect("Ponte-Signature");
    let at: i64 = ts.parse().unwrap();
    assert_eq!(verify(secret.as_bytes(), Some(ts), Some(signature), &r.body, at), Ok(()), "{r:?}");
    assert!(verify(b"another secret, not the receiver's", Some(ts), Some(signature), &r.body, at).is_err());
    let event: Event = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.headers.get("ponte-event-id"), Some(&event.id));
    event
}

async fn jobs_of(app: &TestApp, kind: &str) -> Vec<ponte_identity::jobs::Job> {
    app.state.jobs.list(None, None, 200).await.unwrap().into_iter().filter(|j| j.kind == kind).collect()
}

async fn put(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.browser().put(app.url(&format!("/api/v1/webhooks/{id}"))).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn events_reach_each_receiver_once_signed_and_a_failing_one_on_retry() {
    let good = Receiver::start(&[]).await;
    let flaky = Receiver::start(&[500]).await;
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| c.worker.poll_interval_ms = 50).await;
    let admin = app.admin_token().await;

    let created = put(&app, &admin, "pos", json!({"url": good.url("/hooks/ponte"), "secret": RECEIVER_SECRET})).await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    assert_eq!((created["id"].as_str(), created["source"].as_str()), (Some("pos"), Some("api")));
    assert!(created.get("secret").is_none(), "{created}");
    let flaky_secret = "another-pos-receiver-secret-9876543210";
    let r = put(&app, &admin, "pos-flaky", json!({"url": flaky.url("/"), "secret": flaky_secret})).await;
    assert_eq!(r.status(), 200);
    let listed = app.browser().get(app.url("/api/v1/webhooks")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.unwrap();
    assert!(
        !listed.contains(RECEIVER_SECRET) && !listed.contains(flaky_secret) && !listed.contains("secret"),
        "{listed}"
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed["receivers"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pos", "pos-flaky"]);
    // At rest the secret is sealed.
    let (sealed,): (String,) = sqlx::query_as("SELECT secret_sealed FROM webhook_receivers WHERE id = 'pos'")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert!(sealed.starts_with("v1.") && !sealed.contains(RECEIVER_SECRET));

    let event = Event::new("integration.activated", json!({"company_id": "c_1"}), app.clock.now_for_test());
    assert!(app.state.jobs.enqueue(fanout_job(&event), app.clock.now_for_test()).await.unwrap().created);
    let got = good.wait_for(1).await;
    assert_eq!(got[0].path, "/hooks/ponte");
    assert_eq!(assert_signed(&got[0], RECEIVER_SECRET), event);

    // The flaky receiver answered 500: its delivery waits out its backoff on the app's clock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while flaky.received().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retry reached the flaky receiver");
        app.clock.advance(time::Duration::seconds(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tries = flaky.received();
    let ids: Vec<&String> = tries.iter().map(|r| r.headers.get("ponte-event-id").unwrap()).collect();
    assert_eq!(ids, [&event.id, &event.id], "the retry carries the same event id");
    assert!(tries.iter().all(|r| assert_signed(r, flaky_secret) == event));

    // The fanout running again (a crash after it enqueued) adds no delivery.
    let again = NewJob { idempotency_key: Some(format!("rerun:{}", event.id)), ..fanout_job(&event) };
    app.state.jobs.enqueue(again, app.clock.now_for_test()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fanouts = jobs_of(&app, WEBHOOK_FANOUT).await;
        let deliveries = jobs_of(&app, WEBHOOK_DELIVER).await;
        if fanouts.len() == 2 && fanouts.iter().chain(&deliveries).all(|j| j.state == JobState::Done) {
            assert_eq!(deliveries.len(), 2, "one delivery per receiver, not per fanout run");
            let flaky_job = deliveries.iter().find(|j| j.idempotency_key.ends_with(":pos-flaky")).unwrap();
            assert_eq!(flaky_job.attempts, 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "jobs did not finish: {fanouts:?} {deliveries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(good.received().len(), 1, "exactly one POST to the good receiver");
    assert_eq!(flaky.received().len(), 2);
}

#[tokio::test]
async fn receivers_are_managed_by_the_pos_backend_only_and_configured_ones_stay_put() {
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| {
        c.webhooks.insert(
            "from-config".into(),
            WebhookConfig { url: "https://pos.example.com/hooks".into(), secret: Secret::from(RECEIVER_SECRET) },
        );
    })
    .await;
    let admin = app.admin_token().await;
    let http = app.browser();
    let ok = json!({"url": "https://pos.example.com/other", "secret": RECEIVER_SECRET});

    let weak = app.token_with_scopes(&["ponte.read"]).await;
    assert_eq!(http.get(app.url("/api/v1/webhooks")).bearer_auth(&weak).send().await.unwrap().status(), 403);
    assert_eq!(put(&app, &weak, "pos", ok.clone()).await.status(), 403);
    let r = http.delete(app.url("/api/v1/webhooks/from-config")).bearer_auth(&weak).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(http.get(app.url("/api/v1/webhooks")).send().await.unwrap().status(), 401);

    for (body, field) in [
        (json!({"url": "http://pos.example.com/hooks", "secret": RECEIVER_SECRET}), "url"),
        (json!({"url": "https://user:pw@pos.example.com/", "secret": RECEIVER_SECRET}), "url"),
        (json!({"url": "https://pos.example.com/hooks", "secret": "too short"}), "secret"),
    ] {
        let r = put(&app, &admin, "pos", body).await;
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["errors"][0]["field"], field);
    }
    assert_eq!(put(&app, &admin, "Not A Slug", ok.clone()).await.status(), 422);

    let listed: Value =
        http.get(app.url("/api/v1/webhooks")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        listed,
        json!({"receivers": [{"id": "from-config", "url": "https://pos.example.com/hooks", "source": "config"}]})
    );
    assert_eq!(code_of(put(&app, &admin, "from-config", ok.clone()).await).await, (409, "receiver_from_config".into()));
    let r = http.delete(app.url("/api/v1/webhooks/from-config")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(code_of(r).await, (409, "receiver_from_config".into()));

    // Replacing keeps the creation time; deleting twice finds nothing the second time.
    let first: Value = put(&app, &admin, "pos", ok.clone()).await.json().await.unwrap();
    app.clock.advance(time::Duration::seconds(5));
    let other = json!({"url": "https://pos.example.com/v2", "secret": "a-rotated-receiver-secret-0123456789"});
    let second: Value = put(&app, &admin, "pos", other).await.json().await.unwrap();
    assert_eq!(second["created_at"], first["created_at"]);
    assert_ne!(second["updated_at"], first["updated_at"]);
    assert_eq!(second["url"], "https://pos.example.com/v2");
    let (_, secret) = app.state.webhooks.get_with_secret("pos").await.unwrap().unwrap();
    assert_eq!(secret.expose(), "a-rotated-receiver-secret-0123456789");
    let delete = || http.delete(app.url("/api/v1/webhooks/pos")).bearer_auth(&admin).send();
    assert_eq!(delete().await.unwrap().status(), 204);
    assert_eq!(code_of(delete().await.unwrap()).await, (404, "receiver_not_found".into()));

    let (actions,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_entries WHERE target = 'webhook_receiver:pos' \
         AND action IN ('webhook_receiver.put', 'webhook_receiver.deleted')",
    )
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(actions, 3, "two puts and a delete are audited");
}

#[tokio::test]
async fn the_receiver_and_processed_event_stores_conform_on_every_engine() {
    use ponte_identity::seal::MasterKeys;
    use ponte_server::webhooks::processed::SqlProcessedEvents;
    use ponte_server::webhooks::receivers::{Receivers, SqlReceivers};

    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let master = MasterKeys::generate();
        let store = SqlReceivers::new(db.clone(), master.clone());
        let t = crate::harness::now();
        let a = store.put("pos", "https://pos.example.com/a", &Secret::from(RECEIVER_SECRET), t).await.unwrap();
        let later = t + time::Duration::seconds(9);
        let rotated = "a-rotated-receiver-secret-0123456789";
        let b = store.put("pos", "https://pos.example.com/b", &Secret::from(rotated), later).await.unwrap();
        assert_eq!((b.created_at, b.updated_at), (a.created_at, Some(later.replace_nanosecond(0).unwrap())));
        let (found, secret) = store.get_with_secret("pos").await.unwrap().unwrap();
        assert_eq!((found.url.as_str(), secret.expose()), ("https://pos.example.com/b", rotated));
        let other_key = SqlReceivers::new(db.clone(), MasterKeys::generate());
        assert!(other_key.get_with_secret("pos").await.is_err(), "sealed under the master key");
        assert!(store.put("bad", "http://pos.example.com/", &Secret::from(rotated), t).await.is_err());
        assert_eq!(store.list().await.unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["pos"]);
        assert!(store.delete("pos").await.unwrap());
        assert!(!store.delete("pos").await.unwrap());
        assert!(store.get_with_secret("pos").await.unwrap().is_none());

        let processed = SqlProcessedEvents::new(db.clone());
        assert!(!processed.seen("evt_1").await.unwrap());
        processed.record("evt_1", "invite.accepted", t).await.unwrap();
        processed.record("evt_1", "invite.accepted", later).await.unwrap();
        assert!(processed.seen("evt_1").await.unwrap());
    }
}
