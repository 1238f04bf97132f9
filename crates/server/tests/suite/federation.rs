//! Upstream federation against a real OpenID Provider over HTTP: a second Ponte on
//! another loopback host (127.0.0.2) plays the company-wide ID. The end-to-end suite does
//! the same against oidc-provider.

use std::collections::HashMap;

use ponte_identity::client::{GrantType, NewClient};
use ponte_identity::upstream::ProviderConfig;
use serde_json::{Value, json};

use crate::harness::{NowForTest, TestApp, TestDb, TestRedis, csrf_from, dd};

pub(crate) const PASSWORD: &str = "correct horse battery";

/// The upstream provider and Ponte federated to it, with people on both sides.
pub(crate) struct World {
    pub(crate) upstream: TestApp,
    pub(crate) ponte: TestApp,
    pub(crate) admin_token: String,
    pub(crate) account: Value,
}

pub(crate) fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

pub(crate) fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

async fn upstream_provider(ponte_base: &str, extra_redirects: &[String], verified: bool) -> (TestApp, ProviderConfig) {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    let upstream =
        TestApp::spawn_on_listener(listener, TestDb::sqlite(), None, |c| c.assert_email_verified = verified).await;
    let mut redirect_uris = vec![format!("{ponte_base}/federation/up/callback")];
    redirect_uris.extend(extra_redirects.iter().cloned());
    let (client, secret) = upstream
        .state
        .clients
        .create(
            NewClient {
                name: "Ponte".into(),
                grants: vec![GrantType::AuthorizationCode],
                scopes: vec![],
                redirect_uris,
                post_logout_redirect_uris: vec![],
                first_party: true,
                public: false,
            },
            upstream.clock.now_for_test(),
        )
        .await
        .unwrap();
    let provider = ProviderConfig {
        issuer: upstream.base.clone(),
        client_id: client.id,
        client_secret: secret,
        client_secret_file: None,
        display_name: "TeamSystem ID".into(),
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        supports_prompt_create: false,
        email_claim: "email".into(),
        name_claim: "name".into(),
        discovery_ttl_secs: 3600,
    };
    (upstream, provider)
}

impl World {
    pub(crate) async fn new() -> Self {
        Self::on(TestDb::sqlite(), None).await
    }

    pub(crate) async fn on(db: TestDb, redis: Option<TestRedis>) -> Self {
        Self::configured(db, redis, |_| {}).await
    }

    /// With Ponte's configuration adjusted by the test (e.g. its `[smtp]`).
    pub(crate) async fn configured(
        db: TestDb,
        redis: Option<TestRedis>,
        adjust: impl FnOnce(&mut ponte_server::Config),
    ) -> Self {
        Self::built(db, redis, true, adjust).await
    }

    /// With an upstream that does not vouch for its users' emails.
    pub(crate) async fn unverified_emails() -> Self {
        Self::built(TestDb::sqlite(), None, false, |_| {}).await
    }

