//! The map key: an API key id's 128 random bits, hashed by passing them through.
//!
//! An [`ApiKeyId`] is `key_` and 32 lowercase hex digits of random bits (checked when it is
//! made or parsed), so its bits identify it and are already uniformly spread: decoding them
//! once is cheaper than hashing the text with SipHash, and storing 16 bytes in the map's
//! slot saves the id's heap string (and a cache miss to compare it).

use std::hash::{BuildHasherDefault, Hash, Hasher};

use relay_core::ApiKeyId;

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
        match (hex.get(..16).and_then(decode), hex.get(16..).and_then(decode)) {
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

/// Sixteen hex digits as a `u64`.
fn decode(hex: &[u8]) -> Option<u64> {
    if hex.len() != 16 {
        return None;
    }
    hex.iter().try_fold(0u64, |acc, &b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(nibble))
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
        assert_eq!(KeyBits::of(&id), KeyBits(0x0123_4567_89ab_cdef, 0xff));
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        assert_ne!(KeyBits::of(&a), KeyBits::of(&b));
        assert_eq!(KeyBits::of(&a), KeyBits::of(&a.clone()));
    }

    #[test]
    fn bad_hex_is_refused_by_the_decoder() {
        assert_eq!(decode(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(decode(b"0123456789abcdeF"), None);
        assert_eq!(decode(b"0123456789abcdeg"), None);
        assert_eq!(decode(b"0123456789abcde"), None);
    }
}
