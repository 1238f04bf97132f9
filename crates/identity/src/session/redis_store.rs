//! Sessions in Redis, shared by every replica: one node, or a Redis Cluster.
//!
//! Layout under the configured prefix: `s:<id>` (session JSON, with TTL), `u:<user>`
//! (set of session ids, the per-user index), `o:<key>` (one-time values), `c:<key>`
//! (counters), `m:<key>` (sets of members, e.g. the sessions of an upstream `sid`).
//!
//! Slot safety (Redis Cluster): every command, and every MULTI/EXEC, names one key only,
//! so none can span two slots. The one operation on two keys, a session and its user's
//! index, cannot share a slot (a session is looked up by its id alone, which says nothing
//! of its user), so it is two steps in an order that fails safe: the index entry is written
//! before the session and dropped after it. A failure in between leaves at most an index
//! entry without a session, which listing prunes, never a session that "end every session
//! of this user" cannot find. On one node the steps still go in one pipeline.
//!
//! Connections: one node goes through one multiplexed [`ConnectionManager`]; a cluster
//! through the crate's cluster connection (one multiplexed connection per node, topology
//! refreshed on `MOVED`), replaced whenever it reports itself broken. Both are created
//! lazily so Ponte starts (and reports not-ready) while Redis is away, and both reconnect
//! by themselves; while Redis is away every call fails with
//! [`Error::SessionStoreUnavailable`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncCommands, Client, Cmd, ErrorKind, ExistenceCheck, Pipeline, RedisError, RedisFuture, SetExpiry, SetOptions,
    Value,
};

use super::SessionStore;
use crate::{Error, Result};

/// The announcement that every session record changed (see [`RedisStore::changes_channel`]).
pub const ALL_SESSIONS: &str = "*";
/// What an announcement of a key put on the deny-list starts with (the key follows).
pub const DENIED_PREFIX: &str = "denied:";

/// Scheme of a Redis Cluster URL: `redis+cluster://[user:password@]host:port,host:port,…`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";
/// The TLS form of [`CLUSTER_SCHEME`], refused for now (see [`RedisStore::new`]).
pub const CLUSTER_TLS_SCHEME: &str = "redis+clusters://";

/// Bounds on one call, so a Redis that is away answers 503 quickly instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole cluster call, with its redirections and retries.
const CLUSTER_CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// A broken cluster connection is replaced at most this often (an outage fails every call).
const CLUSTER_RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A Redis-backed [`SessionStore`].
#[derive(Clone)]
pub struct RedisStore {
    backend: Backend,
    prefix: String,
    /// Whether session changes are announced on [`RedisStore::changes_channel`].
    announcing: bool,
}

