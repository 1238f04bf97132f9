//! What is tied to what: accounts (tenants), their users and roles, and the audit trail.
//! Later: external-identity links, companies, integrations, invites and seats.
//!
//! Domain rules are plain functions on plain types; storage sits behind [`store::Directory`].

pub mod account;
pub mod audit;
pub mod email;
pub mod error;
pub mod federation;
pub mod ids;
pub mod links;
pub mod store;

pub use error::{Error, Result};
