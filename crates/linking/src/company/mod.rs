//! Companies of an account: the legal entities and points of sale that invoices are for.

pub mod fields;

pub use fields::*;