    async fn built(
        db: TestDb,
        redis: Option<TestRedis>,
        verified: bool,
        adjust: impl FnOnce(&mut ponte_server::Config),
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (upstream, provider) = upstream_provider(&base, &[], verified).await;
        let ponte = TestApp::spawn_on_listener(listener, db, redis, |c| {
            c.providers.insert("up".into(), provider);
            adjust(c);
        })
        .await;
        let admin_token = ponte.admin_token().await;
        let account = ponte.create_account(&admin_token, "mario@esempio.it", PASSWORD).await;
        let upstream_token = upstream.admin_token().await;
        for (email, name) in [("mario.rossi@gruppo.it", "Mario Rossi (ID)"), ("bruno@gruppo.it", "Bruno Neri")] {
            let created = upstream
                .browser()
                .post(upstream.url("/api/v1/accounts"))
                .bearer_auth(&upstream_token)
                .json(&json!({"name": format!("group {name}"), "owner": {"email": email, "name": name, "password": PASSWORD}}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }
        Self { upstream, ponte, admin_token, account }
    }

    /// Signs in on a Ponte (either side) through its login page.
    pub(crate) async fn password_login(
        &self,
        app: &TestApp,
        browser: &reqwest::Client,
        email: &str,
        authz: Option<&str>,
    ) -> reqwest::Response {
        let page_url = match authz {
            Some(a) => app.url(&format!("/login?authz={a}")),
            None => app.url("/login"),
        };
        let page = browser.get(page_url).send().await.unwrap().text().await.unwrap();
        let mut form =
            vec![("email", email.to_owned()), ("password", PASSWORD.to_owned()), ("csrf_token", csrf_from(&page))];
        if let Some(a) = authz {
            form.push(("authz", a.to_owned()));
        }
        browser.post(app.url("/login")).form(&form).send().await.unwrap()
    }

    /// Follows redirects between Ponte and the upstream; signs in upstream as `upstream_user`
    /// whenever the upstream shows its login page. Returns the first response that is not
    /// a redirect, and the path of the last redirect into Ponte.
    pub(crate) async fn browse(
        &self,
        browser: &reqwest::Client,
        start: &str,
        upstream_user: &str,
    ) -> (reqwest::Response, Vec<String>) {
        let mut seen = Vec::new();
        let mut url = start.to_owned();
        loop {
            let mut response = browser.get(&url).send().await.unwrap();
            let mut next = location(&response);
            if next.starts_with("/login?authz=") && url.starts_with(&self.upstream.base) {
                let authz = query_of(&self.upstream.url(&next))["authz"].clone();
                seen.push("upstream-login".to_owned());
                response = self.password_login(&self.upstream, browser, upstream_user, Some(&authz)).await;
                next = location(&response);
            }
            if next.is_empty() {
                return (response, seen);
            }
            let absolute = if next.starts_with('/') {
                let origin = if url.starts_with(&self.upstream.base) { &self.upstream.base } else { &self.ponte.base };
                format!("{origin}{next}")
            } else {
                next
            };
            seen.push(absolute.clone());
            if !absolute.starts_with(&self.upstream.base) && !absolute.starts_with(&self.ponte.base) {
                // Leaving for an application: stop here, as the test reads the redirect.
                return (response, seen);
            }
            url = absolute;
        }
    }

    async fn admin_browser(&self) -> reqwest::Client {
        let browser = self.ponte.browser();
        assert_eq!(self.password_login(&self.ponte, &browser, "mario@esempio.it", None).await.status(), 303);
        browser
    }

    /// Runs "connect" as the signed-in admin and returns the confirmation page's HTML.
    async fn connect(&self, browser: &reqwest::Client, upstream_user: &str) -> (String, Vec<String>) {
        let (page, seen) =
            self.browse(browser, &self.ponte.url("/federation/up/start?intent=link"), upstream_user).await;
        assert_eq!(page.status(), 200, "confirmation page; went through {seen:?}");
        (page.text().await.unwrap(), seen)
    }

    pub(crate) async fn press(
        &self,
        browser: &reqwest::Client,
        html: &str,
        action: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let id = html.split("name=\"id\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let mut form = vec![("id", id), ("csrf_token", csrf_from(html)), ("action", action.to_owned())];
        for (k, v) in extra {
            form.push((k, v.to_string()));
        }
        browser.post(self.ponte.url("/link/confirm")).form(&form).send().await.unwrap()
    }

    async fn identities(&self) -> Value {
        let url = format!(
            "/api/v1/accounts/{}/users/{}/identities",
            self.account["id"].as_str().unwrap(),
            self.account["owner"]["id"].as_str().unwrap()
        );
        self.ponte
            .browser()
            .get(self.ponte.url(&url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn admin_links_an_upstream_identity_then_logs_in_with_it() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    let (html, seen) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    let authorize = seen.iter().find(|u| u.contains("/oauth2/authorize?")).unwrap();
    let asked = query_of(authorize);
    assert_eq!(asked["prompt"], "login", "a fresh upstream sign-in is forced");
    assert_eq!(asked["max_age"], "0");
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(dd(&html, "upstream-email"), "mario.rossi@gruppo.it");
    assert_eq!(dd(&html, "ponte-user"), "mario@esempio.it");
    assert!(world.identities().await["identities"].as_array().unwrap().is_empty(), "nothing linked before Continue");

    let done = world.press(&browser, &html, "continue", &[]).await;
    assert_eq!(done.status(), 303);
    let identities = world.identities().await;
    assert_eq!(identities["identities"][0]["email"], "mario.rossi@gruppo.it");
    assert_eq!(identities["identities"][0]["provider"], "up");

    // A new browser signs in with the upstream ID alone.
    let fresh = world.ponte.browser();
    let (home, _) =
        world.browse(&fresh, &world.ponte.url("/federation/up/start?intent=login"), "mario.rossi@gruppo.it").await;
    let html = home.text().await.unwrap();
    assert!(html.contains("Mario Rossi") && html.contains("Bar Sport"), "{html}");
    let sessions_url = format!(
        "/api/v1/accounts/{}/users/{}/sessions",
        world.account["id"].as_str().unwrap(),
        world.account["owner"]["id"].as_str().unwrap()
    );
    let sessions: Value = world
        .ponte
        .browser()
        .get(world.ponte.url(&sessions_url))
        .bearer_auth(&world.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        sessions["sessions"].as_array().unwrap().iter().any(|s| s["amr"] == json!(["fed", "up"])),
        "amr records the provider"
    );
}

/// The upstream here is a Ponte, whose emails `Email::parse` already keeps free of invisible
/// characters, so the email rule is tested on `UpstreamIdentity` in `upstream.rs`; a name
/// may hold them upstream, and must arrive without them.
#[tokio::test]
async fn invisible_characters_of_an_upstream_name_are_not_shown_or_stored() {
    let world = World::new().await;
    let upstream_token = world.upstream.admin_token().await;
    let created = world
        .upstream
        .browser()
        .post(world.upstream.url("/api/v1/accounts"))
        .bearer_auth(&upstream_token)
        .json(&json!({"name": "g", "owner": {"email": "anna@gruppo.it", "name": "Anna\u{202E} Ve\u{200B}rdi", "password": PASSWORD}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let browser = world.admin_browser().await;
    let (html, _) = world.connect(&browser, "anna@gruppo.it").await;
    assert_eq!(dd(&html, "upstream-name"), "Anna Verdi");
    assert_eq!(world.press(&browser, &html, "continue", &[]).await.status(), 303);
    assert_eq!(world.identities().await["identities"][0]["name"], "Anna Verdi");
}

#[tokio::test]
async fn a_stale_upstream_session_of_someone_else_cannot_be_linked() {
    // The seed's case: this browser is still signed in upstream as Bruno.
    let world = World::new().await;
    let browser = world.admin_browser().await;
    assert_eq!(world.password_login(&world.upstream, &browser, "bruno@gruppo.it", None).await.status(), 303);
    let (html, seen) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    assert!(
        seen.iter().any(|s| s == "upstream-login"),
        "the upstream login page was shown despite Bruno's session: {seen:?}"
    );
    assert_eq!(dd(&html, "upstream-email"), "mario.rossi@gruppo.it", "only the identity that actually signed in");
    world.press(&browser, &html, "continue", &[]).await;
    let identities = world.identities().await;
    assert_eq!(identities["identities"].as_array().unwrap().len(), 1);
    assert_eq!(identities["identities"][0]["email"], "mario.rossi@gruppo.it");
}

#[tokio::test]
async fn an_identity_linked_to_someone_else_is_refused() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    let (html, _) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    world.press(&browser, &html, "continue", &[]).await;

    let other = world.ponte.create_account(&world.admin_token, "luigi@esempio.it", PASSWORD).await;
    let luigi = world.ponte.browser();
    assert_eq!(world.password_login(&world.ponte, &luigi, "luigi@esempio.it", None).await.status(), 303);
    let (html, _) = world.connect(&luigi, "mario.rossi@gruppo.it").await;
    let refused = world.press(&luigi, &html, "continue", &[]).await;
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("identity_linked_elsewhere"));
    let url = format!(
        "/api/v1/accounts/{}/users/{}/identities",
        other["id"].as_str().unwrap(),
        other["owner"]["id"].as_str().unwrap()
    );
    let luigi_ids: Value = world
        .ponte
        .browser()
        .get(world.ponte.url(&url))
        .bearer_auth(&world.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(luigi_ids["identities"].as_array().unwrap().is_empty());
}

impl World {
    /// Starts a flow and signs in upstream, returning the callback URL without following it.
    async fn callback_url(&self, browser: &reqwest::Client, start: &str) -> String {
        let start = browser.get(self.ponte.url(start)).send().await.unwrap();
        let mut url = location(&start);
        loop {
            let r = browser.get(&url).send().await.unwrap();
            let next = location(&r);
            if next.starts_with("/login?authz=") {
                let authz = query_of(&self.upstream.url(&next))["authz"].clone();
                let r = self.password_login(&self.upstream, browser, "mario.rossi@gruppo.it", Some(&authz)).await;
                url = self.upstream.url(&location(&r));
            } else if next.starts_with('/') {
                url = self.upstream.url(&next);
            } else {
                assert!(next.contains("/federation/up/callback"), "{next}");
                return next;
            }
        }
    }
}

#[tokio::test]
async fn a_replayed_or_foreign_callback_is_refused() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    for start in ["/federation/up/start?intent=link", "/federation/up/start?intent=login"] {
        let url = world.callback_url(&browser, start).await;
        let elsewhere = world.ponte.browser().get(&url).send().await.unwrap();
        assert_eq!(elsewhere.status(), 400, "another browser (no binding cookie): {start}");
        assert!(elsewhere.text().await.unwrap().contains("flow_other_browser"));
        let replay = browser.get(&url).send().await.unwrap();
        assert_eq!(replay.status(), 400, "the flow was consumed by the first attempt");
        assert!(replay.text().await.unwrap().contains("flow_expired"));
    }
}

#[tokio::test]
async fn an_existing_user_proves_the_account_with_a_password_or_an_emailed_code() {
    let world = World::new().await;
    // The upstream identity carries a verified email equal to a Ponte user's.
    let upstream_token = world.upstream.admin_token().await;
    let r = world
        .upstream
        .browser()
        .post(world.upstream.url("/api/v1/accounts"))
        .bearer_auth(&upstream_token)
        .json(&json!({"name": "g", "owner": {"email": "MARIO@esempio.it", "name": "Mario", "password": PASSWORD}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let browser = world.ponte.browser();
    let (page, _) =
        world.browse(&browser, &world.ponte.url("/federation/up/start?intent=login"), "MARIO@esempio.it").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("link-password"), "a proof page, not a silent link: {html}");
    assert!(world.identities().await["identities"].as_array().unwrap().is_empty());

    let wrong = world.press(&browser, &html, "password", &[("password", "not my password")]).await;
    assert_eq!(wrong.status(), 401);
    let html = wrong.text().await.unwrap();
    let sent = world.press(&browser, &html, "send_code", &[]).await;
    let html = sent.text().await.unwrap();
    assert!(html.contains("link-code"));
    // The worker delivers the queued mail into the file outbox (the embedded default).
    let text = crate::mail::wait_for_outbox_file(&world.ponte.db.dir.path().join("outbox")).await;
    assert!(text.contains("To: mario@esempio.it"), "{text}");
    let code = crate::mail::code_in(&text);
    let done = world.press(&browser, &html, "code", &[("code", &code)]).await;
    assert_eq!(done.status(), 303, "linked and signed in");
    assert_eq!(browser.get(world.ponte.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(world.identities().await["identities"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unlink_then_login_is_refused_and_relink_works() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    let (html, _) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    world.press(&browser, &html, "continue", &[]).await;
    let url = format!(
        "/api/v1/accounts/{}/users/{}/identities/up",
        world.account["id"].as_str().unwrap(),
        world.account["owner"]["id"].as_str().unwrap()
    );
    assert_eq!(
        world
            .ponte
            .browser()
            .delete(world.ponte.url(&url))
            .bearer_auth(&world.admin_token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        world
            .ponte
            .browser()
            .delete(world.ponte.url(&url))
            .bearer_auth(&world.admin_token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let (refused, _) = world
        .browse(&world.ponte.browser(), &world.ponte.url("/federation/up/start?intent=login"), "mario.rossi@gruppo.it")
        .await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("not_linked"));

    let (html, _) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    assert_eq!(world.press(&browser, &html, "continue", &[]).await.status(), 303);
    assert_eq!(world.identities().await["identities"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn members_cannot_connect_and_bad_return_to_is_refused() {
    let world = World::new().await;
    let account = world.account["id"].as_str().unwrap();
    world.ponte.paid_seats(&world.admin_token, account, 1).await;
    world
        .ponte
        .browser()
        .post(world.ponte.url(&format!("/api/v1/accounts/{account}/users")))
        .bearer_auth(&world.admin_token)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let member = world.ponte.browser();
    world.password_login(&world.ponte, &member, "anna@esempio.it", None).await;
    let r = member.get(world.ponte.url("/federation/up/start?intent=link")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let anonymous =
        world.ponte.browser().get(world.ponte.url("/federation/up/start?intent=link")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let open_redirect = member
        .get(world.ponte.url("/federation/up/start?intent=login&return_to=https://evil.example/"))
        .send()
        .await
        .unwrap();
    assert_eq!(open_redirect.status(), 400);
    let unknown = member.get(world.ponte.url("/federation/nope/start")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn an_upstream_error_gets_its_own_page() {
    let world = World::new().await;
    let browser = world.ponte.browser();
    let start = browser.get(world.ponte.url("/federation/up/start?intent=login")).send().await.unwrap();
    let state = query_of(&location(&start))["state"].clone();
    let r = browser
        .get(world.ponte.url(&format!("/federation/up/callback?error=access_denied&state={state}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-upstream-error"], "access_denied");
    assert!(r.text().await.unwrap().contains("upstream_error"));
}

#[tokio::test]
async fn a_provider_that_is_down_gets_a_clear_page() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ponte = TestApp::spawn_on_listener(listener, TestDb::sqlite(), None, |c| {
        c.providers.insert(
            "down".into(),
            ProviderConfig {
                issuer: "http://127.0.0.1:1".into(),
                client_id: "x".into(),
                client_secret: Some("y".into()),
                client_secret_file: None,
                display_name: "Down".into(),
                scopes: vec!["openid".into()],
                supports_prompt_create: false,
                email_claim: "email".into(),
                name_claim: "name".into(),
                discovery_ttl_secs: 60,
            },
        );
    })
    .await;
    let r = ponte.browser().get(ponte.url("/federation/down/start")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("provider_unreachable"));
}

#[tokio::test]
async fn back_channel_logout_ends_the_sessions_of_the_upstream_session() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    let (html, _) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    world.press(&browser, &html, "continue", &[]).await;
    let fresh = world.ponte.browser();
    world.browse(&fresh, &world.ponte.url("/federation/up/start?intent=login"), "mario.rossi@gruppo.it").await;
    assert_eq!(fresh.get(world.ponte.url("/")).send().await.unwrap().status(), 200);

    // The upstream's session id for this browser, as the upstream itself knows it.
    let upstream_session = world
        .upstream
        .state
        .sessions
        .list_for_user(
            world
                .ponte
                .state
                .links
                .find(&world.upstream.base, &{
                    let ids = world.identities().await;
                    ids["identities"][0]["subject"].as_str().unwrap().to_owned()
                })
                .await
                .unwrap()
                .unwrap()
                .subject
                .parse::<ponte_identity::ids::UserId>()
                .unwrap(),
            world.upstream.clock.now_for_test(),
        )
        .await
        .unwrap();
    let sid = upstream_session.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert!(!sid.is_empty());
    let client_id = world.ponte.state.providers["up"].config.client_id.clone();
    let now = world.upstream.clock.now_for_test().unix_timestamp();
    let token = |jti: &str, aud: &str, sid: &str| {
        let claims = json!({
            "iss": world.upstream.base, "aud": aud, "iat": now, "exp": now + 120, "jti": jti, "sid": sid,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
        });
        world.upstream.state.keys.ring().sign(&claims, "logout+jwt").unwrap()
    };
    let post = |t: String| {
        world
            .ponte
            .browser()
            .post(world.ponte.url("/federation/up/backchannel-logout"))
            .form(&[("logout_token", t)])
            .send()
    };
    assert_eq!(post(token("j0", "someone-else", &sid[0])).await.unwrap().status(), 400, "wrong audience");
    let no_exp = json!({
        "iss": world.upstream.base, "aud": client_id, "iat": now, "jti": "jx", "sid": sid[0],
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
    });
    let no_exp = world.upstream.state.keys.ring().sign(&no_exp, "logout+jwt").unwrap();
    assert_eq!(post(no_exp).await.unwrap().status(), 400, "exp is required");
    let mut ended = false;
    for (i, s) in sid.iter().enumerate() {
        let r = post(token(&format!("j{}", i + 1), &client_id, s)).await.unwrap();
        assert_eq!(r.status(), 200);
        ended |= fresh.get(world.ponte.url("/")).send().await.unwrap().status() == 303;
    }
    assert!(ended, "the Ponte session started through that upstream session ended");
    assert_eq!(post(token("j1", &client_id, &sid[0])).await.unwrap().status(), 400, "a replayed jti is refused");
}

#[tokio::test]
async fn a_flow_started_on_one_replica_finishes_on_another() {
    let Some(db) = TestDb::postgres().await else { return };
    let Some(redis) = TestRedis::new() else { return };
    let (url, prefix) = (db.url.clone(), redis.prefix.clone());
    let world = World::on(db, Some(redis)).await;
    // A second replica: same database, same Redis, same public URL, another port.
    let replica_db = TestDb { url, dir: tempfile::tempdir().unwrap(), pg: None };
    let master = world.ponte.state.master.encode();
    let provider = world.ponte.state.config.providers["up"].clone();
    let public_url = world.ponte.state.config.public_url.clone();
    let redis_url = std::env::var("PONTE_TEST_REDIS_URL").unwrap();
    let replica = TestApp::spawn_with(replica_db, None, |c| {
        c.public_url = public_url;
        c.master_key = Some(master.as_str().into());
        c.redis_url = Some(redis_url.as_str().into());
        c.redis_key_prefix = prefix;
        c.providers.insert("up".into(), provider);
    })
    .await;
    let browser = world.admin_browser().await;
    // Start on replica 1, sign in upstream, and deliver the callback to replica 2.
    let url = world.callback_url(&browser, "/federation/up/start?intent=link").await;
    let on_replica = url.replace(&world.ponte.base, &replica.base);
    let confirm = browser.get(&on_replica).send().await.unwrap();
    assert_eq!(confirm.status(), 303, "replica 2 knows the flow");
    let page = browser.get(replica.url(&location(&confirm))).send().await.unwrap().text().await.unwrap();
    assert_eq!(dd(&page, "upstream-email"), "mario.rossi@gruppo.it");
}

#[tokio::test]
async fn an_application_asking_for_a_fresh_login_gets_one_upstream_too() {
    let world = World::new().await;
    let browser = world.admin_browser().await;
    let (html, _) = world.connect(&browser, "mario.rossi@gruppo.it").await;
    world.press(&browser, &html, "continue", &[]).await;

    // An application asks Ponte for prompt=login; the person picks "Sign in with …".
    let (client_id, _) = world.ponte.register_browser_client(true, false).await;
    let mut authorize = url::Url::parse(&world.ponte.url("/oauth2/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", crate::harness::REDIRECT_URI)
        .append_pair("scope", "openid")
        .append_pair("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
        .append_pair("code_challenge_method", "S256")
        .append_pair("prompt", "login");
    let to_login = browser.get(authorize.as_str()).send().await.unwrap();
    let login_page = browser.get(world.ponte.url(&location(&to_login))).send().await.unwrap().text().await.unwrap();
    let href = login_page
        .split("id=\"login-with-up\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let (back, seen) = world.browse(&browser, &world.ponte.url(&href), "mario.rossi@gruppo.it").await;
    let upstream_ask = query_of(
        seen.iter().find(|u| u.contains("/oauth2/authorize?") && u.starts_with(&world.upstream.base)).unwrap(),
    );
    assert_eq!(upstream_ask["prompt"], "login", "the step-up is passed upstream");
    assert_eq!(upstream_ask["max_age"], "0");
    assert!(seen.iter().any(|s| s == "upstream-login"), "credentials were asked for again: {seen:?}");
    assert!(location(&back).starts_with(crate::harness::REDIRECT_URI), "back at the application: {}", location(&back));
}

#[tokio::test]
async fn guessing_the_proof_is_cut_off_after_five_attempts() {
    let world = World::new().await;
    let upstream_token = world.upstream.admin_token().await;
    world
        .upstream
        .browser()
        .post(world.upstream.url("/api/v1/accounts"))
        .bearer_auth(&upstream_token)
        .json(&json!({"name": "g", "owner": {"email": "mario@esempio.it", "name": "Mario", "password": PASSWORD}}))
        .send()
        .await
        .unwrap();
    let browser = world.ponte.browser();
    let (page, _) =
        world.browse(&browser, &world.ponte.url("/federation/up/start?intent=login"), "mario@esempio.it").await;
    let html = page.text().await.unwrap();
    for i in 0..5 {
        let guess = format!("guess number {i}");
        assert_eq!(world.press(&browser, &html, "password", &[("password", &guess)]).await.status(), 401);
    }
    let sixth = world.press(&browser, &html, "password", &[("password", PASSWORD)]).await;
    assert_eq!(sixth.status(), 429, "even the right password once the attempts are spent");
    assert!(world.identities().await["identities"].as_array().unwrap().is_empty());
}
