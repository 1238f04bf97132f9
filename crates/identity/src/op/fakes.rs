//! In-memory stand-ins for the OP's stores, so its flows are tested without I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{OpSettings, Provider, Subject, Subjects};
use crate::client::{Client, ClientRepo, GrantType, NewClient};
use crate::ids::{AccountId, UserId};
use crate::keys::{KeyRing, KeyStatus, SigningAlg, generate};
use crate::oidc::ConsentRepo;
use crate::refresh::{Family, NewFamily, RefreshRepo, Verdict, new_token};
use crate::seal::MasterKeys;
use crate::secret::digest;
use crate::session::{MemoryStore, NewSession, Session, SessionPolicy, Sessions};
use crate::{Error, Result};

/// A fixed start for every test clock.
pub const T0: OffsetDateTime = datetime!(2026-03-01 09:00 UTC);

#[derive(Debug, Default)]
pub struct FakeClients(pub Mutex<Vec<Client>>);

#[async_trait]
impl ClientRepo for FakeClients {
    async fn create(&self, _: NewClient, _: OffsetDateTime) -> Result<(Client, Option<String>)> {
        Err(Error::Invalid("not in tests".into()))
    }
    async fn find(&self, id: &str) -> Result<Option<Arc<Client>>> {
        Ok(self.0.lock().unwrap().iter().find(|c| c.id == id).cloned().map(Arc::new))
    }
}

#[derive(Debug, Default)]
pub struct FakeConsents(pub Mutex<HashMap<(UserId, String), Vec<String>>>);

#[async_trait]
impl ConsentRepo for FakeConsents {
    async fn granted(&self, user: UserId, client_id: &str) -> Result<Vec<String>> {
        Ok(self.0.lock().unwrap().get(&(user, client_id.to_owned())).cloned().unwrap_or_default())
    }
    async fn grant(&self, user: UserId, client_id: &str, scopes: &[String], _: OffsetDateTime) -> Result<()> {
        self.0.lock().unwrap().entry((user, client_id.to_owned())).or_default().extend(scopes.iter().cloned());
        Ok(())
    }
}

/// Families with the same compare-and-set rules as the SQL store.
#[derive(Debug, Default)]
pub struct FakeRefresh(pub Mutex<HashMap<String, Family>>);

#[async_trait]
impl RefreshRepo for FakeRefresh {
    async fn start(&self, new: NewFamily, lifetime: Duration, now: OffsetDateTime) -> Result<(Family, String)> {
        let (family, token) = Family::start(new, lifetime, now);
        self.0.lock().unwrap().insert(family.id.clone(), family.clone());
        Ok((family, token))
    }
    async fn find(&self, id: &str) -> Result<Option<Family>> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
    async fn advance(&self, family: &Family, verdict: Verdict, now: OffsetDateTime) -> Result<Option<String>> {
        let mut all = self.0.lock().unwrap();
        let Some(stored) = all.get_mut(&family.id) else { return Ok(None) };
        if stored.current_digest != family.current_digest || stored.revoked_at.is_some() {
            return Ok(None);
        }
        let token = new_token(&family.id);
        if verdict == Verdict::Rotate {
            stored.previous_digest = Some(stored.current_digest.clone());
            stored.rotated_at = now;
        }
        stored.current_digest = digest(&token);
        Ok(Some(token))
    }
    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<()> {
        if let Some(f) = self.0.lock().unwrap().get_mut(id) {
            f.revoked_at.get_or_insert(now);
        }
        Ok(())
    }
    async fn revoke_session(&self, sid: &str, now: OffsetDateTime) -> Result<u64> {
        let mut n = 0;
        for f in self.0.lock().unwrap().values_mut().filter(|f| f.sid.as_deref() == Some(sid)) {
            f.revoked_at.get_or_insert(now);
            n += 1;
        }
        Ok(n)
    }
    async fn revoke_user(&self, user: UserId, now: OffsetDateTime) -> Result<u64> {
        let mut n = 0;
        for f in self.0.lock().unwrap().values_mut().filter(|f| f.user_id == user) {
            f.revoked_at.get_or_insert(now);
            n += 1;
        }
        Ok(n)
    }
}

/// Users who may sign in; remove one to disable it.
#[derive(Debug, Default)]
pub struct FakeSubjects(pub Mutex<HashMap<UserId, Subject>>);

