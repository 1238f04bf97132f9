//! Starting Ponte and its stores for a test, and cleaning up after it.

use std::sync::Arc;

use ponte_identity::client::{GrantType, NewClient};
use ponte_identity::clock::ManualClock;
use ponte_identity::db::Database;
use ponte_identity::session::RedisStore;
use ponte_server::config::Secret;
use ponte_server::state::AppState;
use ponte_server::{Application, Config};
use serde_json::{Value, json};
use sqlx::Connection;
use tempfile::TempDir;
use time::OffsetDateTime;

/// An env var a backend needs; `None` skips that backend, except under CI where a
/// missing variable must not silently turn a suite into a no-op.
pub fn backend_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => panic!("{var} must be set when CI is set"),
        _ => {
            eprintln!("skipping: {var} is not set");
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Where test browser clients are sent back (nothing listens: tests read the redirect).
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
/// Where test browser clients go after logout.
pub const POST_LOGOUT_URI: &str = "http://127.0.0.1:9/logged-out";

/// A database of the test's own: a SQLite file in a temp folder, or a fresh PostgreSQL
/// database dropped afterwards.
pub struct TestDb {
    pub url: String,
    pub dir: TempDir,
    pub pg: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("ponte.db").display());
        Self { url, dir, pg: None }
    }

    pub async fn postgres() -> Option<Self> {
        let admin = backend_env("PONTE_TEST_DATABASE_URL")?;
        let name = unique("ponte_test_");
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to PONTE_TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
        conn.close().await.ok();
        let mut url = url::Url::parse(&admin).expect("PONTE_TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(Self { url: url.to_string(), dir: tempfile::tempdir().expect("temp dir"), pg: Some((admin, name)) })
    }

    /// Both engines this run has: SQLite always, PostgreSQL when configured.
    pub async fn all() -> Vec<Self> {
        let mut dbs = vec![Self::sqlite()];
        dbs.extend(Self::postgres().await);
        dbs
    }

    pub async fn open_migrated(&self) -> Database {
        let db = Database::connect_lazy(&self.url).expect("database url");
        ponte_server::app::migrate(&db).await.expect("migrations");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            run_blocking(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                }
            });
        }
    }
}

/// A Redis store under a prefix of its own, emptied afterwards.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    /// On the single Redis of `PONTE_TEST_REDIS_URL`.
    pub fn new() -> Option<Self> {
        let url = backend_env("PONTE_TEST_REDIS_URL")?;
        Some(Self { url, prefix: unique("ponte-test-") + ":" })
    }

    /// On the Redis Cluster of `PONTE_TEST_REDIS_CLUSTER_URL` (`redis+cluster://…`, which
    /// `scripts/redis-cluster` starts and prints).
    pub fn cluster() -> Option<Self> {
        let url = backend_env("PONTE_TEST_REDIS_CLUSTER_URL")?;
        Some(Self { url, prefix: unique("ponte-test-") + ":" })
    }

    pub fn store(&self) -> RedisStore {
        RedisStore::new(&self.url, &self.prefix).expect("redis store")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let store = self.store();
        run_blocking(async move {
            let _ = store.delete_all().await;
        });
    }
}

/// Runs cleanup on a thread of its own: `Drop` may run inside or outside a runtime.
fn run_blocking(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(fut);
        }
    })
    .join();
}

/// Which real parts an app runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    pub postgres: bool,
    pub redis: bool,
}

/// A running Ponte with its own stores and a clock the test moves.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub db: TestDb,
    pub redis: Option<TestRedis>,
}

pub fn now() -> OffsetDateTime {
    ponte_identity::clock::Clock::now(&ponte_identity::clock::SystemClock)
}

impl TestApp {
    /// On the embedded defaults: SQLite and the in-process session store.
    pub async fn spawn() -> Self {
        Self::spawn_on(Parts::default()).await.expect("embedded parts are always there")
    }

    /// On the parts asked for; `None` when one is not configured.
    pub async fn spawn_on(parts: Parts) -> Option<Self> {
        let db = if parts.postgres { TestDb::postgres().await? } else { TestDb::sqlite() };
        let redis = if parts.redis { Some(TestRedis::new()?) } else { None };
        Some(Self::spawn_with(db, redis, |_| {}).await)
    }

