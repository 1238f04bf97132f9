//! Access tokens revoked before they expire (RFC 7009, code replays): their `jti` is
//! kept until shortly after the token would have expired anyway.

use time::OffsetDateTime;

use crate::Result;
use crate::session::SessionStore;

fn key(jti: &str) -> String {
    format!("jti-revoked:{jti}")
}

/// Puts the token `jti`, expiring at `exp` (Unix seconds), on the deny-list.
pub async fn deny(store: &dyn SessionStore, jti: &str, exp: i64, now: OffsetDateTime) -> Result<()> {
    // A minute beyond expiry covers the verification leeway.
    let ttl = (exp - now.unix_timestamp()).max(1) as u64 + 60;
    store.deny(&key(jti), ttl).await
}

/// Whether the token `jti` was revoked.
pub async fn is_denied(store: &dyn SessionStore, jti: &str) -> Result<bool> {
    store.is_denied(&key(jti)).await
}
