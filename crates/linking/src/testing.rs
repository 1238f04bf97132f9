//! In-memory stand-ins for the stores the use cases take, for unit tests without I/O.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ponte_identity::refresh::{Family, NewFamily, RefreshRepo, Verdict};
use ponte_identity::session::{MemoryStore, NewSession, SessionPolicy, Sessions};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::account::{
    Account, AccountStatus, AccountStore, LoginCandidate, NewUser, Role, User, UserPatch, UserStatus, UserStore,
};
use crate::audit::Actor;
use crate::ids::{AccountId, UserId};
use crate::{Error, Result};

/// The fixed `now` of these tests.
pub const NOW: OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

/// A password every fake user has unless told otherwise.
pub const PASSWORD: &str = "correct horse battery";

/// An active user of `account`.
pub fn user(email: &str, role: Role, account: AccountId) -> User {
    User {
        id: UserId::new(),
        account_id: account,
        email: email.into(),
        name: email.into(),
        role,
        status: UserStatus::Active,
        has_password: true,
        lang: crate::account::Lang::It,
        grants: Vec::new(),
        status_reason: None,
        created_at: NOW,
        updated_at: NOW,
    }
}

/// One stored user: the user, its password hash, its account's status.
#[derive(Debug, Clone)]
pub struct Stored {
    pub user: User,
    pub hash: Option<String>,
    pub account_status: AccountStatus,
}

/// Users (and their accounts, all named "Bar Roma") in memory.
#[derive(Debug, Default)]
pub struct FakeUsers(pub Mutex<Vec<Stored>>);

impl FakeUsers {
    /// Adds `user` with a hash of [`PASSWORD`].
    pub async fn add(&self, user: &User) {
        let hash = ponte_identity::password::hash(PASSWORD.into()).await.unwrap();
        self.0.lock().unwrap().push(Stored {
            user: user.clone(),
            hash: Some(hash),
            account_status: AccountStatus::Active,
        });
    }
}

#[async_trait]
impl UserStore for FakeUsers {
    async fn list(&self, account: AccountId) -> Result<Vec<User>> {
        Ok(self.0.lock().unwrap().iter().filter(|s| s.user.account_id == account).map(|s| s.user.clone()).collect())
    }

    async fn get(&self, account: AccountId, user: UserId) -> Result<Option<User>> {
        Ok(self.list(account).await?.into_iter().find(|u| u.id == user))
    }

    async fn create(&self, _: AccountId, _: NewUser, _: &Actor, _: OffsetDateTime) -> Result<User> {
        Err(Error::invalid("body", "not in these tests"))
    }

    async fn update(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        _: &Actor,
        now: OffsetDateTime,
    ) -> Result<User> {
        let mut all = self.0.lock().unwrap();
        let stored = all
            .iter_mut()
            .find(|s| s.user.id == user && s.user.account_id == account)
            .ok_or(Error::NotFound("user"))?;
        let u = &mut stored.user;
        if let Some(email) = patch.email {
            email.as_str().clone_into(&mut u.email);
        }
        if let Some(name) = patch.name {
            u.name = name;
        }
        if let Some(role) = patch.role {
            u.role = role;
        }
        if let Some(status) = patch.status {
            u.status = status;
        }
        if patch.password_hash.is_some() {
            stored.hash = patch.password_hash;
            u.has_password = true;
        }
        u.updated_at = now;
        Ok(u.clone())
    }

    async fn set_grants(
        &self,
        _: AccountId,
        _: UserId,
        _: Vec<crate::access::Grant>,
        _: &Actor,
        _: OffsetDateTime,
    ) -> Result<User> {
        Err(Error::invalid("body", "not in these tests"))
    }

    async fn delete(&self, account: AccountId, user: UserId, _: &Actor, _: OffsetDateTime) -> Result<()> {
        let mut all = self.0.lock().unwrap();
        let before = all.len();
        all.retain(|s| !(s.user.id == user && s.user.account_id == account));
        if all.len() == before { Err(Error::NotFound("user")) } else { Ok(()) }
    }

    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>> {
        Ok(self.0.lock().unwrap().iter().find(|s| s.user.email.eq_ignore_ascii_case(email)).map(|s| LoginCandidate {
            user: s.user.clone(),
            password_hash: s.hash.clone(),
            account_status: s.account_status,
            account_name: "Bar Roma".into(),
        }))
    }
}

#[async_trait]
impl AccountStore for FakeUsers {
    async fn create(&self, _: String, _: NewUser, _: &Actor, _: OffsetDateTime) -> Result<(Account, User)> {
        Err(Error::invalid("body", "not in these tests"))
    }

    async fn get(&self, id: AccountId) -> Result<Option<Account>> {
        let all = self.0.lock().unwrap();
        Ok(all.iter().find(|s| s.user.account_id == id).map(|s| Account {
            id,
            name: "Bar Roma".into(),
            status: s.account_status,
            created_at: NOW,
            updated_at: NOW,
        }))
    }
}

/// Refresh families, of which these tests only need "whose were revoked".
#[derive(Debug, Default)]
pub struct FakeRefresh(pub Mutex<Vec<UserId>>);

#[async_trait]
impl RefreshRepo for FakeRefresh {
    async fn start(
        &self,
        new: NewFamily,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> ponte_identity::Result<(Family, String)> {
        Ok(Family::start(new, lifetime, now))
    }
    async fn find(&self, _: &str) -> ponte_identity::Result<Option<Family>> {
        Ok(None)
    }
    async fn advance(&self, _: &Family, _: Verdict, _: OffsetDateTime) -> ponte_identity::Result<Option<String>> {
        Ok(None)
    }
    async fn revoke(&self, _: &str, _: OffsetDateTime) -> ponte_identity::Result<()> {
        Ok(())
    }
    async fn revoke_session(&self, _: &str, _: OffsetDateTime) -> ponte_identity::Result<u64> {
        Ok(0)
    }
    async fn revoke_user(&self, user: UserId, _: OffsetDateTime) -> ponte_identity::Result<u64> {
        self.0.lock().unwrap().push(user);
        Ok(1)
    }
}

/// Sessions in memory, with the store beneath for rate-limit counters.
pub fn sessions() -> (Arc<MemoryStore>, Sessions) {
    let store = Arc::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone(), SessionPolicy::default());
    (store, sessions)
}

/// Starts a session for `user`; returns its token.
pub async fn sign_in(sessions: &Sessions, user: &User) -> String {
    let new = NewSession {
        user_id: user.id,
        account_id: user.account_id,
        amr: vec!["pwd".into()],
        user_agent: None,
        ip: None,
    };
    sessions.create(new, NOW).await.unwrap().0.expose().to_owned()
}
