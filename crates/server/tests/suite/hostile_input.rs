//! Input an attacker would send: NUL bytes that PostgreSQL cannot store, and emails that
//! look like another address because of invisible characters.

use ponte_identity::client::GrantType;
use serde_json::{Value, json};

use crate::harness::{Parts, REDIRECT_URI, TestApp, sign_in};

/// A refusal is a 4xx; a 500 means the NUL reached the database and broke the query.
fn assert_refused(what: &str, status: u16, body: &str) {
    assert!((400..500).contains(&status), "{what}: {status} {body}");
}

#[tokio::test]
async fn nul_bytes_are_refused_cleanly_on_postgres() {
    let Some(app) = TestApp::spawn_on(Parts { postgres: true, ..Parts::default() }).await else { return };
    let token = app.admin_token().await;
    let created = app.create_account(&token, "owner@esempio.it", "correct horse battery").await;
    let (account, owner) = (created["id"].as_str().unwrap(), created["owner"]["id"].as_str().unwrap());
    let (client_id, _) = app.register_client(&[GrantType::ClientCredentials], &["ponte.admin"]).await;
    let http = app.browser();

    let form = http
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "a\0b"), ("client_secret", "x")])
        .send()
        .await
        .unwrap();
    let status = form.status().as_u16();
    assert_refused("client_id in the token form", status, &form.text().await.unwrap());

    let basic = http
        .post(app.url("/oauth2/token"))
        .basic_auth(format!("{client_id}\0"), Some("x"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = basic.status().as_u16();
    assert_refused("client_id in Basic credentials", status, &basic.text().await.unwrap());

    let login = sign_in(&app, &http, "mario\0@esempio.it", "not the password").await;
    let status = login.status().as_u16();
    assert_refused("email at login", status, &login.text().await.unwrap());

    let mut authorize = url::Url::parse(&app.url("/oauth2/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "shop\0")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", "openid")
        .append_pair("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
        .append_pair("code_challenge_method", "S256");
    let authorize = http.get(authorize).send().await.unwrap();
    let status = authorize.status().as_u16();
    assert_refused("client_id at authorize", status, &authorize.text().await.unwrap());

    let unlink = http
        .delete(app.url(&format!("/api/v1/accounts/{account}/users/{owner}/identities/up%00")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = unlink.status().as_u16();
    assert_refused("provider in a REST path", status, &unlink.text().await.unwrap());

    for path in ["/federation/up%00/start?intent=login", "/federation/up%00/callback?state=x&code=y"] {
        let response = http.get(app.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        assert_refused(path, status, &response.text().await.unwrap());
    }
    let backchannel =
        http.post(app.url("/federation/up%00/backchannel-logout")).form(&[("logout_token", "x")]).send().await.unwrap();
    let status = backchannel.status().as_u16();
    assert_refused("provider at back-channel logout", status, &backchannel.text().await.unwrap());
}

#[tokio::test]
async fn an_email_with_invisible_characters_is_refused_with_the_field_named() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let created = app.create_account(&token, "owner@esempio.it", "correct horse battery").await;
    let url = app.url(&format!("/api/v1/accounts/{}/users", created["id"].as_str().unwrap()));
    for email in ["owner\u{200b}@esempio.it", "a\u{202e}ti.oipmese@b.it", "x\u{200d}@esempio.it"] {
        let response = app
            .browser()
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"email": email, "name": "Lookalike", "role": "admin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{email:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(body["errors"][0]["field"], "email");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("invisible"), "{body}");
    }
    let users: Value = app.browser().get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "nothing was stored");
}

/// Found by the contract fuzz: the contract lets `confirm` and `reactivate` take `null` for
/// their optional body, and the server answered 400 `invalid_json`. `null` is the defaults,
/// like no body; the action then answers for the integration's state.
#[tokio::test]
async fn a_null_body_on_an_optional_integration_body_means_the_defaults() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let account = app.create_account(&token, "null-body@example.com", "correct horse battery").await;
    let account = account["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let company: Value = http
        .post(app.url(&format!("/api/v1/accounts/{account}/companies")))
        .bearer_auth(&token)
        .json(&crate::integrations::company_json("00743110157"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = format!(
        "/api/v1/accounts/{account}/companies/{}/integrations/digital_invoice",
        company["id"].as_str().unwrap()
    );
    for action in ["confirm", "reactivate"] {
        for body in ["null", " null\n"] {
            let res = http
                .post(app.url(&format!("{base}/{action}")))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let problem: Value = res.json().await.unwrap_or_default();
            assert_ne!(problem["code"], "invalid_json", "{action} with {body:?}: {status} {problem}");
        }
    }
    let res = http
        .post(app.url(&format!("{base}/confirm")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400, "anything else that is not the body's object is still refused");
}
