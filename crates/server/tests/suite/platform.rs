//! The invoicing-platform connector against a scripted platform (wiremock): tokens are
//! fetched once and renewed on a 401, every call carries the bearer token and the
//! idempotency key, and the platform's answers map to the contract's errors.

use std::time::Duration;

use ponte_server::config::PlatformConfig;
use ponte_server::connectors::{Activation, Collaborator, HttpPlatform, Platform, PlatformAccount, PlatformError};
use serde_json::{Value, json};
use wiremock::matchers::{bearer_token, body_json, body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT_ID: &str = "ponte";
const CLIENT_SECRET: &str = "s3cret-of-ponte";

fn company() -> Value {
    json!({
        "legal_name": "Bar Rossi S.r.l.",
        "vat_number": "01234567890",
        "tax_code": "01234567890",
        "address": {"street": "Via Roma 1", "city": "Milano", "postal_code": "20100", "province": "MI", "country": "IT"},
        "sdi_code": "ABC1234",
        "pec": null
    })
}

fn account() -> Value {
    json!({"id": "pa_1", "legal_name": "Bar Rossi S.r.l.", "vat_number": "01234567890",
           "owner_email": "m***@esempio.it", "created_at": "2025-01-02T03:04:05Z"})
}

/// A connector for `server`, with a one-second timeout.
fn connector(server: &MockServer) -> HttpPlatform {
    ponte_server::install_crypto_provider();
    let config = PlatformConfig {
        base_url: Some(server.uri().parse().unwrap()),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        timeout_secs: 1,
        ..PlatformConfig::default()
    };
    let http = ponte_identity::upstream::http_client().unwrap();
    HttpPlatform::from_config(&config, http).unwrap().expect("base_url is set")
}

/// The token endpoint, checking client_secret_basic and the grant, issuing `token`.
fn token_endpoint(token: &str, expires_in: u64) -> Mock {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", format!("Basic {basic}")))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in})),
        )
}

fn accounts_found(token: &str, accounts: Value) -> Mock {
    Mock::given(method("GET"))
        .and(path("/v1/accounts"))
        .and(query_param("vat_number", "01234567890"))
        .and(bearer_token(token))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "accounts": accounts })))
}

#[tokio::test]
async fn one_token_serves_every_call_until_it_nears_expiry() {
    let server = MockServer::start().await;
    token_endpoint("t1", 300).expect(1).mount(&server).await;
    accounts_found("t1", json!([account()])).expect(4).mount(&server).await;
    let platform = connector(&server);

    let first = platform.find_account("01234567890", "job-1").await.unwrap();
    let (a, b, c) = tokio::join!(
        platform.find_account("01234567890", "job-2"),
        platform.find_account("01234567890", "job-3"),
        platform.find_account("01234567890", "job-4"),
    );
    let expected = PlatformAccount {
        id: "pa_1".into(),
        legal_name: "Bar Rossi S.r.l.".into(),
        vat_number: "01234567890".into(),
        owner_email: Some("m***@esempio.it".into()),
        created_at: Some("2025-01-02T03:04:05Z".into()),
    };
    for found in [first, a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(found.as_ref(), Some(&expected));
    }
    server.verify().await;
}

#[tokio::test]
async fn a_token_within_thirty_seconds_of_expiry_is_renewed_before_use() {
    let server = MockServer::start().await;
    token_endpoint("t1", 30).expect(2).mount(&server).await;
    accounts_found("t1", json!([])).expect(2).mount(&server).await;
    let platform = connector(&server);
    assert_eq!(platform.find_account("01234567890", "job-1").await.unwrap(), None);
    assert_eq!(platform.find_account("01234567890", "job-2").await.unwrap(), None);
    server.verify().await;
}

#[tokio::test]
async fn no_account_for_the_vat_number_is_none() {
    let server = MockServer::start().await;
    token_endpoint("t1", 300).mount(&server).await;
    accounts_found("t1", json!([])).expect(1).mount(&server).await;
    assert_eq!(connector(&server).find_account("01234567890", "job-1").await.unwrap(), None);
}

#[tokio::test]
async fn a_401_fetches_a_new_token_and_retries_once() {
    let server = MockServer::start().await;
    token_endpoint("stale", 300).up_to_n_times(1).with_priority(1).expect(1).mount(&server).await;
    token_endpoint("fresh", 300).expect(1).mount(&server).await;
    Mock::given(bearer_token("stale")).respond_with(ResponseTemplate::new(401)).expect(1).mount(&server).await;
    accounts_found("fresh", json!([account()])).expect(1).mount(&server).await;

    let found = connector(&server).find_account("01234567890", "job-1").await.unwrap();
    assert_eq!(found.map(|a| a.id).as_deref(), Some("pa_1"));
    server.verify().await;
}

#[tokio::test]
async fn a_second_401_is_unauthorized_and_permanent() {
    let server = MockServer::start().await;
    token_endpoint("t", 300).expect(2).mount(&server).await;
    Mock::given(path("/v1/accounts")).respond_with(ResponseTemplate::new(401)).expect(2).mount(&server).await;

    let err = connector(&server).find_account("01234567890", "job-1").await.unwrap_err();
    assert_eq!(err, PlatformError::Unauthorized);
    assert!(!err.retryable());
    server.verify().await;
}

