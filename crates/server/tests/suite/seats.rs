//! Seats: the store's rules on SQLite and PostgreSQL (the last-seat race, lapse,
//! renewal, reminders) and the REST walkthrough with both 409s.

use std::sync::Arc;

use ponte_identity::clock::SystemClock;
use ponte_identity::db::Database;
use ponte_identity::jobs::SqlJobs;
use ponte_identity::outbox::{JobOutbox, MAIL_SEND, Message};
use ponte_identity::seal::MasterKeys;
use ponte_linking::Error;
use ponte_linking::account::sql::{SqlAccounts, SqlUsers};
use ponte_linking::account::{AccountStore, Lang, NewUser, Role, UserPatch, UserStatus, UserStore};
use ponte_linking::audit::Actor;
use ponte_linking::email::Email;
use ponte_linking::ids::AccountId;
use ponte_linking::seats::sql::SqlSeats;
use ponte_linking::seats::{NewSeatGrant, SEATS_LAPSED, SeatStore, SeatUsage};
use ponte_server::worker::Periodic;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::harness::{Parts, TestApp, TestDb, now, sign_in};

/// The seat store over `db`, mailing through a job outbox of its own.
pub fn seat_store(db: &Database) -> SqlSeats {
    let jobs = Arc::new(SqlJobs::new(db.clone(), 5));
    SqlSeats::new(db.clone(), Arc::new(JobOutbox::new(jobs, MasterKeys::generate(), Arc::new(SystemClock))))
}

fn member(email: &str) -> NewUser {
    NewUser {
        email: Email::parse(email).unwrap(),
        name: email.split('@').next().unwrap().into(),
        role: Role::Member,
        password_hash: None,
        lang: Lang::It,
        grants: Vec::new(),
    }
}

fn order(quantity: u32, reference: &str) -> NewSeatGrant {
    NewSeatGrant { quantity, order_reference: reference.into(), extend_other_grants: false }
}

struct World {
    db: Database,
    account: AccountId,
    users: Arc<SqlUsers>,
    seats: SqlSeats,
}

impl World {
    async fn open(test_db: &TestDb, t: OffsetDateTime) -> Self {
        let db = test_db.open_migrated().await;
        let owner = NewUser { role: Role::Owner, ..member("owner@esempio.it") };
        let (account, _) =
            SqlAccounts::new(db.clone()).create("Bar Sport".into(), owner, &Actor::system(), t).await.unwrap();
        Self { users: Arc::new(SqlUsers::new(db.clone())), seats: seat_store(&db), account: account.id, db }
    }

    async fn bought_and_paid(
        &self,
        quantity: u32,
        reference: &str,
        at: OffsetDateTime,
    ) -> ponte_linking::seats::SeatGrant {
        let g = self.seats.create(self.account, order(quantity, reference), &Actor::system(), at).await.unwrap();
        self.seats.pay(self.account, g.id, &Actor::system(), at).await.unwrap().grant
    }

    async fn statuses(&self) -> Vec<(String, UserStatus, Option<String>)> {
        let mut users: Vec<_> = self
            .users
            .list(self.account)
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.role == Role::Member)
            .map(|u| (u.email, u.status, u.status_reason))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    async fn mails_to_owner(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE kind = $1")
            .bind(MAIL_SEND)
            .fetch_one(self.db.pool())
            .await
            .unwrap();
        n
    }
}

