//! What is tied to what: accounts (tenants), their users and roles, and the audit trail.
//! Later: external-identity links, companies, integrations, invites and seats.
//!
//! Domain rules are plain functions on plain types. Storage is one small trait per
//! aggregate beside its domain, with its sqlx implementation next to it:
//! [`account::AccountStore`] and [`account::UserStore`] ([`account::sql`]),
//! [`audit::AuditLog`] ([`audit::sql`]), [`links::Links`].
//!
//! Use cases take those traits and return typed outcomes: [`login`] (password sign-in),
//! [`account::manage`] (user changes and what they end), [`federation`].

pub mod access;
pub mod account;
pub mod audit;
pub mod company;
pub mod email;
pub mod error;
pub mod federation;
pub mod ids;
pub mod integration;
pub mod invite;
pub mod links;
pub mod login;
pub mod recovery;
pub mod seats;
#[cfg(test)]
mod testing;

pub use error::{Error, Result};
