//! The directory cache across replicas: what one replica keeps in memory is forgotten as
//! soon as any replica changes it, and nothing is kept while change notifications are not
//! arriving. The cache's TTL is an hour here, so only the notifications (or this replica's
//! own writes) can explain a fresh read.

use std::time::Duration;

use serde_json::json;

use crate::harness::{REDIRECT_URI, TestApp, TestDb, TestRedis, dd, sign_in};
use crate::integrations::company_json;

const HOUR: u64 = 3600;
const PASSWORD: &str = "correct horse battery";

/// Two replicas on one PostgreSQL and one Redis, both caching accounts and sessions for
/// an hour.
pub(crate) async fn replicas() -> Option<(TestApp, TestApp)> {
    let db = TestDb::postgres().await?;
    let redis = TestRedis::new()?;
    let (url, prefix, redis_url) = (db.url.clone(), redis.prefix.clone(), redis.url.clone());
    let a = TestApp::spawn_with(db, Some(redis), |c| {
        c.cache_ttl_secs = HOUR;
        c.session_cache_ttl_secs = HOUR;
    })
    .await;
    let master = a.state.master.encode();
    let public_url = a.state.config.public_url.clone();
    let b_db = TestDb { url, dir: tempfile::tempdir().unwrap(), pg: None };
    let b = TestApp::spawn_with(b_db, None, |c| {
        c.cache_ttl_secs = HOUR;
        c.session_cache_ttl_secs = HOUR;
        c.public_url = public_url;
        c.master_key = Some(master.as_str().into());
        c.redis_url = Some(redis_url.as_str().into());
        c.redis_key_prefix = prefix;
    })
    .await;
    for app in [&a, &b] {
        until(|| async { app.state.directory.stats().active }, "the directory listens").await;
    }
    Some((a, b))
}

