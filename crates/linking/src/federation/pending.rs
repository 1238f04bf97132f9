//! A pending link: a validated upstream identity waiting for its confirmation ("Continue")
//! or for proof of the existing account, one-time in the session store. A user's link
//! epoch voids every pending link of theirs at once (after an unlink).

use ponte_identity::federation::FLOW_TTL_SECS;
use ponte_identity::federation::flow::binding_matches;
use ponte_identity::ratelimit::RateLimit;
use ponte_identity::secret::{constant_time_eq, digest, random_bytes, random_token};
use ponte_identity::session::SessionStore;
use ponte_identity::upstream::UpstreamIdentity;
use serde::{Deserialize, Serialize};
use time::Duration;

use crate::ids::{AccountId, UserId};
use crate::{Error, Result};

/// Password or code attempts on one proof page.
pub const MAX_PROOF_ATTEMPTS: u64 = 5;
/// Proof attempts per user, across flows.
pub const PROOF_PER_USER: RateLimit = RateLimit { name: "link-proof", max: 10, window: Duration::minutes(15) };
/// How long a link epoch is remembered: longer than any pending link lives.
const EPOCH_TTL_SECS: u64 = 365 * 24 * 3600;
/// Length of a pending id (a 256-bit random token).
const ID_LEN: usize = 43;

/// What the person must do to make the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingKind {
    /// An admin connects an identity to their own user: confirm with "Continue".
    Confirm,
    /// Someone signed in upstream with the verified email of an existing user: prove it.
    ProveExisting,
}

/// A link waiting for "Continue" or proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// What it waits for.
    pub kind: PendingKind,
    /// The validated upstream identity.
    pub identity: UpstreamIdentity,
    /// The user's account.
    pub account_id: AccountId,
    /// The user it would be linked to.
    pub user_id: UserId,
    /// The admin session that started it (for [`PendingKind::Confirm`]).
    pub initiating_sid: Option<String>,
    /// Digest of the browser-binding cookie of the flow.
    pub binding: String,
    /// Where to go afterwards.
    pub return_to: String,
    /// Digest of the emailed code, once one was sent.
    pub code_digest: Option<String>,
    /// The user's link epoch when it was made; a later unlink voids it.
    pub epoch: u64,
}

fn pending_key(id: &str) -> String {
    format!("fedpending:{}", digest(id))
}

fn epoch_key(user: UserId) -> String {
    format!("linkepoch:{user}")
}

fn attempts_key(id: &str) -> String {
    format!("proof-attempts:{}", digest(id))
}

/// The user's current link epoch.
pub async fn link_epoch(store: &dyn SessionStore, user: UserId) -> Result<u64> {
    Ok(store.peek(&epoch_key(user)).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Voids every pending link of `user` (after an unlink): their epoch moves on.
pub async fn void_pending_links(store: &dyn SessionStore, user: UserId) -> Result<()> {
    let next = link_epoch(store, user).await? + 1;
    store.put_once(&epoch_key(user), &next.to_string(), EPOCH_TTL_SECS).await?;
    Ok(())
}

/// Stores a new pending link and returns its id.
pub async fn create(store: &dyn SessionStore, pending: &Pending) -> Result<String> {
    let id = random_token();
    save(store, &id, pending).await?;
    Ok(id)
}

/// Writes `pending` back under `id` (with a fresh TTL).
pub async fn save(store: &dyn SessionStore, id: &str, pending: &Pending) -> Result<()> {
    let json =
        serde_json::to_string(pending).map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(e.to_string())))?;
    store.put_once(&pending_key(id), &json, FLOW_TTL_SECS).await?;
    Ok(())
}

/// Rewrites a pending link that is still there; `false` if it was consumed meanwhile
/// (cancelled, or proved in a parallel request), which then stays consumed.
pub async fn update(store: &dyn SessionStore, id: &str, pending: &Pending) -> Result<bool> {
    let json =
        serde_json::to_string(pending).map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(e.to_string())))?;
    Ok(store.put_if_present(&pending_key(id), &json, FLOW_TTL_SECS).await?)
}

/// Consumes the pending link; `false` if someone else already did.
pub async fn take(store: &dyn SessionStore, id: &str) -> Result<bool> {
    Ok(store.take_once(&pending_key(id)).await?.is_some())
}

/// Loads a pending link for the browser presenting `binding_cookie`. Refused when unknown
/// or expired, started in another browser, or voided by an unlink since.
pub async fn load(
    store: &dyn SessionStore,
    id: &str,
    binding_cookie: Option<&str>,
) -> Result<std::result::Result<Pending, ponte_identity::federation::Refusal>> {
    use ponte_identity::federation::Refusal;
    if id.len() != ID_LEN {
        return Ok(Err(Refusal::FlowExpired));
    }
    let Some(json) = store.peek(&pending_key(id)).await? else { return Ok(Err(Refusal::FlowExpired)) };
    let pending: Pending = serde_json::from_str(&json)
        .map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(format!("pending link: {e}"))))?;
    if !binding_matches(&pending.binding, binding_cookie) {
        return Ok(Err(Refusal::FlowOtherBrowser));
    }
    if link_epoch(store, pending.user_id).await? != pending.epoch {
        return Ok(Err(Refusal::FlowExpired));
    }
    Ok(Ok(pending))
}

