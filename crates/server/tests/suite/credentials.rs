//! A company's platform credentials over REST against a scripted platform (never shown
//! back, never in the audit trail, rechecked by the worker after an outage), and the
//! master-key rotation: old rows read after it, reseal moves them, a concurrent writer wins.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration as StdDuration;

use ponte_identity::db::Database;
use ponte_identity::jobs::{JobStore, SqlJobs};
use ponte_identity::keys::{KeyPolicy, KeyRing, SigningAlg, SqlKeys};
use ponte_identity::outbox::{Lang, Message, OutgoingMail};
use ponte_identity::seal::{MasterKey, MasterKeys, key_id};
use ponte_linking::account::sql::SqlAccounts;
use ponte_linking::account::{AccountStore, NewUser, Role};
use ponte_linking::audit::Actor;
use ponte_linking::company::sql::SqlCompanies;
use ponte_linking::company::{CompanyData, CompanyDraft, CompanyStore};
use ponte_linking::email::Email;
use ponte_linking::ids::{AccountId, CompanyId};
use ponte_linking::integration::IntegrationKind;
use ponte_linking::integration::credentials::sql::SqlCredentials;
use ponte_linking::integration::credentials::{CredentialStore, PlatformCredentials};
use ponte_server::reseal::{self, Store};
use serde_json::{Value, json};
use time::Duration;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::harness::{TestApp, TestDb};
use crate::integrations::company_json;
use crate::integrations::through_the_worker::platform_with_an_account;

/// The log lines of this test binary while a test records them (see [`Recording`]); the
/// subscriber stays installed for the binary's life, but keeps nothing between recordings.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

static RECORDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records log lines until dropped.
struct Recording;

impl Recording {
    fn start() -> Self {
        RECORDING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if RECORDING.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.0.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let _ =
            tracing_subscriber::fmt().with_env_filter("debug").with_ansi(false).with_writer(logs.clone()).try_init();
        logs
    })
}

const PASSWORD: &str = "pw-Zq81-never-shown";
const ISSUED: &str = "pk_issued_key_never_twice";

fn check_answers(status: u16, outcome: &str) -> Mock {
    Mock::given(method("POST"))
        .and(path("/v1/credentials/check"))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"outcome": outcome})))
}

