//! The relational store, on SQLite and (when configured) PostgreSQL, with the same
//! migrations. The conformance suite of the account aggregate and the audit trail runs
//! every test against the store traits, on every engine `TestDb::all()` has.

use std::time::Duration;

use ponte_identity::client::{ClientRepo, GrantType, NewClient, SqlClients};
use ponte_identity::db::Database;
use ponte_identity::keys::{KeyPolicy, KeyRepo, KeyRing, KeyStatus, SigningAlg, SqlKeys, rotate};
use ponte_identity::oidc::{ConsentRepo, SqlConsents};
use ponte_identity::refresh::{NewFamily, RefreshRepo, SqlRefresh, Verdict, judge};
use ponte_identity::seal::MasterKeys;
use ponte_identity::upstream::UpstreamIdentity;
use ponte_linking::Error;
use ponte_linking::account::sql::{SqlAccounts, SqlUsers, lock_account};
use ponte_linking::account::{
    AccountStatus, AccountStore, Lang, NewUser, Role, User, UserPatch, UserStatus, UserStore,
};
use ponte_linking::audit::sql::SqlAudit;
use ponte_linking::audit::{Actor, AuditEntry, AuditLog};
use ponte_linking::email::Email;
use ponte_linking::ids::{AccountId, UserId};
use ponte_linking::links::{Decision, Links, SqlLinks};
use ponte_linking::seats::{NewSeatGrant, SeatStore};

use crate::harness::{TestDb, now};

fn new_user(email: &str, role: Role) -> NewUser {
    NewUser {
        email: Email::parse(email).unwrap(),
        name: "Anna Bianchi".into(),
        role,
        password_hash: Some("$argon2id$fake".into()),
        lang: Lang::En,
        grants: Vec::new(),
    }
}

/// The stores under test, seen only through their traits.
struct Stores {
    db: Database,
    accounts: Box<dyn AccountStore>,
    users: Box<dyn UserStore>,
    audit: Box<dyn AuditLog>,
    seats: Box<dyn SeatStore>,
}

impl Stores {
    async fn open(test_db: &TestDb) -> Self {
        let db = test_db.open_migrated().await;
        Self {
            accounts: Box::new(SqlAccounts::new(db.clone())),
            users: Box::new(SqlUsers::new(db.clone())),
            audit: Box::new(SqlAudit::new(db.clone())),
            seats: Box::new(crate::seats::seat_store(&db)),
            db,
        }
    }

    async fn count(&self, table: &str) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(self.db.pool()).await.unwrap();
        n
    }

    /// An account with its owner `email`, made by the POS backend, with five paid seats
    /// so members can be added.
    async fn account(&self, name: &str, email: &str) -> (AccountId, User) {
        let (account, owner) =
            self.accounts.create(name.into(), new_user(email, Role::Owner), &backend(), now()).await.unwrap();
        self.paid_seats(account.id, 5).await;
        (account.id, owner)
    }

    /// Buys and pays `n` seats for `account`.
    async fn paid_seats(&self, account: AccountId, n: u32) {
        let order =
            NewSeatGrant { quantity: n, order_reference: format!("ORD-{}", UserId::new()), extend_other_grants: false };
        let grant = self.seats.create(account, order, &backend(), now()).await.unwrap();
        self.seats.pay(account, grant.id, &backend(), now()).await.unwrap();
    }

    async fn actions(&self, account: AccountId) -> Vec<String> {
        self.audit.list(account, 500).await.unwrap().into_iter().map(|e| e.action).collect()
    }
}

fn backend() -> Actor {
    Actor::client("cl_test", Some("127.0.0.1".into()))
}

fn rename(name: &str) -> UserPatch {
    UserPatch { name: Some(name.into()), ..Default::default() }
}

#[tokio::test]
async fn migrations_apply_twice_without_harm() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        ponte_server::app::migrate(&db).await.expect("second run is a no-op");
        db.ping().await.unwrap();
    }
}

