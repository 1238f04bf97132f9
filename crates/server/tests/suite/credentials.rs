//! A company's platform credentials over REST against a scripted platform (never shown
//! back, never in the audit trail, rechecked by the worker after an outage), and the
//! master-key rotation: old rows read after it, reseal moves them, a concurrent writer wins.

use std::time::Duration as StdDuration;

use ponte_identity::seal::{MasterKey, MasterKeys, key_id};
use ponte_server::reseal::{self, Store};
use serde_json::{Value, json};
use time::Duration;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{TestApp, TestDb};
use crate::integrations::company_json;

const PASSWORD: &str = "pw-Zq81-never-shown";
const ISSUED: &str = "pk_issued_key_never_twice";

async fn platform() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "tok", "token_type": "bearer", "expires_in": 3600})),
        )
        .mount(&server)
        .await;
    let account = json!({"id": "pa_42", "legal_name": "Bar Sport S.r.l.", "vat_number": "00743110157"});
    Mock::given(method("GET"))
        .and(path("/v1/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"accounts": [account]})))
        .mount(&server)
        .await;
    server
}

fn check_answers(status: u16, outcome: &str) -> Mock {
    Mock::given(method("POST"))
        .and(path("/v1/credentials/check"))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"outcome": outcome})))
}

#[tokio::test]
async fn credentials_are_checked_rechecked_after_an_outage_and_never_shown() {
    let server = platform().await;
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
}

async fn migrated_db() -> (TestDb, ponte_identity::db::Database) {
    let db = TestDb::sqlite();
    let database = ponte_identity::db::Database::connect_lazy(&db.url).unwrap();
    ponte_server::app::migrate(&database).await.unwrap();
    (db, database)
}

async fn put_receiver(db: &ponte_identity::db::Database, keys: &MasterKeys, id: &str, secret: &str) {
    use ponte_server::webhooks::receivers::{Receivers, SqlReceivers};
    SqlReceivers::new(db.clone(), keys.clone())
        .put(id, "https://pos.example.com/h", &secret.into(), time::OffsetDateTime::now_utc())
        .await
        .unwrap();
}

async fn receiver_secret(db: &ponte_identity::db::Database, keys: &MasterKeys, id: &str) -> Result<String, String> {
    use ponte_server::webhooks::receivers::{Receivers, SqlReceivers};
    SqlReceivers::new(db.clone(), keys.clone())
        .get_with_secret(id)
        .await
        .map(|r| r.unwrap().1.expose().to_owned())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_master_key_rotation_reads_old_rows_reseals_them_and_never_overwrites_a_newer_value() {
    let (_dir, db) = migrated_db().await;
    let old = MasterKey::generate();
    let before = MasterKeys::from(old.clone());
    let a = "a".repeat(32);
    let b = "b".repeat(32);
    put_receiver(&db, &before, "pos-a", &a).await;
    put_receiver(&db, &before, "pos-b", &b).await;

    // The new ring on every replica: old rows still read.
    let ring = MasterKeys::new(MasterKey::generate(), [old.clone()]);
    assert_eq!(receiver_secret(&db, &ring, "pos-a").await.unwrap(), a);

    // A reseal reads pos-b, then another replica (still on the old key) writes a new secret
    // before the compare-and-set: the newer value stays.
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
    assert!(reseal::reseal_all(&db, &forgot, 1).await.is_err());

    // The full reseal moves every row (in batches of one) to the new key id.
    let report = reseal::reseal_all(&db, &ring, 1).await.unwrap();
    assert_eq!((report.resealed, report.remaining), (2, 0), "{report:?}");
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT secret_sealed FROM webhook_receivers").fetch_all(db.pool()).await.unwrap();
    assert!(rows.iter().all(|(s,)| key_id(s) == Some(ring.id())));
    assert_eq!(receiver_secret(&db, &forgot, "pos-a").await.unwrap(), a);
    assert_eq!(receiver_secret(&db, &forgot, "pos-b").await.unwrap(), newer);
}
