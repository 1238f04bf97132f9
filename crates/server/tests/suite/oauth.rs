//! The token endpoint, discovery and JWKS.

use ponte_identity::client::GrantType;
use serde_json::Value;

use crate::harness::TestApp;

#[tokio::test]
async fn client_credentials_with_basic_or_post_gives_an_at_jwt() {
    let app = TestApp::spawn().await;
    let (id, secret) = app.register_client(&[GrantType::ClientCredentials], &["ponte.admin"]).await;
    let basic = app
        .browser()
        .post(app.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    assert_eq!(basic.headers()["cache-control"], "no-store");
    let body: Value = basic.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "ponte.admin");
    assert_eq!(body["expires_in"], 600);

    let post = app
        .browser()
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("scope", "ponte.admin"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let token = post.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let claims =
        app.state.keys.ring().verify_access_token(&token, app.state.issuer(), "ponte-api", app.state.now()).unwrap();
    assert_eq!(claims.sub, id);
    assert_eq!(claims.client_id, id);
    assert!(!claims.jti.is_empty() && claims.exp - claims.iat == 600);
}

async fn token_error(app: &TestApp, request: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let _ = app;
    (status, response.json().await.unwrap(), challenge)
}

#[tokio::test]
async fn wrong_secrets_and_bad_requests_get_rfc6749_errors() {
    let app = TestApp::spawn().await;
    let (id, secret) = app.register_client(&[GrantType::ClientCredentials], &["ponte.admin"]).await;
    let url = app.url("/oauth2/token");
    let cc = [("grant_type", "client_credentials")];

    let (status, body, challenge) =
        token_error(&app, app.browser().post(&url).basic_auth(&id, Some("wrong")).form(&cc)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(challenge.as_deref(), Some("Basic realm=\"ponte\""));

    let (status, body, _) =
        token_error(&app, app.browser().post(&url).basic_auth("cl_nobody", Some(&secret)).form(&cc)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "unknown and wrong look the same");

    let (status, body, _) = token_error(
        &app,
        app.browser().post(&url).form(&[("grant_type", "client_credentials"), ("client_id", id.as_str())]),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));

    let both = app
        .browser()
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("client_secret", secret.as_str())]);
    let (status, body, _) = token_error(&app, both).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    let (status, body, _) =
        token_error(&app, app.browser().post(&url).basic_auth(&id, Some(&secret)).form(&[("grant_type", "password")]))
            .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));

    let scope = [("grant_type", "client_credentials"), ("scope", "ponte.admin openid")];
    let (status, body, _) =
        token_error(&app, app.browser().post(&url).basic_auth(&id, Some(&secret)).form(&scope)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));

    let json = app
        .browser()
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}));
    let (status, body, _) = token_error(&app, json).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    let repeated = app
        .browser()
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=client_credentials");
    let (status, body, _) = token_error(&app, repeated).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    // Two methods are refused as such, even when the Basic credentials do not decode.
    let both = app.browser().post(&url).header("authorization", "Basic not-base64!").form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &secret),
    ]);
    let (status, body, _) = token_error(&app, both).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let undecodable = app.browser().post(&url).header("authorization", "Basic not-base64!").form(&cc);
    let (status, body, challenge) = token_error(&app, undecodable).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(challenge.is_some(), "a Basic attempt gets the Basic challenge");
}

#[tokio::test]
async fn a_client_without_the_grant_is_unauthorized() {
    let app = TestApp::spawn().await;
    let (id, secret) = app.register_client(&[GrantType::RefreshToken], &["openid"]).await;
    let response = app
        .browser()
        .post(app.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "unauthorized_client");
}

#[tokio::test]
async fn discovery_and_jwks_describe_the_signing_key() {
    let app = TestApp::spawn().await;
    let meta: Value =
        app.browser().get(app.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], app.state.issuer());
    assert_eq!(meta["jwks_uri"], format!("{}/oauth2/jwks", app.state.issuer()));
    assert_eq!(meta["token_endpoint"], format!("{}/oauth2/token", app.state.issuer()));
    assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    assert_eq!(meta["authorization_endpoint"], format!("{}/oauth2/authorize", app.state.issuer()));
    let jwks: Value = app.browser().get(app.url("/oauth2/jwks")).send().await.unwrap().json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "current and next");
    assert!(keys.iter().any(|k| k["kid"] == app.state.keys.ring().signing_kid()));
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str(), keys[0]["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert!(keys.iter().all(|k| k.get("d").is_none()), "never the private part");
}
