//! The integration state machine, as DESIGN.md draws it: a pure function from a state and
//! an event to the next state and the effects the change causes. [`super::sql`] applies
//! it inside the write transaction; nothing here does I/O.
//!
//! Every action is idempotent: an event that asks for what already holds (disable when
//! disabled, confirm once the invite is out, …) is [`Step::Unchanged`], not an error.
//! An event that makes no sense in the state is refused with [`Illegal`], whose code
//! names the state.

use serde::{Deserialize, Serialize};

use super::PlatformAccount;

/// Where a company's integration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationState {
    /// Working: invoices flow.
    Active,
    /// Switched off (or never switched on); reactivate it with the reviewed company data.
    Disabled,
    /// The platform already has an account for the VAT number; an admin must "Continue".
    AwaitingConfirmation,
    /// A collaboration invite is out; it must be accepted with the linked external ID.
    InvitePending,
    /// The platform is activating it (a durable job, retried).
    Activating,
    /// Activation ran out of retries; `retry` starts it again.
    Failed,
}

impl IntegrationState {
    /// Every state, in the order of the happy path.
    pub const ALL: [IntegrationState; 6] =
        [Self::Disabled, Self::AwaitingConfirmation, Self::InvitePending, Self::Activating, Self::Active, Self::Failed];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::InvitePending => "invite_pending",
            Self::Activating => "activating",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The chain icon of the seed's company list: green only when active.
    pub fn is_linked(self) -> bool {
        self == Self::Active
    }
}

/// What happens to an integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An admin switches it off.
    Disable,
    /// An admin switches it back on with reviewed data; the platform was asked whether it
    /// already has an account for the VAT number.
    Reactivate {
        /// The account the platform has, if any.
        existing: Option<PlatformAccount>,
    },
    /// The admin's "Continue": link the company to the existing platform account.
    Confirm,
    /// The invitee accepted the collaboration invite (in Ponte, or on the platform's side).
    InviteAccepted,
    /// The platform reported the activation done.
    Activated,
    /// An activation attempt failed.
    ActivationFailed {
        /// What went wrong, for the status.
        error: String,
        /// No attempt is left (or the failure is permanent).
        exhausted: bool,
    },
    /// An admin retries a failed activation.
    Retry,
}

impl Event {
    /// The event's name in codes, audit entries and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Reactivate { .. } => "reactivate",
            Self::Confirm => "confirm",
            Self::InviteAccepted => "invite_accepted",
            Self::Activated => "activated",
            Self::ActivationFailed { .. } => "activation_failed",
            Self::Retry => "retry",
        }
    }
}

/// A consequence of a transition, carried out in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask the platform (a job) to create an account for the company.
    CreatePlatformAccount,
    /// Ask the platform (a job) to link the company to the account it already has.
    LinkPlatformAccount,
    /// Issue a collaboration invite to the invitee, revoking any earlier one, and mail it.
    IssueInvite,
    /// Revoke every pending invite of the integration.
    RevokeInvites,
    /// Ask the platform (a job) to activate the integration.
    Activate,
}

/// The outcome of an event that is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The event asked for what already holds: nothing changes.
    Unchanged,
    /// The integration moves to `to` (possibly the same state with new facts, e.g. a
    /// failed attempt that will be retried) and `effects` follow.
    Move {
        /// The next state.
        to: IntegrationState,
        /// The last error to show, if the step records one; any other step clears it.
        error: Option<String>,
        /// What must happen with the change.
        effects: Vec<Effect>,
    },
}

/// An event that makes no sense in the integration's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} an integration that is {}", state.as_str())]
pub struct Illegal {
    /// The state the integration is in.
    pub state: IntegrationState,
    /// The refused event's name.
    pub event: &'static str,
}

