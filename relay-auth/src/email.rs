//! Email addresses: validated and normalised once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not an acceptable email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing was given.
    #[error("email address is empty")]
    Empty,
    /// Longer than 254 characters.
    #[error("email address is longer than 254 characters")]
    TooLong,
    /// No `@`, or more than one.
    #[error("email address must contain exactly one `@`")]
    At,
    /// Nothing before the `@`, or more than 64 characters.
    #[error("the part before `@` must be 1 to 64 characters")]
    LocalLength,
    /// A character not allowed before the `@`.
    #[error("the part before `@` contains `{0}`, which is not allowed")]
    LocalChar(char),
    /// A dot at the start or end before the `@`, or two dots in a row.
    #[error("the part before `@` may not start or end with a dot or contain `..`")]
    LocalDots,
    /// The domain is malformed.
    #[error("the domain `{0}` is not valid: expected something like example.com")]
    Domain(String),
}

/// A syntactically valid email address, lower-cased (addresses are compared
/// case-insensitively, which is what every mail provider users meet does).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

const LOCAL_SPECIALS: &str = ".!#$%&'*+/=?^_`{|}~-";

impl Email {
    /// Validate and normalise `input` (surrounding whitespace is ignored).
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let mut parts = s.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::At);
        };
        if local.is_empty() || local.len() > 64 {
            return Err(EmailError::LocalLength);
        }
        if let Some(c) = local
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(*c)))
        {
            return Err(EmailError::LocalChar(c));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(EmailError::LocalDots);
        }
        if !valid_domain(domain) {
            return Err(EmailError::Domain(domain.chars().take(64).collect()));
        }
        Ok(Email(s.to_ascii_lowercase()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
    labels.iter().all(label_ok) && tld_ok
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

impl std::str::FromStr for Email {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Self, EmailError> {
        Email::parse(s)
    }
}

impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, EmailError> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let e = Email::parse("  Alice.Smith+relay@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "alice.smith+relay@example.com");
        assert!(Email::parse("a@b.co").is_ok());
        assert!(Email::parse("x_y-z@sub.mail-host.example.org").is_ok());
    }

    #[test]
    fn rejects_malformed_with_a_reason() {
        let cases: &[(&str, EmailError)] = &[
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            ("alice", EmailError::At),
            ("a@b@c.com", EmailError::At),
            ("@example.com", EmailError::LocalLength),
            (
                &format!("{}@example.com", "a".repeat(65)),
                EmailError::LocalLength,
            ),
            ("al ice@example.com", EmailError::LocalChar(' ')),
            ("al:ice@example.com", EmailError::LocalChar(':')),
            ("élise@example.com", EmailError::LocalChar('é')),
            (".alice@example.com", EmailError::LocalDots),
            ("al..ice@example.com", EmailError::LocalDots),
            ("alice@", EmailError::Domain(String::new())),
            ("alice@localhost", EmailError::Domain("localhost".into())),
            ("alice@-ex.com", EmailError::Domain("-ex.com".into())),
            ("alice@ex..com", EmailError::Domain("ex..com".into())),
            ("alice@example.c", EmailError::Domain("example.c".into())),
            (
                "alice@example.123",
                EmailError::Domain("example.123".into()),
            ),
            (
                "alice@exa_mple.com",
                EmailError::Domain("exa_mple.com".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Email::parse(input).as_ref(), Err(want), "{input:?}");
            assert!(!want.to_string().is_empty());
        }
        let long = format!("a@{}.com", "b".repeat(260));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
        let e: Email = serde_json::from_str("\"A@B.io\"").unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"a@b.io\"");
    }
}
