//! Password recovery end to end: the REST routes and the pages, the mail read from its
//! queued job and from aiosmtpd, the one answer for every address, single use and expiry,
//! the rate limit, what ends after a reset, and a burst with the mail server away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ponte_identity::jobs::{JobState, JobStore};
use ponte_identity::outbox::{Message, message_id};
use ponte_identity::refresh::NewFamily;
use ponte_server::config::Secret;
use serde_json::{Value, json};

use crate::harness::{NowForTest, Parts, TestApp, TestDb, csrf_from, sign_in};
use crate::mail::{Aiosmtpd, eventually};
use crate::sink::message_id_of;

const OLD: &str = "old password 1234";
const NEW: &str = "Vesuvio al tramonto 77";

/// An app with one account whose owner is `mario@esempio.it` (password [`OLD`]).
async fn app_with_owner(parts: Parts, adjust: impl FnOnce(&mut ponte_server::Config)) -> Option<(TestApp, Value)> {
    let db = if parts.postgres { TestDb::postgres().await? } else { TestDb::sqlite() };
    let redis = if parts.redis { Some(crate::harness::TestRedis::new()?) } else { None };
    let app = TestApp::spawn_with(db, redis, adjust).await;
    let token = app.admin_token().await;
    let account = app.create_account(&token, "Mario@esempio.it", OLD).await;
    Some((app, account))
}

async fn forgot(app: &TestApp, email: &str) -> reqwest::Response {
    app.browser().post(app.url("/api/v1/password/forgot")).json(&json!({ "email": email })).send().await.unwrap()
}

async fn reset(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.browser()
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({ "token": token, "password": password }))
        .send()
        .await
        .unwrap()
}

/// The tokens of the reset links mailed to `to`, oldest first.
async fn reset_tokens(app: &TestApp, to: &str) -> Vec<String> {
    app.queued_mails()
        .await
        .into_iter()
        .filter(|m| m.to.eq_ignore_ascii_case(to))
        .filter_map(|m| match m.message {
            Message::PasswordReset { link, expires_in_minutes } => {
                assert_eq!(expires_in_minutes, 30);
                let prefix = app.url("/password/reset?token=");
                assert!(link.starts_with(&prefix), "{link}");
                Some(link[prefix.len()..].to_owned())
            }
            _ => None,
        })
        .collect()
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_mailed_link_sets_the_password_and_ends_every_session_and_refresh_token() {
    for parts in [Parts::default(), Parts { postgres: true, redis: true }] {
        let Some((app, account)) = app_with_owner(parts, |_| {}).await else { continue };
        let owner_id = account["owner"]["id"].as_str().unwrap().to_owned();

        // Signed in in a browser, and an application holding a refresh token.
        let browser = app.browser();
        assert_eq!(sign_in(&app, &browser, "mario@esempio.it", OLD).await.status(), 303);
        assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
        let (client, secret) = app.register_browser_client(false, false).await;
        let (family, refresh_token) = app
            .state
            .refresh
            .start(
                NewFamily {
                    client_id: client.clone(),
                    user_id: owner_id.parse().unwrap(),
                    account_id: account["id"].as_str().unwrap().parse().unwrap(),
                    scope: "openid offline_access".into(),
                    sid: None,
                    auth_time: app.clock.now_for_test().unix_timestamp(),
                    amr: "pwd".into(),
                },
                time::Duration::days(30),
                app.clock.now_for_test(),
            )
            .await
            .unwrap();

        let accepted = forgot(&app, "MARIO@esempio.it").await;
        assert_eq!(accepted.status(), 202);
        let tokens = reset_tokens(&app, "mario@esempio.it").await;
        assert_eq!(tokens.len(), 1, "one request, one mail");
        assert_eq!(tokens[0].len(), 43, "256 bits, base64url");
        let stored: Vec<(String,)> =
            sqlx::query_as("SELECT digest FROM password_resets").fetch_all(app.state.db.pool()).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0].0, tokens[0], "only the digest is stored");

        assert_eq!(reset(&app, &tokens[0], NEW).await.status(), 204);

        // Everything the old password opened is closed.
        let home = browser.get(app.url("/")).send().await.unwrap();
        assert_eq!((home.status().as_u16(), home.headers()["location"].to_str().unwrap()), (303, "/login"));
        assert!(app.state.refresh.find(&family.id).await.unwrap().unwrap().revoked_at.is_some());
        let refreshed = app
            .browser()
            .post(app.url("/oauth2/token"))
            .basic_auth(&client, secret.as_deref())
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(refreshed.status(), 400, "the refresh token is dead");
        assert_eq!(sign_in(&app, &app.browser(), "mario@esempio.it", OLD).await.status(), 401);
        assert_eq!(sign_in(&app, &app.browser(), "mario@esempio.it", NEW).await.status(), 303);

        // Told by mail, and audited.
        let last = app.queued_mails().await.pop().unwrap();
        assert_eq!((last.to.as_str(), last.message), ("Mario@esempio.it", Message::PasswordChanged {}));
        let audited: Vec<(String,)> =
            sqlx::query_as("SELECT action FROM audit_entries WHERE action LIKE 'password.%' ORDER BY at, id")
                .fetch_all(app.state.db.pool())
                .await
                .unwrap();
        let actions: Vec<&str> = audited.iter().map(|(a,)| a.as_str()).collect();
        assert_eq!(actions, ["password.reset_requested", "password.reset"]);

        // The link worked once.
        let (status, body) = problem(reset(&app, &tokens[0], "another fine password 9").await).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("reset_token_invalid")));
    }
}

