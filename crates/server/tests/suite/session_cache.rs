//! The session cache across replicas: a replica answers page views from the session
//! records it read lately, and forgets one as soon as any replica changes it; the same for
//! the deny-list's answers (is this access token revoked?). Both replicas cache for an
//! hour here, so only the change messages (or a replica's own writes) can explain a fresh
//! read.

use crate::directory::{home, replicas, until};
use crate::harness::{TestApp, csrf_from, sign_in};
use ponte_identity::client::GrantType;

const PASSWORD: &str = "correct horse battery";

fn stats(app: &TestApp) -> ponte_server::session_cache::SessionCacheStats {
    app.state.session_cache.as_ref().expect("a session cache on one Redis node").stats()
}

/// Signs the owner in on `a`: the browser (which holds the cookie for both replicas) and
/// the session cookie as a `Cookie` header, to replay it as someone who kept it would.
async fn signed_in(a: &TestApp) -> (reqwest::Client, String) {
    let token = a.admin_token().await;
    a.create_account(&token, "mario@esempio.it", PASSWORD).await;
    let browser = a.browser();
    let response = sign_in(a, &browser, "mario@esempio.it", PASSWORD).await;
    assert_eq!(response.status(), 303);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ponte_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    (browser, cookie)
}

/// `GET /` on `app` with only `cookie`: 200 signed in, 303 to the login page otherwise.
async fn view_with(app: &TestApp, cookie: &str) -> u16 {
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    plain.get(app.url("/")).header("cookie", cookie).send().await.unwrap().status().as_u16()
}

async fn wait_until_listening(apps: [&TestApp; 2]) {
    for app in apps {
        until(|| async { stats(app).active }, "the session cache listens").await;
    }
}

#[tokio::test]
async fn signing_out_on_one_replica_ends_the_session_on_every_replica_at_once() {
    let Some((a, b)) = replicas().await else { return };
    wait_until_listening([&a, &b]).await;
    let (browser, cookie) = signed_in(&a).await;
    // Another test may cut every subscription for a moment: then b reads from Redis until
    // it subscribes again, so wait for a view answered from memory.
    until(
        || async {
            assert_eq!(view_with(&b, &cookie).await, 200);
            let before = stats(&b).hits;
            assert_eq!(view_with(&b, &cookie).await, 200);
            stats(&b).hits > before
        },
        "a view on b is answered from memory",
    )
    .await;

    let page = home(&a, &browser).await;
    let out = browser.post(a.url("/logout")).form(&[("csrf_token", csrf_from(&page))]).send().await.unwrap();
    assert_eq!(out.status(), 303);
    // The kept cookie is refused on b too, long before the hour its cache could keep it.
    until(|| async { view_with(&b, &cookie).await == 303 }, "replica b refuses the ended session").await;
    assert_eq!(view_with(&a, &cookie).await, 303, "and a, whose own write forgot it");
}

#[tokio::test]
async fn while_the_subscription_is_down_sessions_are_read_from_redis() {
    let Some((a, b)) = replicas().await else { return };
    wait_until_listening([&a, &b]).await;
    let (_, cookie) = signed_in(&a).await;
    until(
        || async {
            assert_eq!(view_with(&b, &cookie).await, 200);
            stats(&b).entries > 0
        },
        "b keeps the session",
    )
    .await;

    // Every subscriber on the server loses its connection (as in a Redis failover).
    let url = b.state.config.redis_url.clone().unwrap();
    let mut redis = redis::Client::open(url.expose()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut redis).await.unwrap();
    until(|| async { !stats(&b).active }, "b notices the lost subscription").await;
    assert_eq!(stats(&b).entries, 0, "nothing kept from before");
    let loads = stats(&b).loads;
    assert_eq!(view_with(&b, &cookie).await, 200);
    // Unless it subscribed again in between, the view went to Redis and was not kept.
    let after = stats(&b);
    if !after.active {
        assert!(after.loads > loads && after.entries == 0, "{after:?}");
    }
    until(|| async { stats(&b).active }, "b subscribes again").await;
    assert_eq!(view_with(&b, &cookie).await, 200);
}

/// Whether `app`'s introspection calls `token` active, asked by the client `(id, secret)`.
async fn active_on(app: &TestApp, client: &(String, String), token: &str) -> bool {
    app.introspect(client, token).await["active"].as_bool().expect("active")
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_is_refused_by_every_replica_at_once() {
    let Some((a, b)) = replicas().await else { return };
    wait_until_listening([&a, &b]).await;
    let client = a.register_client(&[GrantType::ClientCredentials], &["ponte.admin"]).await;
    let token = a.client_token(&client).await;
    let account = a.create_account(&token, "anna@esempio.it", PASSWORD).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/accounts/{account}");
    // b answers "not revoked" from memory (after another test's cut, once it listens again).
    until(
        || async {
            assert!(active_on(&b, &client, &token).await);
            let before = stats(&b).hits;
            assert!(active_on(&b, &client, &token).await);
            stats(&b).hits > before
        },
        "b answers an introspection from memory",
    )
    .await;
    assert_eq!(b.call(&token, "GET", &path, None).await.0, 200);

    let revoked = a
        .browser()
        .post(a.url("/oauth2/revoke"))
        .basic_auth(&client.0, Some(&client.1))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // Long before the hour b could keep its answer.
    until(|| async { !active_on(&b, &client, &token).await }, "b calls the revoked token inactive").await;
    assert_eq!(b.call(&token, "GET", &path, None).await.0, 401, "and refuses it on the API");
    assert!(!active_on(&a, &client, &token).await, "and a, whose own write forgot it");
}
