//! Errors of the SQL usage sink.

use super::UsageEvent;

/// What went wrong writing or reading usage records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database refused or could not be reached.
    #[error("usage database: {0}")]
    Database(#[from] sqlx::Error),
    /// The caller's input is not acceptable; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored value could not be read back (edited by hand or by another program).
    #[error("corrupt usage data: {0}")]
    Corrupt(String),
    /// The writer was already shut down.
    #[error("the usage writer is shut down")]
    Closed,
    /// Shutdown reached its deadline with events still unwritten (the database stayed
    /// unavailable); they are returned so the caller can keep them elsewhere.
    #[error("{} usage events could not be written before the shutdown deadline", events.len())]
    Unflushed {
        /// The events not written, in the order they were recorded.
        events: Vec<UsageEvent>,
    },
}

impl SinkError {
    /// Would retrying the same write possibly succeed? Connection problems, timeouts,
    /// locks and serialization failures are transient; constraint and data errors are not.
    pub fn is_transient(&self) -> bool {
        let SinkError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                !is_permanent_code(&code)
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Encode(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. } => false,
            _ => true,
        }
    }
}

/// Constraint and data errors: SQLite (extended) result codes 18 (too big), 19 (constraint), 20
/// (type mismatch), 25 (range) and their extended codes; PostgreSQL classes 22 (data
/// exception) and 23 (integrity constraint violation).
fn is_permanent_code(code: &str) -> bool {
    // SQLSTATEs are five characters (often all digits); SQLite codes are shorter numbers.
    if code.len() == 5 {
        return code.starts_with("22") || code.starts_with("23");
    }
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, 18 | 19 | 20 | 25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify() {
        assert!(is_permanent_code("19"));
        assert!(is_permanent_code("2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(is_permanent_code("1811")); // SQLITE_CONSTRAINT_TRIGGER
        assert!(!is_permanent_code("5")); // SQLITE_BUSY
        assert!(!is_permanent_code("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(is_permanent_code("22P02"));
        assert!(is_permanent_code("23505"));
        assert!(!is_permanent_code("40001"));
        assert!(!is_permanent_code("57P01"));
        assert!(SinkError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!SinkError::InvalidInput("x".into()).is_transient());
    }
}
