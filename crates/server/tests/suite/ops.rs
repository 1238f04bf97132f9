//! Liveness, readiness and metrics.

use crate::harness::{TestApp, TestDb};

#[tokio::test]
async fn healthy_and_ready_on_the_embedded_defaults() {
    let app = TestApp::spawn().await;
    assert_eq!(app.browser().get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(app.browser().get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn not_ready_while_redis_is_unreachable() {
    // Nothing listens on ports 1 and 2: the store starts lazily and readiness reports it,
    // on one node and on a cluster alike.
    for url in ["redis://127.0.0.1:1/", "redis+cluster://127.0.0.1:1,127.0.0.1:2"] {
        let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| c.redis_url = Some(url.into())).await;
        let started = std::time::Instant::now();
        let response = app.browser().get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503, "{url}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "not_ready");
        assert!(body["detail"].as_str().unwrap().contains("session store"));
        assert_eq!(app.browser().get(app.url("/healthz")).send().await.unwrap().status(), 200, "the process is up");
        // A page that needs the store answers 503, not 500.
        let login = crate::harness::sign_in(&app, &app.browser(), "a@esempio.it", "whatever password").await;
        assert_eq!(login.status(), 503, "{url}");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{url}: answered in {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::spawn().await;
    let _ = app.browser().get(app.url("/healthz")).send().await.unwrap();
    let text = app.browser().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("http_requests_total") && text.contains("route=\"/healthz\""), "{text}");
    assert!(text.contains("http_request_duration_seconds"));
}

/// The value of the metric line that starts with `series` (0 when absent).
fn metric_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn issued_tokens_are_counted_by_grant_type() {
    let app = TestApp::spawn().await;
    let series = "oauth_tokens_issued_total{grant_type=\"client_credentials\"}";
    let metrics = || async { app.browser().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let before = metric_value(&metrics().await, series);
    app.admin_token().await;
    app.admin_token().await;
    // The recorder is the process's: other tests may issue tokens meanwhile, never fewer.
    let after = metric_value(&metrics().await, series);
    assert!(after >= before + 2.0, "{before} -> {after}");
}

#[tokio::test]
async fn database_away_means_503_not_500() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // Closing the pool is what a lost database looks like to a handler: no connection.
    app.state.db.close().await;
    let ready = app.browser().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.json::<serde_json::Value>().await.unwrap()["detail"].as_str().unwrap().contains("database"));
    let response = app
        .browser()
        .get(app.url("/api/v1/accounts/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], "database_unavailable");
}

/// `ponte healthcheck` (the container image's HEALTHCHECK) with `bind` as its only setting.
async fn healthcheck(bind: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(crate::process::ponte_bin());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PONTE_")) {
            command.env_remove(key);
        }
        let dir = tempfile::tempdir().unwrap();
        command.arg("healthcheck").current_dir(dir.path()).env("PONTE_BIND", bind);
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        command.status().unwrap().success()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_healthcheck_command_passes_while_ponte_answers_and_fails_when_nothing_does() {
    let app = TestApp::spawn().await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    assert!(healthcheck(format!("0.0.0.0:{port}")).await, "an unspecified bind is reached on loopback");
    assert!(!healthcheck(format!("127.0.0.1:{}", crate::process::free_port())).await);
}

/// Reads from `stream` until the server closes it; `None` if it is still open at `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lasts_keep_alive_secs() {
    use tokio::io::AsyncWriteExt;
    for (secs, open_at_least) in [(1u64, false), (5, true)] {
        let app = TestApp::spawn_with(TestDb::sqlite(), None, |c| c.keep_alive_secs = secs).await;
        let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: ponte\r\n\r\n").await.unwrap();
        let closed = closed_within(&mut stream, std::time::Duration::from_secs(3)).await;
        if open_at_least {
            assert_eq!(closed, None, "with keep_alive_secs = {secs}, still open after 3 s");
        } else {
            assert!(closed.is_some(), "with keep_alive_secs = {secs}, closed within 3 s");
        }
    }
}