#[tokio::test]
async fn account_with_owner_then_users_with_rules_and_audit() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let actor = backend();
        let t = now();

        let (account, owner) =
            s.accounts.create("Bar Sport".into(), new_user("Mario@Esempio.it", Role::Member), &actor, t).await.unwrap();
        assert_eq!(owner.role, Role::Owner, "the account's first user is always its owner");
        assert_eq!(s.accounts.get(account.id).await.unwrap().unwrap().name, "Bar Sport");

        // Emails are unique without regard to case, across accounts.
        let dup = s.accounts.create("Other".into(), new_user("mario@esempio.IT", Role::Owner), &actor, t).await;
        assert!(matches!(dup, Err(Error::EmailTaken)), "{dup:?}");
        let (other, _) =
            s.accounts.create("Other".into(), new_user("luigi@esempio.it", Role::Owner), &actor, t).await.unwrap();
        s.paid_seats(account.id, 2).await;

        let member = s.users.create(account.id, new_user("anna@esempio.it", Role::Member), &actor, t).await.unwrap();
        let users = s.users.list(account.id).await.unwrap();
        assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![owner.id, member.id]);

        // Tenant isolation: the member is invisible through another account.
        assert!(s.users.get(other.id, member.id).await.unwrap().is_none());
        let cross = s.users.update(other.id, member.id, rename("x"), &actor, t).await;
        assert!(matches!(cross, Err(Error::NotFound("user"))));
        assert!(matches!(s.users.delete(other.id, member.id, &actor, t).await, Err(Error::NotFound("user"))));

        let patched = s
            .users
            .update(
                account.id,
                member.id,
                UserPatch { role: Some(Role::Admin), status: Some(UserStatus::Disabled), ..Default::default() },
                &actor,
                t,
            )
            .await
            .unwrap();
        assert_eq!((patched.role, patched.status), (Role::Admin, UserStatus::Disabled));
        assert_eq!(s.users.get(account.id, member.id).await.unwrap().unwrap(), patched);

        let steal = s
            .users
            .update(
                account.id,
                member.id,
                UserPatch { email: Some(Email::parse("MARIO@esempio.it").unwrap()), ..Default::default() },
                &actor,
                t,
            )
            .await;
        assert!(matches!(steal, Err(Error::EmailTaken)));

        assert!(matches!(
            s.users.delete(account.id, owner.id, &actor, t).await,
            Err(Error::Conflict { code: "owner_cannot_be_deleted", .. })
        ));
        s.users.delete(account.id, member.id, &actor, t).await.unwrap();
        assert!(s.users.get(account.id, member.id).await.unwrap().is_none());

        let login = s.users.login_candidate("MARIO@ESEMPIO.IT").await.unwrap().expect("found by any case");
        assert_eq!(login.user.id, owner.id);
        assert_eq!(login.password_hash.as_deref(), Some("$argon2id$fake"));
        assert_eq!(login.account_name, "Bar Sport");
        assert!(s.users.login_candidate("nobody@esempio.it").await.unwrap().is_none());

        let actions = s.actions(account.id).await;
        for expected in ["account.created", "user.created", "user.updated", "user.deleted"] {
            assert!(actions.iter().any(|a| a == expected), "{expected} missing from {actions:?}");
        }
        assert!(s.audit.list(AccountId::new(), 50).await.unwrap().is_empty());
        assert!(s.users.get(account.id, UserId::new()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_failed_account_creation_leaves_no_half_written_rows() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let actor = Actor::system();
        s.accounts.create("First".into(), new_user("taken@esempio.it", Role::Owner), &actor, now()).await.unwrap();
        let before = (s.count("accounts").await, s.count("users").await, s.count("audit_entries").await);
        let failed = s.accounts.create("Second".into(), new_user("TAKEN@esempio.it", Role::Owner), &actor, now()).await;
        assert!(matches!(failed, Err(Error::EmailTaken)));
        let after = (s.count("accounts").await, s.count("users").await, s.count("audit_entries").await);
        assert_eq!(before, after, "the account row and its audit lines were rolled back with the owner");
    }
}

