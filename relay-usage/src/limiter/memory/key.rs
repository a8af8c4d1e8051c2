//! The map key: an API key id's 128 random bits, hashed by passing them through.
//!
//! An [`ApiKeyId`] is `key_` and 32 lowercase hex digits of random bits (checked when it is
//! made or parsed), so its bits identify it and are already uniformly spread: decoding them
//! once is cheaper than hashing the text with SipHash, and storing 16 bytes in the map's
//! slot saves the id's heap string (and a cache miss to compare it).

use std::hash::{BuildHasherDefault, Hash, Hasher};

use relay_core::{ApiKeyId, RequestId};

/// An id's 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyBits(u64, u64);

impl KeyBits {
    /// The bits of `id`. An id that is not hex after its prefix cannot be made through
    /// `ApiKeyId`'s constructors; should one appear anyway it is hashed (SipHash, 128 bits)
    /// rather than refused, so it still gets a key of its own.
    pub(super) fn of(id: &ApiKeyId) -> Self {
        let s = id.as_str();
        let hex = s.strip_prefix("key_").unwrap_or(s).as_bytes();
        match (
            hex.get(..16).and_then(decode),
            hex.get(16..).and_then(decode),
        ) {
            (Some(hi), Some(lo)) if hex.len() == 32 => KeyBits(hi, lo),
            _ => {
                let half = |salt: u8| {
                    let mut h = std::hash::DefaultHasher::new();
                    salt.hash(&mut h);
                    s.hash(&mut h);
                    h.finish()
                };
                KeyBits(half(0), half(1))
            }
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight lowercase hex digits in one `u64` (as loaded from memory) to their values, one
/// per byte; `None` if any is not a lowercase hex digit.
fn nibbles(x: u64) -> Option<u64> {
    // '0'..='9' have bit 6 clear, 'a'..='f' set: the low nibble, plus 9 for letters.
    let n = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
    // Encode back and compare: only lowercase hex digits survive the round trip. No lane
    // carries into the next: every lane stays below 0x80 before the additions.
    let letter = ((n + ONES * 0x76) >> 7) & ONES;
    let back = n + ONES * 0x30 + letter * 0x27;
    (back == x && n & (ONES * 0xf0) == 0).then_some(n)
}

/// Sixteen lowercase hex digits as 64 bits: the values of the first eight in the low
/// nibbles, of the last eight in the high ones. Not the number they spell, but a one-to-one
/// map in a dozen instructions, with no loop over the digits (this runs four times per
/// admit + settle).
fn decode(hex: &[u8]) -> Option<u64> {
    let hex: &[u8; 16] = hex.try_into().ok()?;
    let (a, b) = hex.split_at(8);
    let word = |h: &[u8]| h.try_into().ok().map(u64::from_le_bytes);
    Some(nibbles(word(a)?)? | nibbles(word(b)?)? << 4)
}

/// A lease's id in this limiter: the last 64 of the request id's bits, all random (the
/// first digits are its time); hashed for an id that is not hex, which `RequestId` does
/// not allow to be made.
pub(super) fn lease_bits(rid: &RequestId) -> u64 {
    let s = rid.as_str();
    let hex = s.strip_prefix("req_").unwrap_or(s).as_bytes();
    hex.get(hex.len().saturating_sub(16)..)
        .and_then(decode)
        .unwrap_or_else(|| {
            let mut h = std::hash::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        })
}

impl Hash for KeyBits {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 ^ self.1);
    }
}

/// Passes a [`KeyBits`] hash through unchanged (anything else is mixed FNV-style).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// The map's hasher.
pub(super) type BuildKeyHasher = BuildHasherDefault<PassThrough>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decode_to_their_bits() {
        let id: ApiKeyId = "key_0123456789abcdef00000000000000ff"
            .parse()
            .expect("valid id");
        assert_eq!(
            KeyBits::of(&id),
            KeyBits(0xf7_e6_d5_c4_b3_a2_91_80, 0xf0_f0_00_00_00_00_00_00)
        );
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        assert_ne!(KeyBits::of(&a), KeyBits::of(&b));
        assert_eq!(KeyBits::of(&a), KeyBits::of(&a.clone()));
    }

    #[test]
    fn bad_hex_is_refused_by_the_decoder() {
        assert_eq!(decode(b"0123456789abcdef"), Some(0xf7_e6_d5_c4_b3_a2_91_80));
        assert_eq!(decode(b"0123456789abcdeF"), None);
        assert_eq!(decode(b"0123456789abcdeg"), None);
        assert_eq!(decode(b"0123456789abcde"), None);
        assert_eq!(decode(b"0123456789abcde\xff"), None);
    }

    #[test]
    fn every_byte_in_every_position_decodes_as_the_standard_parser_says() {
        let valid = *b"0123456789abcdef";
        for pos in 0..16 {
            for byte in 0..=255u8 {
                let mut hex = valid;
                hex[pos] = byte;
                let lower_hex = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
                // Digit i's value lands in byte i % 8, high nibble for the second eight.
                let expected = lower_hex.then(|| {
                    hex.iter().enumerate().fold(0u64, |acc, (i, &d)| {
                        let v = u64::from(char::from(d).to_digit(16).unwrap_or(99));
                        acc | v << (8 * (i % 8) + 4 * (i / 8))
                    })
                });
                assert_eq!(decode(&hex), expected, "{hex:?}");
            }
        }
    }

    #[test]
    fn lease_ids_are_the_request_ids_last_bits() {
        let id = |s: &str| -> RequestId { s.parse().expect("valid id") };
        let rid = id("req_0123456789abcdef00000000000000ff");
        assert_eq!(lease_bits(&rid), 0xf0_f0_00_00_00_00_00_00);
        // The time in front does not matter; the random tail does.
        let other_time = id("req_fedcba987654321000000000000000ff");
        assert_eq!(lease_bits(&other_time), lease_bits(&rid));
        let other_tail = id("req_0123456789abcdef00000000000000fe");
        assert_ne!(lease_bits(&other_tail), lease_bits(&rid));
        // Ids made in the same millisecond still differ.
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_ne!(lease_bits(&a), lease_bits(&b));
    }
}
