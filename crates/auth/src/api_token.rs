//! Long-lived opaque API tokens: 32 random bytes, URL-safe base64 without padding (43
//! characters, no dots, so never mistaken for a JWT), stored only as their SHA-256.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new token: `(raw token shown once, lowercase hex SHA-256 to store)`.
pub fn generate_api_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_api_token(&raw);
    (raw, hash)
}

/// Lowercase hex SHA-256 of the trimmed token, the only form ever stored.
pub fn hash_api_token(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.trim().as_bytes()))
}

/// True when a string has the shape of one of our API tokens.
pub fn is_api_token_shaped(raw: &str) -> bool {
    raw.len() == 43
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_opaque_and_hashed() {
        let (raw, hash) = generate_api_token();
        assert_eq!(raw.len(), 43);
        assert!(!raw.contains('.'));
        assert!(is_api_token_shaped(&raw));
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hash_api_token(&format!(" {raw} ")));
        assert_ne!(generate_api_token().0, raw);
    }
}
