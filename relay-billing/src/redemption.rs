//! Redemption codes: random, typed easily, single use.

use chrono::{DateTime, Utc};
use relay_core::{Money, UserId};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// Characters a code is made of: no 0/O, 1/I/L, so a code read aloud or off paper is
/// typed right. 31 symbols, 16 per code: about 79 bits.
pub const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const GROUPS: usize = 4;
const GROUP_LEN: usize = 4;

/// One code, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedemptionCode {
    /// The code in canonical form (`XXXX-XXXX-XXXX-XXXX`).
    pub code: String,
    /// The batch it was generated in.
    pub batch_id: String,
    /// What it credits to the wallet.
    pub value: Money,
    /// After this it cannot be redeemed.
    pub expires_at: Option<DateTime<Utc>>,
    /// Who redeemed it.
    pub redeemed_by: Option<UserId>,
    /// When.
    pub redeemed_at: Option<DateTime<Utc>>,
}

/// `count` fresh random codes in canonical form.
pub fn generate(count: usize) -> Result<Vec<String>> {
    let rng = SystemRandom::new();
    let mut out = Vec::with_capacity(count);
    // Rejection sampling keeps every symbol equally likely: bytes >= 248 (8 × 31) are
    // drawn again rather than folded onto the first symbols.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    for _ in 0..count {
        let mut symbols = Vec::with_capacity(GROUPS * GROUP_LEN);
        while symbols.len() < GROUPS * GROUP_LEN {
            let mut buf = [0u8; 32];
            rng.fill(&mut buf)
                .map_err(|_| BillingError::Store("system random generator failed".into()))?;
            for b in buf {
                if b < limit && symbols.len() < GROUPS * GROUP_LEN {
                    symbols.push(ALPHABET[usize::from(b) % ALPHABET.len()]);
                }
            }
        }
        let groups: Vec<String> = symbols
            .chunks(GROUP_LEN)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        out.push(groups.join("-"));
    }
    Ok(out)
}

/// Canonical form of a typed code: upper case, separators and spaces ignored. Anything
/// else is an input error (so a typo never looks up a different code).
pub fn normalize(input: &str) -> Result<String> {
    let symbols: Vec<u8> = input
        .bytes()
        .filter(|b| !matches!(b, b'-' | b' ' | b'\t'))
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if symbols.len() != GROUPS * GROUP_LEN || !symbols.iter().all(|b| ALPHABET.contains(b)) {
        return Err(BillingError::InvalidInput(
            "a redemption code is 16 characters from 2-9 and A-Z without I, L, O (dashes optional)"
                .into(),
        ));
    }
    let groups: Vec<String> = symbols
        .chunks(GROUP_LEN)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    Ok(groups.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_canonical_and_distinct() {
        let codes = generate(500).unwrap_or_default();
        assert_eq!(codes.len(), 500);
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), 500);
        for c in &codes {
            assert_eq!(normalize(c).ok().as_deref(), Some(c.as_str()));
            assert_eq!(
                normalize(&c.to_lowercase().replace('-', ""))
                    .ok()
                    .as_deref(),
                Some(c.as_str())
            );
        }
    }

    #[test]
    fn ambiguous_or_malformed_input_is_rejected() {
        for bad in [
            "",
            "ABCD",
            "ABCD-EFGH-JKMN-PQR0",
            "ABCD-EFGH-JKMN-PQRI",
            "ABCD-EFGH-JKMN-PQRST",
            "ÄBCD-EFGH-JKMN-PQRS",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
