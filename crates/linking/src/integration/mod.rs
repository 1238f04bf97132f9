//! A company's e-invoicing integration: the state machine ([`machine`]), the status a POS
//! can show without guessing ([`status`]), its storage ([`store`], [`sql`]) and the use
//! cases that drive it ([`actions`]).
//!
//! Anything that reaches outside the database (a call to the invoicing platform, the
//! invite mail, the event to the POS backend) is a job enqueued in the transaction that
//! changes the state; the worker runs it and reports the outcome back as an [`Event`].

pub mod actions;
pub mod credentials;
pub mod machine;
pub mod sql;
pub mod status;
pub mod store;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use machine::{Effect, Event, Illegal, IntegrationState, Step, transition};
pub use store::{Applied, Change, Integrations};

use crate::company::CompanyData;
use crate::ids::{AccountId, CompanyId, UserId};

/// What a company is integrated with. One to start: the platform's digital invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationKind {
    /// Electronic invoicing through the platform ("Digital Invoice").
    DigitalInvoice,
}

impl IntegrationKind {
    /// Every kind.
    pub const ALL: [IntegrationKind; 1] = [Self::DigitalInvoice];

    /// The stored, path and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DigitalInvoice => "digital_invoice",
        }
    }

    /// Parses the spelling; `None` for a kind Ponte does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The platform account a company is (or is about to be) tied to, as the platform
/// described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformAccount {
    /// The platform's id for it.
    pub id: String,
    /// The name the platform knows it by.
    pub legal_name: String,
    /// Its owner's email, masked by the platform, if it said.
    pub owner_email: Option<String>,
}

/// One company's integration of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    /// The company's account.
    pub account_id: AccountId,
    /// The company.
    pub company_id: CompanyId,
    /// What it integrates.
    pub kind: IntegrationKind,
    /// Where it is.
    pub state: IntegrationState,
    /// Since when it is in that state.
    pub since: OffsetDateTime,
    /// The last error, while it matters (a failed attempt, a failed activation).
    pub last_error: Option<String>,
    /// When the next activation attempt is due, while one is scheduled.
    pub next_retry_at: Option<OffsetDateTime>,
    /// The platform account found, created or linked for it.
    pub platform_account: Option<PlatformAccount>,
    /// The company data last sent to (or reviewed for) the platform.
    pub platform_data: Option<CompanyData>,
    /// Who the collaboration invite goes to.
    pub invitee: Option<UserId>,
    /// Bumped by every change; the compare-and-set guard.
    pub version: i64,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// The job kinds the integration enqueues; the server's worker runs them.
pub mod jobs {
    /// Create a platform account for the company (`Effect::CreatePlatformAccount`).
    pub const CREATE_ACCOUNT: &str = "platform.create_account";
    /// Link the company to the existing platform account (`Effect::LinkPlatformAccount`).
    pub const LINK_ACCOUNT: &str = "platform.link_account";
    /// Activate the integration at the platform (`Effect::Activate`).
    pub const ACTIVATE: &str = "platform.activate";
    /// Check a company's platform credentials again (the platform was unavailable).
    pub const CHECK_CREDENTIALS: &str = "platform.check_credentials";
    /// The event to the POS backend's webhook receivers.
    pub const EVENT: &str = ponte_identity::events::WEBHOOK_FANOUT;
}
