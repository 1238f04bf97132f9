//! Ponte's events to the POS backend, as signed webhooks through the job queue.
//!
//! A state change enqueues one `webhook.fanout` job ([`fanout_job`], in the change's own
//! transaction). When it runs it lists the receivers and enqueues one `webhook.deliver`
//! job per receiver, keyed by event and receiver, so a fanout that runs twice adds
//! nothing. Each delivery POSTs the event's JSON, signed (see [`super::signing`]), and is
//! retried by the queue while the receiver is away or busy. The event id travels in
//! `Ponte-Event-Id` and in the body, so a receiver drops the duplicates that
//! at-least-once delivery brings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ponte_identity::clock::{Clock, to_unix};
use ponte_identity::jobs::{Job, JobFailure, JobStore, NewJob, SqlJobs};
use serde::Deserialize;
use serde_json::json;

use super::receivers::Receivers;
use super::signing::sign;
use crate::worker::registry::JobHandler;

/// Events and the job kind that turns one into one delivery per receiver live with the
/// job queue, so the domain crates can enqueue them in their own transactions.
pub use ponte_identity::events::{Event, WEBHOOK_FANOUT};
/// The job kind that delivers one event to one receiver.
pub const WEBHOOK_DELIVER: &str = "webhook.deliver";

/// How long one delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers of a delivery.
pub const HEADER_EVENT_ID: &str = "Ponte-Event-Id";
/// Unix seconds of the attempt, signed with the body.
pub const HEADER_TIMESTAMP: &str = "Ponte-Timestamp";
/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const HEADER_SIGNATURE: &str = "Ponte-Signature";

/// The `webhook.fanout` job of `event`; enqueueing it twice keeps one.
pub fn fanout_job(event: &Event) -> NewJob {
    event.fanout_job()
}

/// The `webhook.deliver` job of `event` to `receiver`.
pub fn deliver_job(event: &Event, receiver: &str) -> NewJob {
    NewJob::new(WEBHOOK_DELIVER, json!({ "event": event, "receiver": receiver }))
        .idempotency_key(format!("{}:{receiver}", event.id))
}

#[derive(Deserialize)]
struct FanoutPayload {
    event: Event,
}

#[derive(Deserialize)]
struct DeliverPayload {
    event: Event,
    receiver: String,
}

fn payload<T: serde::de::DeserializeOwned>(job: &Job) -> Result<T, JobFailure> {
    serde_json::from_value(job.payload.clone())
        .map_err(|e| JobFailure::Permanent(format!("{} payload unreadable: {e}", job.kind)))
}

/// The `webhook.fanout` handler.
#[derive(Debug, Clone)]
pub struct FanoutHandler {
    receivers: Arc<dyn Receivers>,
    jobs: Arc<SqlJobs>,
    clock: Arc<dyn Clock>,
}

impl FanoutHandler {
    /// Enqueues deliveries into `jobs` for the receivers of `receivers` at run time.
    pub fn new(receivers: Arc<dyn Receivers>, jobs: Arc<SqlJobs>, clock: Arc<dyn Clock>) -> Self {
        Self { receivers, jobs, clock }
    }
}

#[async_trait]
impl JobHandler for FanoutHandler {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        let FanoutPayload { event } = payload(job)?;
        let receivers =
            self.receivers.list().await.map_err(|e| JobFailure::Retry(format!("cannot list receivers: {e}")))?;
        for receiver in &receivers {
            self.jobs
                .enqueue(deliver_job(&event, &receiver.id), self.clock.now())
                .await
                .map_err(|e| JobFailure::Retry(format!("cannot enqueue the delivery to {}: {e}", receiver.id)))?;
        }
        tracing::debug!(event = %event.id, kind = %event.type_, receivers = receivers.len(), "webhook fanned out");
        Ok(())
    }
}

