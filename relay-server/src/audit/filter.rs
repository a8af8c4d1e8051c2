//! Search filters and the input rules shared with [`AuditLog::record`](super::AuditLog::record).

use chrono::{DateTime, Utc};

use super::AuditError;

/// The most entries one page returns.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;

/// What to search for. Every field left `None` matches everything; results are newest
/// first.
///
/// Rules: `actor` and `target` are 1 to 200 characters without control characters;
/// `action` is 1 to 100 characters of `a-z`, `0-9`, `_` and `.`, starting with a letter;
/// `from <= to`; `limit` 1 to 500 (default 50).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// At or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Strictly before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only entries older than this id (the previous page's `next_before`).
    pub before: Option<i64>,
    /// Page size.
    pub limit: Option<u32>,
}

impl AuditFilter {
    /// Only entries by `actor`.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Only entries of `action`.
    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Only entries about `target`.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Only entries in `[from, to)`.
    pub fn with_range(mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        self.from = from;
        self.to = to;
        self
    }

    /// Page size (1 to 500).
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Older than this id (paging).
    pub fn with_before(mut self, before: i64) -> Self {
        self.before = Some(before);
        self
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_PAGE)
    }

    /// Check every field against the rules above.
    pub fn validate(&self) -> Result<(), AuditError> {
        if let Some(a) = &self.actor {
            check_name("actor", a)?;
        }
        if let Some(a) = &self.action {
            check_action(a)?;
        }
        if let Some(t) = &self.target {
            check_name("target", t)?;
        }
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(AuditError::Invalid {
                    field: "from",
                    reason: "must not be later than `to`".into(),
                });
            }
        }
        if let Some(b) = self.before {
            if b <= 0 {
                return Err(AuditError::Invalid {
                    field: "before",
                    reason: "must be a positive entry id".into(),
                });
            }
        }
        let limit = self.limit();
        if limit == 0 || limit > MAX_PAGE {
            return Err(AuditError::Invalid {
                field: "limit",
                reason: format!("must be 1 to {MAX_PAGE}, got {limit}"),
            });
        }
        Ok(())
    }
}

pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), AuditError> {
    let invalid = |reason: &str| AuditError::Invalid {
        field,
        reason: reason.into(),
    };
    if value.trim().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.chars().count() > 200 {
        return Err(invalid("must be at most 200 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

pub(crate) fn check_action(value: &str) -> Result<(), AuditError> {
    let invalid = |reason: String| AuditError::Invalid {
        field: "action",
        reason,
    };
    if value.is_empty() || value.len() > 100 {
        return Err(invalid("must be 1 to 100 characters".into()));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("must start with a lower-case letter".into()));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.'))
    {
        return Err(invalid(format!(
            "contains `{c}`; use a-z, 0-9, `_` and `.` (like `admin.wallet.adjust`)"
        )));
    }
    Ok(())
}
