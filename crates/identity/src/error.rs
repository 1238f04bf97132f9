//! The identity crate's error type.

/// What can go wrong in identity operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The relational store could not be reached (pool timeout, connection refused).
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// Any other database failure; its text is for logs only.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// The session store (Redis or in-process) could not be reached.
    #[error("session store unavailable: {0}")]
    SessionStoreUnavailable(String),
    /// Sealing or unsealing a secret failed (wrong master key, corrupt data).
    #[error("sealed secret could not be opened: {0}")]
    Seal(String),
    /// A token could not be signed or a key could not be built.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// Data in the store does not have the shape we wrote.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Too much work is already waiting (the password hashing queue is full): try again
    /// shortly.
    #[error("busy")]
    Busy,
    /// A value given by the caller is not acceptable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) { Error::DatabaseUnavailable(e) } else { Error::Database(e) }
    }
}

/// Whether a sqlx error means "the database is not there" rather than "the query failed".
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::SessionStoreUnavailable(e.to_string())
    }
}
