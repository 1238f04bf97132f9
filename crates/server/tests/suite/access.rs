//! Who may do what over REST: the tenant-isolation matrix over every route of the
//! contract, the member without the permission, grants that take effect at once, members
//! who manage members, and the set-password link.

use std::collections::BTreeMap;

use ponte_identity::outbox::Message;
use ponte_identity::token::AccessTokenClaims;
use ponte_linking::ids::{AccountId, UserId};
use serde_json::{Value, json};
use time::Duration;

use crate::harness::{TestApp, sign_in};
use crate::integrations::company_json;

const PASSWORD: &str = "una password lunga";

/// A user's token for the REST API, as Ponte's OP issues it (`ponte.api`), signed with the
/// app's own key. What it may do is read from the store at each request, not from here.
fn user_token(app: &TestApp, account: &str, user: &str) -> String {
    let now = app.state.now();
    let claims = AccessTokenClaims::for_user(
        app.state.issuer(),
        user.parse::<UserId>().unwrap(),
        account.parse::<AccountId>().unwrap(),
        "member",
        "pos-app",
        "openid ponte.api",
        now,
        Duration::minutes(5),
    );
    app.state.keys.ring().sign_access_token(&claims).unwrap()
}

/// One account with an owner, two paid seats, two companies and a member.
struct Tenant {
    account: String,
    owner: String,
    companies: [String; 2],
    grant: String,
}

async fn tenant(app: &TestApp, admin: &str, owner_email: &str, vats: [&str; 2]) -> Tenant {
    let created = app.create_account(admin, owner_email, PASSWORD).await;
    let account = created["id"].as_str().unwrap().to_owned();
    let grant = app.paid_seats(admin, &account, 2).await;
    let mut companies = Vec::new();
    for vat in vats {
        let (status, company) =
            app.call(admin, "POST", &format!("/api/v1/accounts/{account}/companies"), Some(company_json(vat))).await;
        assert_eq!(status, 201, "{company}");
        companies.push(company["id"].as_str().unwrap().to_owned());
    }
    Tenant {
        owner: created["owner"]["id"].as_str().unwrap().to_owned(),
        account,
        companies: companies.try_into().unwrap(),
        grant,
    }
}

async fn add_member(app: &TestApp, admin: &str, t: &Tenant, email: &str, permissions: Value) -> String {
    let body =
        json!({"email": email, "name": "Membro", "role": "member", "password": PASSWORD, "permissions": permissions});
    let (status, user) = app.call(admin, "POST", &format!("/api/v1/accounts/{}/users", t.account), Some(body)).await;
    assert_eq!(status, 201, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

/// A valid body for every route of the contract that takes one, so a refusal can only
/// come from who is asking, never from the body. A new route with a body must be added.
fn body_for(method: &str, path: &str) -> Option<Value> {
    let bodies: BTreeMap<(&str, &str), Value> = [
        (("post", "/api/v1/accounts"), json!({"name": "X", "owner": {"email": "x@altro.it", "name": "X"}})),
        (("post", "/api/v1/accounts/{account}/users"), json!({"email": "y@altro.it", "name": "Y", "role": "member"})),
        (("patch", "/api/v1/accounts/{account}/users/{user}"), json!({"name": "Z"})),
        (("put", "/api/v1/accounts/{account}/users/{user}/permissions"), json!({"permissions": []})),
        (("post", "/api/v1/accounts/{account}/seats"), json!({"quantity": 1, "order_reference": "ORD-MATRIX"})),
        (("post", "/api/v1/accounts/{account}/companies"), company_json("00743110157")),
        (("patch", "/api/v1/accounts/{account}/companies/{company}"), json!({"pec": "fatture@pec.altro.it"})),
        (
            ("put", "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/credentials"),
            json!({"type": "api_key", "api_key": "k-1234567890"}),
        ),
        (("put", "/api/v1/webhooks/{receiver}"), json!({"url": "http://127.0.0.1:9/hook", "secret": "s".repeat(40)})),
        (("post", "/api/v1/password/forgot"), json!({"email": "x@altro.it"})),
        (("post", "/api/v1/password/reset"), json!({"token": "x", "password": "una password nuova"})),
    ]
    .into_iter()
    .collect();
    bodies.get(&(method, path)).cloned()
}

/// Every REST operation under `/api/v1` in the contract: (method, path template, whether
/// the contract says it takes a body).
fn rest_operations() -> Vec<(String, String, bool)> {
    let doc: Value = serde_json::from_str(&ponte_server::openapi::document_json()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push((method.clone(), path.clone(), op.get("requestBody").is_some()));
            }
        }
    }
    ops
}

