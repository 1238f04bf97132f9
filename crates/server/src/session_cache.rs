//! The session cache: session records this replica read lately, kept in memory so that a
//! page view or an SSO hop does not go to Redis every time. Only records that exist are
//! kept (a made-up cookie cannot fill memory), each as the JSON Redis holds.
//!
//! How it stays honest, with the directory cache's rules ([`crate::directory`]) on Redis:
//! - every write of a session record, by any replica or the CLI, publishes the session's id
//!   on the store's changes channel in the same pipeline as the write
//!   ([`RedisStore::changes_channel`]); each replica subscribes ([`listen`]) and forgets
//!   that id when the message arrives;
//! - a write through this replica forgets the id before and after it (read-your-writes,
//!   without waiting for the message);
//! - a load that raced with a forget is not kept (a generation counter, bumped before each
//!   forget and checked under the lock before each insert);
//! - while the subscription is not known to work (start-up, a lost connection) nothing is
//!   kept and every read goes to Redis: missed messages cannot leave stale entries; a
//!   subscription that dies silently is caught by a heartbeat within about 4 s;
//! - no entry is served once it is older than `session_cache_ttl_secs`, whatever happens
//!   (a session Redis evicted or flushed without a write of ours).
//!
//! A session is judged live from its record's own expiry times on every read, cached or
//! not. On a Redis Cluster, or with the in-process store, there is no cache.
//!
//! [`RedisStore::changes_channel`]: ponte_identity::session::RedisStore::changes_channel

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use ponte_identity::Result;
use ponte_identity::session::{RedisStore, SessionStore};

use crate::config::Secret;

/// Most records kept; beyond this the cache starts over (a bound on memory).
const MAX_ENTRIES: usize = 50_000;
/// The payload of a listener's heartbeat.
const HEARTBEAT: &str = "heartbeat";
/// Silence after which the subscription is probed.
const QUIET: Duration = Duration::from_secs(2);
/// How long the probe may take before the subscription counts as lost.
const PROBE: Duration = Duration::from_secs(1);
/// How long to wait before subscribing again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// This replica's session cache; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct SessionCache(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    /// The store whose changes are announced (and through which the heartbeat goes).
    store: Arc<RedisStore>,
    /// Set while change messages are being received; entries are used only then.
    listening: AtomicBool,
    /// Bumped before every forget: a load that saw another value is not kept.
    generation: AtomicU64,
    entries: RwLock<HashMap<String, (String, Instant)>>,
    hits: AtomicU64,
    loads: AtomicU64,
}

/// Counters of one session cache, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCacheStats {
    /// Whether entries are being used (subscribed, and a non-zero TTL).
    pub active: bool,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to Redis.
    pub loads: u64,
    /// Records kept now.
    pub entries: usize,
}

impl SessionCache {
    /// A cache whose entries live at most `ttl` (zero: never used), kept in step by the
    /// changes `store` announces. It stays off until [`SessionCache::start_listening`].
    pub fn new(ttl: Duration, store: Arc<RedisStore>) -> Self {
        Self(Arc::new(Inner {
            ttl,
            store,
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            entries: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }))
    }

    fn active(&self) -> bool {
        !self.0.ttl.is_zero() && self.0.listening.load(Ordering::Acquire)
    }

    /// Change messages are arriving from now on: entries may be kept (starting empty).
    pub fn start_listening(&self) {
        self.forget_everything();
        self.0.listening.store(true, Ordering::Release);
    }

    /// Change messages stopped: nothing is used until they resume.
    pub fn stop_listening(&self) {
        self.0.listening.store(false, Ordering::Release);
        self.forget_everything();
    }

