//! Ponte as an OpenID Provider, driven over HTTP the way a browser and a relying party
//! would (the end-to-end suite repeats the happy paths with certified libraries).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{NowForTest, POST_LOGOUT_URI, REDIRECT_URI, TestApp, csrf_from};

const PASSWORD: &str = "correct horse battery";

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        + &URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn query_of(url: &str) -> HashMap<String, String> {
    let parsed = url::Url::parse(url).unwrap();
    parsed.query_pairs().into_owned().collect()
}

struct Flow {
    scope: &'static str,
    /// Who signs in when Ponte asks.
    email: &'static str,
    app: TestApp,
    browser: reqwest::Client,
    client_id: String,
    secret: Option<String>,
    account: Value,
}

impl Flow {
    async fn new(first_party: bool, public: bool) -> Self {
        let app = TestApp::spawn().await;
        let token = app.admin_token().await;
        let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
        let (client_id, secret) = app.register_browser_client(first_party, public).await;
        let browser = app.browser();
        Self {
            scope: "openid email profile offline_access",
            email: "mario@esempio.it",
            app,
            browser,
            client_id,
            secret,
            account,
        }
    }

    fn authorize_url(&self, challenge: &str, extra: &[(&str, &str)]) -> String {
        let mut url = url::Url::parse(&self.app.url("/oauth2/authorize")).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("scope", self.scope)
            .append_pair("state", "st-1")
            .append_pair("nonce", "no-1")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        for (k, v) in extra {
            url.query_pairs_mut().append_pair(k, v);
        }
        url.to_string()
    }

    /// Follows Ponte's own redirects (login, continue) until the browser would leave for
    /// the client; signs in on the way if asked.
    async fn run(&self, start: &str) -> reqwest::Response {
        let mut response = self.browser.get(start).send().await.unwrap();
        loop {
            let next = location(&response);
            if next.starts_with("/login") {
                let page = self.browser.get(self.app.url(&next)).send().await.unwrap().text().await.unwrap();
                let authz = query_of(&self.app.url(&next))["authz"].clone();
                response = self
                    .browser
                    .post(self.app.url("/login"))
                    .form(&[
                        ("email", self.email),
                        ("password", PASSWORD),
                        ("csrf_token", &csrf_from(&page)),
                        ("authz", &authz),
                    ])
                    .send()
                    .await
                    .unwrap();
            } else if next.starts_with('/') {
                response = self.browser.get(self.app.url(&next)).send().await.unwrap();
            } else {
                return response;
            }
        }
    }

    async fn code(&self, challenge: &str) -> String {
        let back = self.run(&self.authorize_url(challenge, &[])).await;
        let params = query_of(&location(&back));
        assert_eq!(params.get("state").map(String::as_str), Some("st-1"));
        assert_eq!(
            params.get("iss").map(String::as_str),
            Some(self.app.state.issuer()),
            "RFC 9207 iss in the response"
        );
        params["code"].clone()
    }

    fn token_request(&self, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let request = self.app.browser().post(self.app.url("/oauth2/token"));
        match &self.secret {
            Some(secret) => request.basic_auth(&self.client_id, Some(secret)).form(form),
            None => {
                let mut with_id = form.to_vec();
                with_id.push(("client_id", &self.client_id));
                request.form(&with_id)
            }
        }
    }

    async fn redeem(&self, code: &str, verifier: &str) -> (u16, Value) {
        let response = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn refresh(&self, token: &str) -> (u16, Value) {
        let response =
            self.token_request(&[("grant_type", "refresh_token"), ("refresh_token", token)]).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn introspect(&self, token: &str) -> Value {
        let client = self.app.register_client(&[ponte_identity::client::GrantType::ClientCredentials], &[]).await;
        self.app.introspect(&client, token).await
    }
}

/// A JWT part as JSON, unverified (the tests verify signatures separately).
fn jwt_part(jwt: &str, index: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(index).unwrap()).unwrap()).unwrap()
}

