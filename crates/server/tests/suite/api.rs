//! The REST API: authentication, accounts, users, sessions, tenant isolation.

use serde_json::{Value, json};

use crate::harness::{TestApp, sign_in};

#[tokio::test]
async fn missing_bad_or_underscoped_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v1/accounts");
    let body = json!({"name": "X", "owner": {"email": "x@esempio.it", "name": "X"}});

    let none = app.browser().post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer realm=\"ponte\"");
    assert_eq!(none.headers()["content-type"], "application/problem+json");

    let bad = app.browser().post(&url).bearer_auth("eyJhbGciOiJub25lIn0.e30.").json(&body).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(bad.headers()["www-authenticate"], "Bearer realm=\"ponte\", error=\"invalid_token\"");

    let weak = app.token_with_scopes(&["ponte.read"]).await;
    let forbidden = app.browser().post(&url).bearer_auth(&weak).json(&body).send().await.unwrap();
    assert_eq!(forbidden.status(), 403);
    assert!(forbidden.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    assert_eq!(forbidden.json::<Value>().await.unwrap()["code"], "insufficient_scope");

    let token = app.admin_token().await;
    app.clock.advance(time::Duration::minutes(11));
    let expired = app.browser().post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(expired.status(), 401, "tokens expire after access_token_ttl_secs");
}

