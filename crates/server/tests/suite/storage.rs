//! The relational store, on SQLite and (when configured) PostgreSQL, with the same
//! migrations and the same SQL.

use ponte_identity::client::{ClientRepo, GrantType, NewClient, SqlClients};
use ponte_identity::keys::{KeyPolicy, KeyRepo, KeyRing, KeyStatus, SigningAlg, SqlKeys, rotate};
use ponte_identity::seal::MasterKey;
use ponte_linking::Error;
use ponte_linking::account::{NewUser, Role, UserPatch, UserStatus};
use ponte_linking::audit::Actor;
use ponte_linking::email::Email;
use ponte_linking::ids::{AccountId, UserId};
use ponte_linking::store::{Directory, SqlDirectory};

use crate::harness::{TestDb, now};

fn new_user(email: &str, role: Role) -> NewUser {
    NewUser {
        email: Email::parse(email).unwrap(),
        name: "Anna Bianchi".into(),
        role,
        password_hash: Some("$argon2id$fake".into()),
    }
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
        let db = test_db.open_migrated().await;
        let dir = SqlDirectory::new(db.clone());
        let actor = Actor::client("cl_test", Some("127.0.0.1".into()));
        let t = now();

        let (account, owner) = dir
            .create_account("Bar Sport".into(), new_user("Mario@Esempio.it", Role::Member), &actor, t)
            .await
            .unwrap();
        assert_eq!(owner.role, Role::Owner, "the account's first user is always its owner");
        assert_eq!(dir.account(account.id).await.unwrap().unwrap().name, "Bar Sport");

        // Emails are unique without regard to case, across accounts.
        let dup = dir.create_account("Other".into(), new_user("mario@esempio.IT", Role::Owner), &actor, t).await;
        assert!(matches!(dup, Err(Error::EmailTaken)), "{dup:?}");
        let (other, _) =
            dir.create_account("Other".into(), new_user("luigi@esempio.it", Role::Owner), &actor, t).await.unwrap();

        let member = dir.create_user(account.id, new_user("anna@esempio.it", Role::Member), &actor, t).await.unwrap();
        let users = dir.users(account.id).await.unwrap();
        assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![owner.id, member.id]);

        // Tenant isolation: the member is invisible through another account.
        assert!(dir.user(other.id, member.id).await.unwrap().is_none());
        let cross = dir
            .update_user(other.id, member.id, UserPatch { name: Some("x".into()), ..Default::default() }, &actor, t)
            .await;
        assert!(matches!(cross, Err(Error::NotFound("user"))));
        assert!(matches!(dir.delete_user(other.id, member.id, &actor, t).await, Err(Error::NotFound("user"))));

        let patched = dir
            .update_user(
                account.id,
                member.id,
                UserPatch { role: Some(Role::Admin), status: Some(UserStatus::Disabled), ..Default::default() },
                &actor,
                t,
            )
            .await
            .unwrap();
        assert_eq!((patched.role, patched.status), (Role::Admin, UserStatus::Disabled));
        assert_eq!(dir.user(account.id, member.id).await.unwrap().unwrap(), patched);

        let steal = dir
            .update_user(
                account.id,
                member.id,
                UserPatch { email: Some(Email::parse("MARIO@esempio.it").unwrap()), ..Default::default() },
                &actor,
                t,
            )
            .await;
        assert!(matches!(steal, Err(Error::EmailTaken)));

        assert!(matches!(
            dir.delete_user(account.id, owner.id, &actor, t).await,
            Err(Error::Conflict { code: "owner_cannot_be_deleted", .. })
        ));
        dir.delete_user(account.id, member.id, &actor, t).await.unwrap();
        assert!(dir.user(account.id, member.id).await.unwrap().is_none());

        let login = dir.login_candidate("MARIO@ESEMPIO.IT").await.unwrap().expect("found by any case");
        assert_eq!(login.user.id, owner.id);
        assert_eq!(login.password_hash.as_deref(), Some("$argon2id$fake"));
        assert_eq!(login.account_name, "Bar Sport");
        assert!(dir.login_candidate("nobody@esempio.it").await.unwrap().is_none());

        let actions: Vec<String> = dir.audit(account.id, 50).await.unwrap().into_iter().map(|e| e.action).collect();
        for expected in ["account.created", "user.created", "user.updated", "user.deleted"] {
            assert!(actions.iter().any(|a| a == expected), "{expected} missing from {actions:?}");
        }
        assert!(dir.audit(AccountId::new(), 50).await.unwrap().is_empty());
        assert!(dir.user(account.id, UserId::new()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_failed_account_creation_leaves_no_half_written_rows() {
    for test_db in TestDb::all().await {
        let db = test_db.open_migrated().await;
        let dir = SqlDirectory::new(db.clone());
        let actor = Actor::system();
        dir.create_account("First".into(), new_user("taken@esempio.it", Role::Owner), &actor, now()).await.unwrap();
        let before: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts").fetch_one(db.pool()).await.unwrap();
        let failed =
            dir.create_account("Second".into(), new_user("TAKEN@esempio.it", Role::Owner), &actor, now()).await;
        assert!(matches!(failed, Err(Error::EmailTaken)));
        let after: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts").fetch_one(db.pool()).await.unwrap();
        assert_eq!(before, after, "the account row was rolled back with the owner");
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
        assert_eq!(found, client);
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
        let master = MasterKey::generate();
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
            KeyRing::load_or_create(&repo, &MasterKey::generate(), &POLICY, t0).await.is_err(),
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
