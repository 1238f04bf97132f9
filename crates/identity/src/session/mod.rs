//! Browser sessions: opaque ids, idle and absolute expiry, per-user listing and revocation.
//!
//! The cookie carries a 256-bit random token; the store only ever sees its SHA-256
//! digest, which is also the session's public id (safe to list and to name in a URL).
//! Expiry is decided here against the injected clock; the store's own TTL only collects
//! garbage.

mod memory;
mod redis_store;
mod store;

pub use memory::MemoryStore;
pub use redis_store::{ALL_SESSIONS, DENIED_PREFIX, RedisStore};
pub use store::SessionStore;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::clock::{from_unix, to_unix};
use crate::ids::{AccountId, UserId};
use crate::secret::{digest, random_token};
use crate::{Error, Result};

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session unused for this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, however busy.
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self { idle: Duration::minutes(30), absolute: Duration::hours(12) }
    }
}

/// What a new session is about.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The signed-in user.
    pub user_id: UserId,
    /// The user's account (tenant).
    pub account_id: AccountId,
    /// Authentication methods used (`pwd`, or an upstream provider id).
    pub amr: Vec<String>,
    /// The browser's User-Agent at sign-in, for the session list.
    pub user_agent: Option<String>,
    /// The client address at sign-in, for the session list.
    pub ip: Option<String>,
}

/// A live session as the rest of Ponte sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Public id: the digest of the cookie token.
    pub id: String,
    /// The signed-in user.
    pub user_id: UserId,
    /// The user's account.
    pub account_id: AccountId,
    /// Authentication methods used.
    pub amr: Vec<String>,
    /// When the user signed in.
    pub created_at: OffsetDateTime,
    /// Last time the session was seen (to the touch granularity).
    pub last_seen_at: OffsetDateTime,
    /// When the session ends if unused.
    pub idle_expires_at: OffsetDateTime,
    /// When the session ends regardless.
    pub absolute_expires_at: OffsetDateTime,
    /// User-Agent at sign-in.
    pub user_agent: Option<String>,
    /// Client address at sign-in.
    pub ip: Option<String>,
}

/// The cookie value: the only copy of the secret is in the browser.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

impl SessionToken {
    /// The value to put in the cookie.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The public id of the session a cookie token names.
pub fn session_id_for(token: &str) -> String {
    digest(token)
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    user_id: UserId,
    account_id: AccountId,
    amr: Vec<String>,
    created_at: i64,
    last_seen_at: i64,
    idle_expires_at: i64,
    absolute_expires_at: i64,
    user_agent: Option<String>,
    ip: Option<String>,
}

impl Record {
    fn into_session(self, id: String) -> Session {
        Session {
            id,
            user_id: self.user_id,
            account_id: self.account_id,
            amr: self.amr,
            created_at: from_unix(self.created_at),
            last_seen_at: from_unix(self.last_seen_at),
            idle_expires_at: from_unix(self.idle_expires_at),
            absolute_expires_at: from_unix(self.absolute_expires_at),
            user_agent: self.user_agent,
            ip: self.ip,
        }
    }

    fn is_live(&self, now: i64) -> bool {
        now < self.idle_expires_at && now < self.absolute_expires_at
    }

    /// Seconds until the store may forget this record.
    fn ttl(&self, now: i64) -> u64 {
        (self.idle_expires_at.min(self.absolute_expires_at) - now).max(1) as u64
    }
}

/// Sessions are only rewritten when seen again after this long, to spare the store.
const TOUCH_EVERY_SECS: i64 = 60;

/// Session lifecycle over any [`SessionStore`].
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    policy: SessionPolicy,
}

impl Sessions {
    /// Sessions kept in `store` under `policy`.
    pub fn new(store: Arc<dyn SessionStore>, policy: SessionPolicy) -> Self {
        Self { store, policy }
    }

    /// The store beneath, for readiness checks and flow state.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Starts a session and returns the token for the cookie.
    pub async fn create(&self, new: NewSession, now: OffsetDateTime) -> Result<(SessionToken, Session)> {
        let token = random_token();
        let id = session_id_for(&token);
        let now_s = to_unix(now);
        let absolute = to_unix(now + self.policy.absolute);
        let record = Record {
            user_id: new.user_id,
            account_id: new.account_id,
            amr: new.amr,
            created_at: now_s,
            last_seen_at: now_s,
            idle_expires_at: to_unix(now + self.policy.idle).min(absolute),
            absolute_expires_at: absolute,
            user_agent: new.user_agent.map(|s| s.chars().take(256).collect()),
            ip: new.ip,
        };
        let json = encode(&record)?;
        let ttl = record.ttl(now_s);
        self.store
            .insert(&id, &record.user_id.to_string(), &json, ttl, self.policy.absolute.whole_seconds().max(1) as u64)
            .await?;
        Ok((SessionToken(token), record.into_session(id)))
    }

