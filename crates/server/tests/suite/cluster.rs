//! Ponte on a Redis Cluster (`PONTE_TEST_REDIS_CLUSTER_URL`, started by
//! `scripts/redis-cluster`): keys spread over the nodes and every operation stays within
//! one slot, a whole sign-in through the pages and the REST calls, and a cluster that goes
//! away (503, never a panic) and comes back (used again without a restart of Ponte).
//! The session-store suite itself runs on the cluster in `sessions.rs`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ponte_identity::Error;
use ponte_identity::clock::{Clock, ManualClock};
use ponte_identity::ids::{AccountId, UserId};
use ponte_identity::session::{NewSession, RedisStore, SessionPolicy, SessionStore, Sessions};
use serde_json::Value;

use crate::harness::{TestApp, TestDb, TestRedis, backend_env, csrf_from, now, sign_in};

const POLICY: SessionPolicy = SessionPolicy { idle: time::Duration::minutes(30), absolute: time::Duration::hours(8) };

fn user(n: u128) -> UserId {
    format!("00000000-0000-7000-8000-{n:012}").parse().unwrap()
}

fn new_session(user: UserId) -> NewSession {
    NewSession { user_id: user, account_id: AccountId::new(), amr: vec!["pwd".into()], user_agent: None, ip: None }
}

/// The `host:port` seed nodes of a `redis+cluster://` URL without credentials.
fn seeds(url: &str) -> Vec<String> {
    let rest = url.strip_prefix("redis+cluster://").expect("a redis+cluster:// URL");
    rest.trim_end_matches('/').split(',').map(str::to_owned).collect()
}

