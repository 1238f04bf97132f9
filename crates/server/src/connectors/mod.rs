//! Ponte's connectors to systems it does not own. Each is a trait (what Ponte needs from
//! the system) with an HTTP implementation whose contract is written in the README, so
//! the other side can implement it and tests can stand it up locally.

pub mod platform;

pub use platform::{Activation, Collaborator, HttpPlatform, Platform, PlatformAccount, PlatformError};
