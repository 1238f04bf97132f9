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

    /// Seconds until the window that holds `now` ends: when a refused subject may try again.
    pub fn retry_after(&self, now: OffsetDateTime) -> u32 {
        let window = self.window.whole_seconds().max(1);
        let left = window - now.unix_timestamp().rem_euclid(window);
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// [`RateLimit::allow`] for a client address, counted per [`address_key`].
    pub async fn allow_address(&self, store: &dyn SessionStore, ip: &str, now: OffsetDateTime) -> Result<bool> {
        self.allow(store, &address_key(ip), now).await
    }
}

/// What a per-address limit counts: an IPv4 address as it is, an IPv6 address by its /64
/// (one customer line holds a whole /64, so counting single addresses would let one
/// client rotate through 2^64 of them).
pub fn address_key(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => ip.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemoryStore;
    use time::macros::datetime;

    #[test]
    fn ipv6_addresses_count_by_their_64_and_ipv4_as_they_are() {
        assert_eq!(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(address_key("2001:db8:1:2:bbbb:cccc:dddd:eeee"), address_key("2001:db8:1:2::9"));
        assert_ne!(address_key("2001:db8:1:2::1"), address_key("2001:db8:1:3::1"));
        assert_eq!(address_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key("192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key("unknown"), "unknown");
    }

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
        assert_eq!(limit.retry_after(t0), 60);
        assert_eq!(limit.retry_after(t0 + Duration::seconds(45)), 15);
    }
}