#[tokio::test]
async fn an_unknown_or_disabled_address_gets_byte_for_byte_the_same_answer_and_no_mail() {
    let (app, account) = app_with_owner(Parts::default(), |_| {}).await.unwrap();
    let token = app.admin_token().await;
    let users = app.url(&format!("/api/v1/accounts/{}/users", account["id"].as_str().unwrap()));
    let created = app
        .browser()
        .post(&users)
        .bearer_auth(&token)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "admin", "password": OLD}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let anna: Value = created.json().await.unwrap();
    let disabled = app
        .browser()
        .patch(format!("{users}/{}", anna["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .json(&json!({"status": "disabled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);

    let mut answers = Vec::new();
    for email in ["mario@esempio.it", "nobody@esempio.it", "anna@esempio.it"] {
        let r = forgot(&app, email).await;
        let headers = (r.headers().get("content-type").cloned(), r.headers().get("cache-control").cloned());
        answers.push((r.status(), headers, r.bytes().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1], "unknown address");
    assert_eq!(answers[0], answers[2], "disabled user");
    assert_eq!(answers[0].0, 202);
    let resets: Vec<String> = app
        .queued_mails()
        .await
        .into_iter()
        .filter(|m| matches!(m.message, Message::PasswordReset { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(resets, ["Mario@esempio.it"], "only the active user is mailed");

    let (status, body) = problem(forgot(&app, "not an email").await).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("email")));
}

#[tokio::test]
async fn a_link_expires_after_30_minutes_and_a_reset_voids_the_other_links() {
    let (app, _) = app_with_owner(Parts::default(), |_| {}).await.unwrap();
    forgot(&app, "mario@esempio.it").await;
    forgot(&app, "mario@esempio.it").await;
    let tokens = reset_tokens(&app, "mario@esempio.it").await;
    assert_eq!(tokens.len(), 2);
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(reset(&app, &tokens[1], NEW).await.status(), 204);
    let (status, body) = problem(reset(&app, &tokens[0], "yet another password 5").await).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("reset_token_invalid")), "the older link died too");

    forgot(&app, "mario@esempio.it").await;
    let fresh = reset_tokens(&app, "mario@esempio.it").await.pop().unwrap();
    app.clock.advance(time::Duration::minutes(30));
    let (status, expired) = problem(reset(&app, &fresh, "yet another password 5").await).await;
    assert_eq!(status, 400);
    let (_, unknown) = problem(reset(&app, "made-up-token", "yet another password 5").await).await;
    assert_eq!(expired, unknown, "expired and unknown look the same");
    assert_eq!(sign_in(&app, &app.browser(), "mario@esempio.it", NEW).await.status(), 303, "nothing changed");
}

#[tokio::test]
async fn too_many_requests_answer_429_with_retry_after_and_the_window_reopens() {
    for parts in [Parts::default(), Parts { postgres: false, redis: true }] {
        let Some((app, _)) = app_with_owner(parts, |_| {}).await else { continue };
        for n in 0..5 {
            assert_eq!(forgot(&app, "mario@esempio.it").await.status(), 202, "request {n}");
        }
        let limited = forgot(&app, "MARIO@esempio.it").await;
        assert_eq!(limited.status(), 429, "counted on the normalized address");
        let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
        let (_, body) = problem(limited).await;
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(forgot(&app, "someone.else@esempio.it").await.status(), 202, "another address is counted apart");
        assert_eq!(reset_tokens(&app, "mario@esempio.it").await.len(), 5, "the refused request sent nothing");

        app.clock.advance(time::Duration::seconds(retry as i64));
        assert_eq!(forgot(&app, "mario@esempio.it").await.status(), 202, "after Retry-After it is taken again");
    }
}

#[tokio::test]
async fn a_password_that_breaks_the_policy_is_refused_naming_the_field_and_the_link_still_works() {
    let (app, _) = app_with_owner(Parts::default(), |_| {}).await.unwrap();
    forgot(&app, "mario@esempio.it").await;
    let token = reset_tokens(&app, "mario@esempio.it").await.remove(0);
    for (password, rule) in [
        ("short", "at least 10"),
        ("qwertyuiop", "too common"),
        ("Password2024!", "too common"),
        ("mario-was-here-1", "email"),
    ] {
        let (status, body) = problem(reset(&app, &token, password).await).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("validation_failed")), "{password}");
        assert_eq!(body["errors"][0]["field"], "password");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains(rule), "{password}: {body}");
    }
    assert_eq!(reset(&app, &token, NEW).await.status(), 204);
}

