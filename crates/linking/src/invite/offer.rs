//! The fallback offer (the seed's "no email arrived"): right after a sign-in with the
//! external ID an invite went to, its pending invites are offered on a page. The offer
//! lives ten minutes in the session store under the digest of a random id, bound to the
//! Ponte session the sign-in opened and to the upstream identity that signed in; only
//! that session may use it, and only as that identity.

use ponte_identity::secret::{digest, random_token};
use ponte_identity::session::SessionStore;
use ponte_identity::upstream::UpstreamIdentity;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How long an offer can be taken up.
pub const OFFER_TTL_SECS: u64 = 600;

/// Invites offered to one fresh sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The Ponte session the sign-in opened; only it may use the offer.
    pub session_id: String,
    /// Who signed in upstream (issuer, subject, email and whether it is verified).
    pub identity: UpstreamIdentity,
    /// Where "not now" goes.
    pub return_to: String,
}

fn key(id: &str) -> String {
    format!("invoffer:{}", digest(id))
}

/// Whether `id` has the shape of an offer id (a 256-bit token); anything else is never
/// looked up.
pub fn is_offer_id(id: &str) -> bool {
    id.len() == 43 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keeps `offer` and returns its id.
pub async fn make(store: &dyn SessionStore, offer: &Offer) -> Result<String> {
    let id = random_token();
    let json =
        serde_json::to_string(offer).map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(e.to_string())))?;
    store.put_once(&key(&id), &json, OFFER_TTL_SECS).await?;
    Ok(id)
}

fn parse(json: &str) -> Result<Offer> {
    serde_json::from_str(json).map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(format!("offer: {e}"))))
}

/// The offer `id`, if it exists and was made for `session_id`.
pub async fn load(store: &dyn SessionStore, id: &str, session_id: Option<&str>) -> Result<Option<Offer>> {
    let Some(session_id) = session_id.filter(|_| is_offer_id(id)) else { return Ok(None) };
    let Some(json) = store.peek(&key(id)).await? else { return Ok(None) };
    Ok(Some(parse(&json)?).filter(|o| o.session_id == session_id))
}

/// Takes the offer `id` once, if it was made for `session_id`. An offer shown to another
/// session is left as it was, so a stranger holding the id cannot spend it.
pub async fn take(store: &dyn SessionStore, id: &str, session_id: Option<&str>) -> Result<Option<Offer>> {
    if load(store, id, session_id).await?.is_none() {
        return Ok(None);
    }
    let Some(json) = store.take_once(&key(id)).await? else { return Ok(None) };
    Ok(Some(parse(&json)?).filter(|o| Some(o.session_id.as_str()) == session_id))
}

#[cfg(test)]
mod tests {
    use ponte_identity::session::MemoryStore;

    use super::*;

    fn offer() -> Offer {
        Offer {
            session_id: "sess-1".into(),
            identity: UpstreamIdentity {
                provider: "up".into(),
                issuer: "https://id.example".into(),
                subject: "s-1".into(),
                email: Some("mario.rossi@gruppo.it".into()),
                email_verified: true,
                name: None,
                auth_time: None,
                sid: None,
            },
            return_to: "/".into(),
        }
    }

    #[tokio::test]
    async fn an_offer_is_used_once_and_only_by_its_session() {
        let store = MemoryStore::new();
        let id = make(&store, &offer()).await.unwrap();
        assert!(is_offer_id(&id));
        assert_eq!(load(&store, &id, Some("sess-2")).await.unwrap(), None, "another session sees nothing");
        assert_eq!(take(&store, &id, Some("sess-2")).await.unwrap(), None);
        assert_eq!(take(&store, &id, None).await.unwrap(), None, "nor does a browser without a session");
        assert_eq!(load(&store, &id, Some("sess-1")).await.unwrap(), Some(offer()), "a stranger did not spend it");
        assert_eq!(take(&store, &id, Some("sess-1")).await.unwrap(), Some(offer()));
        assert_eq!(take(&store, &id, Some("sess-1")).await.unwrap(), None, "used once");
        assert_eq!(load(&store, "short", Some("sess-1")).await.unwrap(), None);
    }
}
