//! Typed identifiers.
//!
//! Every id is a short type prefix, an underscore and 32 lowercase hex digits, for example
//! `usr_0f3a9c…`: 128 random bits, except a [`RequestId`], whose first 12 digits are its
//! creation time in milliseconds and the other 20 random (80 bits). The prefix makes a
//! pasted id recognisable and lets [`FromStr`] refuse an order id where a user id was
//! expected.
//!
//! Request ids are time-ordered because they key the usage records: a random key scatters
//! every insert over the whole primary-key index, so a batch of records rewrote almost as
//! many index pages as it had rows; time-ordered keys append.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG only fails when the OS has no entropy source at all, in which case
    // nothing secure can run; failing loudly beats issuing predictable ids.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

fn random_hex() -> String {
    let mut out = String::with_capacity(HEX_LEN);
    push_hex(&mut out, &random_bytes::<{ HEX_LEN / 2 }>());
    out
}

/// Random bytes of a request id.
const TAIL_BYTES: usize = (HEX_LEN - 12) / 2;

thread_local! {
    /// The system RNG's bytes, fetched 4 KiB at a time: one request id per relayed request
    /// made one `getrandom` call each.
    static RANDOM_POOL: std::cell::RefCell<([u8; 4096], usize)> =
        const { std::cell::RefCell::new(([0; 4096], 4096)) };
}

fn pooled_random_tail() -> [u8; TAIL_BYTES] {
    RANDOM_POOL.with_borrow_mut(|(pool, used)| {
        if *used + TAIL_BYTES > pool.len() {
            *pool = random_bytes::<4096>();
            *used = 0;
        }
        let mut tail = [0u8; TAIL_BYTES];
        tail.copy_from_slice(&pool[*used..*used + TAIL_BYTES]);
        // Zeroed once handed out: bytes are never given twice, nor left to be read later.
        pool[*used..*used + TAIL_BYTES].fill(0);
        *used += TAIL_BYTES;
        tail
    })
}

/// 12 hex digits of milliseconds since the Unix epoch (48 bits: until the year 10889), then
/// 20 random digits.
fn time_ordered_hex() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut out = String::with_capacity(HEX_LEN);
    push_hex(&mut out, &(ms & 0xffff_ffff_ffff).to_be_bytes()[2..]);
    push_hex(&mut out, &pooled_random_tail());
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
        typed_id!($(#[$meta])* $name, $prefix, $kind, random_hex, "A new random id.");
    };
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal, $gen:ident, $new_doc:literal) => {
        $(#[$meta])*
        // Shared text: an id is cloned into every record, permit and event of a request,
        // and a clone of an `Arc<str>` is a counter increment, not an allocation.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The prefix ids of this kind start with (before the underscore).
            pub const PREFIX: &'static str = $prefix;

            #[doc = $new_doc]
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, $gen()).into())
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
                Ok(Self(s.into()))
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
    /// Time-ordered: the first 12 hex digits are the creation time in milliseconds.
    RequestId,
    "req",
    "request",
    time_ordered_hex,
    "A new id: the current time in milliseconds, then 80 random bits."
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
    fn request_ids_are_time_ordered_and_random_after_the_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        // More than one 4 KiB pool of random bytes.
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::new()).collect();
        let ms = |id: &RequestId| u128::from_str_radix(&id.as_str()[4..16], 16).unwrap();
        assert!(ms(&ids[0]) >= before && ms(&ids[0]) <= before + 60_000);
        for pair in ids.windows(2) {
            assert!(pair[0].as_str()[..16] <= pair[1].as_str()[..16], "{pair:?}");
            assert_ne!(pair[0].as_str()[16..], pair[1].as_str()[16..]);
            assert_eq!(pair[1].as_str().parse::<RequestId>().unwrap(), pair[1]);
        }
        let tails: std::collections::HashSet<&str> =
            ids.iter().map(|i| &i.as_str()[16..]).collect();
        assert_eq!(tails.len(), ids.len(), "every random tail differs");
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