#[tokio::test]
async fn credentials_are_checked_rechecked_after_an_outage_and_never_shown() {
    let logs = captured_logs();
    let _recording = Recording::start();
    let server = platform_with_an_account().await;
    let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| {
        c.platform.base_url = Some(server.uri().parse().unwrap());
        c.platform.client_id = Some("ponte".into());
        c.platform.client_secret = Some("platform-secret".into());
        c.platform.timeout_secs = 2;
        c.worker.poll_interval_ms = 20;
    })
    .await;
    let admin = app.admin_token().await;
    let http = app.browser();
    let account = app.create_account(&admin, "mario@barsport.it", "correct horse battery").await;
    let account_id = account["id"].as_str().unwrap().to_owned();
    let company: Value = http
        .post(app.url(&format!("/api/v1/accounts/{account_id}/companies")))
        .bearer_auth(&admin)
        .json(&company_json("00743110157"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = app.url(&format!(
        "/api/v1/accounts/{account_id}/companies/{}/integrations/digital_invoice",
        company["id"].as_str().unwrap()
    ));
    let mut bodies = Vec::new();

    // No platform account yet: no API key.
    let r = http.post(format!("{url}/credentials/api-key")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 409);
    bodies.push(r.text().await.unwrap());

    // A bad form names its field.
    let r = http
        .put(format!("{url}/credentials"))
        .bearer_auth(&admin)
        .json(&json!({"type": "username_password", "username": "mario"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "password", "{problem}");
    for (body, field) in [
        (json!({"username": "mario", "password": PASSWORD}), "type"),
        (json!({"type": "api_key", "api_key": "k", "password": PASSWORD}), "password"),
    ] {
        let r = http.put(format!("{url}/credentials")).bearer_auth(&admin).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(text.contains(&format!("\"field\":\"{field}\"")), "{text}");
        bodies.push(text);
    }
    // A company of no account (or another one) is not found, whatever the body.
    let elsewhere = app.url(&format!(
        "/api/v1/accounts/{account_id}/companies/{}/integrations/digital_invoice/credentials",
        uuid::Uuid::now_v7()
    ));
    let r = http
        .put(elsewhere)
        .bearer_auth(&admin)
        .json(&json!({"type": "api_key", "api_key": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    bodies.push(r.text().await.unwrap());

    let r = http
        .put(format!("{url}/credentials"))
        .bearer_auth(&admin)
        .json(&json!({"type": "username_password", "username": "mario", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The platform refuses them.
    let refusing = check_answers(200, "invalid_credentials").up_to_n_times(1).mount_as_scoped(&server).await;
    let r: Value =
        http.post(format!("{url}/credentials/check")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["last_check"]["outcome"], "invalid_credentials", "{r}");
    bodies.push(r.to_string());
    drop(refusing);

    // The platform is away: recorded, and a check is scheduled.
    let down = check_answers(503, "x").mount_as_scoped(&server).await;
    let r: Value =
        http.post(format!("{url}/credentials/check")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["last_check"]["outcome"], "platform_unavailable", "{r}");
    assert!(r["next_check_at"].is_string(), "{r}");
    bodies.push(r.to_string());
    drop(down);

    // Back: the scheduled check runs when its time comes and records ok.
    Mock::given(method("POST"))
        .and(path("/v1/credentials/check"))
        .and(body_partial_json(
            json!({"vat_number": "00743110157", "credentials": {"type": "username_password", "password": PASSWORD}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"outcome": "ok"})))
        .mount(&server)
        .await;
    app.clock.advance(Duration::minutes(2));
    let mut view = Value::Null;
    for _ in 0..300 {
        view = http.get(&url).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        if view["credentials"]["last_check"]["outcome"] == "ok" {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    assert_eq!(view["credentials"]["last_check"]["outcome"], "ok", "{view}");
    assert_eq!(view["credentials"]["type"], "username_password");
    assert!(view["credentials"]["next_check_at"].is_null(), "{view}");
    bodies.push(view.to_string());

    // An API key, once platform account exists: returned once, stored sealed.
    // The platform account a reactivation would have found (its flow is the integrations suite's).
    let found = ponte_linking::integration::PlatformAccount {
        id: "pa_42".into(),
        legal_name: "Bar Sport S.r.l.".into(),
        owner_email: None,
    };
    let company_id = company["id"].as_str().unwrap().parse().unwrap();
    let kind = ponte_linking::integration::IntegrationKind::DigitalInvoice;
    app.state
        .integrations
        .set_platform_account(account_id.parse().unwrap(), company_id, kind, &found, app.state.now())
        .await
        .unwrap();
    Mock::given(method("POST"))
        .and(path("/v1/accounts/pa_42/api-keys"))
        .and(body_partial_json(json!({"vat_number": "00743110157"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"api_key": ISSUED})))
        .mount(&server)
        .await;
    let r: Value =
        http.post(format!("{url}/credentials/api-key")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["api_key"], ISSUED, "{r}");
    assert_eq!(r["credentials"]["type"], "api_key");
    let view: Value = http.get(&url).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["credentials"]["type"], "api_key", "{view}");
    bodies.push(view.to_string());
    let list = http
        .get(app.url(&format!("/api/v1/accounts/{account_id}/integrations")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    bodies.push(list.text().await.unwrap());

    let (sealed,): (String,) =
        sqlx::query_as("SELECT sealed FROM integration_credentials").fetch_one(app.state.db.pool()).await.unwrap();
    assert!(!sealed.contains(ISSUED) && key_id(&sealed) == Some(app.state.master.id()), "{sealed}");

    // What was checked: every response body above and every audit entry.
    let entries = app.state.audit.list(account_id.parse().unwrap(), 200).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for action in ["credentials.updated", "credentials.checked", "credentials.api_key_issued"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    for e in &entries {
        bodies.push(format!("{e:?}"));
    }
    for body in &bodies {
        assert!(!body.contains(PASSWORD), "{body}");
    }
    for body in &bodies[..bodies.len() - entries.len() - 2] {
        assert!(!body.contains(ISSUED), "{body}");
    }
    assert!(entries.iter().all(|e| !format!("{e:?}").contains(ISSUED)));

    // And the log lines of all of it (debug and up, every target).
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("/credentials/check"), "the capture saw the requests");
    assert!(!logs.contains(PASSWORD) && !logs.contains(ISSUED), "a secret reached the logs");
}

async fn put_receiver(db: &Database, keys: &MasterKeys, id: &str, secret: &str) {
    use ponte_server::webhooks::receivers::{Receivers, SqlReceivers};
    SqlReceivers::new(db.clone(), keys.clone())
        .put(id, "https://pos.example.com/h", &secret.into(), time::OffsetDateTime::now_utc())
        .await
        .unwrap();
}

async fn receiver_secret(db: &Database, keys: &MasterKeys, id: &str) -> Result<String, String> {
    use ponte_server::webhooks::receivers::{Receivers, SqlReceivers};
    SqlReceivers::new(db.clone(), keys.clone())
        .get_with_secret(id)
        .await
        .map(|r| r.unwrap().1.expose().to_owned())
        .map_err(|e| e.to_string())
}

const POLICY: KeyPolicy = KeyPolicy {
    alg: SigningAlg::ES256,
    max_token_lifetime: time::Duration::minutes(10),
    rotate_after: time::Duration::days(30),
};

/// One row in every store that holds sealed values, sealed with `keys`; returns the
/// company whose credentials were stored.
async fn one_of_each(db: &Database, keys: &MasterKeys) -> (AccountId, CompanyId) {
    let now = time::OffsetDateTime::now_utc();
    KeyRing::load_or_create(&SqlKeys::new(db.clone()), keys, &POLICY, now).await.unwrap();
    let jobs = Arc::new(SqlJobs::new(db.clone(), 5));
    let mail = OutgoingMail {
        to: "mario@esempio.it".into(),
        lang: Lang::En,
        message: Message::LinkCode {
            code: "24682468".into(),
            provider_name: "TeamSystem ID".into(),
            upstream_email: "mario.rossi@gruppo.it".into(),
        },
    };
    jobs.enqueue(mail.to_job(keys).unwrap(), now).await.unwrap();
    let owner = NewUser {
        email: Email::parse("mario@barsport.it").unwrap(),
        name: "Mario Rossi".into(),
        role: Role::Owner,
        password_hash: None,
        lang: ponte_linking::account::Lang::It,
        grants: Vec::new(),
    };
    let (_, owner) =
        SqlAccounts::new(db.clone()).create("Bar Sport".into(), owner, &Actor::system(), now).await.unwrap();
    let account = owner.account_id;
    let draft: CompanyDraft = serde_json::from_value(company_json("00743110157")).unwrap();
    let company = SqlCompanies::new(db.clone())
        .create(account, CompanyData::parse(&draft).unwrap(), &Actor::system(), now)
        .await
        .unwrap()
        .id;
    SqlCredentials::new(db.clone(), jobs, keys.clone())
        .put(
            account,
            company,
            IntegrationKind::DigitalInvoice,
            &PlatformCredentials::TechnicalKey { key: "tk-1".into() },
            &Actor::system(),
            "credentials.updated",
            now,
        )
        .await
        .unwrap();
    (account, company)
}

#[tokio::test]
async fn a_master_key_rotation_reads_old_rows_reseals_them_and_never_overwrites_a_newer_value() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let old = MasterKey::generate();
        let before = MasterKeys::from(old.clone());
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        put_receiver(&db, &before, "pos-a", &a).await;
        put_receiver(&db, &before, "pos-b", &b).await;
        let (account, company) = one_of_each(&db, &before).await;
        // Two receivers, the current and next signing keys, a mail job, the credentials.
        let sealed_rows = 6;

        // The new ring on every replica: old rows still read.
        let ring = MasterKeys::new(MasterKey::generate(), [old.clone()]);
        assert_eq!(receiver_secret(&db, &ring, "pos-a").await.unwrap(), a);
        assert_eq!(reseal::remaining(&db, &ring).await.unwrap(), sealed_rows);

        // A reseal reads pos-b, then another replica (still on the old key) writes a new
        // secret before the compare-and-set: the newer value stays.
        let stale = reseal::stale(&db, &ring, Store::WebhookReceivers, "", 10).await.unwrap();
        let row_b = stale.iter().find(|r| r.key == "pos-b").unwrap();
        let newer = "c".repeat(32);
        put_receiver(&db, &before, "pos-b", &newer).await;
        let resealed = row_b.resealed(&ring).unwrap().unwrap();
        assert!(!reseal::compare_and_set(&db, row_b, &resealed).await.unwrap());
        assert_eq!(receiver_secret(&db, &ring, "pos-b").await.unwrap(), newer);

        // Without the retired key the old rows do not open, with a clear error.
        let forgot = MasterKeys::from(ring.active().clone());
        let err = receiver_secret(&db, &forgot, "pos-a").await.unwrap_err();
        assert!(err.contains(old.id()) && err.contains("master_keys_retired"), "{err}");
        let err = reseal::reseal_all(&db, &forgot, 1).await.unwrap_err().to_string();
        assert!(err.contains(old.id()), "{err}");

        // The full reseal moves every row (in batches of one) to the new key id.
        let report = reseal::reseal_all(&db, &ring, 1).await.unwrap();
        assert_eq!((report.resealed, report.remaining), (sealed_rows, 0), "{report:?}");
        assert_eq!(reseal::reseal_all(&db, &ring, 1).await.unwrap().resealed, 0, "a second run has nothing to do");

        // And everything reads with the new key alone.
        assert_eq!(receiver_secret(&db, &forgot, "pos-a").await.unwrap(), a);
        assert_eq!(receiver_secret(&db, &forgot, "pos-b").await.unwrap(), newer);
        KeyRing::load_or_create(&SqlKeys::new(db.clone()), &forgot, &POLICY, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        let jobs = SqlJobs::new(db.clone(), 5);
        let mail = jobs.list(None, None, 10).await.unwrap().into_iter().find(|j| j.kind == "mail.send").unwrap();
        assert!(OutgoingMail::from_payload(&mail.payload, &forgot).is_ok());
        let stored = SqlCredentials::new(db.clone(), Arc::new(jobs), forgot.clone())
            .get(account, company, IntegrationKind::DigitalInvoice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.0, PlatformCredentials::TechnicalKey { key: "tk-1".into() });
    }
}
