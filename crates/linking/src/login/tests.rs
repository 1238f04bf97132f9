//! Password sign-in without HTTP: fake users, an in-memory session store, a fixed `now`.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::account::{AccountStatus, Role, UserStatus};
use crate::ids::AccountId;
use crate::testing::{FakeUsers, NOW, PASSWORD, sessions, sign_in, user};

fn attempt<'a>(email: &'a str, password: &'a str, ip: &'a str) -> PasswordAttempt<'a> {
    PasswordAttempt { email, password, ip: Some(ip) }
}

async fn world() -> (FakeUsers, User) {
    let users = FakeUsers::default();
    let anna = user("anna@pos.test", Role::Owner, AccountId::new());
    users.add(&anna).await;
    (users, anna)
}

#[tokio::test]
async fn the_right_password_signs_in_whatever_the_case_and_spaces_of_the_email() {
    let (users, anna) = world().await;
    let (store, _) = sessions();
    let outcome = password_login(store.as_ref(), &users, attempt("  Anna@POS.test ", PASSWORD, "1.2.3.4"), NOW).await;
    assert_eq!(outcome.unwrap(), PasswordLogin::SignedIn(anna));
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_are_refused_alike() {
    let (users, _) = world().await;
    let (store, _) = sessions();
    let wrong = password_login(store.as_ref(), &users, attempt("anna@pos.test", "not it at all", "1.2.3.4"), NOW);
    let unknown = password_login(store.as_ref(), &users, attempt("nobody@pos.test", PASSWORD, "1.2.3.4"), NOW);
    let empty = password_login(store.as_ref(), &users, attempt("", PASSWORD, "1.2.3.4"), NOW);
    assert_eq!(wrong.await.unwrap(), PasswordLogin::Refused);
    assert_eq!(unknown.await.unwrap(), PasswordLogin::Refused);
    assert_eq!(empty.await.unwrap(), PasswordLogin::Refused);
}

#[tokio::test]
async fn a_disabled_user_or_account_is_refused_even_with_the_right_password() {
    let (users, _) = world().await;
    let (store, _) = sessions();
    users.0.lock().unwrap()[0].user.status = UserStatus::Disabled;
    let outcome = password_login(store.as_ref(), &users, attempt("anna@pos.test", PASSWORD, "1.2.3.4"), NOW);
    assert_eq!(outcome.await.unwrap(), PasswordLogin::Refused);
    {
        let mut all = users.0.lock().unwrap();
        all[0].user.status = UserStatus::Active;
        all[0].account_status = AccountStatus::Disabled;
    }
    let outcome = password_login(store.as_ref(), &users, attempt("anna@pos.test", PASSWORD, "1.2.3.4"), NOW);
    assert_eq!(outcome.await.unwrap(), PasswordLogin::Refused);
}

#[tokio::test]
async fn the_eleventh_attempt_for_one_email_is_limited_even_with_the_right_password() {
    let (users, _) = world().await;
    let (store, _) = sessions();
    for n in 0..LOGIN_PER_EMAIL.max {
        // A new address each time, so only the per-email counter can trip.
        let ip = format!("10.0.0.{n}");
        let outcome = password_login(store.as_ref(), &users, attempt("anna@pos.test", "wrong guess", &ip), NOW);
        assert_eq!(outcome.await.unwrap(), PasswordLogin::Refused);
    }
    let outcome = password_login(store.as_ref(), &users, attempt("ANNA@pos.test", PASSWORD, "10.0.1.1"), NOW);
    assert_eq!(outcome.await.unwrap(), PasswordLogin::Limited);
    let later = NOW + LOGIN_PER_EMAIL.window;
    let outcome = password_login(store.as_ref(), &users, attempt("anna@pos.test", PASSWORD, "10.0.1.1"), later);
    assert!(matches!(outcome.await.unwrap(), PasswordLogin::SignedIn(_)), "the next window starts afresh");
}

#[tokio::test]
async fn too_many_attempts_from_one_address_are_limited_whatever_the_email() {
    let (users, _) = world().await;
    let (store, _) = sessions();
    // Unknown emails still pay for a dummy hash; an empty one skips the lookup but not the
    // counters, which is all this test needs.
    for n in 0..LOGIN_PER_IP.max {
        let email = format!("guess{n}");
        let outcome = password_login(store.as_ref(), &users, attempt(&email, "", "1.2.3.4"), NOW);
        assert_eq!(outcome.await.unwrap(), PasswordLogin::Refused);
    }
    let outcome = password_login(store.as_ref(), &users, attempt("anna@pos.test", PASSWORD, "1.2.3.4"), NOW);
    assert_eq!(outcome.await.unwrap(), PasswordLogin::Limited);
    let elsewhere = password_login(store.as_ref(), &users, attempt("anna@pos.test", PASSWORD, "5.6.7.8"), NOW);
    assert!(matches!(elsewhere.await.unwrap(), PasswordLogin::SignedIn(_)), "other addresses are counted apart");
}

#[tokio::test]
async fn a_session_names_its_user_and_ends_when_the_user_is_gone() {
    let (users, anna) = world().await;
    let (_, sessions) = sessions();
    let token = sign_in(&sessions, &anna).await;
    let (who, account) = signed_in(&sessions, &users, &users, Some(&token), NOW).await.unwrap().unwrap();
    assert_eq!((who.id, account.id), (anna.id, anna.account_id));
    assert!(signed_in(&sessions, &users, &users, None, NOW).await.unwrap().is_none());
    users.0.lock().unwrap().clear();
    assert!(signed_in(&sessions, &users, &users, Some(&token), NOW).await.unwrap().is_none());
    assert!(sessions.get(&token, NOW).await.unwrap().is_none(), "the orphaned session was ended");
}
