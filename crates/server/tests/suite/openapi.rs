//! The checked-in contract must match the code.

use crate::harness::TestApp;

#[tokio::test]
async fn checked_in_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let generated = ponte_server::openapi::document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/openapi.json");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json differs from the code; regenerate it with `cargo run -q --bin ponte -- openapi > openapi/openapi.json`"
    );
    let app = TestApp::spawn().await;
    let served: serde_json::Value =
        app.browser().get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(served, serde_json::from_str::<serde_json::Value>(&generated).unwrap());
    for path in ["/api/v1/accounts", "/api/v1/accounts/{account}/users/{user}", "/oauth2/token"] {
        assert!(served["paths"].get(path).is_some(), "{path} documented");
    }
}
