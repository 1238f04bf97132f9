//! Upstream federation, the identity half: the one-time flow state ([`flow`]) and the
//! steps that start and complete a flow and end sessions on back-channel logout
//! ([`service`]). The linking crate decides what a validated identity leads to.

pub mod flow;
pub mod service;

pub use flow::{FLOW_TTL_SECS, FLOWS_PER_IP, Flow, Initiator, Intent, Refusal, check_return_to};
pub use service::{
    CallbackParams, Completion, StartOutcome, StartRequest, accept_logout, begin, complete, end_upstream_session,
    remember_upstream_session,
};