#[tokio::test]
async fn accounts_and_users_lifecycle() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let created = app.create_account(&token, "mario@esempio.it", "correct horse battery").await;
    let account = created["id"].as_str().unwrap();
    assert_eq!(created["account"]["id"], account);
    assert_eq!(created["owner"]["role"], "owner");
    assert_eq!(created["owner"]["has_password"], true);
    assert!(created["owner"].get("password").is_none() && created["owner"].get("password_hash").is_none());

    let http = app.browser();
    let got: Value = http
        .get(app.url(&format!("/api/v1/accounts/{account}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Bar Sport");

    let users_url = app.url(&format!("/api/v1/accounts/{account}/users"));
    app.paid_seats(&token, account, 2).await;
    let member = http
        .post(&users_url)
        .bearer_auth(&token)
        .json(&json!({"email": "anna@esempio.it", "name": "Anna", "role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(member.status(), 201);
    let member: Value = member.json().await.unwrap();
    assert_eq!(member["has_password"], false);
    assert_eq!((created["owner"]["language"].as_str(), member["language"].as_str()), (Some("it"), Some("it")));
    let english = http
        .post(&users_url)
        .bearer_auth(&token)
        .json(&json!({"email": "emma@esempio.it", "name": "Emma", "role": "member", "language": "en"}))
        .send()
        .await
        .unwrap();
    let english: Value = english.json().await.unwrap();
    assert_eq!(english["language"], "en");
    let klingon = http
        .patch(format!("{users_url}/{}", english["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .json(&json!({"language": "tlh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(klingon.status(), 422);
    assert_eq!(klingon.json::<Value>().await.unwrap()["errors"][0]["field"], "language");
    let italian: Value = http
        .patch(format!("{users_url}/{}", english["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .json(&json!({"language": "it"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(italian["language"], "it");
    http.delete(format!("{users_url}/{}", english["id"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();

    let dup = http
        .post(&users_url)
        .bearer_auth(&token)
        .json(&json!({"email": "ANNA@esempio.it", "name": "Anna 2", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    assert_eq!(dup.json::<Value>().await.unwrap()["code"], "email_taken");

    let owner_role = http
        .post(&users_url)
        .bearer_auth(&token)
        .json(&json!({"email": "o@esempio.it", "name": "O", "role": "owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(owner_role.status(), 422);

    let list: Value = http.get(&users_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["users"].as_array().unwrap().len(), 2);

    let member_url = format!("{users_url}/{}", member["id"].as_str().unwrap());
    let patched: Value = http
        .patch(&member_url)
        .bearer_auth(&token)
        .json(&json!({"name": "Anna Bianchi", "role": "admin", "password": "another good password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (patched["name"].as_str(), patched["role"].as_str(), patched["has_password"].as_bool()),
        (Some("Anna Bianchi"), Some("admin"), Some(true))
    );
    assert_eq!(sign_in(&app, &app.browser(), "anna@esempio.it", "another good password").await.status(), 303);

    let owner_url = format!("{users_url}/{}", created["owner"]["id"].as_str().unwrap());
    let demote = http.patch(&owner_url).bearer_auth(&token).json(&json!({"role": "member"})).send().await.unwrap();
    assert_eq!(demote.status(), 409);
    assert_eq!(demote.json::<Value>().await.unwrap()["code"], "owner_role_fixed");
    let delete_owner = http.delete(&owner_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(delete_owner.json::<Value>().await.unwrap()["code"], "owner_cannot_be_deleted");

    assert_eq!(http.delete(&member_url).bearer_auth(&token).send().await.unwrap().status(), 204);
    let gone = http.get(&member_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(gone.json::<Value>().await.unwrap()["code"], "user_not_found");

    let audit: Value = http
        .get(app.url(&format!("/api/v1/accounts/{account}/audit?limit=50")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"user.deleted")
            && actions.contains(&"login.succeeded")
            && actions.contains(&"account.created"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn no_route_reaches_another_accounts_users() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let a = app.create_account(&token, "a@esempio.it", "correct horse battery").await;
    let b = app.create_account(&token, "b@esempio.it", "correct horse battery").await;
    let (a_id, b_owner) = (a["id"].as_str().unwrap(), b["owner"]["id"].as_str().unwrap());
    let http = app.browser();
    let cross = format!("/api/v1/accounts/{a_id}/users/{b_owner}");
    for request in [
        http.get(app.url(&cross)),
        http.patch(app.url(&cross)).json(&json!({"name": "pwned"})),
        http.delete(app.url(&cross)),
        http.get(app.url(&format!("{cross}/sessions"))),
    ] {
        let response = request.bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    let b_owner_view: Value = http
        .get(app.url(&format!("/api/v1/accounts/{}/users/{b_owner}", b["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b_owner_view["name"], "Mario Rossi", "untouched");
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_through_the_api() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", "correct horse battery").await;
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "mario@esempio.it", "correct horse battery").await.status(), 303);
    let sessions_url = app.url(&format!(
        "/api/v1/accounts/{}/users/{}/sessions",
        account["id"].as_str().unwrap(),
        account["owner"]["id"].as_str().unwrap()
    ));
    let http = app.browser();
    let listed: Value = http.get(&sessions_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let session = &listed["sessions"][0];
    assert_eq!(session["amr"], json!(["pwd"]));
    assert_eq!(session["ip"], "127.0.0.1");
    let id = session["id"].as_str().unwrap();
    assert_eq!(http.delete(format!("{sessions_url}/{id}")).bearer_auth(&token).send().await.unwrap().status(), 204);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303, "the browser is signed out");
    let again = http.delete(format!("{sessions_url}/{id}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(again.json::<Value>().await.unwrap()["code"], "session_not_found");
}

#[tokio::test]
async fn the_permission_catalogue_is_listed_in_both_languages_to_callers_only() {
    let app = TestApp::spawn().await;
    let http = app.browser();
    let anonymous = http.get(app.url("/api/v1/permissions")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let token = app.admin_token().await;
    let list: Value =
        http.get(app.url("/api/v1/permissions")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        list["permissions"].as_array().unwrap().iter().map(|p| p["permission"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "invoices:read",
            "invoices:send",
            "invoices:download",
            "contacts:manage",
            "settings:manage",
            "integrations:manage",
            "users:manage"
        ]
    );
    let users = &list["permissions"][6];
    assert_eq!(users["scope"], "account");
    assert_eq!(list["permissions"][0]["scope"], "company");
    assert!(users["description"]["it"].as_str().unwrap().contains("utenti aggiuntivi"), "{users}");
    assert!(users["description"]["en"].as_str().unwrap().contains("members"), "{users}");
}
