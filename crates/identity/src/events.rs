//! Events to the POS backend: each is a `webhook.fanout` job written in the transaction of
//! the change it reports; the worker fans it out to every webhook receiver and delivers it
//! signed. The event id lets a receiver drop duplicates (delivery is at least once).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::jobs::NewJob;

/// The job kind that fans an event out to the webhook receivers.
pub const WEBHOOK_FANOUT: &str = "webhook.fanout";

/// One event, exactly as receivers get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event (UUIDv7); the receiver's deduplication key.
    pub id: String,
    /// What happened, e.g. `integration.state_changed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// When it happened (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The facts, by type.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event of `type_` at `now`.
    pub fn new(type_: &str, data: serde_json::Value, now: OffsetDateTime) -> Self {
        Self { id: Uuid::now_v7().to_string(), type_: type_.to_owned(), created_at: now, data }
    }

    /// The `webhook.fanout` job that delivers it; enqueueing it twice adds nothing.
    pub fn fanout_job(&self) -> NewJob {
        NewJob::new(WEBHOOK_FANOUT, serde_json::json!({ "event": self })).idempotency_key(format!("event:{}", self.id))
    }

    /// The event a `webhook.fanout` job carries.
    pub fn from_payload(payload: &serde_json::Value) -> crate::Result<Self> {
        let event = payload.get("event").cloned().unwrap_or(serde_json::Value::Null);
        serde_json::from_value(event).map_err(|e| crate::Error::Corrupt(format!("event payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_event_survives_its_fanout_job_and_carries_its_id_as_the_key() {
        let now = OffsetDateTime::from_unix_timestamp(1_764_000_000).unwrap();
        let e = Event::new("integration.state_changed", serde_json::json!({"state": "active"}), now);
        let job = e.fanout_job();
        assert_eq!(job.kind, WEBHOOK_FANOUT);
        assert_eq!(job.idempotency_key.as_deref(), Some(format!("event:{}", e.id).as_str()));
        assert_eq!(job.payload["event"]["type"], "integration.state_changed");
        assert_eq!(Event::from_payload(&job.payload).unwrap(), e);
        assert!(Event::from_payload(&serde_json::json!({})).is_err());
        assert_ne!(Event::new("x", serde_json::Value::Null, now).id, e.id);
    }
}
