//! Bad input always gets an RFC 9457 problem with a stable code, never a 500.

use serde_json::{Value, json};

use crate::harness::TestApp;

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/problem+json", "status {status}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("urn:ponte:problem:"));
    (status, body)
}

#[tokio::test]
async fn malformed_bodies_ids_and_sizes() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let http = app.browser();
    let accounts = app.url("/api/v1/accounts");

    let (status, body) = problem(
        http.post(&accounts)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));

    let (status, body) = problem(
        http.post(&accounts)
            .bearer_auth(&token)
            .json(&json!({"name": "X", "owner": {"email": "x@esempio.it", "name": "X"}, "admin": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")), "unknown fields are refused, not ignored");
    assert!(body["detail"].as_str().unwrap().contains("admin"));

    let (status, body) = problem(
        http.post(&accounts).bearer_auth(&token).header("content-type", "text/plain").body("{}").send().await.unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")));

    let huge = json!({"name": "x".repeat(70 * 1024), "owner": {"email": "x@esempio.it", "name": "X"}});
    let (status, body) = problem(http.post(&accounts).bearer_auth(&token).json(&huge).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));

    let (status, body) =
        problem(http.get(app.url("/api/v1/accounts/not-a-uuid")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_path")));

    let (status, body) = problem(
        http.get(app.url("/api/v1/accounts/00000000-0000-0000-0000-000000000000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("account_not_found")));

    let bad_email = json!({"name": "X", "owner": {"email": "not an email", "name": "X"}});
    let (status, body) = problem(http.post(&accounts).bearer_auth(&token).json(&bad_email).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("validation_failed")));
    assert_eq!(body["errors"][0]["field"], "owner.email");

    let short = json!({"name": "X", "owner": {"email": "x@esempio.it", "name": "X", "password": "short"}});
    let (status, body) = problem(http.post(&accounts).bearer_auth(&token).json(&short).send().await.unwrap()).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("owner.password")));

    let blank = json!({"name": "   ", "owner": {"email": "x@esempio.it", "name": "X"}});
    let (status, body) = problem(http.post(&accounts).bearer_auth(&token).json(&blank).send().await.unwrap()).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("name")));

    let account = app.create_account(&token, "mario@esempio.it", "correct horse battery").await;
    let audit = app.url(&format!("/api/v1/accounts/{}/audit", account["id"].as_str().unwrap()));
    let (status, body) =
        problem(http.get(format!("{audit}?limit=abc")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")));
    let (status, _) =
        problem(http.get(format!("{audit}?limit=100000")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 422);
    let empty_patch = app.url(&format!(
        "/api/v1/accounts/{}/users/{}",
        account["id"].as_str().unwrap(),
        account["owner"]["id"].as_str().unwrap()
    ));
    let (status, _) =
        problem(http.patch(&empty_patch).bearer_auth(&token).json(&json!({})).send().await.unwrap()).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let app = TestApp::spawn().await;
    let http = app.browser();
    let (status, body) = problem(http.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = problem(http.put(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
    let (status, _) = problem(http.get(app.url("/oauth2/token")).send().await.unwrap()).await;
    assert_eq!(status, 405);
}

/// Sends `raw` on a new connection and returns the status line's code and the body.
async fn raw_request(app: &TestApp, raw: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[tokio::test]
async fn an_oversize_query_or_header_block_is_a_problem_and_a_broken_request_line_a_bare_400() {
    let app = TestApp::spawn().await;
    let http = app.browser();
    let long_query = format!("/healthz?q={}", "a".repeat(ponte_server::extract::MAX_QUERY_BYTES));
    let (status, body) = problem(http.get(app.url(&long_query)).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (414, "uri_too_long"));

    let mut big = http.get(app.url("/healthz"));
    for n in 0..40 {
        big = big.header(format!("x-filler-{n}"), "f".repeat(1000));
    }
    let (status, body) = problem(big.send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (431, "headers_too_large"));
    let fine = format!("/healthz?q={}", "a".repeat(2000));
    assert_eq!(http.get(app.url(&fine)).send().await.unwrap().status(), 200, "a long but fair query passes");

    // These never reach the application: actix-web answers them itself, without a body.
    let (status, body) = raw_request(&app, b"NOT A REQUEST LINE\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (400, ""));
    let many: String = (0..100).map(|n| format!("x-h{n}: v\r\n")).collect();
    let (status, _) = raw_request(&app, format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status, 431, "more than actix-web's 96 headers");
}
