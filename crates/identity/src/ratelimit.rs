//! Fixed-window rate limits kept in the session store, so every replica counts together.

use time::{Duration, OffsetDateTime};

use crate::Result;
use crate::secret::digest;
use crate::session::SessionStore;

/// At most `max` events per `window` for one subject.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Names the counter family, e.g. `login-email`.
    pub name: &'static str,
    /// Events allowed per window.
    pub max: u64,
    /// Window length.
    pub window: Duration,
}

impl RateLimit {
    /// Counts one event for `subject` and tells whether it is still within the limit.
    /// The subject is hashed so no address or email sits in the store in clear.
    pub async fn allow(&self, store: &dyn SessionStore, subject: &str, now: OffsetDateTime) -> Result<bool> {
        let window = self.window.whole_seconds().max(1);
        let slot = now.unix_timestamp().div_euclid(window);
        let key = format!("rl:{}:{}:{slot}", self.name, digest(subject));
        let count = store.incr(&key, window as u64 + 1).await?;
        Ok(count <= self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemoryStore;
    use time::macros::datetime;

    #[tokio::test]
    async fn allows_max_then_refuses_until_next_window() {
        let store = MemoryStore::new();
        let limit = RateLimit { name: "t", max: 3, window: Duration::minutes(1) };
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        for _ in 0..3 {
            assert!(limit.allow(&store, "a@example.com", t0).await.unwrap());
        }
        assert!(!limit.allow(&store, "a@example.com", t0).await.unwrap());
        assert!(limit.allow(&store, "b@example.com", t0).await.unwrap(), "other subjects are counted apart");
        assert!(limit.allow(&store, "a@example.com", t0 + Duration::minutes(1)).await.unwrap());
    }
}