impl Illegal {
    /// The stable problem code, naming the state: `integration_is_<state>`.
    pub fn code(&self) -> &'static str {
        match self.state {
            IntegrationState::Active => "integration_is_active",
            IntegrationState::Disabled => "integration_is_disabled",
            IntegrationState::AwaitingConfirmation => "integration_is_awaiting_confirmation",
            IntegrationState::InvitePending => "integration_is_invite_pending",
            IntegrationState::Activating => "integration_is_activating",
            IntegrationState::Failed => "integration_is_failed",
        }
    }
}

/// The next step for `event` in `state`.
pub fn transition(state: IntegrationState, event: &Event) -> Result<Step, Illegal> {
    use Effect::*;
    use IntegrationState::*;
    let illegal = Err(Illegal { state, event: event.name() });
    let to = |to, effects: Vec<Effect>| Ok(Step::Move { to, error: None, effects });
    match (state, event) {
        (Disabled, Event::Disable) => Ok(Step::Unchanged),
        (_, Event::Disable) => to(Disabled, vec![RevokeInvites]),

        (Disabled, Event::Reactivate { existing: Some(_) }) => to(AwaitingConfirmation, vec![]),
        (Disabled, Event::Reactivate { existing: None }) => to(InvitePending, vec![CreatePlatformAccount, IssueInvite]),
        (AwaitingConfirmation | InvitePending | Activating | Active, Event::Reactivate { .. }) => Ok(Step::Unchanged),
        (Failed, Event::Reactivate { .. }) => illegal,

        (AwaitingConfirmation, Event::Confirm) => to(InvitePending, vec![LinkPlatformAccount, IssueInvite]),
        (InvitePending | Activating | Active, Event::Confirm) => Ok(Step::Unchanged),
        (Disabled | Failed, Event::Confirm) => illegal,

        (InvitePending, Event::InviteAccepted) => to(Activating, vec![Activate]),
        (Activating | Active, Event::InviteAccepted) => Ok(Step::Unchanged),
        (Disabled | AwaitingConfirmation | Failed, Event::InviteAccepted) => illegal,

        (Activating | Failed, Event::Activated) => to(Active, vec![]),
        (Active, Event::Activated) => Ok(Step::Unchanged),
        (Disabled | AwaitingConfirmation | InvitePending, Event::Activated) => illegal,

        (Activating, Event::ActivationFailed { error, exhausted }) => Ok(Step::Move {
            to: if *exhausted { Failed } else { Activating },
            error: Some(error.clone()),
            effects: vec![],
        }),
        (Failed, Event::ActivationFailed { .. }) => Ok(Step::Unchanged),
        (Disabled | AwaitingConfirmation | InvitePending | Active, Event::ActivationFailed { .. }) => illegal,

        (Failed, Event::Retry) => to(Activating, vec![Activate]),
        (Activating | Active, Event::Retry) => Ok(Step::Unchanged),
        (Disabled | AwaitingConfirmation | InvitePending, Event::Retry) => illegal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;
    use IntegrationState::*;

    fn account() -> PlatformAccount {
        PlatformAccount { id: "pa_1".into(), legal_name: "Bar Sport S.r.l.".into(), owner_email: None }
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Disable,
            Event::Reactivate { existing: Some(account()) },
            Event::Reactivate { existing: None },
            Event::Confirm,
            Event::InviteAccepted,
            Event::Activated,
            Event::ActivationFailed { error: "platform down".into(), exhausted: false },
            Event::ActivationFailed { error: "platform down".into(), exhausted: true },
            Event::Retry,
        ]
    }

    /// What every (state, event) pair must come to: `Ok(Some((to, effects)))` for a move,
    /// `Ok(None)` for unchanged, `Err(())` for refused. Written out in full, so a change
    /// to the machine must change this table too.
    fn expected(state: IntegrationState, event: &Event) -> Result<Option<(IntegrationState, Vec<Effect>)>, ()> {
        let mv = |to, fx: &[Effect]| Ok(Some((to, fx.to_vec())));
        let same = Ok(None);
        match event {
            Event::Disable => match state {
                Disabled => same,
                _ => mv(Disabled, &[RevokeInvites]),
            },
            Event::Reactivate { existing } => match state {
                Disabled if existing.is_some() => mv(AwaitingConfirmation, &[]),
                Disabled => mv(InvitePending, &[CreatePlatformAccount, IssueInvite]),
                Failed => Err(()),
                _ => same,
            },
            Event::Confirm => match state {
                AwaitingConfirmation => mv(InvitePending, &[LinkPlatformAccount, IssueInvite]),
                InvitePending | Activating | Active => same,
                Disabled | Failed => Err(()),
            },
            Event::InviteAccepted => match state {
                InvitePending => mv(Activating, &[Activate]),
                Activating | Active => same,
                _ => Err(()),
            },
            Event::Activated => match state {
                Activating | Failed => mv(Active, &[]),
                Active => same,
                _ => Err(()),
            },
            Event::ActivationFailed { exhausted, .. } => match state {
                Activating if *exhausted => mv(Failed, &[]),
                Activating => mv(Activating, &[]),
                Failed => same,
                _ => Err(()),
            },
            Event::Retry => match state {
                Failed => mv(Activating, &[Activate]),
                Activating | Active => same,
                _ => Err(()),
            },
        }
    }

    #[test]
    fn every_state_and_event_comes_to_what_the_table_says() {
        let mut checked = 0;
        for state in IntegrationState::ALL {
            for event in events() {
                let got = transition(state, &event).map(|step| match step {
                    Step::Unchanged => None,
                    Step::Move { to, effects, .. } => Some((to, effects)),
                });
                let want = expected(state, &event);
                match (&got, &want) {
                    (Ok(g), Ok(w)) => assert_eq!(g, w, "{} on {}", event.name(), state.as_str()),
                    (Err(e), Err(())) => {
                        assert_eq!(e.state, state);
                        assert_eq!(e.event, event.name());
                    }
                    _ => panic!("{} on {}: got {got:?}, want {want:?}", event.name(), state.as_str()),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 6 * 9);
    }

    #[test]
    fn a_refusal_names_the_state_in_its_code_and_message() {
        let e = transition(Disabled, &Event::Confirm).unwrap_err();
        assert_eq!(e.code(), "integration_is_disabled");
        assert_eq!(e.to_string(), "cannot confirm an integration that is disabled");
        for state in IntegrationState::ALL {
            let code = Illegal { state, event: "x" }.code();
            assert_eq!(code, format!("integration_is_{}", state.as_str()));
        }
    }

    #[test]
    fn a_failed_attempt_keeps_activating_with_its_error_until_the_last_one() {
        let step = transition(Activating, &Event::ActivationFailed { error: "503".into(), exhausted: false });
        assert_eq!(step, Ok(Step::Move { to: Activating, error: Some("503".into()), effects: vec![] }));
        let step = transition(Activating, &Event::ActivationFailed { error: "503".into(), exhausted: true });
        assert_eq!(step, Ok(Step::Move { to: Failed, error: Some("503".into()), effects: vec![] }));
    }

    #[test]
    fn the_seed_flow_runs_from_disabled_to_active() {
        let mut state = Active;
        for event in [
            Event::Disable,
            Event::Reactivate { existing: Some(account()) },
            Event::Confirm,
            Event::InviteAccepted,
            Event::Activated,
        ] {
            if let Ok(Step::Move { to, .. }) = transition(state, &event) {
                state = to;
            } else {
                panic!("{} refused or no-op in {}", event.name(), state.as_str());
            }
        }
        assert_eq!(state, Active);
    }

    #[test]
    fn states_round_trip_their_spelling() {
        for state in IntegrationState::ALL {
            assert_eq!(IntegrationState::parse(state.as_str()), Some(state));
        }
        assert_eq!(IntegrationState::parse("enabled"), None);
        assert!(Active.is_linked() && !Activating.is_linked());
    }
}