#[tokio::test]
async fn parallel_additions_never_take_more_seats_than_were_paid_on_either_engine() {
    for test_db in TestDb::all().await {
        let t = now();
        let w = World::open(&test_db, t).await;
        w.bought_and_paid(3, "ORD-1", t).await;
        let mut tries = tokio::task::JoinSet::new();
        for i in 0..8 {
            let users = w.users.clone();
            let account = w.account;
            tries.spawn(async move {
                users.create(account, member(&format!("m{i}@esempio.it")), &Actor::system(), t).await
            });
        }
        let (mut added, mut refused) = (0, 0);
        for r in tries.join_all().await {
            match r {
                Ok(_) => added += 1,
                Err(Error::Conflict { code: "no_free_seat", .. }) => refused += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!((added, refused), (3, 5), "{}", test_db.url);
        assert_eq!(w.seats.usage(w.account, t).await.unwrap(), SeatUsage { valid: 3, used: 3 });
    }
}

#[tokio::test]
async fn lapse_suspends_the_newest_members_renewal_restores_the_oldest_and_nobody_is_deleted() {
    for test_db in TestDb::all().await {
        let t0 = now();
        let w = World::open(&test_db, t0).await;
        w.bought_and_paid(2, "ORD-A", t0).await;
        let later = w.bought_and_paid(1, "ORD-B", t0 + Duration::days(200)).await;
        for (i, email) in ["anna@esempio.it", "bruno@esempio.it", "carla@esempio.it"].iter().enumerate() {
            let at = t0 + Duration::days(200) + Duration::minutes(i as i64);
            w.users.create(w.account, member(email), &Actor::system(), at).await.unwrap();
        }
        let mails_before = w.mails_to_owner().await;

        // A year after the first payment, only ORD-B's seat counts.
        let lapse_day = t0 + Duration::days(366);
        let lapsed = w.seats.lapse(lapse_day).await.unwrap();
        assert_eq!(lapsed.len(), 1);
        assert_eq!(lapsed[0].suspended.len(), 2);
        let reason = Some(SEATS_LAPSED.to_owned());
        assert_eq!(
            w.statuses().await,
            vec![
                ("anna@esempio.it".into(), UserStatus::Active, None),
                ("bruno@esempio.it".into(), UserStatus::Suspended, reason.clone()),
                ("carla@esempio.it".into(), UserStatus::Suspended, reason.clone()),
            ]
        );
        assert_eq!(w.mails_to_owner().await, mails_before + 1, "the owner is told once");
        assert!(w.seats.lapse(lapse_day).await.unwrap().is_empty(), "a second sweep finds nothing to do");
        assert_eq!(w.mails_to_owner().await, mails_before + 1);

        // Re-enabling a suspended member needs a free seat; removing the grant in use is refused.
        let reenable = UserPatch { status: Some(UserStatus::Active), ..Default::default() };
        let carla = w.users.list(w.account).await.unwrap().into_iter().find(|u| u.email.starts_with("carla")).unwrap();
        let refused = w.users.update(w.account, carla.id, reenable.clone(), &Actor::system(), lapse_day).await;
        assert!(matches!(refused, Err(Error::Conflict { code: "no_free_seat", .. })), "{refused:?}");
        let in_use = w.seats.remove(w.account, later.id, &Actor::system(), lapse_day).await;
        assert!(matches!(in_use, Err(Error::Conflict { code: "seats_in_use", .. })), "{in_use:?}");

        // A new paid seat brings back the longest-standing of the suspended.
        let renewal = w.seats.create(w.account, order(1, "ORD-C"), &Actor::system(), lapse_day).await.unwrap();
        assert_eq!(
            w.seats.usage(w.account, lapse_day).await.unwrap(),
            SeatUsage { valid: 1, used: 1 },
            "pending counts for nothing"
        );
        let paid = w.seats.pay(w.account, renewal.id, &Actor::system(), lapse_day).await.unwrap();
        assert_eq!(paid.restored.len(), 1);
        assert_eq!(paid.seats, SeatUsage { valid: 2, used: 2 }, "the restored member holds the new seat");
        assert_eq!(w.statuses().await[1], ("bruno@esempio.it".into(), UserStatus::Active, None));
        let again = w.seats.pay(w.account, renewal.id, &Actor::system(), lapse_day + Duration::days(1)).await.unwrap();
        assert_eq!(
            (again.restored.len(), again.grant.valid_until),
            (0, paid.grant.valid_until),
            "paying twice changes nothing"
        );
        assert_eq!(w.users.list(w.account).await.unwrap().len(), 4, "nobody was deleted");

        // A person's decision clears the system's reason, so a renewal does not undo it.
        let disable = UserPatch { status: Some(UserStatus::Disabled), ..Default::default() };
        w.users.update(w.account, carla.id, disable, &Actor::system(), lapse_day).await.unwrap();
        w.bought_and_paid(5, "ORD-D", lapse_day).await;
        assert_eq!(w.statuses().await[2], ("carla@esempio.it".into(), UserStatus::Disabled, None));
    }
}

#[tokio::test]
async fn extending_moves_the_other_active_grants_and_reminders_go_once_at_30_and_7_days() {
    for test_db in TestDb::all().await {
        let t0 = now();
        let w = World::open(&test_db, t0).await;
        let first = w.bought_and_paid(1, "ORD-1", t0).await;
        let day100 = t0 + Duration::days(100);
        let second = w
            .seats
            .create(
                w.account,
                NewSeatGrant { extend_other_grants: true, ..order(2, "ORD-2") },
                &Actor::system(),
                day100,
            )
            .await
            .unwrap();
        let second = w.seats.pay(w.account, second.id, &Actor::system(), day100).await.unwrap().grant;
        let grants = w.seats.list(w.account).await.unwrap();
        let first_now = grants.iter().find(|g| g.id == first.id).unwrap();
        assert_eq!(first_now.valid_until, second.valid_until, "the first grant now ends with the second");

        let until = second.valid_until.unwrap();
        let mails = w.mails_to_owner().await;
        assert_eq!(w.seats.remind(until - Duration::days(31)).await.unwrap(), 0);
        assert_eq!(w.seats.remind(until - Duration::days(30)).await.unwrap(), 2, "one per grant");
        assert_eq!(w.seats.remind(until - Duration::days(29)).await.unwrap(), 0, "not twice");
        assert_eq!(w.seats.remind(until - Duration::days(6)).await.unwrap(), 2);
        assert_eq!(w.seats.remind(until - Duration::days(1)).await.unwrap(), 0);
        assert_eq!(w.mails_to_owner().await, mails + 4);

        let duplicate = w.seats.create(w.account, order(1, "ORD-1"), &Actor::system(), t0).await;
        assert!(matches!(duplicate, Err(Error::Conflict { code: "order_reference_taken", .. })), "{duplicate:?}");
        let nowhere = w.seats.create(AccountId::new(), order(1, "ORD-X"), &Actor::system(), t0).await;
        assert!(matches!(nowhere, Err(Error::NotFound("account"))), "{nowhere:?}");
    }
}

// ---- REST ----

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    app.call(token, "POST", path, Some(body)).await
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let (status, body) = app.call(token, "GET", path, None).await;
    assert_eq!(status, 200, "{path}");
    body
}

fn anna(password: &str) -> Value {
    json!({"email": "anna@esempio.it", "name": "Anna", "role": "member", "password": password})
}

const PASSWORD: &str = "una password lunga";

#[tokio::test]
async fn seats_over_rest_from_the_cart_to_the_payment_with_both_conflicts() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let created = app.create_account(&token, "mario@esempio.it", PASSWORD).await;
    let account = created["id"].as_str().unwrap();
    assert_eq!(created["account"]["seats"], json!({"valid": 0, "used": 0, "free": 0}));
    let users = format!("/api/v1/accounts/{account}/users");
    let seats = format!("/api/v1/accounts/{account}/seats");

    let (status, body) = post(&app, &token, &users, anna(PASSWORD)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("no_free_seat")), "{body}");
    let (status, admin) =
        post(&app, &token, &users, json!({"email": "ada@esempio.it", "name": "Ada", "role": "admin"})).await;
    assert_eq!(status, 201, "admins take no seat: {admin}");

    let (status, grant) =
        post(&app, &token, &seats, json!({"quantity": 2, "order_reference": "ORD-77", "extend_other_grants": false}))
            .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(
        (grant["state"].as_str(), grant["paid_at"].as_null(), grant["valid_until"].as_null()),
        (Some("pending_payment"), Some(()), Some(()))
    );
    let (status, _) = post(&app, &token, &users, anna(PASSWORD)).await;
    assert_eq!(status, 409, "a pending grant seats nobody");
    let (status, body) = post(&app, &token, &seats, json!({"quantity": 1.0, "order_reference": "ORD-77"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("order_reference_taken")), "1.0 is a quantity like 1");
    for bad in [
        json!({"quantity": 0, "order_reference": "X"}),
        json!({"quantity": 1, "order_reference": ""}),
        json!({"quantity": 1.5, "order_reference": "X"}),
        json!({"quantity": 1e300, "order_reference": "X"}),
    ] {
        let (status, body) = post(&app, &token, &seats, bad.clone()).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("validation_failed")), "{bad}");
    }

    let grant_id = grant["id"].as_str().unwrap();
    let (status, paid) = post(&app, &token, &format!("{seats}/{grant_id}/paid"), json!({})).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["grant"]["state"], "active");
    let paid_at = OffsetDateTime::parse(
        paid["grant"]["paid_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let until = OffsetDateTime::parse(
        paid["grant"]["valid_until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(until, ponte_linking::seats::one_year_after(paid_at));
    assert_eq!(paid["seats"], json!({"valid": 2, "used": 0, "free": 2}));

    let (status, anna) = post(&app, &token, &users, anna(PASSWORD)).await;
    assert_eq!(status, 201, "{anna}");
    let (status, _) =
        post(&app, &token, &users, json!({"email": "bruno@esempio.it", "name": "Bruno", "role": "member"})).await;
    assert_eq!(status, 201);
    let (status, body) =
        post(&app, &token, &users, json!({"email": "carla@esempio.it", "name": "Carla", "role": "member"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("no_free_seat")));
    let demote = app
        .browser()
        .patch(app.url(&format!("{users}/{}", admin["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .json(&json!({"role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(demote.status(), 409, "an active admin made a member needs a seat too");
    assert_eq!(
        get(&app, &token, &format!("/api/v1/accounts/{account}")).await["seats"],
        json!({"valid": 2, "used": 2, "free": 0})
    );

    let remove =
        app.browser().delete(app.url(&format!("{seats}/{grant_id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(remove.status(), 409);
    assert_eq!(remove.json::<Value>().await.unwrap()["code"], "seats_in_use");
    let anna_url = app.url(&format!("{users}/{}", anna["id"].as_str().unwrap()));
    let disable =
        app.browser().patch(&anna_url).bearer_auth(&token).json(&json!({"status": "disabled"})).send().await.unwrap();
    assert_eq!(disable.status(), 200);
    let (status, carla) =
        post(&app, &token, &users, json!({"email": "carla@esempio.it", "name": "Carla", "role": "member"})).await;
    assert_eq!(status, 201, "the freed seat takes a new member: {carla}");
    let reenable =
        app.browser().patch(&anna_url).bearer_auth(&token).json(&json!({"status": "active"})).send().await.unwrap();
    assert_eq!(reenable.status(), 409, "re-enabling needs a free seat");
    assert_eq!(reenable.json::<Value>().await.unwrap()["code"], "no_free_seat");

    let list = get(&app, &token, &seats).await;
    assert_eq!(list["grants"].as_array().unwrap().len(), 1);
    assert_eq!(list["seats"], json!({"valid": 2, "used": 2, "free": 0}));
    let unknown = app
        .browser()
        .post(app.url(&format!("{seats}/{}/paid", uuid::Uuid::now_v7())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "seat_grant_not_found");
    let audit = get(&app, &token, &format!("/api/v1/accounts/{account}/audit")).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"seats.ordered") && actions.contains(&"seats.paid"), "{actions:?}");
}

#[tokio::test]
async fn two_parallel_additions_for_the_last_seat_over_rest_on_sqlite_and_postgresql() {
    let mut apps = vec![TestApp::spawn().await];
    apps.extend(TestApp::spawn_on(Parts { postgres: true, redis: false }).await);
    for app in apps {
        let token = app.admin_token().await;
        let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await["id"].as_str().unwrap().to_owned();
        app.paid_seats(&token, &account, 1).await;
        let users = format!("/api/v1/accounts/{account}/users");
        let mut tries = tokio::task::JoinSet::new();
        for i in 0..6 {
            let (http, url, token) = (app.browser(), app.url(&users), token.clone());
            tries.spawn(async move {
                let body = json!({"email": format!("m{i}@esempio.it"), "name": "M", "role": "member"});
                http.post(url).bearer_auth(token).json(&body).send().await.unwrap().status().as_u16()
            });
        }
        let mut statuses: Vec<u16> = tries.join_all().await;
        statuses.sort();
        assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409], "{}", app.db.url);
    }
}

#[tokio::test]
async fn after_lapse_a_member_cannot_sign_in_anywhere_and_after_renewal_they_can() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let account = app.create_account(&token, "mario@esempio.it", PASSWORD).await["id"].as_str().unwrap().to_owned();
    app.paid_seats(&token, &account, 1).await;
    let users = format!("/api/v1/accounts/{account}/users");
    let (status, anna) = post(&app, &token, &users, anna(PASSWORD)).await;
    assert_eq!(status, 201);
    let browser = app.browser();
    assert_eq!(sign_in(&app, &browser, "anna@esempio.it", PASSWORD).await.status(), 303);

    app.clock.advance(Duration::days(366));
    let sweep = ponte_server::worker::SeatSweep::of(&app.state);
    sweep.run_once().await;
    let token = app.admin_token().await;
    let user = get(&app, &token, &format!("{users}/{}", anna["id"].as_str().unwrap())).await;
    assert_eq!((user["status"].as_str(), user["status_reason"].as_str()), (Some("suspended"), Some("seats_lapsed")));
    let home = browser.get(app.url("/")).send().await.unwrap();
    assert_ne!(home.status(), 200, "the session ended with the suspension");
    let refused = sign_in(&app, &app.browser(), "anna@esempio.it", PASSWORD).await;
    assert_eq!(refused.status(), 401, "the form comes back: no session for a suspended member");
    let lapsed = app
        .queued_mails()
        .await
        .into_iter()
        .find(|m| matches!(m.message, Message::SeatsLapsed { .. }))
        .expect("the owner is told");
    assert_eq!(lapsed.to, "mario@esempio.it");
    assert!(
        matches!(&lapsed.message, Message::SeatsLapsed { suspended, .. } if *suspended == vec!["Anna <anna@esempio.it>".to_owned()])
    );

    app.paid_seats(&token, &account, 1).await;
    let user = get(&app, &token, &format!("{users}/{}", anna["id"].as_str().unwrap())).await;
    assert_eq!(user["status"], "active");
    assert!(user.get("status_reason").is_none());
    assert_eq!(sign_in(&app, &app.browser(), "anna@esempio.it", PASSWORD).await.status(), 303);
}
