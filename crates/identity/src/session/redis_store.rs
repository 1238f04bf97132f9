//! Sessions in Redis, shared by every replica.
//!
//! Layout under the configured prefix: `s:<id>` (session JSON, with TTL), `u:<user>`
//! (set of session ids, the per-user index), `o:<key>` (one-time values), `c:<key>`
//! (counters), `m:<key>` (sets of members, e.g. the sessions of an upstream `sid`). Commands go through one multiplexed [`ConnectionManager`], created lazily
//! so Ponte starts (and reports not-ready) while Redis is away, and reconnects by itself.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, ExistenceCheck, SetExpiry, SetOptions};

use super::SessionStore;
use crate::{Error, Result};

/// A Redis-backed [`SessionStore`].
#[derive(Clone)]
pub struct RedisStore {
    manager: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`), keys under `prefix`. Does not connect yet.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        let client = Client::open(url).map_err(|e| Error::Invalid(format!("redis_url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { manager, prefix: prefix.to_owned() })
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Deletes every key under this store's prefix (tests clean up with this).
    pub async fn delete_all(&self) -> Result<()> {
        let mut conn = self.conn();
        let pattern = format!("{}*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<'_, String> = conn.scan_match(&pattern).await?;
            while let Some(item) = iter.next_item().await {
                keys.push(item?);
            }
        }
        if !keys.is_empty() {
            let _: () = conn.del(keys).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn insert(&self, id: &str, user_id: &str, value: &str, ttl: u64, index_ttl: u64) -> Result<()> {
        let index = self.key("u", user_id);
        let _: () = redis::pipe()
            .set_ex(self.key("s", id), value, ttl)
            .ignore()
            .sadd(&index, id)
            .ignore()
            .expire(&index, index_ttl as i64)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<String>> {
        Ok(self.conn().get(self.key("s", id)).await?)
    }

    async fn replace(&self, id: &str, value: &str, ttl: u64) -> Result<bool> {
        let options = SetOptions::default().conditional_set(ExistenceCheck::XX).with_expiration(SetExpiry::EX(ttl));
        let done: Option<String> = self.conn().set_options(self.key("s", id), value, options).await?;
        Ok(done.is_some())
    }

    async fn remove(&self, id: &str, user_id: &str) -> Result<()> {
        let _: () = redis::pipe()
            .del(self.key("s", id))
            .ignore()
            .srem(self.key("u", user_id), id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
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
        // One MULTI: the member and its expiry land together. NX gives a new set its TTL,
        // GT only ever extends an existing one.
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

    async fn incr(&self, key: &str, ttl: u64) -> Result<u64> {
        let key = self.key("c", key);
        // MULTI/EXEC: INCR never lands without its EXPIRE (a Ponte dying between the two
        // would leave a counter that counts for good). `NX` keeps the first window's end,
        // and gives one to a counter that somehow has none.
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
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }
}
