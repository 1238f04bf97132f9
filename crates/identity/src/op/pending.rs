//! Authorization requests parked while the browser signs in or consents. Each lives
//! ten minutes under a random id that only the browser holds; the store keys it by digest.

use crate::Result;
use crate::oidc::AuthorizationRequest;
use crate::secret::{digest, random_token};
use crate::session::SessionStore;

/// How long a browser has to sign in or consent before the request is forgotten.
pub const PENDING_TTL_SECS: u64 = 600;

fn key(id: &str) -> String {
    format!("authz:{}", digest(id))
}

/// Whether `id` has the shape of a parked request's id (a 256-bit token); anything else
/// is never looked up.
pub fn is_pending_id(id: &str) -> bool {
    id.len() == 43 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parks `request` and returns its id.
pub async fn park(store: &dyn SessionStore, request: &AuthorizationRequest) -> Result<String> {
    let id = random_token();
    let json = serde_json::to_string(request).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
    store.put_once(&key(&id), &json, PENDING_TTL_SECS).await?;
    Ok(id)
}

/// Takes a parked request; only one caller ever gets it.
pub async fn take(store: &dyn SessionStore, id: &str) -> Result<Option<AuthorizationRequest>> {
    if !is_pending_id(id) {
        return Ok(None);
    }
    let Some(json) = store.take_once(&key(id)).await? else { return Ok(None) };
    Ok(serde_json::from_str(&json).ok())
}

/// Reads a parked request without consuming it (the login page's hint, federation's
/// step-up check).
pub async fn peek(store: &dyn SessionStore, id: &str) -> Result<Option<AuthorizationRequest>> {
    if !is_pending_id(id) {
        return Ok(None);
    }
    let Some(json) = store.peek(&key(id)).await? else { return Ok(None) };
    Ok(serde_json::from_str(&json).ok())
}