    /// The live session a cookie token names, extending its idle expiry.
    pub async fn get(&self, token: &str, now: OffsetDateTime) -> Result<Option<Session>> {
        let id = session_id_for(token);
        self.get_by_id(&id, now).await
    }

    async fn get_by_id(&self, id: &str, now: OffsetDateTime) -> Result<Option<Session>> {
        let Some(json) = self.store.get(id).await? else {
            return Ok(None);
        };
        let mut record: Record = decode(&json)?;
        let now_s = to_unix(now);
        if !record.is_live(now_s) {
            self.store.remove(id, &record.user_id.to_string()).await?;
            return Ok(None);
        }
        if now_s - record.last_seen_at >= TOUCH_EVERY_SECS {
            record.last_seen_at = now_s;
            record.idle_expires_at = to_unix(now + self.policy.idle).min(record.absolute_expires_at);
            let ttl = record.ttl(now_s);
            // Only if still there: a concurrent logout must not be undone by a touch.
            if !self.store.replace(id, &encode(&record)?, ttl).await? {
                return Ok(None);
            }
        }
        Ok(Some(record.into_session(id.to_owned())))
    }

    /// Replaces the session a token names with a new id carrying the same data (used when
    /// privileges change). The old token stops working.
    pub async fn rotate(&self, token: &str, now: OffsetDateTime) -> Result<Option<(SessionToken, Session)>> {
        let Some(old) = self.get(token, now).await? else {
            return Ok(None);
        };
        self.store.remove(&old.id, &old.user_id.to_string()).await?;
        let new_token = random_token();
        let id = session_id_for(&new_token);
        let now_s = to_unix(now);
        let record = Record {
            user_id: old.user_id,
            account_id: old.account_id,
            amr: old.amr,
            created_at: to_unix(old.created_at),
            last_seen_at: now_s,
            idle_expires_at: to_unix(now + self.policy.idle).min(to_unix(old.absolute_expires_at)),
            absolute_expires_at: to_unix(old.absolute_expires_at),
            user_agent: old.user_agent,
            ip: old.ip,
        };
        let ttl = record.ttl(now_s);
        let index_ttl = (record.absolute_expires_at - now_s).max(1) as u64;
        self.store.insert(&id, &record.user_id.to_string(), &encode(&record)?, ttl, index_ttl).await?;
        Ok(Some((SessionToken(new_token), record.into_session(id))))
    }

    /// The user's live sessions, newest first.
    pub async fn list_for_user(&self, user: UserId, now: OffsetDateTime) -> Result<Vec<Session>> {
        let now_s = to_unix(now);
        let user_id = user.to_string();
        let user_id = user_id.as_str();
        let mut sessions = Vec::new();
        for id in self.store.ids_for_user(user_id).await? {
            match self.store.get(&id).await? {
                Some(json) => {
                    let record: Record = decode(&json)?;
                    if record.user_id != user {
                        continue;
                    }
                    if record.is_live(now_s) {
                        sessions.push(record.into_session(id));
                    } else {
                        self.store.remove(&id, user_id).await?;
                    }
                }
                None => self.store.remove(&id, user_id).await?,
            }
        }
        sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(sessions)
    }

    /// Ends one session of a user; `false` if there was no such live session.
    pub async fn revoke(&self, user: UserId, session_id: &str) -> Result<bool> {
        let Some(json) = self.store.get(session_id).await? else {
            return Ok(false);
        };
        let record: Record = decode(&json)?;
        if record.user_id != user {
            return Ok(false);
        }
        self.store.remove(session_id, &user.to_string()).await?;
        Ok(true)
    }

    /// Ends the session a cookie token names, if any.
    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        let id = session_id_for(token);
        if let Some(json) = self.store.get(&id).await? {
            let record: Record = decode(&json)?;
            self.store.remove(&id, &record.user_id.to_string()).await?;
        }
        Ok(())
    }

    /// Ends every session of a user; returns how many there were.
    pub async fn revoke_all_for_user(&self, user: UserId) -> Result<usize> {
        let user_id = user.to_string();
        let ids = self.store.ids_for_user(&user_id).await?;
        for id in &ids {
            self.store.remove(id, &user_id).await?;
        }
        Ok(ids.len())
    }
}

fn encode(record: &Record) -> Result<String> {
    serde_json::to_string(record).map_err(|e| Error::Corrupt(e.to_string()))
}

fn decode(json: &str) -> Result<Record> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("session record: {e}")))
}
