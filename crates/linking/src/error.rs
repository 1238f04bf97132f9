//! The linking crate's error type.

use crate::company::FieldError;

/// What can go wrong in account and user operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such account or user (or not in the caller's account).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The email already belongs to a user.
    #[error("email already in use")]
    EmailTaken,
    /// Input broke a rule; `field` names what to fix.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, as named in the API.
        field: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// The change is well-formed but not allowed in the current state.
    #[error("{message}")]
    Conflict {
        /// Stable machine code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// Several fields broke their rules at once (a company form); each names its field.
    #[error("invalid fields: {}", .0.iter().map(|e| e.field).collect::<Vec<_>>().join(", "))]
    InvalidFields(Vec<FieldError>),
    /// Storage or crypto failure below.
    #[error(transparent)]
    Identity(#[from] ponte_identity::Error),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }
}

impl From<Vec<FieldError>> for Error {
    fn from(errors: Vec<FieldError>) -> Self {
        Self::InvalidFields(errors)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Identity(e.into())
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