/// Counts one proof attempt on pending link `id` of `user`; `false` once either the
/// per-link cap or the per-user limit is passed. Counted atomically, so parallel posts
/// cannot exceed it.
pub async fn count_attempt(
    store: &dyn SessionStore,
    id: &str,
    user: UserId,
    now: time::OffsetDateTime,
) -> Result<bool> {
    let within = PROOF_PER_USER.allow(store, &user.to_string(), now).await?;
    let attempts = store.incr(&attempts_key(id), FLOW_TTL_SECS).await?;
    Ok(within && attempts <= MAX_PROOF_ATTEMPTS)
}

/// A fresh 8-digit code for pending link `id`, and the digest to keep of it.
pub fn new_code(id: &str) -> (String, String) {
    let code = format!("{:08}", u64::from_le_bytes(random_bytes::<8>()) % 100_000_000);
    let kept = code_digest(id, &code);
    (code, kept)
}

fn code_digest(id: &str, code: &str) -> String {
    digest(&format!("{id}:{}", code.trim()))
}

impl Pending {
    /// Whether `presented` is the code emailed for this pending link `id`.
    pub fn code_matches(&self, id: &str, presented: &str) -> bool {
        let presented = code_digest(id, presented);
        self.code_digest.as_ref().is_some_and(|d| constant_time_eq(d.as_bytes(), presented.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use ponte_identity::federation::Refusal;
    use ponte_identity::session::MemoryStore;
    use time::macros::datetime;

    use super::*;

    const NOW: time::OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

    fn pending(user: UserId, epoch: u64) -> Pending {
        Pending {
            kind: PendingKind::ProveExisting,
            identity: UpstreamIdentity {
                provider: "up".into(),
                issuer: "https://id.example".into(),
                subject: "s".into(),
                email: Some("anna@pos.test".into()),
                email_verified: true,
                name: None,
                auth_time: None,
                sid: None,
            },
            account_id: AccountId::new(),
            user_id: user,
            initiating_sid: None,
            binding: digest("cookie"),
            return_to: "/".into(),
            code_digest: None,
            epoch,
        }
    }

    #[tokio::test]
    async fn an_unlink_voids_pending_links_through_the_epoch() {
        let store = MemoryStore::new();
        let user = UserId::new();
        let id = create(&store, &pending(user, link_epoch(&store, user).await.unwrap())).await.unwrap();
        assert!(load(&store, &id, Some("cookie")).await.unwrap().is_ok());
        assert_eq!(load(&store, &id, Some("other")).await.unwrap(), Err(Refusal::FlowOtherBrowser));
        void_pending_links(&store, user).await.unwrap();
        assert_eq!(load(&store, &id, Some("cookie")).await.unwrap(), Err(Refusal::FlowExpired), "voided");
        let again = create(&store, &pending(user, link_epoch(&store, user).await.unwrap())).await.unwrap();
        assert!(load(&store, &again, Some("cookie")).await.unwrap().is_ok(), "a new flow after the unlink works");
        assert_eq!(load(&store, "short", Some("cookie")).await.unwrap(), Err(Refusal::FlowExpired));
    }

    #[tokio::test]
    async fn proof_attempts_are_capped_per_link_and_per_user() {
        let store = MemoryStore::new();
        let user = UserId::new();
        for _ in 0..MAX_PROOF_ATTEMPTS {
            assert!(count_attempt(&store, "link-1", user, NOW).await.unwrap());
        }
        assert!(!count_attempt(&store, "link-1", user, NOW).await.unwrap(), "the sixth on one link is refused");
        // 6 counted for the user so far; 4 more on another link stay within 10.
        for _ in 0..4 {
            assert!(count_attempt(&store, "link-2", user, NOW).await.unwrap());
        }
        assert!(!count_attempt(&store, "link-2", user, NOW).await.unwrap(), "the user's limit holds across links");
        assert!(count_attempt(&store, "link-3", UserId::new(), NOW).await.unwrap(), "other users are apart");
    }

    #[test]
    fn a_code_matches_only_its_own_link() {
        let (code, kept) = new_code("link-1");
        assert_eq!(code.len(), 8);
        let mut p = pending(UserId::new(), 0);
        assert!(!p.code_matches("link-1", &code), "no code sent yet");
        p.code_digest = Some(kept);
        assert!(p.code_matches("link-1", &code));
        assert!(p.code_matches("link-1", &format!(" {code} ")), "surrounding spaces are forgiven");
        assert!(!p.code_matches("link-2", &code), "bound to this pending link");
        assert!(!p.code_matches("link-1", "00000000") || code == "00000000");
    }
}