    /// With a configuration the test adjusts.
    pub async fn spawn_with(db: TestDb, redis: Option<TestRedis>, adjust: impl FnOnce(&mut Config)) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Self::spawn_on_listener(listener, db, redis, adjust).await
    }

    /// On a listener the test bound already (its issuer is that address).
    pub async fn spawn_on_listener(
        listener: std::net::TcpListener,
        db: TestDb,
        redis: Option<TestRedis>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        ponte_server::install_crypto_provider();
        let addr = listener.local_addr().expect("address");
        let mut config = Config {
            bind: addr.to_string(),
            public_url: format!("http://{addr}"),
            data_dir: db.dir.path().to_owned(),
            database_url: Some(Secret::from(db.url.as_str())),
            redis_url: redis.as_ref().map(|r| Secret::from(r.url.as_str())),
            redis_key_prefix: redis.as_ref().map(|r| r.prefix.clone()).unwrap_or_else(|| "ponte:".into()),
            workers: Some(1),
            log_level: "warn".into(),
            ..Config::default()
        };
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(now()));
        let app = Application::build_on(listener, config, clock.clone()).await.expect("application builds");
        let state = app.state().clone();
        tokio::spawn(app.run_until_stopped());
        Self { base: format!("http://{addr}"), state, clock, db, redis }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A browser: its own cookie jar, redirects not followed (tests look at them).
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client")
    }

    /// Registers a client and returns (id, secret).
    pub async fn register_client(&self, grants: &[GrantType], scopes: &[&str]) -> (String, String) {
        let (client, secret) = self
            .state
            .clients
            .create(
                NewClient {
                    name: "test client".into(),
                    grants: grants.to_vec(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    redirect_uris: vec![],
                    post_logout_redirect_uris: vec![],
                    first_party: false,
                    public: false,
                },
                self.clock.now_for_test(),
            )
            .await
            .expect("client registered");
        (client.id, secret.expect("confidential client has a secret"))
    }

    /// Registers a browser client (authorization_code + refresh_token) and returns
    /// (id, secret); `None` secret for a public client.
    pub async fn register_browser_client(&self, first_party: bool, public: bool) -> (String, Option<String>) {
        let (client, secret) = self
            .state
            .clients
            .create(
                NewClient {
                    name: "Shop".into(),
                    grants: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                    scopes: ["openid", "profile", "email", "offline_access", "ponte.api"].map(String::from).to_vec(),
                    redirect_uris: vec![REDIRECT_URI.into()],
                    post_logout_redirect_uris: vec![POST_LOGOUT_URI.into()],
                    first_party,
                    public,
                },
                self.clock.now_for_test(),
            )
            .await
            .expect("client registered");
        (client.id, secret)
    }

    /// A `ponte.admin` access token from the token endpoint.
    pub async fn admin_token(&self) -> String {
        self.token_with_scopes(&["ponte.admin"]).await
    }

    pub async fn token_with_scopes(&self, scopes: &[&str]) -> String {
        let client = self.register_client(&[GrantType::ClientCredentials], scopes).await;
        self.client_token(&client).await
    }

    /// A `client_credentials` access token for the client `(id, secret)`.
    pub async fn client_token(&self, (id, secret): &(String, String)) -> String {
        let response = self
            .browser()
            .post(self.url("/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("token json");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    /// What introspection answers (200) of `token`, asked by the client `(id, secret)`.
    pub async fn introspect(&self, (id, secret): &(String, String), token: &str) -> Value {
        let response = self
            .browser()
            .post(self.url("/oauth2/introspect"))
            .basic_auth(id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("introspection json")
    }

    /// Creates an account whose owner has `email` and `password`; returns the response body.
    pub async fn create_account(&self, token: &str, email: &str, password: &str) -> Value {
        let response = self
            .browser()
            .post(self.url("/api/v1/accounts"))
            .bearer_auth(token)
            .json(&json!({"name": "Bar Sport", "owner": {"email": email, "name": "Mario Rossi", "password": password}}))
            .send()
            .await
            .expect("create account");
        assert_eq!(response.status(), 201);
        response.json().await.expect("account json")
    }
}

impl TestApp {
    /// Every mail queued so far, oldest first, opened with the app's master key.
    pub async fn queued_mails(&self) -> Vec<ponte_identity::outbox::OutgoingMail> {
        use ponte_identity::jobs::JobStore;
        let mut jobs = self.state.jobs.list(None, None, 1000).await.expect("jobs");
        jobs.reverse();
        jobs.iter()
            .filter(|j| j.kind == ponte_identity::outbox::MAIL_SEND)
            .map(|j| ponte_identity::outbox::OutgoingMail::from_payload(&j.payload, &self.state.master).expect("mail"))
            .collect()
    }

    /// A REST call with `token`: the status and the JSON body (`null` when there is none).
    /// Every error answer must be a problem document.
    pub async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.browser().request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{path}: {body}");
        }
        (status, body)
    }

    /// Buys `n` seats for `account` and registers their payment, as the POS backend does;
    /// returns the grant id.
    pub async fn paid_seats(&self, token: &str, account: &str, n: u32) -> String {
        let http = self.browser();
        let order = json!({"quantity": n, "order_reference": format!("ORD-{}", uuid::Uuid::new_v4())});
        let grant = http
            .post(self.url(&format!("/api/v1/accounts/{account}/seats")))
            .bearer_auth(token)
            .json(&order)
            .send()
            .await
            .expect("buy seats");
        assert_eq!(grant.status(), 201);
        let grant: Value = grant.json().await.expect("grant json");
        let id = grant["id"].as_str().expect("grant id").to_owned();
        let paid = http
            .post(self.url(&format!("/api/v1/accounts/{account}/seats/{id}/paid")))
            .bearer_auth(token)
            .send()
            .await
            .expect("pay seats");
        assert_eq!(paid.status(), 200);
        id
    }
}

/// `ManualClock::now` through the trait, without importing it in every test.
pub trait NowForTest {
    fn now_for_test(&self) -> OffsetDateTime;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> OffsetDateTime {
        ponte_identity::clock::Clock::now(self)
    }
}

/// The CSRF token in a page's form.
pub fn csrf_from(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("page has a csrf field") + marker.len();
    html[start..].split('"').next().expect("csrf value").to_owned()
}

/// The text of a page's `<dd id="…">`.
pub fn dd(html: &str, id: &str) -> String {
    html.split(&format!("id=\"{id}\">")).nth(1).unwrap_or("").split('<').next().unwrap_or("").to_owned()
}

/// Signs in through the form with a fresh GET first; returns the POST response.
pub async fn sign_in(app: &TestApp, browser: &reqwest::Client, email: &str, password: &str) -> reqwest::Response {
    let page = browser.get(app.url("/login")).send().await.expect("login page").text().await.expect("html");
    browser
        .post(app.url("/login"))
        .form(&[("email", email), ("password", password), ("csrf_token", &csrf_from(&page))])
        .send()
        .await
        .expect("login post")
}