#[tokio::test]
async fn the_pages_lead_from_the_login_form_to_a_new_password() {
    let (app, _) = app_with_owner(Parts::default(), |_| {}).await.unwrap();
    let browser = app.browser();
    let login = browser.get(app.url("/login")).header("accept-language", "it").send().await.unwrap();
    assert!(login.text().await.unwrap().contains(r#"href="/password/forgot">Password dimenticata?</a>"#));

    let form = browser.get(app.url("/password/forgot")).send().await.unwrap().text().await.unwrap();
    let forged = browser.post(app.url("/password/forgot")).form(&[("email", "mario@esempio.it")]).send().await.unwrap();
    assert_eq!(forged.status(), 403, "no CSRF token, no mail");
    assert!(reset_tokens(&app, "mario@esempio.it").await.is_empty());
    let mut sent = Vec::new();
    for email in ["mario@esempio.it", "nobody@esempio.it"] {
        let r = browser
            .post(app.url("/password/forgot"))
            .form(&[("email", email), ("csrf_token", &csrf_from(&form))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sent.push(r.text().await.unwrap());
    }
    assert_eq!(sent[0], sent[1], "the same page for a known and an unknown address");
    assert!(sent[0].contains(r#"id="sent""#));

    let token = reset_tokens(&app, "mario@esempio.it").await.remove(0);
    let page = browser.get(app.url(&format!("/password/reset?token={token}"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!(r#"name="token" value="{token}""#)));
    let csrf = csrf_from(&page);
    let post = |password: &'static str, confirm: &'static str| {
        let (browser, url, token, csrf) = (browser.clone(), app.url("/password/reset"), token.clone(), csrf.clone());
        async move {
            let form = [
                ("token", token.as_str()),
                ("password", password),
                ("password_confirm", confirm),
                ("csrf_token", &csrf),
            ];
            let r = browser.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = post(NEW, "something else entirely").await;
    assert!(status == 422 && html.contains("The two passwords differ."), "{html}");
    let (status, html) = post("1234567890", "1234567890").await;
    assert!(status == 422 && html.contains("too common") && html.contains(r#"role="alert""#), "{html}");
    let (status, html) = post(NEW, NEW).await;
    assert!(status == 200 && html.contains(r#"id="reset-done""#) && html.contains(r#"href="/login""#), "{html}");

    let again = browser.get(app.url(&format!("/password/reset?token={token}"))).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains(r#"data-code="reset_token_invalid""#));
    assert_eq!(browser.get(app.url("/password/reset")).send().await.unwrap().status(), 400);
    assert_eq!(sign_in(&app, &app.browser(), "mario@esempio.it", NEW).await.status(), 303);
}

/// The token in a reset mail as aiosmtpd stored it (quoted-printable may wrap the link).
fn token_in(raw: &str) -> String {
    let unwrapped = raw.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let after = unwrapped.split("/password/reset?token=").nth(1).expect("a reset link");
    after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

#[tokio::test]
async fn the_reset_mail_arrives_through_aiosmtpd_and_its_link_works() {
    let Some(smtp) = Aiosmtpd::start().await else { return };
    let url = smtp.url();
    let (app, _) = app_with_owner(Parts::default(), |c| c.smtp.url = Some(Secret::from(url.as_str()))).await.unwrap();
    assert_eq!(forgot(&app, "mario@esempio.it").await.status(), 202);
    eventually("the mail is in aiosmtpd's Maildir", Duration::from_secs(20), || {
        let n = smtp.messages().len();
        async move { n == 1 }
    })
    .await;
    let raw = smtp.messages().remove(0);
    assert!(raw.contains("To: Mario@esempio.it") && raw.contains("Ponte: reimposta la password"), "{raw}");
    let token = token_in(&raw);
    assert_eq!(token, reset_tokens(&app, "mario@esempio.it").await[0], "the link in the mail is the one queued");
    assert_eq!(reset(&app, &token, NEW).await.status(), 204);
    eventually("the 'password changed' mail arrived", Duration::from_secs(20), || {
        let n = smtp.messages().len();
        async move { n == 2 }
    })
    .await;
    let messages = smtp.messages();
    assert_eq!(messages.iter().filter(|m| m.contains("/password/reset?token=")).count(), 1, "the second is the notice");
    assert!(messages.iter().all(|m| m.contains("To: Mario@esempio.it")));
}

#[tokio::test]
async fn a_burst_of_500_requests_for_50_users_mails_once_per_accepted_request_with_smtp_away_for_a_while() {
    let Some(mut smtp) = Aiosmtpd::start().await else { return };
    let url = smtp.url();
    let db = match TestDb::postgres().await {
        Some(db) => db,
        None => TestDb::sqlite(),
    };
    let app = TestApp::spawn_with(db, None, |c| {
        c.smtp.url = Some(Secret::from(url.as_str()));
        c.worker.poll_interval_ms = 50;
        c.worker.concurrency = 8;
        // All 500 come from 127.0.0.1: the per-address limit would stop the burst at 30.
        c.recovery.max_per_ip = 100_000;
    })
    .await;
    let token = app.admin_token().await;
    let emails: Vec<String> = (0..50).map(|n| format!("user{n:02}@esempio.it")).collect();
    for email in &emails {
        let r = app
            .browser()
            .post(app.url("/api/v1/accounts"))
            .bearer_auth(&token)
            .json(&json!({"name": "Bar", "owner": {"email": email, "name": "Utente"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // 10 requests per user (5 are taken per user per window), 16 at a time; the mail server
    // is down for the first half of the burst.
    smtp.down();
    let client = app.browser();
    let started = std::time::Instant::now();
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    let mut limited = 0;
    for round in 0..500 / 16 + 1 {
        if round == 250 / 16 {
            smtp.up().await;
        }
        let mut set = tokio::task::JoinSet::new();
        for n in (round * 16)..((round + 1) * 16).min(500) {
            let (client, url, email) = (client.clone(), app.url("/api/v1/password/forgot"), emails[n % 50].clone());
            set.spawn(async move {
                let r = client.post(url).json(&json!({ "email": email })).send().await.unwrap();
                (email, r.status().as_u16())
            });
        }
        while let Some(done) = set.join_next().await {
            match done.unwrap() {
                (email, 202) => *accepted.entry(email).or_default() += 1,
                (_, 429) => limited += 1,
                (_, other) => panic!("unexpected {other}"),
            }
        }
    }
    eprintln!("burst: 500 forgot requests answered in {:?} (debug build, 16 at a time)", started.elapsed());
    let taken: usize = accepted.values().sum();
    assert_eq!((taken, limited), (250, 250));
    assert!(accepted.values().all(|n| *n == 5), "{accepted:?}");

    // Retries wait out their backoff on the app's clock: move it along while waiting.
    let store = app.state.jobs.clone();
    eventually("every reset mail is delivered", Duration::from_secs(300), || {
        app.clock.advance(time::Duration::seconds(5));
        let store = store.clone();
        async move { store.list(Some(JobState::Done), None, 1000).await.unwrap().len() == 250 }
    })
    .await;
    let jobs = store.list(None, None, 1000).await.unwrap();
    assert_eq!(jobs.len(), 250, "one job per accepted request");
    assert!(jobs.iter().all(|j| j.state == JobState::Done));
    assert!(jobs.iter().any(|j| j.attempts > 1), "some mails met the server down and were retried");
    let messages = smtp.messages();
    assert_eq!(messages.len(), 250, "exactly one mail per accepted request, none lost, none twice");
    let ids: BTreeSet<String> = messages.iter().filter_map(|m| message_id_of(&m.replace('\n', "\r\n"))).collect();
    let expected: BTreeSet<String> = jobs.iter().map(|j| message_id(j.id, "localhost")).collect();
    assert_eq!(ids, expected);
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for m in &messages {
        let to = m.lines().find_map(|l| l.strip_prefix("To: ")).unwrap().trim().to_owned();
        *per_user.entry(to).or_default() += 1;
    }
    assert_eq!(per_user.len(), 50);
    assert!(per_user.values().all(|n| *n == 5), "{per_user:?}");
    let tokens: BTreeSet<String> = messages.iter().map(|m| token_in(m)).collect();
    assert_eq!(tokens.len(), 250, "every mail its own link");
}