#[tokio::test]
async fn a_new_account_reads_back_as_created_with_its_owner_and_two_audit_lines() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let t = now();
        let (account, owner) = s
            .accounts
            .create("Trattoria".into(), new_user("chef@esempio.it", Role::Admin), &backend(), t)
            .await
            .unwrap();
        assert_eq!((account.status, account.created_at, account.updated_at), (AccountStatus::Active, t, t));
        assert_eq!(s.accounts.get(account.id).await.unwrap(), Some(account.clone()));
        assert_eq!(s.accounts.get(AccountId::new()).await.unwrap(), None, "an unknown id is not found");
        assert_eq!(s.users.get(account.id, owner.id).await.unwrap(), Some(owner.clone()));
        assert_eq!(
            (owner.role, owner.status, owner.has_password, owner.account_id),
            (Role::Owner, UserStatus::Active, true, account.id)
        );

        let trail = s.audit.list(account.id, 10).await.unwrap();
        let lines: Vec<(&str, Option<&str>, Option<&str>)> =
            trail.iter().map(|e| (e.action.as_str(), e.target.as_deref(), e.detail.as_deref())).collect();
        let (account_target, owner_target) = (format!("account:{}", account.id), format!("user:{}", owner.id));
        assert_eq!(
            lines,
            vec![
                ("user.created", Some(owner_target.as_str()), Some(r#"{"role":"owner"}"#)),
                ("account.created", Some(account_target.as_str()), None),
            ],
            "newest first"
        );
        assert!(trail.iter().all(|e| e.actor == backend() && e.at == t && e.account_id == Some(account.id)));
    }
}

#[tokio::test]
async fn users_are_created_only_in_an_existing_account_and_listed_oldest_first() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, owner) = s.account("Bar Sport", "owner@esempio.it").await;
        let t = now();
        let orphan = s.users.create(AccountId::new(), new_user("ghost@esempio.it", Role::Member), &backend(), t).await;
        assert!(matches!(orphan, Err(Error::NotFound("account"))), "{orphan:?}");
        assert_eq!(s.count("users").await, 1, "nothing was written for the missing account");

        let later = t + time::Duration::seconds(5);
        let no_password = NewUser { password_hash: None, ..new_user("Zoe@Esempio.it", Role::Member) };
        let zoe = s.users.create(account, no_password, &backend(), later).await.unwrap();
        let admin = s.users.create(account, new_user("adm@esempio.it", Role::Admin), &backend(), t).await.unwrap();
        assert_eq!((zoe.email.as_str(), zoe.has_password, zoe.created_at), ("Zoe@Esempio.it", false, later));
        let listed: Vec<UserId> = s.users.list(account).await.unwrap().into_iter().map(|u| u.id).collect();
        assert_eq!(listed, vec![owner.id, admin.id, zoe.id], "by creation time, not by insertion");
        assert_eq!(s.users.get(account, zoe.id).await.unwrap(), Some(zoe.clone()));
        assert!(s.users.list(AccountId::new()).await.unwrap().is_empty());

        let created = s.audit.list(account, 10).await.unwrap();
        let zoe_line = created.iter().find(|e| e.target == Some(format!("user:{}", zoe.id))).expect("audited");
        assert_eq!(
            (zoe_line.action.as_str(), zoe_line.detail.as_deref()),
            ("user.created", Some(r#"{"role":"member"}"#))
        );
    }
}

#[tokio::test]
async fn emails_are_unique_without_regard_to_case_on_create_and_update() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, _) = s.account("Bar Sport", "Mario.Rossi@Esempio.it").await;
        let (other, _) = s.account("Altro", "luigi@esempio.it").await;
        let t = now();
        for (target, email) in [(account, "mario.rossi@esempio.it"), (other, "MARIO.ROSSI@ESEMPIO.IT")] {
            let taken = s.users.create(target, new_user(email, Role::Member), &backend(), t).await;
            assert!(matches!(taken, Err(Error::EmailTaken)), "{email}: {taken:?}");
        }
        let anna = s.users.create(account, new_user("anna@esempio.it", Role::Member), &backend(), t).await.unwrap();
        let steal = UserPatch { email: Some(Email::parse("LUIGI@esempio.it").unwrap()), ..Default::default() };
        assert!(matches!(s.users.update(account, anna.id, steal, &backend(), t).await, Err(Error::EmailTaken)));
        assert_eq!(s.users.get(account, anna.id).await.unwrap().unwrap().email, "anna@esempio.it", "unchanged");

        // A user may change the case of its own address; the old address is free again
        // after a real change.
        let recase = UserPatch { email: Some(Email::parse("Anna@Esempio.it").unwrap()), ..Default::default() };
        assert_eq!(s.users.update(account, anna.id, recase, &backend(), t).await.unwrap().email, "Anna@Esempio.it");
        let moved = UserPatch { email: Some(Email::parse("anna.b@esempio.it").unwrap()), ..Default::default() };
        s.users.update(account, anna.id, moved, &backend(), t).await.unwrap();
        s.users.create(other, new_user("ANNA@esempio.it", Role::Member), &backend(), t).await.unwrap();
        let renamed = s.users.update(account, anna.id, rename("Anna B."), &backend(), t).await.unwrap();
        assert_eq!(renamed.email, "anna.b@esempio.it", "a patch without email keeps it");
        assert_eq!(
            s.users.login_candidate("ANNA.B@ESEMPIO.IT").await.unwrap().map(|c| c.user.id),
            Some(anna.id),
            "a patch without email keeps its lookup too"
        );
    }
}