fn fill(path: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(path.to_owned(), |p, (k, v)| p.replace(&format!("{{{k}}}"), v))
}

#[tokio::test]
async fn a_token_of_one_account_is_refused_on_every_route_for_another_account_s_resources() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let b = tenant(&app, &admin, "luigi@altro.it", ["00743110157", "01234560017"]).await;
    let b_member = add_member(&app, &admin, &b, "anna@altro.it", json!([])).await;
    let owner_a = user_token(&app, &a.account, &a.owner);
    let before = app.call(&admin, "GET", &format!("/api/v1/accounts/{}/audit?limit=500", b.account), None).await.1;

    let b_ids = [
        ("account", b.account.as_str()),
        ("user", b_member.as_str()),
        ("company", b.companies[0].as_str()),
        ("kind", "digital_invoice"),
        ("grant", b.grant.as_str()),
        ("invite", "0193a000-0000-7000-8000-000000000000"),
        ("session", "s-1"),
        ("provider", "tsid"),
        ("receiver", "pos"),
        ("job", "0193a000-0000-7000-8000-000000000000"),
    ];
    let ops = rest_operations();
    assert!(ops.len() >= 40, "the whole contract is covered: {}", ops.len());
    let mut checked = 0;
    for (method, template, takes_body) in &ops {
        let body = body_for(method, template);
        assert!(
            !*takes_body || body.is_some() || template.ends_with("/reactivate") || template.ends_with("/confirm"),
            "add a valid body for {method} {template} to body_for"
        );
        let path = fill(template, &b_ids);
        let (status, answer) = app.call(&owner_a, &method.to_uppercase(), &path, body).await;
        if template == "/api/v1/permissions" {
            assert_eq!(status, 200, "the catalogue is the same for everyone");
            continue;
        }
        if template.starts_with("/api/v1/password/") {
            continue; // no bearer token and no tenant: recovery answers everyone alike
        }
        assert!(
            status == 403 || status == 404,
            "{method} {path} answered {status} to another account's owner: {answer}"
        );
        if template.contains("{account}") && status == 404 {
            assert_eq!(answer["code"], "account_not_found", "{method} {path}: refused by the tenant check");
        }
        checked += 1;
    }
    assert!(checked >= 35, "{checked}");
    let after = app.call(&admin, "GET", &format!("/api/v1/accounts/{}/audit?limit=500", b.account), None).await.1;
    assert_eq!(before, after, "nothing happened to the other account");
}