/// Polls `check` every 10 ms for at most 10 s.
pub(crate) async fn until<F, Fut>(check: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn home(app: &TestApp, browser: &reqwest::Client) -> String {
    let response = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The first-party SSO hop with `browser`'s session: the redirect's `Location`.
async fn sso_hop(app: &TestApp, browser: &reqwest::Client, client_id: &str) -> String {
    let mut url = url::Url::parse(&app.url("/oauth2/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", "openid")
        .append_pair("state", "directory-state")
        .append_pair("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
        .append_pair("code_challenge_method", "S256");
    let response = browser.get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 303);
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_every_replica_at_once() {
    let Some((a, b)) = replicas().await else { return };
    let token = a.admin_token().await;
    let created = a.create_account(&token, "mario@esempio.it", PASSWORD).await;
    let (account, user) = (created["id"].as_str().unwrap(), created["owner"]["id"].as_str().unwrap());
    let browser = a.browser();
    assert_eq!(sign_in(&a, &browser, "mario@esempio.it", PASSWORD).await.status(), 303);

    // Both replicas keep the page's reads: the second view is from memory.
    for app in [&a, &b] {
        assert_eq!(dd(&home(app, &browser).await, "user-name"), "Mario Rossi");
        let before = app.state.directory.stats();
        assert_eq!(dd(&home(app, &browser).await, "user-name"), "Mario Rossi");
        let after = app.state.directory.stats();
        assert!(after.hits > before.hits && after.loads == before.loads, "{before:?} → {after:?}");
    }

    // A rename through A: A's next read has it at once (its own write), B's as soon as
    // the notification arrives.
    let path = format!("/api/v1/accounts/{account}/users/{user}");
    let (status, _) = a.call(&token, "PATCH", &path, Some(json!({"name": "Mario Bianchi"}))).await;
    assert_eq!(status, 200);
    assert_eq!(dd(&home(&a, &browser).await, "user-name"), "Mario Bianchi", "a replica reads its own writes");
    until(|| async { dd(&home(&b, &browser).await, "user-name") == "Mario Bianchi" }, "B sees the rename").await;

    // A company added through B shows on A's page (another table, the other direction).
    let (status, company) = b
        .call(&token, "POST", &format!("/api/v1/accounts/{account}/companies"), Some(company_json("00743110157")))
        .await;
    assert_eq!(status, 201);
    let row = format!("data-company=\"{}\"", company["id"].as_str().unwrap());
    until(|| async { home(&a, &browser).await.contains(&row) }, "A lists the new company").await;

    // A user disabled through A can no longer ride B's session into an application.
    let (status, admin) = a
        .call(
            &token,
            "POST",
            &format!("/api/v1/accounts/{account}/users"),
            Some(json!({"email": "giulia@esempio.it", "name": "Giulia Verdi", "role": "admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{admin}");
    let giulia = a.browser();
    assert_eq!(sign_in(&a, &giulia, "giulia@esempio.it", PASSWORD).await.status(), 303);
    let (client_id, _) = a.register_browser_client(true, false).await;
    assert!(sso_hop(&b, &giulia, &client_id).await.contains("code="), "B issues codes while the user is active");
    assert!(sso_hop(&b, &giulia, &client_id).await.contains("code="), "from memory too");
    let admin_path = format!("/api/v1/accounts/{account}/users/{}", admin["id"].as_str().unwrap());
    let (status, _) = a.call(&token, "PATCH", &admin_path, Some(json!({"status": "disabled"}))).await;
    assert_eq!(status, 200);
    until(|| async { !sso_hop(&b, &giulia, &client_id).await.contains("code=") }, "B refuses the disabled user").await;
}

#[tokio::test]
async fn while_notifications_are_lost_every_read_goes_to_the_database() {
    let Some(db) = TestDb::postgres().await else { return };
    let admin_url = db.pg.clone().unwrap().0;
    let name = db.pg.clone().unwrap().1;
    let app = TestApp::spawn_with(db, None, |c| c.cache_ttl_secs = HOUR).await;
    until(|| async { app.state.directory.stats().active }, "the directory listens").await;
    let token = app.admin_token().await;
    let created = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    let user = created["owner"]["id"].as_str().unwrap().to_owned();
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await.status(), 303);
    home(&app, &browser).await;
    assert!(app.state.directory.stats().accounts > 0, "kept");

    // The listening connection dies (a failover, a proxy timeout): whatever changes now is
    // never announced to this replica.
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN \"ponte_directory\"%'",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![(true,)], "one listening connection");
    until(|| async { !app.state.directory.stats().active }, "the directory stops using memory").await;
    assert_eq!(app.state.directory.stats().accounts, 0, "and forgot what it kept");

    // Written behind Ponte's back, as another process would.
    sqlx::query("UPDATE users SET name = 'Renamed Elsewhere' WHERE id = $1")
        .bind(&user)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(dd(&home(&app, &browser).await, "user-name"), "Renamed Elsewhere");

    // It listens again by itself, starting empty.
    until(|| async { app.state.directory.stats().active }, "the directory listens again").await;
    assert_eq!(dd(&home(&app, &browser).await, "user-name"), "Renamed Elsewhere");
    admin.close().await;
}

#[tokio::test]
async fn sqlite_never_caches() {
    let app = TestApp::spawn().await;
    assert!(!app.state.directory.stats().active);
}

/// A TCP forwarder to PostgreSQL that can turn into a black hole: connections stay open
/// and nothing gets through, as when a proxy or a host vanishes without a reset.
struct BlackHole {
    addr: std::net::SocketAddr,
    swallowing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHole {
    async fn to(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let swallowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = swallowing.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf).await {
                            if !flag.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, swallowing }
    }

    fn swallow(&self) {
        self.swallowing.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_listening_connection_that_dies_silently_is_noticed_by_the_heartbeat() {
    let Some(db) = TestDb::postgres().await else { return };
    let mut url = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let hole = BlackHole::to(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(hole.addr.port())).unwrap();
    let through_hole = TestDb { url: url.to_string(), dir: tempfile::tempdir().unwrap(), pg: None };
    let app = TestApp::spawn_with(through_hole, None, |c| c.cache_ttl_secs = HOUR).await;
    until(|| async { app.state.directory.stats().active }, "the directory listens").await;
    // No reset, no error: the connection just stops carrying anything.
    hole.swallow();
    until(|| async { !app.state.directory.stats().active }, "the heartbeat notices the dead connection").await;
    drop(db);
}
