//! The storage seam for sessions and other short-lived state.

use async_trait::async_trait;

use crate::Result;

/// Short-lived state: sessions (with a per-user index), one-time values and counters.
/// Implemented in process ([`super::MemoryStore`]) and on Redis ([`super::RedisStore`]).
/// TTLs here only collect garbage; callers decide expiry with their own clock.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Stores a session under `id` and adds it to `user_id`'s index. The index lives at
    /// least `index_ttl` seconds.
    async fn insert(&self, id: &str, user_id: &str, value: &str, ttl: u64, index_ttl: u64) -> Result<()>;
    /// The stored session, if any.
    async fn get(&self, id: &str) -> Result<Option<String>>;
    /// Overwrites a session only if it still exists; `false` if it was gone.
    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool>;
    /// Deletes a session and drops it from the user's index.
    async fn remove(&self, id: &str, user_id: &str) -> Result<()>;
    /// The ids in a user's index (some may have expired already).
    async fn ids_for_user(&self, user_id: &str) -> Result<Vec<String>>;

    /// Stores a one-time value (flow state, codes) for `ttl` seconds.
    async fn put_once(&self, key: &str, value: &str, ttl: u64) -> Result<()>;
    /// Reads a one-time value without consuming it (deny-lists).
    async fn peek(&self, key: &str) -> Result<Option<String>>;
    /// Reads and deletes a one-time value atomically: only one caller ever gets it.
    async fn take_once(&self, key: &str) -> Result<Option<String>>;
    /// Stores a one-time value only if none is live under `key`; `true` if this call
    /// stored it. Atomic: of many concurrent callers exactly one wins (replay checks).
    async fn put_if_absent(&self, key: &str, value: &str, ttl: u64) -> Result<bool>;
    /// Overwrites a one-time value only if one is still live under `key`; `false` if it was
    /// taken (or expired) meanwhile, so a late write cannot bring a consumed value back.
    async fn put_if_present(&self, key: &str, value: &str, ttl: u64) -> Result<bool>;
    /// Adds `member` to the set under `key` atomically, so concurrent additions are all
    /// kept; the set then lives at least `ttl` more seconds (never less than before).
    async fn add_member(&self, key: &str, member: &str, ttl: u64) -> Result<()>;
    /// Reads and deletes the set under `key` atomically: only one caller gets its members.
    async fn take_members(&self, key: &str) -> Result<Vec<String>>;
    /// Adds one to a counter that disappears after `ttl` seconds; returns the new count.
    async fn incr(&self, key: &str, ttl: u64) -> Result<u64>;

    /// Puts `key` on a deny-list for `ttl` seconds (revoked access tokens). An entry is
    /// never taken off before it expires. A store that announces changes announces this
    /// one too, so a replica that remembers what is *not* denied forgets `key` at once.
    async fn deny(&self, key: &str, ttl: u64) -> Result<()> {
        self.put_once(key, "1", ttl).await
    }
    /// Whether `key` is on the deny-list.
    async fn is_denied(&self, key: &str) -> Result<bool> {
        Ok(self.peek(key).await?.is_some())
    }

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;
}