#[tokio::test]
async fn the_rules_on_changing_users_are_applied_by_the_store_and_a_refusal_writes_nothing() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, owner) = s.account("Bar Sport", "owner@esempio.it").await;
        let t = now();
        let member = s.users.create(account, new_user("m@esempio.it", Role::Member), &backend(), t).await.unwrap();
        let trail_before = s.audit.list(account, 500).await.unwrap().len();

        let refused: Vec<(&User, UserPatch, &str)> = vec![
            (&owner, UserPatch { role: Some(Role::Admin), ..Default::default() }, "owner_role_fixed"),
            (&owner, UserPatch { status: Some(UserStatus::Disabled), ..Default::default() }, "owner_must_stay_active"),
            (&member, UserPatch { role: Some(Role::Owner), ..Default::default() }, "role"),
            (&member, UserPatch { status: Some(UserStatus::Suspended), ..Default::default() }, "status"),
            (&member, UserPatch::default(), "body"),
        ];
        for (target, patch, why) in refused {
            let outcome = s.users.update(account, target.id, patch, &backend(), t).await;
            let matched = match &outcome {
                Err(Error::Conflict { code, .. }) => *code == why,
                Err(Error::Invalid { field, .. }) => *field == why,
                _ => false,
            };
            assert!(matched, "{why}: {outcome:?}");
        }
        assert!(matches!(
            s.users.delete(account, owner.id, &backend(), t).await,
            Err(Error::Conflict { code: "owner_cannot_be_deleted", .. })
        ));
        assert_eq!(s.users.get(account, owner.id).await.unwrap(), Some(owner.clone()), "the owner is untouched");
        assert_eq!(s.users.get(account, member.id).await.unwrap(), Some(member.clone()), "the member is untouched");
        assert_eq!(
            s.audit.list(account, 500).await.unwrap().len(),
            trail_before,
            "a refusal is not audited as a change"
        );

        let later = t + time::Duration::minutes(1);
        let patch = UserPatch {
            name: Some("Nuovo Nome".into()),
            password_hash: Some("$argon2id$new".into()),
            ..Default::default()
        };
        let changed = s.users.update(account, owner.id, patch, &backend(), later).await.unwrap();
        assert_eq!(
            (changed.name.as_str(), changed.updated_at, changed.created_at),
            ("Nuovo Nome", later, owner.created_at)
        );
        assert_eq!(s.users.get(account, owner.id).await.unwrap(), Some(changed));
        let login = s.users.login_candidate("owner@esempio.it").await.unwrap().unwrap();
        assert_eq!(login.password_hash.as_deref(), Some("$argon2id$new"));
        let update = s.audit.list(account, 1).await.unwrap().remove(0);
        assert_eq!(
            (update.action.as_str(), update.detail.as_deref()),
            ("user.updated", Some(r#"{"changed":["name","password"]}"#)),
            "the password itself never reaches the trail"
        );

        s.users.delete(account, member.id, &backend(), later).await.unwrap();
        assert!(s.users.get(account, member.id).await.unwrap().is_none());
        assert!(matches!(s.users.delete(account, member.id, &backend(), later).await, Err(Error::NotFound("user"))));
        assert_eq!(s.actions(account).await.first().map(String::as_str), Some("user.deleted"));
    }
}

