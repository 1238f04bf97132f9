//! Behind a reverse proxy: the client address of rate limits and sessions comes from the
//! forwarding header only when the TCP peer (here 127.0.0.1) is a trusted proxy.

use serde_json::{Value, json};

use crate::harness::{TestApp, TestDb, sign_in};

const PASSWORD: &str = "correct horse battery";

/// An app allowing two reset requests per client address, with `trusted_proxies`.
async fn app(trusted_proxies: &[&str]) -> TestApp {
    TestApp::spawn_with(TestDb::sqlite(), None, |c| {
        c.recovery.max_per_ip = 2;
        c.trusted_proxies = trusted_proxies.iter().map(|s| s.parse().unwrap()).collect();
    })
    .await
}

/// A browser whose requests arrive through a proxy that says they came from `client`.
fn browser_behind_proxy(client: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    // What the client sent itself comes first; the proxy appends the address it saw.
    headers.insert("x-forwarded-for", format!("192.0.2.66, {client}").parse().unwrap());
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Asks for a password reset for a fresh address (the per-address limit never trips).
async fn forgot(app: &TestApp, http: &reqwest::Client, n: usize) -> u16 {
    let body = json!({ "email": format!("person{n}@esempio.it") });
    http.post(app.url("/api/v1/password/forgot")).json(&body).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() {
    let app = app(&["127.0.0.1/32"]).await;
    let (anna, bruno) = (browser_behind_proxy("203.0.113.7"), browser_behind_proxy("2001:db8::8"));
    assert_eq!([forgot(&app, &anna, 1).await, forgot(&app, &anna, 2).await], [202, 202]);
    assert_eq!(forgot(&app, &anna, 3).await, 429, "anna used up her address's two requests");
    assert_eq!(forgot(&app, &bruno, 4).await, 202, "bruno, through the same proxy, is counted apart");
    assert_eq!(forgot(&app, &app.browser(), 5).await, 202, "the proxy's own requests are counted apart too");

    // The session records the forwarded address, not the proxy's nor what the client wrote.
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    assert_eq!(sign_in(&app, &anna, "mario@esempio.it", PASSWORD).await.status(), 303);
    let (account_id, owner_id) = (account["id"].as_str().unwrap(), account["owner"]["id"].as_str().unwrap());
    let sessions = app.url(&format!("/api/v1/accounts/{account_id}/users/{owner_id}/sessions"));
    let listed: Value = app.browser().get(sessions).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["sessions"][0]["ip"], "203.0.113.7");
}

#[tokio::test]
async fn a_forwarding_header_from_an_untrusted_peer_changes_nothing() {
    for trusted in [&[][..], &["10.0.0.0/8"][..]] {
        let app = app(trusted).await;
        let (anna, bruno) = (browser_behind_proxy("203.0.113.7"), browser_behind_proxy("2001:db8::8"));
        assert_eq!([forgot(&app, &anna, 1).await, forgot(&app, &bruno, 2).await], [202, 202]);
        assert_eq!(forgot(&app, &browser_behind_proxy("198.51.100.9"), 3).await, 429, "all count on the peer");
        assert_eq!(forgot(&app, &app.browser(), 4).await, 429, "{trusted:?}");
    }
}
