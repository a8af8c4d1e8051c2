//! WeChat Pay v3 cryptography: request signatures, response and notification signature
//! checks, and AEAD_AES_256_GCM decryption of notification resources.

use ring::aead;

use crate::WebhookError;

/// The message a merchant signs for a request:
/// `"{METHOD}\n{path and query}\n{timestamp}\n{nonce}\n{body}\n"`.
pub fn wechat_request_message(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The message WeChat Pay signs for a response or notification:
/// `"{timestamp}\n{nonce}\n{body}\n"`.
pub fn wechat_response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// AEAD_AES_256_GCM decryption as WeChat Pay uses it: a 32-byte key (the APIv3 key), a
/// 12-byte nonce, associated data, and the ciphertext with its 16-byte tag appended.
pub fn aes_256_gcm_open(
    key: &[u8],
    nonce: &[u8],
    associated_data: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Vec<u8>, WebhookError> {
    let key = aead::UnboundKey::new(&aead::AES_256_GCM, key).map_err(|_| WebhookError::Decrypt)?;
    let key = aead::LessSafeKey::new(key);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| WebhookError::Decrypt)?;
    let mut buf = ciphertext_and_tag.to_vec();
    let plain = key
        .open_in_place(nonce, aead::Aad::from(associated_data), &mut buf)
        .map_err(|_| WebhookError::Decrypt)?;
    Ok(plain.to_vec())
}
