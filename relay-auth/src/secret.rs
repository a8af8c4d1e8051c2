//! Random tokens, their hashes, keyed hashes and authenticated encryption, all from ring.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::digest;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::AuthError;

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // Only fails when the OS has no entropy source, where nothing secure can run at all.
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

/// Base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new random token: `prefix` + base64url of 32 random bytes.
pub(crate) fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", b64(&random_bytes::<32>()))
}

/// SHA-256 of a token, the form single-use tokens and sessions are stored in.
pub(crate) fn sha256(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two byte strings.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Lengths are public (hashes and codes have fixed lengths); the contents are compared
    // without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 with a server-side pepper: how API keys are stored.
#[derive(Clone)]
pub struct KeyHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(***)")
    }
}

impl KeyHasher {
    /// A hasher keyed with `pepper` (at least 32 bytes, kept outside the database).
    pub fn new(pepper: &[u8]) -> Result<Self, AuthError> {
        if pepper.len() < 32 {
            return Err(AuthError::Unavailable(
                "the API key pepper must be at least 32 bytes".into(),
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        })
    }

    /// HMAC-SHA256(pepper, key).
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// AES-256-GCM for secrets at rest (TOTP seeds). Output is `nonce || ciphertext || tag`
/// with a random 96-bit nonce; the associated data binds a ciphertext to its owner so a
/// sealed secret copied to another row does not open.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    /// A box with a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Result<Self, AuthError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| AuthError::Unavailable("invalid AES-256-GCM key".into()))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypt `plaintext`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| AuthError::Unavailable("encryption failed".into()))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypt what [`seal`](Self::seal) produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < NONCE_LEN {
            return Err(AuthError::Unavailable("sealed secret is truncated".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| AuthError::Unavailable("bad nonce".into()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| AuthError::Unavailable("sealed secret does not open".into()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_box_round_trip_and_tamper() {
        let b = SecretBox::new(&[7u8; 32]).unwrap();
        let sealed = b.seal(b"seed", b"usr_a").unwrap();
        assert_eq!(sealed.len(), 12 + 4 + 16);
        assert_eq!(b.open(&sealed, b"usr_a").unwrap(), b"seed");
        assert!(b.open(&sealed, b"usr_b").is_err(), "bound to its owner");
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(b.open(&bad, b"usr_a").is_err());
        assert_ne!(b.seal(b"seed", b"usr_a").unwrap(), sealed, "fresh nonce");
        assert!(b.open(&[1, 2], b"usr_a").is_err());
    }

    #[test]
    fn key_hasher_needs_a_real_pepper() {
        assert!(KeyHasher::new(b"short").is_err());
        let h = KeyHasher::new(&[1u8; 32]).unwrap();
        assert_eq!(h.hash("a"), h.hash("a"));
        assert_ne!(h.hash("a"), KeyHasher::new(&[2u8; 32]).unwrap().hash("a"));
    }
}
