//! Who you are: passwords, browser sessions, OAuth clients, signing keys and tokens.
//!
//! This crate knows nothing about HTTP. Time is always a parameter (see [`clock`]), so
//! expiry and rotation are tested without sleeping.

pub mod client;
pub mod clock;
pub mod db;
pub mod error;
pub mod events;
pub mod federation;
pub mod ids;
pub mod jobs;
pub mod keys;
pub mod oidc;
pub mod op;
pub mod outbox;
pub mod password;
pub mod ratelimit;
pub mod recovery;
pub mod refresh;
pub mod seal;
pub mod secret;
pub mod session;
pub mod signout;
pub mod text;
pub mod token;
pub mod upstream;

pub use error::{Error, Result};