#[tokio::test]
async fn login_lookup_finds_a_user_by_any_case_with_its_account_status() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, owner) = s.account("Bar Sport", "Owner@Esempio.it").await;
        let t = now();
        let upstream_only = NewUser { password_hash: None, ..new_user("up@esempio.it", Role::Member) };
        let up = s.users.create(account, upstream_only, &backend(), t).await.unwrap();

        for spelling in ["owner@esempio.it", "OWNER@ESEMPIO.IT", "Owner@Esempio.it"] {
            let found = s.users.login_candidate(spelling).await.unwrap().expect(spelling);
            assert_eq!(found.user, owner, "{spelling}");
            assert_eq!((found.account_status, found.account_name.as_str()), (AccountStatus::Active, "Bar Sport"));
        }
        let found = s.users.login_candidate("up@esempio.it").await.unwrap().unwrap();
        assert_eq!((found.user.id, found.password_hash, found.user.has_password), (up.id, None, false));
        assert!(s.users.login_candidate("owner@esempio.it.evil").await.unwrap().is_none());
        assert!(s.users.login_candidate("").await.unwrap().is_none());
        assert!(s.users.login_candidate("owner\0@esempio.it").await.unwrap().is_none(), "NUL is no error either");
        assert_eq!(
            s.users.login_candidate("  owner@esempio.it ").await.unwrap().map(|c| c.user.id),
            Some(owner.id),
            "trimmed like the stored address"
        );

        sqlx::query("UPDATE accounts SET status = 'disabled' WHERE id = $1")
            .bind(account.to_string())
            .execute(s.db.pool())
            .await
            .unwrap();
        let found = s.users.login_candidate("owner@esempio.it").await.unwrap().unwrap();
        assert_eq!(found.account_status, AccountStatus::Disabled, "the caller decides with may_sign_in");
    }
}

#[tokio::test]
async fn the_audit_trail_is_newest_first_limited_and_per_account() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, owner) = s.account("Bar Sport", "owner@esempio.it").await;
        let (other, _) = s.account("Altro", "altro@esempio.it").await;
        let t0 = now() + time::Duration::hours(1);
        let actor = Actor::user(owner.id, Some("192.0.2.7".into()));
        for i in 0..5 {
            let at = t0 + time::Duration::seconds(i);
            let entry = AuditEntry::for_user(account, owner.id, &actor, &format!("test.step{i}"), at)
                .with_detail(format!(r#"{{"i":{i}}}"#));
            s.audit.append(&entry).await.unwrap();
        }
        // Same second: the later append comes first.
        s.audit
            .append(&AuditEntry::for_account(account, &actor, "test.same_second_a", t0 + time::Duration::seconds(9)))
            .await
            .unwrap();
        s.audit
            .append(&AuditEntry::for_account(account, &actor, "test.same_second_b", t0 + time::Duration::seconds(9)))
            .await
            .unwrap();
        s.audit.append(&AuditEntry::for_user(other, owner.id, &actor, "test.elsewhere", t0)).await.unwrap();

        let top = s.audit.list(account, 4).await.unwrap();
        let actions: Vec<&str> = top.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, vec!["test.same_second_b", "test.same_second_a", "test.step4", "test.step3"]);
        let step4 = &top[2];
        assert_eq!(step4.actor, actor, "who and from where survive the round trip");
        assert_eq!((step4.at, step4.detail.as_deref()), (t0 + time::Duration::seconds(4), Some(r#"{"i":4}"#)));
        assert_eq!(step4.target, Some(format!("user:{}", owner.id)));
        assert_eq!(s.audit.list(account, 1).await.unwrap().len(), 1);
        let all = s.actions(account).await;
        assert_eq!(all.len(), 11, "5 steps, 2 same-second lines, account.created, user.created and the seats: {all:?}");
        assert!(!all.iter().any(|a| a == "test.elsewhere"), "another account's lines never show");
        assert_eq!(s.actions(other).await.first().map(String::as_str), Some("test.elsewhere"));
    }
}

#[tokio::test]
async fn a_user_id_of_another_account_is_not_found_for_any_operation() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (mine, _) = s.account("Mio", "mio@esempio.it").await;
        let (theirs, their_owner) = s.account("Loro", "loro@esempio.it").await;
        let t = now();
        let their_member = s.users.create(theirs, new_user("m@loro.it", Role::Member), &backend(), t).await.unwrap();
        for victim in [&their_owner, &their_member] {
            assert!(s.users.get(mine, victim.id).await.unwrap().is_none());
            assert!(matches!(
                s.users.update(mine, victim.id, rename("x"), &backend(), t).await,
                Err(Error::NotFound("user"))
            ));
            assert!(matches!(s.users.delete(mine, victim.id, &backend(), t).await, Err(Error::NotFound("user"))));
            assert_eq!(s.users.get(theirs, victim.id).await.unwrap().as_ref(), Some(victim), "untouched");
        }
        // Nor through an account that does not exist.
        assert!(s.users.get(AccountId::new(), their_member.id).await.unwrap().is_none());
        assert!(matches!(
            s.users.update(AccountId::new(), their_member.id, rename("x"), &backend(), t).await,
            Err(Error::NotFound("user"))
        ));
        assert!(!s.users.list(mine).await.unwrap().iter().any(|u| u.account_id == theirs));
        assert!(!s.actions(mine).await.iter().any(|a| a == "user.updated" || a == "user.deleted"));
    }
}