#[derive(Clone)]
enum Backend {
    Single(ConnectionManager),
    Cluster(Arc<ClusterLink>),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Single(_) => "single node",
            Backend::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore").field("kind", &kind).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `url`, keys under `prefix`. Does not connect yet.
    ///
    /// `redis://host:port/db` is one node; `redis+cluster://host:port,host:port,…` a Redis
    /// Cluster reached through those seed nodes (credentials, if any, written once before
    /// the first node). `redis+clusters://` (TLS) is refused: this build has no TLS to Redis.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        let backend = if url.starts_with(CLUSTER_SCHEME) || url.starts_with(CLUSTER_TLS_SCHEME) {
            Backend::Cluster(Arc::new(ClusterLink::new(url)?))
        } else {
            let client = Client::open(url).map_err(|e| Error::Invalid(format!("redis_url: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            Backend::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(Self { backend, prefix: prefix.to_owned(), announcing: false })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// This store, announcing (`true`) every change and removal of a session record on
    /// [`RedisStore::changes_channel`], in the same MULTI/EXEC as the change, so that
    /// replicas caching records forget it. One node only (a cluster has no cache); the
    /// Redis user then needs `PUBLISH` and `SUBSCRIBE` on that channel.
    pub fn announcing(mut self, on: bool) -> Self {
        self.announcing = on && !self.is_cluster();
        self
    }

    /// The channel on which changes of session records are announced: the session's id,
    /// [`ALL_SESSIONS`] for all of them, [`DENIED_PREFIX`] and a key put on the deny-list,
    /// or a listener's heartbeat.
    pub fn changes_channel(&self) -> String {
        format!("{}session-changes", self.prefix)
    }

    /// Adds the announcement of a change to session `id` to `pipe`, made atomic, when
    /// this store announces.
    fn announce(&self, pipe: &mut Pipeline, id: &str) {
        if self.announcing {
            pipe.atomic().publish(self.changes_channel(), id).ignore();
        }
    }

    /// Publishes `payload` on the changes channel through this store's own connection (a
    /// listener's heartbeat): how many subscribers received it.
    pub async fn publish_change(&self, payload: &str) -> Result<u64> {
        let mut conn = self.conn();
        Ok(redis::cmd("PUBLISH").arg(self.changes_channel()).arg(payload).query_async(&mut conn).await?)
    }

    /// The full Redis key of a `kind:rest` key (prefix included), as stored.
    pub fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    fn conn(&self) -> Conn {
        match &self.backend {
            Backend::Single(manager) => Conn::Single(manager.clone()),
            Backend::Cluster(link) => Conn::Cluster(link.connection()),
        }
    }

    /// Runs `steps` in order, each step's commands together. On one node all steps go in
    /// one pipeline (one round trip); on a cluster each step is sent on its own, so steps
    /// may address different slots (each step must address one).
    async fn in_order(&self, steps: &[&Pipeline]) -> Result<()> {
        match &self.backend {
            Backend::Single(_) => {
                let mut all = redis::pipe();
                // A step that announces a change must not be split from it (MULTI/EXEC).
                if steps.iter().any(|step| step.is_transaction()) {
                    all.atomic();
                }
                for step in steps {
                    for cmd in step.cmd_iter() {
                        all.add_command(cmd.clone()).ignore();
                    }
                }
                let _: () = all.query_async(&mut self.conn()).await?;
            }
            Backend::Cluster(_) => {
                let mut conn = self.conn();
                for step in steps {
                    let _: () = step.query_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every key under this store's prefix (tests clean up with this). On a
    /// cluster, every primary is scanned and each key deleted on its own.
    pub async fn delete_all(&self) -> Result<()> {
        let pattern = format!("{}*", self.prefix);
        let mut conn = self.conn();
        let keys = match &mut conn {
            Conn::Single(manager) => {
                let mut keys: Vec<String> = Vec::new();
                let mut iter: redis::AsyncIter<'_, String> = manager.scan_match(&pattern).await?;
                while let Some(item) = iter.next_item().await {
                    keys.push(item?);
                }
                keys
            }
            Conn::Cluster(cluster) => cluster.scan_primaries(&pattern).await?,
        };
        match conn {
            Conn::Single(_) if !keys.is_empty() => {
                let _: () = conn.del(keys).await?;
                if self.announcing {
                    self.publish_change(ALL_SESSIONS).await?;
                }
            }
            Conn::Single(_) => {}
            Conn::Cluster(_) => {
                for key in keys {
                    let _: () = conn.del(key).await?;
                }
            }
        }
        Ok(())
    }
}

/// One connection for one call: a clone of the manager or of the cluster connection.
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(manager) => manager.req_packed_command(cmd),
            Conn::Cluster(cluster) => Box::pin(async move {
                let result = cluster.conn.req_packed_command(cmd).await;
                cluster.check(result)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(cluster) => Box::pin(async move {
                let result = cluster.conn.req_packed_commands(pipeline, offset, count).await;
                cluster.check(result)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(manager) => manager.get_db(),
            Conn::Cluster(cluster) => cluster.conn.get_db(),
        }
    }
}

/// A Redis Cluster client and its current connection.
///
/// The crate's cluster connection reconnects to nodes by itself and refreshes the slot map
/// on `MOVED`, but it has no connection manager above it: if it reports itself broken (its
/// driver gone, every node unreachable) it is replaced here by a fresh one, created lazily
/// like the single-node manager, at most once per [`CLUSTER_RECONNECT_EVERY`].
struct ClusterLink {
    client: ClusterClient,
    current: Mutex<Option<Current>>,
}

struct Current {
    generation: u64,
    conn: ClusterConnection,
    since: Instant,
}

impl ClusterLink {
    fn new(url: &str) -> Result<Self> {
        let nodes = cluster_nodes(url)?;
        let client = ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_CALL_TIMEOUT))
            .retries(2)
            .build()
            .map_err(|e| Error::Invalid(format!("redis_url: {e}")))?;
        Ok(Self { client, current: Mutex::new(None) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current connection, made (without waiting for it) if there is none yet.
    fn connection(self: &Arc<Self>) -> ClusterConn {
        let mut current = self.lock();
        let current = current.get_or_insert_with(|| Current {
            generation: 0,
            conn: self.client.get_pending_async_connection_with_config(Default::default()),
            since: Instant::now(),
        });
        ClusterConn { conn: current.conn.clone(), generation: current.generation, link: self.clone() }
    }

    /// Replaces connection `generation` after an error that says it is broken, unless it
    /// was replaced meanwhile or is too young to judge.
    fn broken(&self, generation: u64) {
        let mut current = self.lock();
        if let Some(now) = current.as_mut()
            && now.generation == generation
            && now.since.elapsed() >= CLUSTER_RECONNECT_EVERY
        {
            tracing::warn!("redis cluster connection broken; reconnecting through the seed nodes");
            *now = Current {
                generation: generation + 1,
                conn: self.client.get_pending_async_connection_with_config(Default::default()),
                since: Instant::now(),
            };
        }
    }
}

/// A clone of the cluster connection, with what it needs to report itself broken.
struct ClusterConn {
    conn: ClusterConnection,
    generation: u64,
    link: Arc<ClusterLink>,
}

impl ClusterConn {
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && means_broken(e)
        {
            self.link.broken(self.generation);
        }
        result
    }

    /// Whether the cluster serves: every primary this connection reaches answers and says
    /// `cluster_state:ok`. A PING would not do: nodes answer it while the cluster refuses
    /// every key (`CLUSTERDOWN`, a primary lost without a replica to take over), and the
    /// client leaves out of "every primary" the ones it has no connection to.
    async fn serves_every_slot(&mut self) -> Result<()> {
        let info = redis::cmd("CLUSTER").arg("INFO").clone();
        let everywhere = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let answer = self.conn.route_command(info, everywhere).await;
        let Value::Map(per_node) = self.check(answer)? else {
            return Err(Error::SessionStoreUnavailable("redis cluster: unexpected CLUSTER INFO answer".into()));
        };
        for (node, info) in per_node {
            let node: String = redis::from_redis_value(node).map_err(RedisError::from)?;
            let info: String = redis::from_redis_value(info).map_err(RedisError::from)?;
            if !info.lines().any(|line| line.trim_end() == "cluster_state:ok") {
                return Err(Error::SessionStoreUnavailable(format!("redis cluster: {node} reports the cluster down")));
            }
        }
        Ok(())
    }

    /// The keys matching `pattern` on every primary: SCAN goes to one node, so each
    /// primary is scanned to the end on its own.
    async fn scan_primaries(&mut self, pattern: &str) -> Result<Vec<String>> {
        let scan = |cursor: u64| redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500).clone();
        let everywhere = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let first = self.conn.route_command(scan(0), everywhere).await;
        let first = self.check(first)?;
        let Value::Map(per_node) = first else {
            return Err(Error::SessionStoreUnavailable(format!("redis cluster: unexpected SCAN answer {first:?}")));
        };
        let mut keys = Vec::new();
        for (node, page) in per_node {
            let node: String = redis::from_redis_value(node).map_err(RedisError::from)?;
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
                .ok_or_else(|| Error::SessionStoreUnavailable(format!("redis cluster: node address {node}")))?;
            let (mut cursor, found): (u64, Vec<String>) = redis::from_redis_value(page).map_err(RedisError::from)?;
            keys.extend(found);
            while cursor != 0 {
                let here = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                let page = self.conn.route_command(scan(cursor), here).await;
                let page = self.check(page)?;
                let (next, found): (u64, Vec<String>) = redis::from_redis_value(page).map_err(RedisError::from)?;
                keys.extend(found);
                cursor = next;
            }
        }
        Ok(keys)
    }
}

/// Whether an error from the cluster connection says the connection itself is unusable
/// (not merely a refused command): its driver is gone, or no node could be reached.
fn means_broken(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::Io | ErrorKind::ClusterConnectionNotFound)
}

/// The seed node URLs of a `redis+cluster://` URL, each as `redis://[userinfo@]host:port`.
fn cluster_nodes(url: &str) -> Result<Vec<String>> {
    let invalid = |why: &str| Error::Invalid(format!("redis_url: {why}"));
    if url.starts_with(CLUSTER_TLS_SCHEME) {
        return Err(invalid(
            "redis+clusters:// (TLS to a Redis Cluster) is not supported by this build; use redis+cluster:// \
             on a private network, or a TLS tunnel to the nodes",
        ));
    }
    let rest = url.strip_prefix(CLUSTER_SCHEME).ok_or_else(|| invalid("a cluster URL starts with redis+cluster://"))?;
    if rest.contains(['?', '#']) {
        return Err(invalid("a redis+cluster:// URL takes no query or fragment"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(path, "" | "0") {
        return Err(invalid("a Redis Cluster has only database 0: end the URL with the last node (or /0)"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for node in hosts.split(',') {
        let node = node.trim();
        let port = node.rsplit_once(':').map(|(_, port)| port);
        if node.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(invalid("redis+cluster:// needs comma-separated host:port seed nodes"));
        }
        nodes.push(match userinfo {
            Some(userinfo) => format!("redis://{userinfo}@{node}"),
            None => format!("redis://{node}"),
        });
    }
    Ok(nodes)
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn insert(&self, id: &str, user_id: &str, value: &str, ttl: u64, index_ttl: u64) -> Result<()> {
        let index = self.key("u", user_id);
        // The index entry first: a failure before the session is written leaves an entry
        // that listing prunes, never a session that revoking all of the user's misses.
        let mut indexed = redis::pipe();
        indexed.sadd(&index, id).expire(&index, index_ttl as i64);
        // Not announced: a new session's id is new, so no replica can have kept it.
        let mut stored = redis::pipe();
        stored.set_ex(self.key("s", id), value, ttl);
        self.in_order(&[&indexed, &stored]).await
    }

    async fn get(&self, id: &str) -> Result<Option<String>> {
        Ok(self.conn().get(self.key("s", id)).await?)
    }

    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool> {
        let options = SetOptions::default().conditional_set(ExistenceCheck::XX).with_expiration(SetExpiry::EX(ttl));
        let mut replaced = redis::pipe();
        replaced.set_options(self.key("s", id), value, options);
        self.announce(&mut replaced, id);
        let (done,): (Option<String>,) = replaced.query_async(&mut self.conn()).await?;
        Ok(done.is_some())
    }

    async fn remove(&self, id: &str, user_id: &str) -> Result<()> {
        // The session first, its index entry after (the mirror of `insert`).
        let mut ended = redis::pipe();
        ended.del(self.key("s", id));
        self.announce(&mut ended, id);
        let mut unindexed = redis::pipe();
        unindexed.srem(self.key("u", user_id), id);
        self.in_order(&[&ended, &unindexed]).await
    }

    async fn ids_for_user(&self, user_id: &str) -> Result<Vec<String>> {
        Ok(self.conn().smembers(self.key("u", user_id)).await?)
    }

    async fn put_once(&self, key: &str, value: &str, ttl: u64) -> Result<()> {
        let _: () = self.conn().set_ex(self.key("o", key), value, ttl).await?;
        Ok(())
    }

    async fn peek(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn().get(self.key("o", key)).await?)
    }

    async fn take_once(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn().get_del(self.key("o", key)).await?)
    }

    async fn put_if_absent(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        let options = SetOptions::default().conditional_set(ExistenceCheck::NX).with_expiration(SetExpiry::EX(ttl));
        let done: Option<String> = self.conn().set_options(self.key("o", key), value, options).await?;
        Ok(done.is_some())
    }

    async fn put_if_present(&self, key: &str, value: &str, ttl: u64) -> Result<bool> {
        let options = SetOptions::default().conditional_set(ExistenceCheck::XX).with_expiration(SetExpiry::EX(ttl));
        let done: Option<String> = self.conn().set_options(self.key("o", key), value, options).await?;
        Ok(done.is_some())
    }

    async fn add_member(&self, key: &str, member: &str, ttl: u64) -> Result<()> {
        let key = self.key("m", key);
        // One MULTI on one key: the member and its expiry land together. NX gives a new set
        // its TTL, GT only ever extends an existing one.
        let _: () = redis::pipe()
            .atomic()
            .sadd(&key, member)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .arg("NX")
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .arg("GT")
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn take_members(&self, key: &str) -> Result<Vec<String>> {
        let key = self.key("m", key);
        let (members,): (Vec<String>,) =
            redis::pipe().atomic().smembers(&key).del(&key).ignore().query_async(&mut self.conn()).await?;
        Ok(members)
    }

    async fn deny(&self, key: &str, ttl: u64) -> Result<()> {
        // Where `put_once` keeps it (what `is_denied` reads), announced with the write.
        let mut denied = redis::pipe();
        denied.set_ex(self.key("o", key), "1", ttl).ignore();
        self.announce(&mut denied, &format!("{DENIED_PREFIX}{key}"));
        let _: () = denied.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: u64) -> Result<u64> {
        let key = self.key("c", key);
        // MULTI/EXEC on one key: INCR never lands without its EXPIRE (a Ponte dying between
        // the two would leave a counter that counts for good). `NX` keeps the first window's
        // end, and gives one to a counter that somehow has none.
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .arg("NX")
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(count)
    }

    async fn ping(&self) -> Result<()> {
        match self.conn() {
            Conn::Cluster(mut cluster) => cluster.serves_every_slot().await,
            mut conn => {
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001, redis-3:7002/").unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001", "redis://redis-3:7002"]
        );
        assert_eq!(
            cluster_nodes("redis+cluster://ponte:s%40cret@a:1,[::1]:2/0").unwrap(),
            ["redis://ponte:s%40cret@a:1", "redis://ponte:s%40cret@[::1]:2"]
        );
    }

    #[test]
    fn malformed_cluster_urls_are_refused_without_echoing_them() {
        for url in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a,b:2",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1?protocol=3",
            "redis+cluster://user:hunter2@a:99999",
        ] {
            let Err(Error::Invalid(why)) = RedisStore::new(url, "p:") else { panic!("{url} accepted") };
            assert!(why.starts_with("redis_url: ") && !why.contains("hunter2"), "{why}");
        }
        let Err(Error::Invalid(why)) = RedisStore::new("redis+clusters://a:1,b:2", "p:") else { panic!() };
        assert!(why.contains("not supported"), "{why}");
    }

    #[tokio::test]
    async fn cluster_and_single_node_urls_pick_their_backend_without_connecting() {
        assert!(RedisStore::new("redis+cluster://127.0.0.1:1,127.0.0.1:2", "p:").unwrap().is_cluster());
        assert!(!RedisStore::new("redis://127.0.0.1:1/0", "p:").unwrap().is_cluster());
    }
}
