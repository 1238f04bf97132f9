//! User changes without HTTP: which ones end the user's sessions and refresh families.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::account::Role;
use crate::testing::{FakeRefresh, FakeUsers, NOW, sessions, sign_in, user};

async fn world() -> (FakeUsers, User, User) {
    let users = FakeUsers::default();
    let account = AccountId::new();
    let (owner, member) =
        (user("owner@pos.test", Role::Owner, account), user("member@pos.test", Role::Member, account));
    users.add(&owner).await;
    users.add(&member).await;
    (users, owner, member)
}

fn actor(owner: &User) -> Actor {
    Actor::user(owner.id, None)
}

#[tokio::test]
async fn disabling_a_user_ends_its_sessions_and_refresh_families_only() {
    let (users, owner, member) = world().await;
    let (_, sessions) = sessions();
    let refresh = FakeRefresh::default();
    let stores = UserStores { users: &users, sessions: &sessions, refresh: &refresh };
    let (member_token, owner_token) = (sign_in(&sessions, &member).await, sign_in(&sessions, &owner).await);
    let patch = UserPatch { status: Some(UserStatus::Disabled), ..Default::default() };
    let changed = update_user(stores, member.account_id, member.id, patch, &actor(&owner), NOW).await.unwrap();
    assert_eq!(changed.status, UserStatus::Disabled);
    assert!(sessions.get(&member_token, NOW).await.unwrap().is_none(), "the member's session ended");
    assert!(sessions.get(&owner_token, NOW).await.unwrap().is_some(), "nobody else's did");
    assert_eq!(*refresh.0.lock().unwrap(), vec![member.id]);
}

#[tokio::test]
async fn a_new_password_ends_sessions_but_a_rename_does_not() {
    let (users, owner, member) = world().await;
    let (_, sessions) = sessions();
    let refresh = FakeRefresh::default();
    let stores = UserStores { users: &users, sessions: &sessions, refresh: &refresh };
    let token = sign_in(&sessions, &member).await;
    let rename = UserPatch { name: Some("Marta".into()), status: Some(UserStatus::Active), ..Default::default() };
    let renamed = update_user(stores, member.account_id, member.id, rename, &actor(&owner), NOW).await.unwrap();
    assert_eq!(renamed.name, "Marta");
    assert!(sessions.get(&token, NOW).await.unwrap().is_some(), "a rename leaves the session alone");
    assert!(refresh.0.lock().unwrap().is_empty());
    let password = UserPatch { password_hash: Some("$argon2id$new".into()), ..Default::default() };
    update_user(stores, member.account_id, member.id, password, &actor(&owner), NOW).await.unwrap();
    assert!(sessions.get(&token, NOW).await.unwrap().is_none(), "a new password ends it");
    assert_eq!(*refresh.0.lock().unwrap(), vec![member.id]);
}

#[tokio::test]
async fn deleting_a_user_ends_its_sessions_and_refresh_families() {
    let (users, owner, member) = world().await;
    let (_, sessions) = sessions();
    let refresh = FakeRefresh::default();
    let stores = UserStores { users: &users, sessions: &sessions, refresh: &refresh };
    let token = sign_in(&sessions, &member).await;
    delete_user(stores, member.account_id, member.id, &actor(&owner), NOW).await.unwrap();
    assert!(users.get(member.account_id, member.id).await.unwrap().is_none());
    assert!(sessions.get(&token, NOW).await.unwrap().is_none());
    assert_eq!(*refresh.0.lock().unwrap(), vec![member.id]);
}

#[tokio::test]
async fn a_failed_change_ends_nothing() {
    let (users, owner, member) = world().await;
    let (_, sessions) = sessions();
    let refresh = FakeRefresh::default();
    let stores = UserStores { users: &users, sessions: &sessions, refresh: &refresh };
    let token = sign_in(&sessions, &member).await;
    let patch = UserPatch { status: Some(UserStatus::Disabled), ..Default::default() };
    let gone = UserId::new();
    assert!(update_user(stores, member.account_id, gone, patch, &actor(&owner), NOW).await.is_err());
    assert!(sessions.get(&token, NOW).await.unwrap().is_some());
    assert!(refresh.0.lock().unwrap().is_empty());
}
