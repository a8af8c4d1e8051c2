//! RSA keys generated for the tests (rsa crate), and signing with them independently of
//! the crate under test (which uses ring).

use std::sync::OnceLock;

use base64::Engine;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::sha2::Sha256;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};

pub struct TestKey {
    pub private: RsaPrivateKey,
    /// PKCS#8 DER, base64 (Alipay's bare format).
    pub private_b64: String,
    /// SPKI DER, base64.
    pub public_b64: String,
    /// SPKI as PEM.
    pub public_pem: String,
    /// PKCS#8 as PEM.
    pub private_pem: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn generate() -> TestKey {
    let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = private.to_pkcs8_der().unwrap();
    let public = RsaPublicKey::from(&private);
    let spki = public.to_public_key_der().unwrap();
    TestKey {
        private_b64: b64(der.as_bytes()),
        private_pem: pem("PRIVATE KEY", der.as_bytes()),
        public_b64: b64(spki.as_bytes()),
        public_pem: pem("PUBLIC KEY", spki.as_bytes()),
        private,
    }
}

/// (merchant, provider) keys, generated once per test binary.
pub fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (generate(), generate()))
}

impl TestKey {
    /// SHA256withRSA, base64.
    pub fn sign(&self, message: &[u8]) -> String {
        let key = SigningKey::<Sha256>::new(self.private.clone());
        let sig = key.sign_with_rng(&mut rsa::rand_core::OsRng, message);
        b64(&sig.to_bytes())
    }

    /// Check a base64 SHA256withRSA signature.
    pub fn verify(&self, message: &[u8], sig_b64: &str) -> bool {
        let key = VerifyingKey::<Sha256>::new(RsaPublicKey::from(&self.private));
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else {
            return false;
        };
        let Ok(sig) = Signature::try_from(bytes.as_slice()) else {
            return false;
        };
        key.verify(message, &sig).is_ok()
    }
}