    /// Forgets the record of session `id` (it changed).
    pub fn forget(&self, id: &str) {
        // Bump first: a load in flight then sees the change and is not kept.
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.entries.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Forgets every record.
    pub fn forget_everything(&self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.entries.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The counters.
    pub fn stats(&self) -> SessionCacheStats {
        SessionCacheStats {
            active: self.active(),
            hits: self.0.hits.load(Ordering::Relaxed),
            loads: self.0.loads.load(Ordering::Relaxed),
            entries: self.0.entries.read().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// The kept record of `id`, if fresh and the cache is in use.
    fn kept(&self, id: &str) -> Option<String> {
        if !self.active() {
            return None;
        }
        let entries = self.0.entries.read().unwrap_or_else(|e| e.into_inner());
        let (record, at) = entries.get(id)?;
        (at.elapsed() < self.0.ttl).then(|| record.clone())
    }

    /// Keeps `record` for `id` if nothing was forgotten since `generation` was read.
    fn keep(&self, id: &str, record: &str, generation: u64) {
        if !self.active() {
            return;
        }
        let mut entries = self.0.entries.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that every forget takes after bumping.
        if self.0.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(id.to_owned(), (record.to_owned(), Instant::now()));
    }
}

/// A [`SessionStore`] that answers session reads from a [`SessionCache`] and passes
/// everything else to the store beneath.
#[derive(Debug)]
pub struct CachedSessions {
    inner: Arc<dyn SessionStore>,
    cache: SessionCache,
}

impl CachedSessions {
    /// `inner` with reads of session records cached in `cache`.
    pub fn new(inner: Arc<dyn SessionStore>, cache: SessionCache) -> Self {
        Self { inner, cache }
    }
}

#[async_trait]
impl SessionStore for CachedSessions {
    async fn insert(&self, id: &str, user_id: &str, value: &str, ttl: u64, index_ttl: u64) -> Result<()> {
        // A new session's id is new: nothing kept can name it.
        self.inner.insert(id, user_id, value, ttl, index_ttl).await
    }

    async fn get(&self, id: &str) -> Result<Option<String>> {
        if let Some(record) = self.cache.kept(id) {
            self.cache.0.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(record));
        }
        self.cache.0.loads.fetch_add(1, Ordering::Relaxed);
        let generation = self.cache.0.generation.load(Ordering::Acquire);
        let record = self.inner.get(id).await?;
        if let Some(record) = &record {
            self.cache.keep(id, record, generation);
        }
        Ok(record)
    }

    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool> {
        self.cache.forget(id);
        let done = self.inner.replace(id, value, ttl).await;
        self.cache.forget(id);
        done
    }

    async fn remove(&self, id: &str, user_id: &str) -> Result<()> {
        self.cache.forget(id);
        let done = self.inner.remove(id, user_id).await;
        self.cache.forget(id);
        done
    }

    async fn ids_for_user(&self, user_id: &str) -> Result<Vec<String>> {
        self.inner.ids_for_user(user_id).await
    }

    async fn put_once(&self, key: &str, value: &str, ttl: u64) -> Result<()> {
        self.inner.put_once(key, value, ttl).await
    }

    async fn peek(&self, key: &str) -> Result<Option<String>> {
        self.inner.peek(key).await
    }

    async fn take_once(&self, key: &str) -> Result<Option<String>> {
        self.inner.take_once(key).await
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        self.inner.put_if_absent(key, value, ttl).await
    }

    async fn put_if_present(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        self.inner.put_if_present(key, value, ttl).await
    }

    async fn add_member(&self, key: &str, member: &str, ttl: u64) -> Result<()> {
        self.inner.add_member(key, member, ttl).await
    }

    async fn take_members(&self, key: &str) -> Result<Vec<String>> {
        self.inner.take_members(key).await
    }

    async fn incr(&self, key: &str, ttl: u64) -> Result<u64> {
        self.inner.incr(key, ttl).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// Keeps `cache` in step with Redis for as long as the process runs (a task of its own):
/// subscribes to its channel on `url` and forgets each session named there.
pub async fn listen(cache: SessionCache, url: Secret) {
    let channel = cache.0.store.changes_channel();
    let mut failing = false;
    loop {
        if let Err(e) = listen_once(&cache, url.expose(), &channel, &mut failing).await {
            // Said once per outage, not at every retry.
            if !failing {
                tracing::warn!(error = %e, "session cache: change messages lost; reading sessions from Redis until they resume");
            }
            failing = true;
        }
        cache.stop_listening();
        tokio::time::sleep(RETRY).await;
    }
}

async fn listen_once(
    cache: &SessionCache,
    url: &str,
    channel: &str,
    failing: &mut bool,
) -> std::result::Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let connect = async {
        let mut subscriber = client.get_async_pubsub().await?;
        subscriber.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(subscriber)
    };
    let mut subscriber = match tokio::time::timeout(PROBE * 2, connect).await {
        Ok(connected) => connected.map_err(|e| e.to_string())?,
        Err(_) => return Err("subscribing took too long".into()),
    };
    // Only now: every change from here on will be announced.
    cache.start_listening();
    if std::mem::take(failing) {
        tracing::info!("session cache: change messages resumed");
    }
    let mut messages = subscriber.on_message();
    loop {
        let message = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(message) => message,
            Err(_quiet) => {
                // Publish to ourselves through the store's own connection (the server the
                // changes are announced on): it must count our subscriber, and the
                // heartbeat (or any other message) must come back over the subscription.
                match tokio::time::timeout(PROBE, cache.0.store.publish_change(HEARTBEAT)).await {
                    Ok(Ok(0)) => return Err("the server announcing changes does not know this subscriber".into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("Redis stopped answering the heartbeat".into()),
                }
                match tokio::time::timeout(PROBE, messages.next()).await {
                    Ok(message) => message,
                    Err(_) => return Err("the heartbeat did not come back".into()),
                }
            }
        };
        match message {
            Some(message) => on_message(cache, &message.get_payload::<String>().unwrap_or_default()),
            None => return Err("the subscription closed".into()),
        }
    }
}

/// What one message's payload means to the cache.
fn on_message(cache: &SessionCache, payload: &str) {
    match payload {
        HEARTBEAT => {}
        // Session ids are base64url digests; anything else (`*`, or what this version does
        // not know) forgets everything, which is always safe.
        id if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
            cache.forget(id)
        }
        _ => cache.forget_everything(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponte_identity::session::{ALL_SESSIONS, MemoryStore};

    /// A store that is never connected to (created lazily): the cache's unit tests only
    /// need its changes channel.
    fn announcer() -> Arc<RedisStore> {
        Arc::new(RedisStore::new("redis://127.0.0.1:1/", "unit:").unwrap())
    }

    fn cached(ttl: Duration) -> (CachedSessions, SessionCache) {
        let cache = SessionCache::new(ttl, announcer());
        (CachedSessions::new(Arc::new(MemoryStore::new()), cache.clone()), cache)
    }

    #[tokio::test]
    async fn nothing_is_kept_until_listening_then_reads_are_answered_from_memory() {
        let (store, cache) = cached(Duration::from_secs(60));
        store.insert("s1", "u1", "{\"v\":1}", 60, 60).await.unwrap();
        assert_eq!(store.get("s1").await.unwrap().as_deref(), Some("{\"v\":1}"));
        assert_eq!(cache.stats().entries, 0, "not listening: nothing kept");
        cache.start_listening();
        store.get("s1").await.unwrap();
        assert_eq!(store.get("s1").await.unwrap().as_deref(), Some("{\"v\":1}"));
        let stats = cache.stats();
        assert!(stats.active && stats.entries == 1 && stats.hits == 1, "{stats:?}");
        assert_eq!(store.get("unknown").await.unwrap(), None);
        assert_eq!(cache.stats().entries, 1, "absent sessions are not kept");
        cache.stop_listening();
        assert_eq!(cache.stats().entries, 0);
    }

    #[tokio::test]
    async fn own_writes_and_messages_forget_and_old_entries_are_not_served() {
        let (store, cache) = cached(Duration::from_secs(60));
        cache.start_listening();
        store.insert("s1", "u1", "one", 60, 60).await.unwrap();
        store.get("s1").await.unwrap();
        store.replace("s1", "two", 60).await.unwrap();
        assert_eq!(store.get("s1").await.unwrap().as_deref(), Some("two"), "read-your-writes");
        store.remove("s1", "u1").await.unwrap();
        assert_eq!(store.get("s1").await.unwrap(), None);

        store.insert("s2", "u1", "kept", 60, 60).await.unwrap();
        store.get("s2").await.unwrap();
        assert_eq!(cache.stats().entries, 1);
        on_message(&cache, HEARTBEAT);
        assert_eq!(cache.stats().entries, 1, "a heartbeat forgets nothing");
        on_message(&cache, "s2");
        assert_eq!(cache.stats().entries, 0);
        store.get("s2").await.unwrap();
        on_message(&cache, ALL_SESSIONS);
        assert_eq!(cache.stats().entries, 0);

        let (store, cache) = cached(Duration::from_millis(1));
        cache.start_listening();
        store.insert("s3", "u1", "x", 60, 60).await.unwrap();
        store.get("s3").await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let before = cache.stats().hits;
        store.get("s3").await.unwrap();
        assert_eq!(cache.stats().hits, before, "past its TTL an entry is read again");
    }

    #[tokio::test]
    async fn a_load_that_raced_with_a_forget_is_not_kept() {
        let cache = SessionCache::new(Duration::from_secs(60), announcer());
        cache.start_listening();
        let generation = cache.0.generation.load(Ordering::Acquire);
        cache.forget("s1");
        cache.keep("s1", "stale", generation);
        assert_eq!(cache.stats().entries, 0);
        cache.keep("s1", "fresh", cache.0.generation.load(Ordering::Acquire));
        assert_eq!(cache.kept("s1").as_deref(), Some("fresh"));
    }
}