/// A plain connection to one node (no cluster routing), for looking behind the store.
async fn node(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/")).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The keys under `prefix` that one node holds.
async fn keys_on(addr: &str, prefix: &str) -> Vec<String> {
    let mut conn = node(addr).await;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(page);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn keys_spread_over_the_nodes_each_operation_stays_in_one_slot_and_cleanup_reaches_every_node() {
    let Some(cluster) = TestRedis::cluster() else { return };
    let store = cluster.store();
    assert!(store.is_cluster());
    let sessions = Sessions::new(Arc::new(store.clone()), POLICY);
    let clock = ManualClock::new(now());

    // Every store operation, on many users and keys: a command or MULTI that named two
    // slots would fail with CROSSSLOT (the client refuses such a pipeline before sending).
    let mut tokens = Vec::new();
    for n in 1..=12 {
        for _ in 0..2 {
            tokens.push((n, sessions.create(new_session(user(n)), clock.now()).await.unwrap().0));
        }
    }
    for (n, token) in tokens.iter().step_by(2) {
        let (rotated, session) = sessions.rotate(token.expose(), clock.now()).await.unwrap().expect("rotated");
        assert_eq!(session.user_id, user(*n));
        assert!(sessions.get(rotated.expose(), clock.now()).await.unwrap().is_some());
        assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_none(), "the old id is gone");
    }
    for n in 1..=12 {
        assert_eq!(sessions.list_for_user(user(n), clock.now()).await.unwrap().len(), 2, "user {n}");
    }
    for i in 0..12 {
        store.put_once(&format!("flow:{i}"), "state", 60).await.unwrap();
        assert!(store.put_if_present(&format!("flow:{i}"), "state2", 60).await.unwrap());
        assert!(store.put_if_absent(&format!("jti:{i}"), "1", 60).await.unwrap());
        assert_eq!(store.incr(&format!("rate:{i}"), 60).await.unwrap(), 1);
        store.add_member(&format!("sid:{i}"), "a", 60).await.unwrap();
        store.add_member(&format!("sid:{i}"), "b", 60).await.unwrap();
    }
    assert_eq!(store.take_once("flow:0").await.unwrap().as_deref(), Some("state2"));
    assert_eq!(store.take_members("sid:0").await.unwrap().len(), 2);
    store.ping().await.unwrap();

    // The keys are spread: more than one primary holds some (not everything in one slot).
    let nodes = seeds(&cluster.url);
    let mut holding = 0;
    let mut total = 0;
    for addr in &nodes {
        let here = keys_on(addr, &cluster.prefix).await.len();
        holding += usize::from(here > 0);
        total += here;
    }
    assert!(holding >= 2, "keys on {holding} of {} nodes", nodes.len());
    assert!(total >= 12 + 24, "{total} keys");

    assert_eq!(sessions.revoke_all_for_user(user(1)).await.unwrap(), 2);
    assert!(sessions.list_for_user(user(1), clock.now()).await.unwrap().is_empty());

    // Cleanup scans every primary, not only the one a SCAN happens to reach.
    store.delete_all().await.unwrap();
    for addr in &nodes {
        assert!(keys_on(addr, &cluster.prefix).await.is_empty(), "keys left on {addr}");
    }
}

#[tokio::test]
async fn a_whole_sign_in_on_a_cluster_then_the_session_listed_and_revoked_over_rest() {
    let Some(cluster) = TestRedis::cluster() else { return };
    let app = TestApp::spawn_with(TestDb::sqlite(), Some(cluster), |_| {}).await;
    assert_eq!(app.browser().get(app.url("/readyz")).send().await.unwrap().status(), 200);
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", "correct horse battery").await;
    let sessions_url = app.url(&format!(
        "/api/v1/accounts/{}/users/{}/sessions",
        account["id"].as_str().unwrap(),
        account["owner"]["id"].as_str().unwrap()
    ));

    // Through the login form (CSRF value and rate limits in the cluster), twice: the
    // second sign-in rotates the id and the first session ends.
    let browser = app.browser();
    for _ in 0..2 {
        let signed_in = sign_in(&app, &browser, "mario@esempio.it", "correct horse battery").await;
        assert_eq!(signed_in.status(), 303);
        assert_eq!(signed_in.headers()["location"], "/");
    }
    let home = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    let home = home.text().await.unwrap();
    assert!(home.contains("mario@esempio.it"), "{home}");

    let http = app.browser();
    let listed: Value = http.get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let listed = listed["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "the first session ended at the second sign-in: {listed:?}");
    let id = listed[0]["id"].as_str().unwrap();

    let revoked = http.delete(format!("{sessions_url}/{id}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let after = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(after.status(), 303, "the browser is signed out");
    assert_eq!(after.headers()["location"], "/login");
    let listed: Value = http.get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert!(listed["sessions"].as_array().unwrap().is_empty());

    // And a logout through the page, on a fresh sign-in.
    assert_eq!(sign_in(&app, &browser, "mario@esempio.it", "correct horse battery").await.status(), 303);
    let home = browser.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    let logout = browser.post(app.url("/logout")).form(&[("csrf_token", csrf_from(&home))]).send().await.unwrap();
    assert_eq!(logout.status(), 303);
    let listed: Value = http.get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert!(listed["sessions"].as_array().unwrap().is_empty());
}

/// A cluster of three primaries of this test's own, on free loopback ports, so it can be
/// stopped and started without disturbing the shared one.
struct OwnCluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Child>,
}

impl OwnCluster {
    async fn start() -> Self {
        let mut cluster = Self { dir: tempfile::tempdir().unwrap(), ports: free_ports(3), nodes: Vec::new() };
        cluster.spawn_nodes().await;
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create");
        cluster.wait_ok().await;
        cluster
    }

    fn url(&self) -> String {
        let addrs: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    async fn spawn_nodes(&mut self) {
        for port in &self.ports {
            let node = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "1000"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--logfile")
                .arg(self.dir.path().join(format!("redis-{port}.log")))
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            self.nodes.push(node);
        }
        // Each node answers before anything is asked of the cluster.
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            while client.get_multiplexed_async_connection().await.is_err() {
                assert!(Instant::now() < deadline, "redis-server on port {port} did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Every node says `cluster_state:ok`.
    async fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: loop {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            tokio::time::sleep(Duration::from_millis(200)).await;
            for port in &self.ports {
                let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else { continue 'wait };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue 'wait };
                let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    continue 'wait;
                }
            }
            return;
        }
    }

    fn kill(&mut self) {
        for mut node in self.nodes.drain(..) {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` loopback ports that are free, each with its cluster bus port (+10000) free too.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if let Some(bus) = port.checked_add(10000)
            && let Ok(bus) = std::net::TcpListener::bind(("127.0.0.1", bus))
        {
            held.push((port, listener, bus));
        }
    }
    held.into_iter().map(|(port, _, _)| port).collect()
}

#[tokio::test]
async fn a_cluster_that_goes_away_answers_unavailable_and_is_used_again_when_it_is_back() {
    // Needs redis-server and redis-cli: wherever the shared test cluster runs, they are.
    if backend_env("PONTE_TEST_REDIS_CLUSTER_URL").is_none() {
        return;
    }
    let mut cluster = OwnCluster::start().await;
    let store = RedisStore::new(&cluster.url(), "ponte-test-outage:").unwrap();
    let sessions = Sessions::new(Arc::new(store.clone()), POLICY);
    let clock = ManualClock::new(now());
    let (token, _) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
    assert!(sessions.get(token.expose(), clock.now()).await.unwrap().is_some());

    // One primary away, no replica to take over: once the others notice, the cluster
    // refuses every key (CLUSTERDOWN), readiness says so, and calls fail within bounds.
    let mut first = cluster.nodes.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ping().await.is_ok() {
        assert!(Instant::now() < deadline, "readiness did not notice a primary gone");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let got = sessions.get(token.expose(), clock.now()).await;
    assert!(matches!(got, Err(Error::SessionStoreUnavailable(_))), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());

    cluster.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let got = sessions.get(token.expose(), clock.now()).await;
        assert!(matches!(got, Err(Error::SessionStoreUnavailable(_))), "{got:?}");
        assert!(matches!(store.ping().await, Err(Error::SessionStoreUnavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
    }

    // The same nodes again (their cluster config kept, their data gone: nothing is saved).
    cluster.spawn_nodes().await;
    cluster.wait_ok().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (again, _) = sessions.create(new_session(user(1)), clock.now()).await.unwrap();
    assert!(sessions.get(again.expose(), clock.now()).await.unwrap().is_some());
    assert_eq!(sessions.list_for_user(user(1), clock.now()).await.unwrap().len(), 1);
}
