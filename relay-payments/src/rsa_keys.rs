//! RSA keys as providers hand them out: PEM or bare base64, PKCS#8 or PKCS#1 private keys,
//! SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) public keys. ring signs with a key pair
//! and verifies with a PKCS#1 `RSAPublicKey`, so SPKI is unwrapped here.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};

use crate::PaymentError;

/// PEM armour removed and base64 decoded; bare base64 (Alipay's key tool) accepted too.
fn der_from_text(text: &str) -> Result<Vec<u8>, PaymentError> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| PaymentError::Config("key is neither PEM nor base64".into()))
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The PKCS#1 `RSAPublicKey` inside an SPKI, or `der` itself when it already is one.
fn pkcs1_public_key(der: &[u8]) -> Option<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    let (tag, spki, _) = der_element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, first, rest) = der_element(spki)?;
    match tag {
        // SPKI: SEQUENCE { SEQUENCE { OID, NULL }, BIT STRING }
        SEQUENCE => {
            let (oid_tag, oid, _) = der_element(first)?;
            if oid_tag != 0x06 || oid != RSA_ENCRYPTION_OID {
                return None;
            }
            let (bit_tag, bits, _) = der_element(rest)?;
            let (&unused, key) = bits.split_first()?;
            (bit_tag == 0x03 && unused == 0).then(|| key.to_vec())
        }
        // PKCS#1: SEQUENCE { INTEGER n, INTEGER e } and nothing more (a PKCS#8 private
        // key also starts with an INTEGER).
        0x02 => {
            let (e_tag, _, end) = der_element(rest)?;
            (e_tag == 0x02 && end.is_empty() && first.len() > 1).then(|| der.to_vec())
        }
        _ => None,
    }
}

/// A merchant's RSA private key.
pub(crate) struct PrivateKey(RsaKeyPair);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    pub(crate) fn parse(text: &str) -> Result<Self, PaymentError> {
        let der = der_from_text(text)?;
        RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| RsaKeyPair::from_der(&der))
            .map(PrivateKey)
            .map_err(|e| PaymentError::Config(format!("RSA private key rejected: {e}")))
    }

    /// SHA256withRSA (PKCS#1 v1.5), base64.
    pub(crate) fn sign_base64(&self, message: &[u8]) -> Result<String, PaymentError> {
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| PaymentError::Config("RSA signing failed".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }
}

/// A provider's RSA public key.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey(Vec<u8>);

impl PublicKey {
    pub(crate) fn parse(text: &str) -> Result<Self, PaymentError> {
        let der = der_from_text(text)?;
        pkcs1_public_key(&der)
            .map(PublicKey)
            .ok_or_else(|| PaymentError::Config("not an RSA public key (SPKI or PKCS#1)".into()))
    }

    /// Check a base64 SHA256withRSA signature.
    pub(crate) fn verify_base64(&self, message: &[u8], signature_b64: &str) -> bool {
        // A `+` decoded as a space by a careless form decoder is still the same signature.
        let text = signature_b64.trim().replace(' ', "+");
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(text) else {
            return false;
        };
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(message, &sig)
            .is_ok()
    }
}