#[tokio::test]
async fn a_member_without_the_permission_is_refused_on_every_route_of_their_own_account() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let member = add_member(&app, &admin, &a, "anna@esempio.it", json!([])).await;
    let token = user_token(&app, &a.account, &member);
    let ids = [
        ("account", a.account.as_str()),
        ("user", a.owner.as_str()),
        ("company", a.companies[0].as_str()),
        ("kind", "digital_invoice"),
        ("grant", a.grant.as_str()),
        ("invite", "0193a000-0000-7000-8000-000000000000"),
        ("session", "s-1"),
        ("provider", "tsid"),
    ];
    // What any member of the account may see: the account, and lists filtered to what
    // they are granted (nothing here).
    let open = [
        "get /api/v1/accounts/{account}",
        "get /api/v1/accounts/{account}/companies",
        "get /api/v1/accounts/{account}/integrations",
    ];
    for (method, template, _) in rest_operations().iter().filter(|(_, p, _)| p.contains("{account}")) {
        let path = fill(template, &ids);
        let (status, answer) = app.call(&token, &method.to_uppercase(), &path, body_for(method, template)).await;
        if open.contains(&format!("{method} {template}").as_str()) {
            assert_eq!(status, 200, "{method} {path}: {answer}");
            for list in ["companies"] {
                if let Some(items) = answer.get(list) {
                    assert_eq!(items, &json!([]), "{path} lists nothing the member is not granted");
                }
            }
            continue;
        }
        assert_eq!((status, answer["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {answer}");
    }
}

#[tokio::test]
async fn a_member_acts_only_where_granted_and_a_change_applies_to_the_same_token_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let [bar, pizzeria] = a.companies.clone();
    let grants = json!([
        {"permission": "invoices:read", "companies": [bar]},
        {"permission": "integrations:manage", "companies": [bar]},
    ]);
    let member = add_member(&app, &admin, &a, "anna@esempio.it", grants.clone()).await;
    let token = user_token(&app, &a.account, &member);
    let base = format!("/api/v1/accounts/{}", a.account);
    let integration = |c: &str| format!("{base}/companies/{c}/integrations/digital_invoice");

    let (status, list) = app.call(&token, "GET", &format!("{base}/companies"), None).await;
    assert_eq!(status, 200);
    let seen: Vec<&str> = list["companies"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(seen, vec![bar.as_str()], "only the granted company");
    let (_, all) = app.call(&token, "GET", &format!("{base}/integrations"), None).await;
    assert_eq!(all["companies"].as_array().unwrap().len(), 1);
    assert_eq!(app.call(&token, "GET", &integration(&bar), None).await.0, 200);
    assert_eq!(app.call(&token, "GET", &integration(&pizzeria), None).await.0, 403);
    assert_eq!(app.call(&token, "POST", &format!("{}/disable", integration(&bar)), None).await.0, 200);
    assert_eq!(app.call(&token, "POST", &format!("{}/disable", integration(&pizzeria)), None).await.0, 403);
    let patch = Some(json!({"pec": "fatture@pec.barsport.it"}));
    assert_eq!(app.call(&token, "PATCH", &format!("{base}/companies/{bar}"), patch).await.0, 403, "no settings:manage");

    let (status, user) = app.call(&admin, "GET", &format!("{base}/users/{member}"), None).await;
    assert_eq!((status, &user["permissions"]), (200, &grants));
    let narrowed = json!({"permissions": [{"permission": "invoices:read", "companies": "all"}]});
    let (status, user) = app.call(&admin, "PUT", &format!("{base}/users/{member}/permissions"), Some(narrowed)).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        app.call(&token, "POST", &format!("{}/disable", integration(&bar)), None).await.0,
        403,
        "at once, same token"
    );
    assert_eq!(app.call(&token, "GET", &integration(&pizzeria), None).await.0, 200, "read on all now");

    // Grants name the account's own companies, known permissions, and only members.
    let other = tenant(&app, &admin, "luigi@altro.it", ["00743110157", "01234560017"]).await;
    for (body, field) in [
        (json!({"permissions": [{"permission": "invoices:read", "companies": [other.companies[0]]}]}), "permissions"),
        (json!({"permissions": [{"permission": "invoices:print", "companies": "all"}]}), "permissions[0]"),
        (json!({"permissions": [{"permission": "users:manage", "companies": [bar]}]}), "permissions[0]"),
    ] {
        let (status, answer) = app.call(&admin, "PUT", &format!("{base}/users/{member}/permissions"), Some(body)).await;
        assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some(field)), "{answer}");
    }
    let (status, answer) = app
        .call(&admin, "PUT", &format!("{base}/users/{}/permissions", a.owner), Some(json!({"permissions": []})))
        .await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("not_a_member")));
    let admin_with_grants = json!({"email": "ada@esempio.it", "name": "Ada", "role": "admin", "permissions": [{"permission": "invoices:read", "companies": "all"}]});
    assert_eq!(app.call(&admin, "POST", &format!("{base}/users"), Some(admin_with_grants)).await.0, 422);
}

#[tokio::test]
async fn a_member_who_manages_users_manages_members_only_and_grants_only_what_they_hold() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let bar = a.companies[0].clone();
    let manager_grants = json!([
        {"permission": "users:manage", "companies": "all"},
        {"permission": "invoices:read", "companies": [bar]},
    ]);
    let manager = add_member(&app, &admin, &a, "capo@esempio.it", manager_grants).await;
    let token = user_token(&app, &a.account, &manager);
    let users = format!("/api/v1/accounts/{}/users", a.account);
    let new = |email: &str, role: &str, grants: Value| json!({"email": email, "name": "N", "role": role, "permissions": grants});

    let ok = new("bea@esempio.it", "member", json!([{"permission": "invoices:read", "companies": [bar]}]));
    let (status, bea) = app.call(&token, "POST", &users, Some(ok)).await;
    assert_eq!(status, 201, "{bea}");
    let more = new("ciro@esempio.it", "member", json!([{"permission": "invoices:send", "companies": [bar]}]));
    assert_eq!(app.call(&token, "POST", &users, Some(more)).await.0, 403, "not theirs to give");
    let wider = new("ciro@esempio.it", "member", json!([{"permission": "invoices:read", "companies": "all"}]));
    assert_eq!(app.call(&token, "POST", &users, Some(wider)).await.0, 403);
    assert_eq!(app.call(&token, "POST", &users, Some(new("ciro@esempio.it", "admin", json!([])))).await.0, 403);
    let owner_url = format!("{users}/{}", a.owner);
    assert_eq!(app.call(&token, "PATCH", &owner_url, Some(json!({"name": "X"}))).await.0, 403);
    let own = json!({"permissions": [{"permission": "invoices:send", "companies": "all"}]});
    assert_eq!(app.call(&token, "PUT", &format!("{users}/{manager}/permissions"), Some(own)).await.0, 403);
    let bea_url = format!("{users}/{}", bea["id"].as_str().unwrap());
    assert_eq!(app.call(&token, "PATCH", &bea_url, Some(json!({"role": "admin"}))).await.0, 403, "no promotions");
    assert_eq!(app.call(&token, "DELETE", &bea_url, None).await.0, 204);
}