#[async_trait]
impl Subjects for FakeSubjects {
    async fn active_subject(&self, account: AccountId, user: UserId) -> Result<Option<Subject>> {
        Ok(self.0.lock().unwrap().get(&user).filter(|s| s.account_id == account).cloned())
    }
}

/// Everything a [`Provider`] stands on, in memory.
#[derive(Debug)]
pub struct World {
    pub store: Arc<MemoryStore>,
    pub sessions: Sessions,
    pub clients: FakeClients,
    pub consents: FakeConsents,
    pub refresh: FakeRefresh,
    pub subjects: FakeSubjects,
    pub keys: Arc<KeyRing>,
    pub user: Subject,
    pub settings: OpSettings,
}

pub const REDIRECT: &str = "https://shop.example.com/cb";
pub const LOGGED_OUT: &str = "https://shop.example.com/bye";

/// A browser client `shop` (confidential, secret `s3cret`) that may refresh.
pub fn shop(first_party: bool) -> Client {
    let mut c = crate::client::tests::client_for_tests();
    c.id = "shop".into();
    c.name = "Shop".into();
    c.grants = vec![GrantType::AuthorizationCode, GrantType::RefreshToken, GrantType::ClientCredentials];
    c.scopes = ["openid", "email", "profile", "offline_access", "ponte.api"].map(String::from).to_vec();
    c.redirect_uris = vec![REDIRECT.into()];
    c.post_logout_redirect_uris = vec![LOGGED_OUT.into()];
    c.first_party = first_party;
    c
}

impl World {
    /// One user (an owner) and one client.
    pub fn new(client: Client) -> Self {
        let master = MasterKeys::generate();
        let key = generate(&master, SigningAlg::ES256, KeyStatus::Current, T0).unwrap();
        let store = Arc::new(MemoryStore::new());
        let user = Subject {
            id: UserId::new(),
            account_id: AccountId::new(),
            role: "owner".into(),
            email: "mario@esempio.it".into(),
            name: "Mario Rossi".into(),
            access: serde_json::json!({"role": "owner", "permissions": {"invoices:read": "all"}}),
        };
        let world = Self {
            sessions: Sessions::new(store.clone(), SessionPolicy::default()),
            store,
            clients: FakeClients(Mutex::new(vec![client])),
            consents: FakeConsents::default(),
            refresh: FakeRefresh::default(),
            subjects: FakeSubjects::default(),
            keys: Arc::new(KeyRing::from_stored(&[key], &master).unwrap()),
            user: user.clone(),
            settings: OpSettings {
                issuer: "https://ponte.example".into(),
                access_token_ttl: Duration::minutes(10),
                id_token_ttl: Duration::minutes(10),
                refresh_token_ttl: Duration::days(30),
                assert_email_verified: true,
            },
        };
        world.subjects.0.lock().unwrap().insert(user.id, user);
        world
    }

    pub fn provider(&self) -> Provider<'_> {
        Provider {
            settings: &self.settings,
            keys: self.keys.clone(),
            store: self.store.as_ref(),
            sessions: &self.sessions,
            clients: &self.clients,
            consents: &self.consents,
            refresh: &self.refresh,
            subjects: &self.subjects,
        }
    }

    /// Signs the user in at `at`.
    pub async fn sign_in(&self, at: OffsetDateTime) -> Session {
        let new = NewSession {
            user_id: self.user.id,
            account_id: self.user.account_id,
            amr: vec!["pwd".into()],
            user_agent: None,
            ip: None,
        };
        self.sessions.create(new, at).await.unwrap().1
    }

    /// The user may no longer sign in.
    pub fn disable_user(&self) {
        self.subjects.0.lock().unwrap().remove(&self.user.id);
    }

    /// Changes what the user may do, as the directory would after a permission change.
    pub fn set_access(&self, access: serde_json::Value) {
        if let Some(s) = self.subjects.0.lock().unwrap().get_mut(&self.user.id) {
            s.access = access;
        }
    }
}

/// A PKCE verifier and its S256 challenge (RFC 7636 appendix B).
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// The challenge of [`VERIFIER`].
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// An authorization request from `shop` for `scope`, plus `extra` parameters.
pub fn authorize_params(scope: &str, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "shop"),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st"),
        ("nonce", "no"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    pairs.extend_from_slice(extra);
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        map.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    map
}
