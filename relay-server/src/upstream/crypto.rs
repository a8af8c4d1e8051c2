//! Upstream credentials sealed at rest with AES-256-GCM (ring).
//!
//! A sealed credential is `nonce (12 bytes) || ciphertext || tag (16 bytes)`; the account's
//! name is the additional authenticated data, so a sealed value copied onto another account
//! does not open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a credential could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 32 bytes.
    #[error("the encryption key must be 32 bytes")]
    KeyLength,
    /// The sealed value was altered, belongs to another account, or was sealed with another key.
    #[error(
        "sealed credential does not open with this key (wrong RELAY_ENCRYPTION_KEY, or altered)"
    )]
    Open,
    /// The system random generator failed.
    #[error("random number generator failed")]
    Random,
}

/// Seals and opens upstream credentials.
pub struct CredentialCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCipher(***)")
    }
}

impl CredentialCipher {
    /// A cipher with a 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::KeyLength)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random 32-byte key (demo mode and tests).
    pub fn generate_key() -> Result<[u8; 32], CryptoError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CryptoError::Random)?;
        Ok(key)
    }

    /// Seal `plaintext` for the account named `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Open a value sealed for the account named `aad`.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Open);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_tampering() {
        let c = CredentialCipher::new(&[7u8; 32]).unwrap();
        let sealed = c.seal(b"sk-ant-secret", "primary").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open(&sealed, "primary").unwrap(), b"sk-ant-secret");
        // Two seals of the same secret differ (fresh nonce).
        assert_ne!(c.seal(b"sk-ant-secret", "primary").unwrap(), sealed);
        // Another account's name, another key, a flipped bit, a truncation: all refused.
        assert_eq!(c.open(&sealed, "other"), Err(CryptoError::Open));
        let other = CredentialCipher::new(&[8u8; 32]).unwrap();
        assert_eq!(other.open(&sealed, "primary"), Err(CryptoError::Open));
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert_eq!(c.open(&flipped, "primary"), Err(CryptoError::Open));
        assert_eq!(c.open(&sealed[..20], "primary"), Err(CryptoError::Open));
        assert_eq!(c.open(&[], "primary"), Err(CryptoError::Open));
        assert!(CredentialCipher::new(&[1u8; 16]).is_err());
    }
}