#[tokio::test]
async fn a_new_member_sets_a_password_with_the_mailed_link_and_a_resend_replaces_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let users = format!("/api/v1/accounts/{}/users", a.account);
    let both = json!({"email": "dora@esempio.it", "name": "Dora", "role": "member", "password": PASSWORD, "send_password_link": true});
    assert_eq!(app.call(&admin, "POST", &users, Some(both)).await.0, 422, "a password or a link, not both");
    let body = json!({"email": "dora@esempio.it", "name": "Dora", "role": "member", "send_password_link": true});
    let (status, dora) = app.call(&admin, "POST", &users, Some(body)).await;
    assert_eq!((status, dora["has_password"].as_bool()), (201, Some(false)));
    let first = setup_links(&app, "dora@esempio.it").await;
    assert_eq!(first.len(), 1);
    let (status, _) =
        app.call(&admin, "POST", &format!("{users}/{}/password-link", dora["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 202);
    let links = setup_links(&app, "dora@esempio.it").await;
    assert_eq!(links.len(), 2);
    let recovery = app.state.recovery();
    assert!(!recovery.token_usable(&links[0], app.state.now()).await.unwrap(), "the resend replaced the first link");
    assert!(recovery.token_usable(&links[1], app.state.now()).await.unwrap());
    app.clock.advance(Duration::days(6));
    let reset = app
        .browser()
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({"token": links[1], "password": "la mia password nuova"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204, "the link works for seven days");
    assert_eq!(sign_in(&app, &app.browser(), "dora@esempio.it", "la mia password nuova").await.status(), 303);
}

/// The tokens of the set-password links mailed to `to`, oldest first.
async fn setup_links(app: &TestApp, to: &str) -> Vec<String> {
    app.queued_mails()
        .await
        .into_iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match m.message {
            Message::PasswordSetup { link, .. } => Some(link.split("token=").nth(1).unwrap().to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_signed_in_page_shows_a_member_their_permissions_and_only_the_companies_they_hold() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let [bar, pizzeria] = a.companies.clone();
    add_member(&app, &admin, &a, "anna@esempio.it", json!([{"permission": "invoices:send", "companies": [bar]}])).await;
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "anna@esempio.it", PASSWORD).await.status(), 303);
    let page = browser.get(app.url("/")).header("accept-language", "en").send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!(r#"data-company="{bar}""#)), "{page}");
    assert!(!page.contains(&format!(r#"data-company="{pizzeria}""#)), "{page}");
    assert!(
        page.contains(r#"<li data-permission="invoices:send">Send invoices for the company (1 company)</li>"#),
        "{page}"
    );
    let owner = app.browser();
    assert_eq!(sign_in(&app, &owner, "mario@esempio.it", PASSWORD).await.status(), 303);
    let page = owner.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!(r#"data-company="{pizzeria}""#)) && !page.contains("user-permissions"));
}

#[tokio::test]
async fn a_removed_company_leaves_the_members_grants_so_they_can_be_written_back() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = tenant(&app, &admin, "mario@esempio.it", ["00743110157", "01234560017"]).await;
    let [bar, pizzeria] = a.companies.clone();
    let grants = json!([
        {"permission": "invoices:read", "companies": [bar, pizzeria]},
        {"permission": "settings:manage", "companies": [pizzeria]},
    ]);
    let member = add_member(&app, &admin, &a, "anna@esempio.it", grants).await;
    let base = format!("/api/v1/accounts/{}", a.account);
    assert_eq!(app.call(&admin, "DELETE", &format!("{base}/companies/{pizzeria}"), None).await.0, 204);
    let (_, user) = app.call(&admin, "GET", &format!("{base}/users/{member}"), None).await;
    assert_eq!(user["permissions"], json!([{"permission": "invoices:read", "companies": [bar]}]));
    let back = json!({"permissions": user["permissions"]});
    assert_eq!(app.call(&admin, "PUT", &format!("{base}/users/{member}/permissions"), Some(back)).await.0, 200);
}
