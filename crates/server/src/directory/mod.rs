//! The directory cache: what every signed-in page, SSO hop and token check reads about an
//! account (the account row, its users, their linked IDs, its companies, integrations and
//! invites), kept in this replica's memory so a hot path does not go to the database.
//!
//! How it stays honest, on PostgreSQL:
//! - every write to those tables, by any replica, worker or CLI, fires a trigger that
//!   `NOTIFY`s the account's id on [`CHANNEL`] (migration `…_directory_notify`); each
//!   replica [`listen`]s and forgets that account's entries on arrival;
//! - a write through this replica's own stores ([`stores`]) forgets the account before the
//!   write returns, so the next read here sees it (read-your-writes, without waiting for
//!   the notification);
//! - a load that raced with a forget is not kept (a generation counter, bumped before each
//!   forget and checked under the lock before each insert);
//! - while the listener is not connected (start-up, a lost connection) nothing is cached
//!   and every read goes to the database: missed notifications cannot leave stale entries;
//! - no entry is served once it is older than `cache_ttl_secs`, whatever happens.
//!
//! SQLite has no notifications, and other processes (the CLI) write to the same file, so
//! there the directory stays off and every read goes to the database. `cache_ttl_secs = 0`
//! turns it off on PostgreSQL too.

pub mod listen;
pub mod stores;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ponte_linking::account::{Account, User};
use ponte_linking::company::Company;
use ponte_linking::ids::{AccountId, CompanyId, UserId};
use ponte_linking::integration::{Integration, IntegrationKind};
use ponte_linking::invite::Invite;
use ponte_linking::links::ExternalIdentity;

pub use listen::{CHANNEL, listen};

/// Most accounts kept; beyond this the cache starts over (a bound on memory that a burst
/// of distinct accounts cannot exceed).
const MAX_ACCOUNTS: usize = 20_000;

/// This replica's directory cache; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Directory(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    /// Set while notifications are being received; entries are used only then.
    listening: AtomicBool,
    /// Bumped before every forget: a load that saw another value is not kept.
    generation: AtomicU64,
    accounts: RwLock<HashMap<AccountId, Entries>>,
    hits: AtomicU64,
    loads: AtomicU64,
}

type Entries = HashMap<Key, (Value, Instant)>;

/// What is kept of one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Account,
    User(UserId),
    Links(UserId),
    Companies,
    Integrations,
    Invites(CompanyId, IntegrationKind),
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Account(Account),
    User(User),
    Links(Vec<ExternalIdentity>),
    Companies(Vec<Company>),
    Integrations(Vec<Integration>),
    Invites(Vec<Invite>),
}

/// A type the directory keeps, and how it sits in a [`Value`].
pub(crate) trait Part: Clone {
    fn wrap(self) -> Value;
    fn unwrap(value: &Value) -> Option<&Self>;
}

macro_rules! part {
    ($variant:ident, $ty:ty) => {
        impl Part for $ty {
            fn wrap(self) -> Value {
                Value::$variant(self)
            }
            fn unwrap(value: &Value) -> Option<&Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
part!(Account, Account);
part!(User, User);
part!(Links, Vec<ExternalIdentity>);
part!(Companies, Vec<Company>);
part!(Integrations, Vec<Integration>);
part!(Invites, Vec<Invite>);

/// Counters of one directory, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Whether entries are being used (listening, and a non-zero TTL).
    pub active: bool,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the database.
    pub loads: u64,
    /// Accounts with entries now.
    pub accounts: usize,
}

impl Directory {
    /// A directory whose entries live at most `ttl` (zero: never used). It stays off
    /// until [`Directory::start_listening`].
    pub fn new(ttl: Duration) -> Self {
        Self(Arc::new(Inner {
            ttl,
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            accounts: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }))
    }

    /// A directory that never keeps anything (SQLite, or `cache_ttl_secs = 0`).
    pub fn off() -> Self {
        Self::new(Duration::ZERO)
    }

    /// Whether this directory may keep anything at all (a non-zero TTL); only then is it
    /// worth listening for changes.
    pub fn caches(&self) -> bool {
        !self.0.ttl.is_zero()
    }

    fn active(&self) -> bool {
        self.caches() && self.0.listening.load(Ordering::Acquire)
    }

    /// Notifications are arriving from now on: entries may be kept (starting empty).
    pub fn start_listening(&self) {
        self.forget_everything();
        self.0.listening.store(true, Ordering::Release);
    }

    /// Notifications stopped (a lost connection): nothing is used until they resume.
    pub fn stop_listening(&self) {
        self.0.listening.store(false, Ordering::Release);
        self.forget_everything();
    }

    /// Forgets everything kept about `account` (it changed).
    pub fn forget(&self, account: AccountId) {
        // Bump first: a load in flight then sees the change and is not kept.
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.accounts.write().unwrap_or_else(|e| e.into_inner()).remove(&account);
    }

    /// Forgets every account.
    pub fn forget_everything(&self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.accounts.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The counters.
    pub fn stats(&self) -> DirectoryStats {
        DirectoryStats {
            active: self.active(),
            hits: self.0.hits.load(Ordering::Relaxed),
            loads: self.0.loads.load(Ordering::Relaxed),
            accounts: self.0.accounts.read().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// `key` of `account` from memory when kept and fresh, else from `load` (kept when it
    /// found something and nothing changed meanwhile).
    pub(crate) async fn fetch<T: Part, E>(
        &self,
        account: AccountId,
        key: Key,
        load: impl Future<Output = Result<Option<T>, E>>,
    ) -> Result<Option<T>, E> {
        self.read_through(account, key, load, Option::as_ref, Some).await
    }

    /// Like [`Directory::fetch`] for reads that always answer (lists).
    pub(crate) async fn fetch_list<T: Part, E>(
        &self,
        account: AccountId,
        key: Key,
        load: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.read_through(account, key, load, |list| Some(list), |list| list).await
    }

    async fn read_through<T: Part, R, E>(
        &self,
        account: AccountId,
        key: Key,
        load: impl Future<Output = Result<R, E>>,
        keepable: fn(&R) -> Option<&T>,
        from_kept: fn(T) -> R,
    ) -> Result<R, E> {
        if !self.active() {
            return load.await;
        }
        if let Some(found) = self.kept::<T>(account, &key) {
            self.0.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(from_kept(found));
        }
        let generation = self.0.generation.load(Ordering::Acquire);
        self.0.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = load.await?;
        if let Some(value) = keepable(&loaded) {
            let mut accounts = self.0.accounts.write().unwrap_or_else(|e| e.into_inner());
            if self.active() && self.0.generation.load(Ordering::Acquire) == generation {
                if accounts.len() >= MAX_ACCOUNTS && !accounts.contains_key(&account) {
                    accounts.clear();
                }
                accounts.entry(account).or_default().insert(key, (value.clone().wrap(), Instant::now()));
            }
        }
        Ok(loaded)
    }

    fn kept<T: Part>(&self, account: AccountId, key: &Key) -> Option<T> {
        let accounts = self.0.accounts.read().unwrap_or_else(|e| e.into_inner());
        let (value, at) = accounts.get(&account)?.get(key)?;
        (at.elapsed() < self.0.ttl).then(|| T::unwrap(value).cloned()).flatten()
    }
}

#[cfg(test)]
mod tests;