#[tokio::test]
async fn the_account_lock_holds_a_second_writer_of_that_account_until_the_first_commits() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, _) = s.account("Bar Sport", "owner@esempio.it").await;
        let backend_kind = s.db.backend();
        let mut first = s.db.pool().begin().await.unwrap();
        assert!(lock_account(backend_kind, &mut first, account).await.unwrap());

        let users = SqlUsers::new(s.db.clone());
        let second = tokio::spawn(async move {
            users.create(account, new_user("second@esempio.it", Role::Member), &backend(), now()).await
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!second.is_finished(), "{backend_kind:?}: a second writer of the account waits for the lock");
        // What the first writer read under the lock is still current when it writes.
        let (seen,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE account_id = $1")
            .bind(account.to_string())
            .fetch_one(&mut *first)
            .await
            .unwrap();
        assert_eq!(seen, 1);
        first.commit().await.unwrap();
        let created = tokio::time::timeout(Duration::from_secs(5), second).await.expect("runs once released");
        created.unwrap().expect("and succeeds");
        assert_eq!(s.users.list(account).await.unwrap().len(), 2);

        let mut tx = s.db.pool().begin().await.unwrap();
        assert!(!lock_account(backend_kind, &mut tx, AccountId::new()).await.unwrap(), "no such account");
    }
}

fn upstream(subject: &str, email: &str) -> UpstreamIdentity {
    UpstreamIdentity {
        provider: "tsid".into(),
        issuer: "https://id.esempio.it".into(),
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: true,
        name: Some("Anna".into()),
        auth_time: None,
        sid: None,
    }
}

#[tokio::test]
async fn links_keep_one_upstream_identity_per_user_audited_and_scoped_to_the_account() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let links: Box<dyn Links> = Box::new(SqlLinks::new(s.db.clone()));
        let (account, owner) = s.account("Bar Sport", "owner@esempio.it").await;
        let (other, other_owner) = s.account("Altro", "altro@esempio.it").await;
        let t = now();
        let actor = Actor::user(owner.id, None);

        assert_eq!(links.link(&owner, &upstream("sub-1", "a@id.it"), &actor, t).await.unwrap(), Decision::Link);
        assert_eq!(
            links.link(&owner, &upstream("sub-1", "a@id.it"), &actor, t).await.unwrap(),
            Decision::AlreadyLinked
        );
        assert_eq!(
            links.link(&owner, &upstream("sub-2", "b@id.it"), &actor, t).await.unwrap(),
            Decision::ProviderTaken
        );
        assert_eq!(
            links.link(&other_owner, &upstream("sub-1", "a@id.it"), &actor, t).await.unwrap(),
            Decision::LinkedElsewhere
        );
        let found = links.find("https://id.esempio.it", "sub-1").await.unwrap().expect("linked");
        assert_eq!((found.user_id, found.account_id, found.last_login_at), (owner.id, account, None));
        assert_eq!(links.for_user(account, owner.id).await.unwrap(), vec![found.clone()]);
        assert!(links.for_user(other, owner.id).await.unwrap().is_empty(), "scoped by account");

        let later = t + time::Duration::minutes(5);
        links.record_login(&found, &upstream("sub-1", "new@id.it"), &actor, later).await.unwrap();
        let refreshed = links.find("https://id.esempio.it", "sub-1").await.unwrap().unwrap();
        assert_eq!((refreshed.email.as_deref(), refreshed.last_login_at), (Some("new@id.it"), Some(later)));

        assert!(!links.unlink(other, owner.id, "tsid", &actor, later).await.unwrap(), "not through another account");
        assert!(links.unlink(account, owner.id, "tsid", &actor, later).await.unwrap());
        assert!(links.find("https://id.esempio.it", "sub-1").await.unwrap().is_none());
        let actions = s.actions(account).await;
        for expected in [
            "identity.linked",
            "identity.link_noop",
            "identity.link_refused",
            "identity.claims_changed",
            "identity.unlinked",
        ] {
            assert!(actions.iter().any(|a| a == expected), "{expected} missing from {actions:?}");
        }
    }
}

