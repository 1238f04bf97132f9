//! The events the invoicing platform sends to `POST /webhooks/platform` ([`super::inbound`]),
//! parsed, and the seam that acts on them ([`PlatformEventHandler`]).

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::problem::Problem;

/// What the platform reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformEventType {
    /// A collaboration invite was accepted on the platform's side.
    InviteAccepted,
    /// An activation of the integration is done.
    ActivationCompleted,
    /// A type this Ponte does not know: taken and ignored.
    Other(String),
}

impl PlatformEventType {
    /// From the `type` field.
    pub fn parse(s: &str) -> Self {
        match s {
            "invite.accepted" => Self::InviteAccepted,
            "activation.completed" => Self::ActivationCompleted,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The `type` field's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InviteAccepted => "invite.accepted",
            Self::ActivationCompleted => "activation.completed",
            Self::Other(s) => s,
        }
    }
}

/// The facts of a platform event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformEventData {
    /// The platform account (`pa_…`).
    pub account_id: String,
    /// The company's VAT number.
    pub vat_number: String,
    /// The Ponte invite id (`invite.accepted`, where it is required).
    pub reference: Option<String>,
    /// Who accepted, when the platform says.
    pub email: Option<String>,
    /// The platform's activation (`activation.completed`, where it is required).
    pub activation_id: Option<String>,
}

/// One event from the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformEvent {
    /// The platform's event id (`evt_…`): processed once.
    pub id: String,
    /// What happened.
    pub type_: PlatformEventType,
    /// When it happened on the platform.
    pub occurred_at: OffsetDateTime,
    /// Its facts.
    pub data: PlatformEventData,
}

/// A body that is not a platform event: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidEvent {
    /// The field, as a path (`data.account_id`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: &str, message: &str) -> InvalidEvent {
    InvalidEvent { field: field.to_owned(), message: message.to_owned() }
}

/// Ids and other short strings: not empty, at most this many characters.
const MAX_TEXT: usize = 256;

fn text(object: &serde_json::Map<String, Value>, prefix: &str, name: &str) -> Result<Option<String>, InvalidEvent> {
    let field = format!("{prefix}{name}");
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(bad(&field, "must not be empty")),
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT => Err(bad(&field, "is too long")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(&field, "must be a string")),
    }
}

fn required(object: &serde_json::Map<String, Value>, prefix: &str, name: &str) -> Result<String, InvalidEvent> {
    text(object, prefix, name)?.ok_or_else(|| bad(&format!("{prefix}{name}"), "is required"))
}

impl PlatformEvent {
    /// Parses a body, naming the first field that is missing or wrong. `reference` is
    /// required for `invite.accepted` and `activation_id` for `activation.completed`.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidEvent> {
        let value: Value = serde_json::from_slice(body).map_err(|_| bad("body", "is not JSON"))?;
        let Value::Object(top) = value else { return Err(bad("body", "must be a JSON object")) };
        let id = required(&top, "", "id")?;
        let type_ = PlatformEventType::parse(&required(&top, "", "type")?);
        let occurred_at = required(&top, "", "occurred_at")?;
        let occurred_at = OffsetDateTime::parse(&occurred_at, &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad("occurred_at", "must be an RFC 3339 instant"))?;
        let Some(Value::Object(data)) = top.get("data") else { return Err(bad("data", "must be an object")) };
        let data = PlatformEventData {
            account_id: required(data, "data.", "account_id")?,
            vat_number: required(data, "data.", "vat_number")?,
            reference: text(data, "data.", "reference")?,
            email: text(data, "data.", "email")?,
            activation_id: text(data, "data.", "activation_id")?,
        };
        match type_ {
            PlatformEventType::InviteAccepted if data.reference.is_none() => {
                return Err(bad("data.reference", "is required for invite.accepted"));
            }
            PlatformEventType::ActivationCompleted if data.activation_id.is_none() => {
                return Err(bad("data.activation_id", "is required for activation.completed"));
            }
            _ => {}
        }
        Ok(Self { id, type_, occurred_at, data })
    }
}

/// Acts on a platform event. Called at most once per event id that succeeds; an error
/// leaves the event unprocessed, so the platform's retry comes back here.
#[async_trait]
pub trait PlatformEventHandler: Send + Sync + std::fmt::Debug {
    /// Acts on `event`.
    async fn handle(&self, event: &PlatformEvent) -> Result<(), Problem>;
}

/// Takes every event and does nothing but log it: the default until the integration
/// handles them.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreEvents;

#[async_trait]
impl PlatformEventHandler for IgnoreEvents {
    async fn handle(&self, event: &PlatformEvent) -> Result<(), Problem> {
        tracing::info!(event = %event.id, kind = event.type_.as_str(), "platform event taken and ignored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn invite() -> Value {
        serde_json::json!({
            "id": "evt_1", "type": "invite.accepted", "occurred_at": "2026-12-01T10:00:00Z",
            "data": {"account_id": "pa_1", "vat_number": "IT01234567890", "reference": "inv_1", "email": "a@b.it"}
        })
    }

    fn field_of(v: Value) -> String {
        PlatformEvent::parse(&body(v)).unwrap_err().field
    }

    #[test]
    fn an_invite_accepted_event_parses() {
        let e = PlatformEvent::parse(&body(invite())).unwrap();
        assert_eq!((e.id.as_str(), &e.type_), ("evt_1", &PlatformEventType::InviteAccepted));
        assert_eq!(e.data.reference.as_deref(), Some("inv_1"));
        assert_eq!(e.data.activation_id, None);
        assert_eq!(e.occurred_at.unix_timestamp(), 1_796_119_200);
    }

    #[test]
    fn unknown_types_parse_as_other() {
        let mut v = invite();
        v["type"] = "invoice.sent".into();
        assert_eq!(PlatformEvent::parse(&body(v)).unwrap().type_, PlatformEventType::Other("invoice.sent".into()));
    }

    #[test]
    fn the_first_wrong_field_is_named() {
        assert_eq!(PlatformEvent::parse(b"{not json").unwrap_err().field, "body");
        assert_eq!(field_of(serde_json::json!([1])), "body");
        let mut v = invite();
        v.as_object_mut().unwrap().remove("id");
        assert_eq!(field_of(v), "id");
        let mut v = invite();
        v["occurred_at"] = "yesterday".into();
        assert_eq!(field_of(v), "occurred_at");
        let mut v = invite();
        v["data"]["account_id"] = 7.into();
        assert_eq!(field_of(v), "data.account_id");
        let mut v = invite();
        v["data"].as_object_mut().unwrap().remove("reference");
        assert_eq!(field_of(v), "data.reference");
        let mut v = invite();
        v["type"] = "activation.completed".into();
        assert_eq!(field_of(v), "data.activation_id");
        let mut v = invite();
        v["data"] = Value::Null;
        assert_eq!(field_of(v), "data");
    }
}
