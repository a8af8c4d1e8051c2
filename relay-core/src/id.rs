//! Typed identifiers.
//!
//! Every id is a short type prefix, an underscore and 32 lowercase hex digits (128 random
//! bits), for example `usr_0f3a9c…`. The prefix makes a pasted id recognisable and lets
//! [`FromStr`] refuse an order id where a user id was expected.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id does not start with the expected prefix.
    #[error("expected an id starting with `{expected}_`, got `{got}`")]
    WrongPrefix {
        /// The prefix this id type uses.
        expected: &'static str,
        /// The input, shortened for display.
        got: String,
    },
    /// The part after the prefix is not 32 lowercase hex digits.
    #[error("`{got}` is not a valid {kind} id: expected `{prefix}_` followed by 32 lowercase hex digits")]
    Malformed {
        /// Human name of the id kind.
        kind: &'static str,
        /// The prefix this id type uses.
        prefix: &'static str,
        /// The input, shortened for display.
        got: String,
    },
}

const HEX_LEN: usize = 32;

fn shorten(s: &str) -> String {
    if s.chars().count() > 48 {
        let head: String = s.chars().take(45).collect();
        format!("{head}...")
    } else {
        s.to_owned()
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; HEX_LEN / 2];
    // The system RNG only fails when the OS has no entropy source at all, in which case
    // nothing secure can run; failing loudly beats issuing predictable ids.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    let mut out = String::with_capacity(HEX_LEN);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

fn parse(s: &str, prefix: &'static str, kind: &'static str) -> Result<(), IdError> {
    let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return Err(IdError::WrongPrefix {
            expected: prefix,
            got: shorten(s),
        });
    };
    let ok = rest.len() == HEX_LEN
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError::Malformed {
            kind,
            prefix,
            got: shorten(s),
        })
    }
}

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix ids of this kind start with (before the underscore).
            pub const PREFIX: &'static str = $prefix;

            /// A new random id.
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, random_hex()))
            }

            /// The id as text, prefix included.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse(s, $prefix, $kind)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// Identifies a user account.
    UserId, "usr", "user"
);
typed_id!(
    /// Identifies an API key (not the secret: the key's record).
    ApiKeyId, "key", "API key"
);
typed_id!(
    /// Identifies one version of a plan.
    PlanId, "plan", "plan"
);
typed_id!(
    /// Identifies a subscription.
    SubscriptionId, "sub", "subscription"
);
typed_id!(
    /// Identifies an invoice.
    InvoiceId, "inv", "invoice"
);
typed_id!(
    /// Identifies a payment order (what a provider is asked to collect).
    OrderId, "ord", "order"
);
typed_id!(
    /// Identifies one request through the gateway; also the idempotency key of its usage.
    RequestId, "req", "request"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_round_trip() {
        let id = UserId::new();
        assert!(id.as_str().starts_with("usr_"));
        assert_eq!(id.as_str().len(), 4 + HEX_LEN);
        let parsed: UserId = id.as_str().parse().unwrap();
        assert_eq!(parsed, id);
        assert_ne!(UserId::new(), UserId::new());
    }

    #[test]
    fn rejects_wrong_prefix() {
        let order = OrderId::new();
        let err = order.as_str().parse::<UserId>().unwrap_err();
        assert!(matches!(
            err,
            IdError::WrongPrefix {
                expected: "usr",
                ..
            }
        ));
        assert!(err.to_string().contains("usr_"));
    }

    #[test]
    fn rejects_malformed_bodies() {
        for bad in [
            "usr_",
            "usr_123",
            "usr_0123456789abcdef0123456789ABCDEF",
            "usr_0123456789abcdef0123456789abcdeg",
            "usr_0123456789abcdef0123456789abcdef0",
            "usr-0123456789abcdef0123456789abcdef",
            "",
            "usr_0123456789abcdef0123456789abcdé",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn long_input_is_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let msg = long.parse::<PlanId>().unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn serde_validates() {
        let id = RequestId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: RequestId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<RequestId>("\"req_nothex\"").is_err());
    }
}