/// The `webhook.deliver` handler.
#[derive(Debug, Clone)]
pub struct DeliverHandler {
    receivers: Arc<dyn Receivers>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl DeliverHandler {
    /// Delivers with `http` (one client for every delivery: no redirects followed).
    pub fn new(receivers: Arc<dyn Receivers>, http: reqwest::Client, clock: Arc<dyn Clock>) -> Self {
        Self { receivers, http, clock }
    }
}

/// What a receiver's status means for the job: 2xx done; 408, 429 and 5xx may pass later;
/// anything else (another 4xx, a redirect, which is not followed) will not.
pub fn classify(status: u16) -> Result<(), JobFailure> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(JobFailure::Retry(format!("receiver answered {status}"))),
        300..=399 => Err(JobFailure::Permanent(format!("receiver answered {status}; redirects are not followed"))),
        _ => Err(JobFailure::Permanent(format!("receiver answered {status}"))),
    }
}

#[async_trait]
impl JobHandler for DeliverHandler {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        let DeliverPayload { event, receiver } = payload(job)?;
        let found = self
            .receivers
            .get_with_secret(&receiver)
            .await
            .map_err(|e| JobFailure::Retry(format!("cannot read receiver {receiver}: {e}")))?;
        let Some((target, secret)) = found else {
            tracing::info!(event = %event.id, receiver, "webhook receiver deleted since the event: not delivered");
            return Ok(());
        };
        // These exact bytes are signed and sent.
        let body = serde_json::to_vec(&event)
            .map_err(|e| JobFailure::Permanent(format!("cannot serialise the event: {e}")))?;
        let timestamp = to_unix(self.clock.now());
        let signature = sign(secret.expose().as_bytes(), timestamp, &body);
        let sent = self
            .http
            .post(&target.url)
            .timeout(DELIVERY_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_EVENT_ID, &event.id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(JobFailure::Permanent(format!("cannot send to {receiver}: {}", e.without_url())));
            }
            // Connection refused, reset, a timeout: the receiver may be back later.
            Err(e) => return Err(JobFailure::Retry(format!("cannot reach {receiver}: {}", e.without_url()))),
        };
        let status = response.status().as_u16();
        classify(status).map_err(|f| match f {
            JobFailure::Retry(m) => JobFailure::Retry(format!("{receiver}: {m}")),
            JobFailure::Permanent(m) => JobFailure::Permanent(format!("{receiver}: {m}")),
        })?;
        tracing::info!(event = %event.id, kind = %event.type_, receiver, status, "webhook delivered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn event() -> Event {
        Event::new("integration.activated", json!({"company_id": "c1"}), OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn an_event_serialises_with_type_and_an_rfc3339_instant_and_reads_back() {
        let e = event();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "integration.activated");
        assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["data"], json!({"company_id": "c1"}));
        assert_eq!(uuid::Uuid::parse_str(&e.id).unwrap().get_version_num(), 7);
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }

    #[test]
    fn jobs_are_keyed_by_event_and_by_event_and_receiver() {
        let e = event();
        let fanout = fanout_job(&e);
        assert_eq!((fanout.kind.as_str(), fanout.idempotency_key), (WEBHOOK_FANOUT, Some(format!("event:{}", e.id))));
        let deliver = deliver_job(&e, "pos");
        assert_eq!((deliver.kind.as_str(), deliver.idempotency_key), (WEBHOOK_DELIVER, Some(format!("{}:pos", e.id))));
        assert_eq!(serde_json::from_value::<Event>(deliver.payload["event"].clone()).unwrap(), e);
    }

    #[test]
    fn statuses_decide_between_done_retry_and_giving_up() {
        let retry = |s| matches!(classify(s), Err(JobFailure::Retry(_)));
        let permanent = |s| matches!(classify(s), Err(JobFailure::Permanent(_)));
        assert!([200, 202, 204].iter().all(|s| classify(*s).is_ok()));
        assert!([408, 429, 500, 502, 503, 504].into_iter().all(retry));
        assert!([301, 302, 400, 401, 403, 404, 410, 422].into_iter().all(permanent));
    }
}
