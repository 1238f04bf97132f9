//! Authorization codes: what each stands for while it waits to be redeemed, and what
//! its redemption issued, so that a replay can revoke it (RFC 9700 §4.5).

use crate::oidc::{CodeGrant, RedeemedCode};
use crate::secret::{digest, random_token};
use crate::session::SessionStore;
use crate::{Error, Result};

/// How long an authorization code can wait to be redeemed.
pub const CODE_TTL_SECS: u64 = 60;

/// How long a redeemed code is remembered, to catch replays.
pub const REDEEMED_TTL_SECS: u64 = 600;

fn code_key(code: &str) -> String {
    format!("code:{}", digest(code))
}

fn redeemed_key(code: &str) -> String {
    format!("code-redeemed:{}", digest(code))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Issues a code for `grant`.
pub async fn issue(store: &dyn SessionStore, grant: &CodeGrant) -> Result<String> {
    let code = random_token();
    store.put_once(&code_key(&code), &encode(grant)?, CODE_TTL_SECS).await?;
    Ok(code)
}

/// Takes the grant a code stands for; only the first caller gets it.
pub async fn take(store: &dyn SessionStore, code: &str) -> Result<Option<CodeGrant>> {
    let Some(json) = store.take_once(&code_key(code)).await? else { return Ok(None) };
    serde_json::from_str(&json).map(Some).map_err(|e| Error::Corrupt(format!("code grant: {e}")))
}

/// Remembers what a code's redemption issued.
pub async fn remember_redemption(store: &dyn SessionStore, code: &str, redeemed: &RedeemedCode) -> Result<()> {
    store.put_once(&redeemed_key(code), &encode(redeemed)?, REDEEMED_TTL_SECS).await
}

/// What a code's first redemption issued, if it was redeemed lately (taken once: a
/// replay is answered once).
pub async fn take_redemption(store: &dyn SessionStore, code: &str) -> Result<Option<RedeemedCode>> {
    let Some(json) = store.take_once(&redeemed_key(code)).await? else { return Ok(None) };
    Ok(serde_json::from_str(&json).ok())
}
