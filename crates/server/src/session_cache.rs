//! The session cache: session records this replica read lately, kept in memory so that a
//! page view or an SSO hop does not go to Redis every time. Only records that exist are
//! kept (a made-up cookie cannot fill memory), each as the JSON Redis holds.
//!
//! Beside them, the deny-list's answers (is this access token revoked?) this replica read
//! lately, so an introspection or an API call with a live token does not go to Redis
//! either. Only keys of tokens whose signature was checked are asked for, so a made-up
//! token costs no memory; each answer is kept by the same rules as a session record, and
//! putting a key on the deny-list is announced like a change of a session.
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
use ponte_identity::session::{DENIED_PREFIX, RedisStore, SessionStore};

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
    /// Session records by session id.
    sessions: Kept<String>,
    /// Whether a key is on the deny-list, by key.
    denials: Kept<bool>,
    hits: AtomicU64,
    loads: AtomicU64,
}

/// Values read from Redis lately, by key, each with the moment it was read.
#[derive(Debug, Default)]
struct Kept<V> {
    /// Bumped before every forget: a load that saw another value is not kept.
    generation: AtomicU64,
    entries: RwLock<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> Kept<V> {
    /// To read before a load, and to hand to [`Kept::keep`] after it.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn forget(&self, key: &str) {
        // Bump first: a load in flight then sees the change and is not kept.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn forget_everything(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The value kept for `key`, if read less than `ttl` ago.
    fn fresh(&self, key: &str, ttl: Duration) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let (value, at) = entries.get(key)?;
        (at.elapsed() < ttl).then(|| value.clone())
    }

    /// Keeps `value` for `key` if nothing was forgotten since `generation` was read.
    fn keep(&self, key: &str, value: V, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that every forget takes after bumping.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key.to_owned(), (value, Instant::now()));
    }

    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
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
    /// Session records kept now.
    pub entries: usize,
    /// Deny-list answers kept now.
    pub denials: usize,
}

