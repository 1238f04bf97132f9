//! One id type per entity, so an account id can never be passed where a user id goes.
//! Each is defined in the lowest crate that needs it; this one holds those that sessions,
//! tokens and refresh families carry.

/// Defines a UUIDv7 id newtype: parsed once at the edge, stored and sent as text.
#[macro_export]
macro_rules! entity_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(::uuid::Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(::uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0.as_hyphenated(), f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ::uuid::Uuid::try_parse(s).map(Self)
            }
        }
    };
}

entity_id!(
    /// Identifies an account (a POS customer, the tenant).
    AccountId
);
entity_id!(
    /// Identifies a user within an account.
    UserId
);
entity_id!(
    /// Identifies a job of the durable queue; also the idempotency key its handler hands
    /// to external systems.
    JobId
);