#[tokio::test]
async fn clients_keep_only_a_digest_of_their_secret() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let repo = SqlClients::new(db.clone());
        let new = NewClient {
            name: "POS backend".into(),
            grants: vec![GrantType::ClientCredentials],
            scopes: vec!["ponte.admin".into()],
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            first_party: false,
            public: false,
        };
        let (client, secret) = repo.create(new.clone(), now()).await.unwrap();
        let secret = secret.expect("confidential");
        let found = repo.find(&client.id).await.unwrap().expect("stored");
        assert_eq!(*found, client);
        assert!(found.secret_matches(&secret));
        assert!(!found.secret_matches("guess"));
        let stored: (String,) = sqlx::query_as("SELECT secret_digest FROM oauth_clients WHERE id = $1")
            .bind(&client.id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_ne!(stored.0, secret, "the secret itself is never stored");
        assert!(repo.find("cl_missing").await.unwrap().is_none());
        let public_cc = repo.create(NewClient { public: true, ..new }, now()).await;
        assert!(public_cc.is_err(), "a public client cannot use client_credentials");
    }
}

const POLICY: KeyPolicy = KeyPolicy {
    alg: SigningAlg::ES256,
    max_token_lifetime: time::Duration::minutes(10),
    rotate_after: time::Duration::days(30),
};

#[tokio::test]
async fn signing_keys_are_made_once_sealed_and_rotated() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let repo = SqlKeys::new(db.clone());
        let master = MasterKeys::generate();
        let t0 = now();
        let first = KeyRing::load_or_create(&repo, &master, &POLICY, t0).await.unwrap();
        let second = KeyRing::load_or_create(&repo, &master, &POLICY, t0).await.unwrap();
        assert_eq!(first.signing_kid(), second.signing_kid(), "a restart reuses the key");
        let published = repo.published().await.unwrap();
        let mut statuses: Vec<&str> = published
            .iter()
            .map(|k| match k.status {
                KeyStatus::Current => "current",
                KeyStatus::Next => "next",
                _ => "other",
            })
            .collect();
        statuses.sort();
        assert_eq!(statuses, vec!["current", "next"], "the next key is published ahead of use");
        assert!(published.iter().all(|k| k.private_sealed.starts_with(&format!("v1.{}.", master.id()))));
        assert!(
            KeyRing::load_or_create(&repo, &MasterKeys::generate(), &POLICY, t0).await.is_err(),
            "another master key cannot open it"
        );

        let next = published.iter().find(|k| k.status == KeyStatus::Next).unwrap().kid.clone();
        let rotation = rotate(&repo, &master, &POLICY, t0).await.unwrap();
        assert_eq!(rotation.current, next, "next becomes current");
        assert_eq!(rotation.previous, vec![first.signing_kid().to_owned()], "current becomes previous");
        let ring = KeyRing::load_or_create(&repo, &master, &POLICY, t0).await.unwrap();
        assert_eq!(ring.signing_kid(), next);
        assert_eq!(ring.jwks().len(), 3, "current, next and previous are published");

        // Once every token the previous key signed has expired, it leaves the JWKS.
        let later = t0 + time::Duration::minutes(16);
        let ring = KeyRing::load_or_create(&repo, &master, &POLICY, later).await.unwrap();
        assert_eq!(ring.jwks().len(), 2);
        assert!(ring.jwks().iter().all(|k| k.kid != first.signing_kid()));
    }
}

fn family_for(user: UserId, sid: &str) -> NewFamily {
    NewFamily {
        client_id: "cl_app".into(),
        user_id: user,
        account_id: AccountId::new(),
        scope: "openid offline_access".into(),
        sid: Some(sid.into()),
        auth_time: now().unix_timestamp(),
        amr: "pwd".into(),
    }
}