impl SessionCache {
    /// A cache whose entries live at most `ttl` (zero: never used), kept in step by the
    /// changes `store` announces. It stays off until [`SessionCache::start_listening`].
    pub fn new(ttl: Duration, store: Arc<RedisStore>) -> Self {
        Self(Arc::new(Inner {
            ttl,
            store,
            listening: AtomicBool::new(false),
            sessions: Kept::default(),
            denials: Kept::default(),
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
        self.0.sessions.forget(id);
    }

    /// Forgets what was read of deny-list `key` (it was put on the list).
    pub fn forget_denial(&self, key: &str) {
        self.0.denials.forget(key);
    }

    /// Forgets every record and every deny-list answer.
    pub fn forget_everything(&self) {
        self.0.sessions.forget_everything();
        self.0.denials.forget_everything();
    }

    /// The counters.
    pub fn stats(&self) -> SessionCacheStats {
        SessionCacheStats {
            active: self.active(),
            hits: self.0.hits.load(Ordering::Relaxed),
            loads: self.0.loads.load(Ordering::Relaxed),
            entries: self.0.sessions.len(),
            denials: self.0.denials.len(),
        }
    }

    /// `kept`'s fresh value for `key` when the cache is in use, counted as a hit.
    fn hit<V: Clone>(&self, kept: &Kept<V>, key: &str) -> Option<V> {
        if !self.active() {
            return None;
        }
        let value = kept.fresh(key, self.0.ttl)?;
        self.0.hits.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// Reads `key` from Redis with `load` (counted), and keeps what `keep` says of the
    /// answer in `kept` unless it was forgotten meanwhile or the cache is not in use.
    async fn load<V: Clone, T>(
        &self,
        kept: &Kept<V>,
        key: &str,
        load: impl Future<Output = Result<T>>,
        keep: impl FnOnce(&T) -> Option<V>,
    ) -> Result<T> {
        self.0.loads.fetch_add(1, Ordering::Relaxed);
        let generation = kept.generation();
        let loaded = load.await?;
        if let Some(value) = keep(&loaded)
            && self.active()
        {
            kept.keep(key, value, generation);
        }
        Ok(loaded)
    }

    /// Runs `write` to `key` through this replica, forgetting what `kept` holds of it
    /// before and after (read-your-writes, without waiting for the change message).
    async fn write<V: Clone, T>(&self, kept: &Kept<V>, key: &str, write: impl Future<Output = Result<T>>) -> Result<T> {
        kept.forget(key);
        let done = write.await;
        kept.forget(key);
        done
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
        if let Some(record) = self.cache.hit(&self.cache.0.sessions, id) {
            return Ok(Some(record));
        }
        // Only records that exist are kept.
        self.cache.load(&self.cache.0.sessions, id, self.inner.get(id), |record| record.clone()).await
    }

    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool> {
        self.cache.write(&self.cache.0.sessions, id, self.inner.replace(id, value, ttl)).await
    }

    async fn remove(&self, id: &str, user_id: &str) -> Result<()> {
        self.cache.write(&self.cache.0.sessions, id, self.inner.remove(id, user_id)).await
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

    async fn deny(&self, key: &str, ttl: u64) -> Result<()> {
        self.cache.write(&self.cache.0.denials, key, self.inner.deny(key, ttl)).await
    }

    async fn is_denied(&self, key: &str) -> Result<bool> {
        if let Some(denied) = self.cache.hit(&self.cache.0.denials, key) {
            return Ok(denied);
        }
        self.cache.load(&self.cache.0.denials, key, self.inner.is_denied(key), |denied| Some(*denied)).await
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
        denied if denied.starts_with(DENIED_PREFIX) => cache.forget_denial(&denied[DENIED_PREFIX.len()..]),
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
        let sessions = &cache.0.sessions;
        let generation = sessions.generation();
        cache.forget("s1");
        sessions.keep("s1", "stale".to_owned(), generation);
        assert_eq!(cache.stats().entries, 0);
        sessions.keep("s1", "fresh".to_owned(), sessions.generation());
        assert_eq!(cache.hit(sessions, "s1").as_deref(), Some("fresh"));

        // The same for the deny-list: an answer read before the key was denied is dropped.
        let denials = &cache.0.denials;
        let generation = denials.generation();
        on_message(&cache, &format!("{DENIED_PREFIX}jti-revoked:j1"));
        denials.keep("jti-revoked:j1", false, generation);
        assert_eq!(cache.stats().denials, 0);
    }

    #[tokio::test]
    async fn deny_list_answers_are_kept_and_forgotten_when_a_key_is_denied() {
        let (store, cache) = cached(Duration::from_secs(60));
        cache.start_listening();
        assert!(!store.is_denied("jti-revoked:j1").await.unwrap());
        let loads = cache.stats().loads;
        assert!(!store.is_denied("jti-revoked:j1").await.unwrap());
        let stats = cache.stats();
        assert!(stats.denials == 1 && stats.loads == loads && stats.hits == 1, "{stats:?}");
        // Denied through this replica: read-your-writes, without waiting for the message.
        store.deny("jti-revoked:j1", 60).await.unwrap();
        assert!(store.is_denied("jti-revoked:j1").await.unwrap());
        assert!(store.is_denied("jti-revoked:j1").await.unwrap(), "a denial is kept too");

        // Denied elsewhere: only the message tells this replica.
        assert!(!store.is_denied("jti-revoked:j2").await.unwrap());
        store.inner.deny("jti-revoked:j2", 60).await.unwrap();
        assert!(!store.is_denied("jti-revoked:j2").await.unwrap(), "kept until the message");
        on_message(&cache, &format!("{DENIED_PREFIX}jti-revoked:j2"));
        assert!(store.is_denied("jti-revoked:j2").await.unwrap());

        cache.stop_listening();
        assert_eq!(cache.stats().denials, 0);
        store.inner.deny("jti-revoked:j3", 60).await.unwrap();
        assert!(store.is_denied("jti-revoked:j3").await.unwrap(), "not listening: read from the store");
    }
}