fn claims(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

#[tokio::test]
async fn a_user_signs_in_through_ponte_and_the_client_gets_verified_tokens() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (status, tokens) = flow.redeem(&code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");

    let ring = flow.app.state.keys.ring();
    let access = ring
        .verify_access_token(
            tokens["access_token"].as_str().unwrap(),
            flow.app.state.issuer(),
            "ponte-api",
            flow.app.state.now(),
        )
        .unwrap();
    let owner = &flow.account["owner"];
    assert_eq!(access.sub, owner["id"].as_str().unwrap());
    assert_eq!(access.account_id.as_deref(), flow.account["id"].as_str());
    assert_eq!(access.role.as_deref(), Some("owner"));
    assert_eq!(access.client_id, flow.client_id);

    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert!(ring.verify_id_token_hint(tokens["id_token"].as_str().unwrap(), flow.app.state.issuer()).is_ok());
    assert_eq!(id_token["aud"], flow.client_id.as_str());
    assert_eq!(id_token["azp"], flow.client_id.as_str());
    assert_eq!(id_token["nonce"], "no-1");
    assert_eq!(id_token["email"], "mario@esempio.it");
    assert_eq!(id_token["name"], "Mario Rossi");
    assert_eq!(id_token["amr"], json!(["pwd"]));
    assert!(id_token["sid"].is_string() && id_token["auth_time"].is_i64());

    let info: Value = flow
        .app
        .browser()
        .get(flow.app.url("/oauth2/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], owner["id"]);
    assert_eq!(info["email"], "mario@esempio.it");

    // With a session, the next authorization needs no login page.
    let (verifier2, challenge2) = pkce();
    let direct = flow.browser.get(flow.authorize_url(&challenge2, &[])).send().await.unwrap();
    assert!(location(&direct).starts_with(REDIRECT_URI), "straight back: {}", location(&direct));
    let code2 = query_of(&location(&direct))["code"].clone();
    assert_eq!(flow.redeem(&code2, &verifier2).await.0, 200);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_replay_revokes_the_family() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (_, first) = flow.redeem(&code, &verifier).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();

    let (status, second) = flow.refresh(&r1).await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2, "rotated");
    assert_eq!(claims(second["id_token"].as_str().unwrap())["sid"], claims(first["id_token"].as_str().unwrap())["sid"]);

    // A network retry with the previous token a moment later still works, once.
    let (status, retried) = flow.refresh(&r1).await;
    assert_eq!(status, 200, "grace for the immediately previous token: {retried}");
    let r3 = retried["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(flow.refresh(&r2).await.0, 400, "the token lost in the retry is dead");

    // Later, the old token is a replay: the whole family goes, the newest token with it.
    flow.app.clock.advance(time::Duration::seconds(11));
    let (status, replay) = flow.refresh(&r1).await;
    assert_eq!((status, replay["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(flow.refresh(&r3).await.1["error"], "invalid_grant");
    assert_eq!(flow.introspect(&r3).await, json!({"active": false}));
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (_, tokens) = flow.redeem(&code, &verifier).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(flow.introspect(access).await["active"], true);

    let (status, replay) = flow.redeem(&code, &verifier).await;
    assert_eq!((status, replay["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(flow.introspect(access).await, json!({"active": false}), "the access token it issued is revoked");
    assert_eq!(flow.refresh(tokens["refresh_token"].as_str().unwrap()).await.0, 400, "and its refresh family");
}

#[tokio::test]
async fn pkce_is_required_and_checked() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (_, other_challenge) = pkce();
    let _ = other_challenge;
    let (status, wrong) = flow.redeem(&code, &(verifier.clone() + "x")).await;
    assert_eq!((status, wrong["error"].as_str()), (400, Some("invalid_grant")));

    let mut url = url::Url::parse(&flow.authorize_url(&challenge, &[])).unwrap();
    let without: Vec<(String, String)> =
        url.query_pairs().into_owned().filter(|(k, _)| !k.starts_with("code_challenge")).collect();
    url.query_pairs_mut().clear().extend_pairs(without);
    let no_pkce = flow.browser.get(url.as_str()).send().await.unwrap();
    let params = query_of(&location(&no_pkce));
    assert_eq!(params["error"], "invalid_request");
    assert_eq!(params["state"], "st-1");
    assert_eq!(params["iss"], flow.app.state.issuer());

    let plain = flow
        .browser
        .get(flow.authorize_url(&verifier, &[]).replace("code_challenge_method=S256", "code_challenge_method=plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(query_of(&location(&plain))["error"], "invalid_request");
}

#[tokio::test]
async fn unregistered_redirect_uris_get_a_page_not_a_redirect() {
    let flow = Flow::new(true, false).await;
    let (_, challenge) = pkce();
    let url = flow.authorize_url(&challenge, &[]).replace("callback", "evil");
    let response = flow.browser.get(url).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());
    assert!(response.text().await.unwrap().contains("invalid_authorization_request"));
}

#[tokio::test]
async fn prompt_none_without_a_session_is_login_required_and_prompt_login_forces_the_page() {
    let flow = Flow::new(true, false).await;
    let (_, challenge) = pkce();
    let none = flow.browser.get(flow.authorize_url(&challenge, &[("prompt", "none")])).send().await.unwrap();
    assert_eq!(query_of(&location(&none))["error"], "login_required");

    flow.code(&challenge).await;
    let again = flow.browser.get(flow.authorize_url(&challenge, &[("prompt", "login")])).send().await.unwrap();
    assert!(location(&again).starts_with("/login?authz="), "prompt=login shows the login page despite the session");
    let silent = flow.browser.get(flow.authorize_url(&challenge, &[("prompt", "none")])).send().await.unwrap();
    assert!(query_of(&location(&silent)).contains_key("code"), "prompt=none with a session");
}

#[tokio::test]
async fn third_party_clients_ask_for_consent_once() {
    let flow = Flow::new(false, false).await;
    let (_, challenge) = pkce();
    let consent = flow.run(&flow.authorize_url(&challenge, &[])).await;
    assert_eq!(consent.status(), 200, "a page, not a redirect");
    let page = consent.text().await.unwrap();
    assert!(page.contains("offline_access") && page.contains("value=\"allow\""), "{page}");
    let authz = page.split("name=\"authz\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let denied = flow
        .browser
        .post(flow.app.url("/oauth2/consent"))
        .form(&[("authz", authz.as_str()), ("decision", "deny"), ("csrf_token", &csrf_from(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(query_of(&location(&denied))["error"], "access_denied");

    let page = flow.run(&flow.authorize_url(&challenge, &[])).await.text().await.unwrap();
    let authz = page.split("name=\"authz\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let allowed = flow
        .browser
        .post(flow.app.url("/oauth2/consent"))
        .form(&[("authz", authz.as_str()), ("decision", "allow"), ("csrf_token", &csrf_from(&page))])
        .send()
        .await
        .unwrap();
    assert!(query_of(&location(&allowed)).contains_key("code"));
    let next = flow.browser.get(flow.authorize_url(&challenge, &[])).send().await.unwrap();
    assert!(query_of(&location(&next)).contains_key("code"), "consent remembered");
}

#[tokio::test]
async fn public_clients_use_pkce_alone_and_cannot_introspect() {
    let flow = Flow::new(true, true).await;
    assert!(flow.secret.is_none());
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (status, tokens) = flow.redeem(&code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let introspect = flow
        .app
        .browser()
        .post(flow.app.url("/oauth2/introspect"))
        .form(&[("client_id", flow.client_id.as_str()), ("token", tokens["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspect.status(), 401);
    let anonymous = flow
        .app
        .browser()
        .post(flow.app.url("/oauth2/introspect"))
        .form(&[("token", tokens["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json::<Value>().await.unwrap()["error"], "invalid_client");
}

#[tokio::test]
async fn rp_initiated_logout_ends_the_session_and_its_refresh_tokens() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (_, tokens) = flow.redeem(&code, &verifier).await;
    let mut url = url::Url::parse(&flow.app.url("/oauth2/logout")).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", tokens["id_token"].as_str().unwrap())
        .append_pair("post_logout_redirect_uri", POST_LOGOUT_URI)
        .append_pair("state", "bye");
    let out = flow.browser.get(url.as_str()).send().await.unwrap();
    assert!(location(&out).starts_with(POST_LOGOUT_URI), "{}", location(&out));
    assert_eq!(query_of(&location(&out))["state"], "bye");
    assert_eq!(flow.refresh(tokens["refresh_token"].as_str().unwrap()).await.0, 400);
    let (_, challenge) = pkce();
    let again = flow.browser.get(flow.authorize_url(&challenge, &[])).send().await.unwrap();
    assert!(location(&again).starts_with("/login"), "signed out");

    let unregistered = flow
        .browser
        .get(flow.app.url("/oauth2/logout?client_id=x&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(unregistered.status(), 400);
}

#[tokio::test]
async fn logout_without_a_hint_asks_for_confirmation() {
    let flow = Flow::new(true, false).await;
    let (_, challenge) = pkce();
    flow.code(&challenge).await;
    let page = flow.browser.get(flow.app.url("/oauth2/logout")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("confirm-logout"));
    assert!(
        flow.browser
            .get(flow.authorize_url(&challenge, &[("prompt", "none")]))
            .send()
            .await
            .map(|r| query_of(&location(&r)).contains_key("code"))
            .unwrap(),
        "a GET alone signs nobody out"
    );
    let confirmed = flow
        .browser
        .post(flow.app.url("/oauth2/logout"))
        .form(&[("csrf_token", csrf_from(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    let after = flow.browser.get(flow.authorize_url(&challenge, &[("prompt", "none")])).send().await.unwrap();
    assert_eq!(query_of(&location(&after))["error"], "login_required");
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones() {
    let flow = Flow::new(true, false).await;
    let before = flow.app.admin_token().await;
    let old_kid = flow.app.state.keys.ring().signing_kid().to_owned();
    let repo = ponte_identity::keys::SqlKeys::new(flow.app.state.db.clone());
    let policy = flow.app.state.config.key_policy();
    let rotation =
        ponte_identity::keys::rotate(&repo, &flow.app.state.master, &policy, flow.app.state.now()).await.unwrap();
    flow.app.state.keys.refresh(&repo, &flow.app.state.master, &policy, flow.app.state.now()).await.unwrap();
    assert_ne!(rotation.current, old_kid);
    let after = flow.app.admin_token().await;
    assert_eq!(jwt_part(&after, 0)["kid"], rotation.current.as_str());
    for token in [&before, &after] {
        let r = flow
            .app
            .browser()
            .get(flow.app.url(&format!("/api/v1/accounts/{}", flow.account["id"].as_str().unwrap())))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let jwks: Value = flow.app.browser().get(flow.app.url("/oauth2/jwks")).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(
        kids.contains(&old_kid.as_str())
            && kids.contains(&rotation.current.as_str())
            && kids.contains(&rotation.next.as_str())
    );
}

#[tokio::test]
async fn user_tokens_act_within_their_account_by_role() {
    let flow = Flow::new(true, false).await;
    let admin_token = flow.app.admin_token().await;
    let account = flow.account["id"].as_str().unwrap().to_owned();
    flow.app.paid_seats(&admin_token, &account, 1).await;
    let http = flow.app.browser();
    let member: Value = http
        .post(flow.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&admin_token)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = flow.app.create_account(&admin_token, "luigi@esempio.it", PASSWORD).await;

    // A token without the API scope (what a third-party app would hold) is refused.
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let plain_token = flow.redeem(&code, &verifier).await.1["access_token"].as_str().unwrap().to_owned();
    let refused = http
        .get(flow.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&plain_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "insufficient_scope");

    // The owner's token with ponte.api manages its own account only.
    let flow = Flow { scope: "openid ponte.api", ..flow };
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let owner_token = flow.redeem(&code, &verifier).await.1["access_token"].as_str().unwrap().to_owned();
    let users = http
        .get(flow.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&owner_token)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    let elsewhere = http
        .get(flow.app.url(&format!("/api/v1/accounts/{}/users", other["id"].as_str().unwrap())))
        .bearer_auth(&owner_token)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    let create = http
        .post(flow.app.url("/api/v1/accounts"))
        .bearer_auth(&owner_token)
        .json(&json!({"name": "X", "owner": {"email": "x@esempio.it", "name": "X"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 403, "only the POS backend creates accounts");

    // A member signs in through the same client and may read itself, nothing more.
    let member_browser = Flow { browser: flow.app.browser(), ..flow };
    assert_eq!(member_browser.scope, "openid ponte.api");
    let page = member_browser.browser.get(member_browser.app.url("/login")).send().await.unwrap().text().await.unwrap();
    member_browser
        .browser
        .post(member_browser.app.url("/login"))
        .form(&[("email", "anna@esempio.it"), ("password", PASSWORD), ("csrf_token", &csrf_from(&page))])
        .send()
        .await
        .unwrap();
    let (verifier, challenge) = pkce();
    let back = member_browser.browser.get(member_browser.authorize_url(&challenge, &[])).send().await.unwrap();
    let code = query_of(&location(&back))["code"].clone();
    let member_token = member_browser.redeem(&code, &verifier).await.1["access_token"].as_str().unwrap().to_owned();
    let me = http
        .get(member_browser.app.url(&format!("/api/v1/accounts/{account}/users/{}", member["id"].as_str().unwrap())))
        .bearer_auth(&member_token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let list = http
        .get(member_browser.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&member_token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 403);
    assert_eq!(list.json::<Value>().await.unwrap()["code"], "forbidden");

    // Disabling the member ends its API access at once, though its token has not expired.
    let member_url =
        member_browser.app.url(&format!("/api/v1/accounts/{account}/users/{}", member["id"].as_str().unwrap()));
    let disabled =
        http.patch(&member_url).bearer_auth(&admin_token).json(&json!({"status": "disabled"})).send().await.unwrap();
    assert_eq!(disabled.status(), 200);
    assert_eq!(http.get(&member_url).bearer_auth(&member_token).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn keys_rotate_on_schedule_when_the_current_one_is_old_enough() {
    let app = TestApp::spawn().await;
    let repo = ponte_identity::keys::SqlKeys::new(app.state.db.clone());
    let policy = app.state.config.key_policy();
    let before = app.state.keys.ring().signing_kid().to_owned();
    app.state.keys.refresh(&repo, &app.state.master, &policy, app.state.now()).await.unwrap();
    assert_eq!(app.state.keys.ring().signing_kid(), before, "not due yet");
    app.clock.advance(time::Duration::days(31));
    app.state.keys.refresh(&repo, &app.state.master, &policy, app.state.now()).await.unwrap();
    assert_ne!(app.state.keys.ring().signing_kid(), before, "rotated after key_rotation_days");
}

#[tokio::test]
async fn a_code_is_worthless_once_its_session_has_ended() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let home = flow.browser.get(flow.app.url("/")).send().await.unwrap().text().await.unwrap();
    let out =
        flow.browser.post(flow.app.url("/logout")).form(&[("csrf_token", csrf_from(&home))]).send().await.unwrap();
    assert_eq!(out.status(), 303);
    let (status, body) = flow.redeem(&code, &verifier).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn parking_authorization_requests_is_rate_limited_per_address() {
    let flow = Flow::new(true, false).await;
    let (_, challenge) = pkce();
    let url = flow.authorize_url(&challenge, &[]);
    let mut statuses = Vec::new();
    for _ in 0..121 {
        statuses.push(flow.app.browser().get(&url).send().await.unwrap().status().as_u16());
    }
    assert!(statuses[..120].iter().all(|s| *s == 303), "the first 120 go to the login page");
    assert_eq!(statuses[120], 429);
    flow.app.clock.advance(time::Duration::minutes(1));
    assert_eq!(flow.app.browser().get(&url).send().await.unwrap().status(), 303, "the next minute is fine");
}

impl Flow {
    async fn refresh_with_scope(&self, token: &str, scope: &str) -> (u16, Value) {
        let form = [("grant_type", "refresh_token"), ("refresh_token", token), ("scope", scope)];
        let response = self.token_request(&form).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

#[tokio::test]
async fn a_refresh_refused_for_its_scope_changes_nothing() {
    let flow = Flow::new(true, false).await;
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (_, first) = flow.redeem(&code, &verifier).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();

    let (status, refused) = flow.refresh_with_scope(&r1, "openid ponte.api").await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_scope")), "{refused}");

    // Long past the retry grace: had the refusal rotated the family, this would be reuse.
    flow.app.clock.advance(time::Duration::seconds(30));
    let (status, second) = flow.refresh(&r1).await;
    assert_eq!(status, 200, "the token in use still works: {second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    let own = flow.app.browser().post(flow.app.url("/oauth2/introspect"));
    let own = own.basic_auth(&flow.client_id, flow.secret.as_deref()).form(&[("token", r2.as_str())]);
    let described: Value = own.send().await.unwrap().json().await.unwrap();
    assert_eq!((described["active"].as_bool(), described["token_type"].as_str()), (Some(true), Some("refresh_token")));
    flow.app.clock.advance(time::Duration::seconds(30));
    assert_eq!(flow.refresh(&r2).await.0, 200, "and the token it issued works in turn");
}

#[tokio::test]
async fn introspection_turns_inactive_when_the_user_is_disabled() {
    let flow = Flow::new(true, false).await;
    let admin_token = flow.app.admin_token().await;
    let account = flow.account["id"].as_str().unwrap().to_owned();
    flow.app.paid_seats(&admin_token, &account, 1).await;
    let http = flow.app.browser();
    let member: Value = http
        .post(flow.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&admin_token)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed_in = crate::harness::sign_in(&flow.app, &flow.browser, "anna@esempio.it", PASSWORD).await;
    assert_eq!(signed_in.status(), 303);
    let (verifier, challenge) = pkce();
    let back = flow.browser.get(flow.authorize_url(&challenge, &[])).send().await.unwrap();
    let code = query_of(&location(&back))["code"].clone();
    let (status, tokens) = flow.redeem(&code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(flow.introspect(access).await["active"], true);

    let member_url = flow.app.url(&format!("/api/v1/accounts/{account}/users/{}", member["id"].as_str().unwrap()));
    let disabled =
        http.patch(&member_url).bearer_auth(&admin_token).json(&json!({"status": "disabled"})).send().await.unwrap();
    assert_eq!(disabled.status(), 200);

    assert_eq!(flow.introspect(access).await, json!({"active": false}), "introspection agrees with userinfo");
    let info = http.get(flow.app.url("/oauth2/userinfo")).bearer_auth(access).send().await.unwrap();
    assert_eq!(info.status(), 401);
}

#[tokio::test]
async fn a_member_s_tokens_carry_the_access_claim_and_a_refresh_picks_up_a_permission_change() {
    let flow = Flow::new(true, false).await;
    let admin = flow.app.admin_token().await;
    let account = flow.account["id"].as_str().unwrap().to_owned();
    flow.app.paid_seats(&admin, &account, 1).await;
    let http = flow.app.browser();
    let company: Value = http
        .post(flow.app.url(&format!("/api/v1/accounts/{account}/companies")))
        .bearer_auth(&admin)
        .json(&crate::integrations::company_json("00743110157"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let company = company["id"].as_str().unwrap().to_owned();
    let grants = json!([
        {"permission": "invoices:read", "companies": "all"},
        {"permission": "invoices:send", "companies": [company]},
    ]);
    let anna: Value = http
        .post(flow.app.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&admin)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": PASSWORD, "permissions": grants}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flow = Flow { email: "anna@esempio.it", ..flow };
    let (verifier, challenge) = pkce();
    let code = flow.code(&challenge).await;
    let (status, tokens) = flow.redeem(&code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let expected = json!({"role": "member", "permissions": {"invoices:read": "all", "invoices:send": [company]}});
    let ring = flow.app.state.keys.ring();
    let issuer = flow.app.state.issuer();
    let now = flow.app.clock.now_for_test();
    let access = ring.verify_access_token(tokens["access_token"].as_str().unwrap(), issuer, "ponte-api", now).unwrap();
    assert_eq!(access.access, Some(expected.clone()));
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["access"], expected, "scope profile puts it in the ID token");

    // Narrowed by the admin: the old access token keeps its claim, a refresh carries the new one.
    let narrowed = json!({"permissions": [{"permission": "invoices:read", "companies": [company]}]});
    let put = http
        .put(flow.app.url(&format!("/api/v1/accounts/{account}/users/{}/permissions", anna["id"].as_str().unwrap())))
        .bearer_auth(&admin)
        .json(&narrowed)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (status, refreshed) = flow.refresh(tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{refreshed}");
    let access =
        ring.verify_access_token(refreshed["access_token"].as_str().unwrap(), issuer, "ponte-api", now).unwrap();
    assert_eq!(access.access, Some(json!({"role": "member", "permissions": {"invoices:read": [company]}})));
}