#[tokio::test]
async fn credentials_the_token_endpoint_refuses_are_unauthorized() {
    let server = MockServer::start().await;
    Mock::given(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let err = connector(&server).find_account("01234567890", "job-1").await.unwrap_err();
    assert_eq!(err, PlatformError::Unauthorized);
    assert!(!err.to_string().contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_503_is_unavailable_and_left_to_the_queue_to_retry() {
    let server = MockServer::start().await;
    token_endpoint("t", 300).mount(&server).await;
    Mock::given(path("/v1/accounts")).respond_with(ResponseTemplate::new(503)).expect(1).mount(&server).await;

    let err = connector(&server).create_account(&company(), "job-1").await.unwrap_err();
    assert!(matches!(err, PlatformError::Unavailable(_)), "{err:?}");
    assert!(err.retryable());
    assert!(matches!(ponte_identity::jobs::JobFailure::from(err), ponte_identity::jobs::JobFailure::Retry(_)));
    server.verify().await;
}

#[tokio::test]
async fn a_platform_slower_than_the_timeout_is_unavailable() {
    let server = MockServer::start().await;
    token_endpoint("t", 300).mount(&server).await;
    Mock::given(path("/v1/accounts"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"accounts": []})).set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;

    let started = std::time::Instant::now();
    let err = connector(&server).find_account("01234567890", "job-1").await.unwrap_err();
    assert!(matches!(err, PlatformError::Unavailable(_)) && err.retryable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "gave up after {:?}", started.elapsed());
    assert!(!err.to_string().contains("01234567890"), "no VAT number in errors: {err}");
}

#[tokio::test]
async fn an_unreadable_answer_is_unavailable() {
    let server = MockServer::start().await;
    token_endpoint("t", 300).mount(&server).await;
    Mock::given(path("/v1/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&server)
        .await;
    let err = connector(&server).find_account("01234567890", "job-1").await.unwrap_err();
    assert!(matches!(err, PlatformError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_409_is_rejected_with_the_platform_code() {
    let server = MockServer::start().await;
    token_endpoint("t", 300).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/v1/accounts"))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({"error": "account_exists", "message": "01234567890 has an account"})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let err = connector(&server).create_account(&company(), "job-1").await.unwrap_err();
    assert_eq!(
        err,
        PlatformError::Rejected {
            status: 409,
            code: "account_exists".into(),
            message: "01234567890 has an account".into()
        }
    );
    assert!(matches!(ponte_identity::jobs::JobFailure::from(err), ponte_identity::jobs::JobFailure::Permanent(_)));
    server.verify().await;
}

#[tokio::test]
async fn create_sends_the_company_as_given_with_token_and_idempotency_key() {
    let server = MockServer::start().await;
    token_endpoint("t1", 300).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/v1/accounts"))
        .and(bearer_token("t1"))
        .and(header("idempotency-key", "job-0190"))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({ "company": company() })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "account": account() })))
        .expect(1)
        .mount(&server)
        .await;

    let created = connector(&server).create_account(&company(), "job-0190").await.unwrap();
    assert_eq!(created.id, "pa_1");
    server.verify().await;
}

#[tokio::test]
async fn link_register_and_activate_follow_the_contract() {
    let server = MockServer::start().await;
    token_endpoint("t1", 300).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/v1/accounts/pa_1/companies"))
        .and(header("idempotency-key", "job-link"))
        .and(body_json(json!({ "company": company() })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "account": account() })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/accounts/pa_1/collaborators"))
        .and(header("idempotency-key", "job-invite"))
        .and(body_json(json!({"email": "anna@esempio.it", "reference": "inv_7"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "collaborator": {"email": "anna@esempio.it", "status": "invited", "platform_sent_invite": true}
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/accounts/pa_1/integrations/digital_invoice/activations"))
        .and(bearer_token("t1"))
        .and(header("idempotency-key", "job-activate"))
        .and(body_json(json!({"vat_number": "01234567890", "collaborator_email": "anna@esempio.it"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "activation": {"id": "act_1", "status": "active", "activated_at": "2025-01-02T03:04:05Z"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/accounts/pa_missing/companies"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "account_not_found", "message": "no"})))
        .mount(&server)
        .await;

    let platform = connector(&server);
    assert_eq!(platform.link_account("pa_1", &company(), "job-link").await.unwrap().id, "pa_1");
    assert_eq!(
        platform.register_collaborator("pa_1", "anna@esempio.it", "inv_7", "job-invite").await.unwrap(),
        Collaborator { email: "anna@esempio.it".into(), status: "invited".into(), platform_sent_invite: true }
    );
    assert_eq!(
        platform.activate("pa_1", "digital_invoice", "01234567890", "anna@esempio.it", "job-activate").await.unwrap(),
        Activation { id: "act_1".into(), status: "active".into(), activated_at: Some("2025-01-02T03:04:05Z".into()) }
    );
    let err = platform.link_account("pa_missing", &company(), "job-x").await.unwrap_err();
    assert!(matches!(err, PlatformError::Rejected { status: 404, ref code, .. } if code == "account_not_found"));
    server.verify().await;
}
