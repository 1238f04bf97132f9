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
    /// A value holds a character the database cannot store (PostgreSQL refuses NUL in
    /// text): bad input, never a server fault.
    #[error("text with a character that cannot be stored")]
    UnstorableText(#[source] sqlx::Error),
    /// A value given by the caller is not acceptable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            Error::DatabaseUnavailable(e)
        } else if is_unstorable_text(&e) {
            Error::UnstorableText(e)
        } else {
            Error::Database(e)
        }
    }
}

/// Whether a sqlx error means "the database is not there" rather than "the query failed":
/// no connection to be had, a connection lost, or the server going away under a query.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| is_unavailable_code(&code)),
        _ => false,
    }
}

/// SQLSTATE classes and codes (PostgreSQL) and result codes (SQLite) that mean the server
/// cannot serve now, however valid the query.
fn is_unavailable_code(code: &str) -> bool {
    // 08xxx: connection exception. 57P01 admin shutdown ("terminating connection due to
    // administrator command"), 57P02 crash shutdown, 57P03 cannot connect now, 57P04
    // database dropped, 57P05 idle session timeout. 53300: too many connections.
    // SQLite: SQLITE_BUSY (5) and its extended codes (recovery, snapshot, timeout), left
    // after the busy timeout ran out. Listed, not masked: PostgreSQL codes are digits too.
    code.starts_with("08") || code.starts_with("57P0") || matches!(code, "53300" | "5" | "261" | "517" | "773")
}

/// Whether PostgreSQL refused a text value it cannot store: 22021 (NUL, or bytes that are
/// not UTF-8) and 22P05 (not representable in the database's encoding).
fn is_unstorable_text(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "22021" || c == "22P05"))
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::SessionStoreUnavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_shutdown_codes_mean_unavailable() {
        for code in ["08006", "08001", "08P01", "57P01", "57P02", "57P03", "57P04", "53300", "5", "517", "261"] {
            assert!(is_unavailable_code(code), "{code}");
        }
        for code in ["23505", "22021", "22P05", "42P01", "40001", "57014", "1", "6", "2067"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }

    #[test]
    fn pool_and_io_failures_mean_unavailable() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(matches!(Error::from(sqlx::Error::RowNotFound), Error::Database(_)));
    }
}
