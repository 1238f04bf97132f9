//! Password sign-in through the browser pages.

use crate::harness::{Parts, TestApp, csrf_from, sign_in};

const PASSWORD: &str = "correct horse battery";

async fn app_with_owner() -> (TestApp, serde_json::Value) {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    (app, account)
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ponte_session="))
        .map(str::to_owned)
}

#[tokio::test]
async fn owner_signs_in_and_sees_who_they_are() {
    let (app, _) = app_with_owner().await;
    let browser = app.browser();
    let response = sign_in(&app, &browser, "MARIO@esempio.it", PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/");
    let cookie = session_cookie(&response).expect("session cookie set");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"), "{cookie}");

    let home = browser.get(app.url("/")).header("accept-language", "it-IT,it;q=0.9").send().await.unwrap();
    assert_eq!(home.status(), 200);
    let html = home.text().await.unwrap();
    assert!(html.contains("Mario Rossi") && html.contains("mario@esempio.it"), "{html}");
    assert!(html.contains(">owner<") && html.contains("Bar Sport"));
    assert!(html.contains("Hai effettuato l'accesso"), "Italian when the browser asks for it");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_answer() {
    let (app, _) = app_with_owner().await;
    let wrong = sign_in(&app, &app.browser(), "mario@esempio.it", "not the password").await;
    let unknown = sign_in(&app, &app.browser(), "nobody@esempio.it", "not the password").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert!(session_cookie(&wrong).is_none() && session_cookie(&unknown).is_none());
    let (wrong, unknown) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    let message = "Email or password is incorrect.";
    assert!(wrong.contains(message) && unknown.contains(message));
    // Apart from the echoed email and the CSRF token, the pages are the same.
    let strip = |html: &str| {
        html.replace(&csrf_from(html), "").replace("nobody@esempio.it", "").replace("mario@esempio.it", "")
    };
    assert_eq!(strip(&wrong), strip(&unknown));
}

#[tokio::test]
async fn a_form_without_the_csrf_token_is_refused() {
    let (app, _) = app_with_owner().await;
    let browser = app.browser();
    let _ = browser.get(app.url("/login")).send().await.unwrap();
    let missing = browser
        .post(app.url("/login"))
        .form(&[("email", "mario@esempio.it"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 403);
    assert!(session_cookie(&missing).is_none());
    let forged = browser
        .post(app.url("/login"))
        .form(&[("email", "mario@esempio.it"), ("password", PASSWORD), ("csrf_token", "A".repeat(43).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // A browser that never loaded the form (no CSRF cookie) is refused too.
    let cold = app
        .browser()
        .post(app.url("/login"))
        .form(&[("email", "mario@esempio.it"), ("password", PASSWORD), ("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(cold.status(), 403);
}

#[tokio::test]
async fn signing_in_again_rotates_the_session_id_and_logout_ends_it() {
    let (app, account) = app_with_owner().await;
    let browser = app.browser();
    let first = session_cookie(&sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await).unwrap();
    let second = session_cookie(&sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await).unwrap();
    assert_ne!(first, second, "a new id at every sign-in");
    let token = app.admin_token().await;
    let sessions_url = app.url(&format!(
        "/api/v1/accounts/{}/users/{}/sessions",
        account["id"].as_str().unwrap(),
        account["owner"]["id"].as_str().unwrap()
    ));
    let listed: serde_json::Value =
        app.browser().get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "the first session ended at the second sign-in");

    let home = browser.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    let logout = browser.post(app.url("/logout")).form(&[("csrf_token", csrf_from(&home))]).send().await.unwrap();
    assert_eq!(logout.status(), 303);
    let after = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(after.status(), 303, "signed out: back to the login page");
    assert_eq!(after.headers()["location"], "/login");
    let listed: serde_json::Value =
        app.browser().get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert!(listed["sessions"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn disabled_users_cannot_sign_in_and_lose_their_sessions() {
    let (app, account) = app_with_owner().await;
    let token = app.admin_token().await;
    let account_id = account["id"].as_str().unwrap();
    app.paid_seats(&token, account_id, 1).await;
    let created = app
        .browser()
        .post(app.url(&format!("/api/v1/accounts/{account_id}/users")))
        .bearer_auth(&token)
        .json(&serde_json::json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: serde_json::Value = created.json().await.unwrap();
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "anna@esempio.it", PASSWORD).await.status(), 303);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);

    let user_url = app.url(&format!("/api/v1/accounts/{account_id}/users/{}", user["id"].as_str().unwrap()));
    let disabled = app
        .browser()
        .patch(&user_url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "disabled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303, "session ended");
    assert_eq!(sign_in(&app, &app.browser(), "anna@esempio.it", PASSWORD).await.status(), 401);
}

#[tokio::test]
async fn guessing_passwords_is_rate_limited_per_email() {
    let (app, _) = app_with_owner().await;
    let browser = app.browser();
    for _ in 0..10 {
        assert_eq!(sign_in(&app, &browser, "mario@esempio.it", "guess guess guess").await.status(), 401);
    }
    let limited = sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await;
    assert_eq!(limited.status(), 429, "even the right password waits once the limit is hit");
    app.clock.advance(time::Duration::minutes(15));
    assert_eq!(sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await.status(), 303, "the window passes");
}

#[tokio::test]
async fn the_walkthrough_stores_rows_in_postgres_and_sessions_in_redis() {
    let Some(app) = TestApp::spawn_on(Parts { postgres: true, redis: true }).await else {
        return;
    };
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "mario@esempio.it", PASSWORD).await.status(), 303);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);

    let mut pg = <sqlx::PgConnection as sqlx::Connection>::connect(&app.db.url).await.unwrap();
    let (name,): (String,) = sqlx::query_as("SELECT name FROM accounts WHERE id = $1")
        .bind(account["id"].as_str().unwrap())
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(name, "Bar Sport");

    let redis = app.redis.as_ref().unwrap();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}s:*", redis.prefix)).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "one session in Redis: {keys:?}");
}

#[tokio::test]
async fn https_deployments_use_host_prefixed_secure_cookies() {
    let app =
        TestApp::spawn_with(crate::harness::TestDb::sqlite(), None, |c| c.public_url = "https://id.example.com".into())
            .await;
    let page = app.browser().get(app.url("/login")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-ponte_csrf="), "{cookie}");
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("Path=/")
            && !cookie.contains("Domain"),
        "{cookie}"
    );
    let html = page.text().await.unwrap();
    let csrf = crate::harness::csrf_from(&html);
    let token = app.admin_token().await;
    app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    // The browser would only send it over https; the test hands it over itself.
    let signed_in = app
        .browser()
        .post(app.url("/login"))
        .header("cookie", format!("__Host-ponte_csrf={csrf}"))
        .form(&[("email", "mario@esempio.it"), ("password", PASSWORD), ("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = signed_in.headers()["set-cookie"].to_str().unwrap();
    assert!(session.starts_with("__Host-ponte_session=") && session.contains("Secure"), "{session}");
}

#[tokio::test]
async fn pages_link_one_cacheable_style_sheet_and_allow_no_inline_style() {
    let app = TestApp::spawn().await;
    let page = app.browser().get(app.url("/login")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("style-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<style") && !html.contains("style="), "{html}");
    let href = html.split("<link rel=\"stylesheet\" href=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    assert!(href.starts_with("/assets/ponte.css?v="), "{href}");

    let sheet = app.browser().get(app.url(href)).send().await.unwrap();
    assert_eq!(sheet.status(), 200);
    assert_eq!(sheet.headers()["content-type"], "text/css; charset=utf-8");
    assert!(sheet.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(sheet.headers()["x-content-type-options"], "nosniff");
    let css = sheet.text().await.unwrap();
    assert!(css.contains("button.secondary") && css.contains(".chain[data-linked=true]"), "{css}");
}