#[tokio::test]
async fn refresh_families_rotate_by_compare_and_set_and_revoke_by_session_and_user_on_every_engine() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let repo: Box<dyn RefreshRepo> = Box::new(SqlRefresh::new(db));
        let (anna, bruno) = (UserId::new(), UserId::new());
        let t0 = now();
        let (family, first) = repo.start(family_for(anna, "sid-1"), time::Duration::days(30), t0).await.unwrap();
        let stored = repo.find(&family.id).await.unwrap().expect("the family is kept");
        assert_eq!(stored, family, "typed ids and every field read back as written");
        assert_eq!(judge(&stored, &first, t0), Verdict::Rotate);

        let second = repo.advance(&stored, Verdict::Rotate, t0).await.unwrap().expect("rotated");
        // The same snapshot cannot advance twice: a parallel refresh loses and judges again.
        assert_eq!(repo.advance(&stored, Verdict::Rotate, t0).await.unwrap(), None);
        let rotated = repo.find(&family.id).await.unwrap().unwrap();
        assert_eq!(judge(&rotated, &second, t0), Verdict::Rotate);
        assert_eq!(judge(&rotated, &first, t0), Verdict::RetryWithinGrace, "the token just replaced");
        assert_eq!(judge(&rotated, &first, t0 + time::Duration::minutes(1)), Verdict::Reuse);

        let (other_session, _) = repo.start(family_for(anna, "sid-2"), time::Duration::days(30), t0).await.unwrap();
        let (brunos, _) = repo.start(family_for(bruno, "sid-3"), time::Duration::days(30), t0).await.unwrap();
        assert_eq!(repo.revoke_session("sid-1", t0).await.unwrap(), 1);
        assert_eq!(judge(&repo.find(&family.id).await.unwrap().unwrap(), &second, t0), Verdict::Dead);
        assert!(
            repo.find(&other_session.id).await.unwrap().unwrap().revoked_at.is_none(),
            "other sessions keep theirs"
        );
        assert_eq!(repo.revoke_user(anna, t0).await.unwrap(), 1, "only anna's live family is left to revoke");
        assert!(repo.find(&other_session.id).await.unwrap().unwrap().revoked_at.is_some());
        assert!(repo.find(&brunos.id).await.unwrap().unwrap().revoked_at.is_none(), "other users keep theirs");
        repo.revoke(&brunos.id, t0).await.unwrap();
        assert!(repo.find(&brunos.id).await.unwrap().unwrap().revoked_at.is_some());
        assert_eq!(repo.find("nope").await.unwrap(), None);
    }
}

#[tokio::test]
async fn consents_widen_and_stay_per_user_and_client_on_every_engine() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let consents: Box<dyn ConsentRepo> = Box::new(SqlConsents::new(db));
        let (anna, bruno) = (UserId::new(), UserId::new());
        assert!(consents.granted(anna, "cl_shop").await.unwrap().is_empty());
        consents.grant(anna, "cl_shop", &["openid".into(), "email".into()], now()).await.unwrap();
        consents.grant(anna, "cl_shop", &["profile".into(), "email".into()], now()).await.unwrap();
        assert_eq!(consents.granted(anna, "cl_shop").await.unwrap(), ["openid", "email", "profile"]);
        assert!(consents.granted(anna, "cl_other").await.unwrap().is_empty(), "per client");
        assert!(consents.granted(bruno, "cl_shop").await.unwrap().is_empty(), "per user");
    }
}

#[tokio::test]
async fn a_users_mail_language_is_kept_and_changed_on_every_engine() {
    for test_db in TestDb::all().await {
        let s = Stores::open(&test_db).await;
        let (account, owner) = s.account("Bar Sport", "mario@esempio.it").await;
        assert_eq!(owner.lang, Lang::En, "as created");
        let patch = UserPatch { lang: Some(Lang::It), ..Default::default() };
        let changed = s.users.update(account, owner.id, patch, &backend(), now()).await.unwrap();
        assert_eq!(changed.lang, Lang::It);
        assert_eq!(s.users.get(account, owner.id).await.unwrap().unwrap().lang, Lang::It);
        let found = s.users.login_candidate("MARIO@esempio.it").await.unwrap().unwrap();
        assert_eq!(found.user.lang, Lang::It, "the sign-in lookup reads it too");
    }
}
