//! Sealing of the `extra_data` secrets (`api_key_comfy_org`, `auth_token_comfy_org`) while a job
//! waits in Redis: they must reach the backend, but never sit in Redis (or its AOF, or a
//! replica, or a `MONITOR`) in clear.
//!
//! ChaCha20-Poly1305 with a random nonce per job; the job's `<uid>:<pid>` is the associated data,
//! so a sealed value copied onto another job does not open. The key is derived from
//! `redis.secrets_key` (the binary falls back to `auth.secret`), which every gateway and worker
//! of a deployment shares.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Marks the format, so a later change of cipher can be told apart.
const VERSION: &str = "v1.";
const NONCE_LEN: usize = 12;

/// Seals and opens job secrets with one deployment-wide key.
#[derive(Clone)]
pub(crate) struct Sealer {
    cipher: Option<ChaCha20Poly1305>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Sealer")
            .field("configured", &self.cipher.is_some())
            .finish()
    }
}

impl Sealer {
    /// A sealer keyed by `material` (any length; hashed into a 256-bit key). Empty material
    /// gives a sealer that refuses to seal, so secrets are never stored unprotected.
    pub(crate) fn new(material: &str) -> Self {
        if material.is_empty() {
            return Sealer { cipher: None };
        }
        let mut h = Sha256::new();
        h.update(b"comfy-broker/extra-data-seal/v1\0");
        h.update(material.as_bytes());
        let key = h.finalize();
        Sealer {
            cipher: Some(ChaCha20Poly1305::new(&Key::from(<[u8; 32]>::from(key)))),
        }
    }

    /// Seals `plain` for the job `<uid>:<pid>`.
    pub(crate) fn seal(&self, uid: &str, pid: &str, plain: &str) -> Result<String, StoreError> {
        let cipher = self.cipher.as_ref().ok_or(StoreError::NoSealKey)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = format!("{uid}:{pid}");
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Sealed("could not seal"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same job.
    pub(crate) fn open(&self, uid: &str, pid: &str, sealed: &str) -> Result<String, StoreError> {
        let cipher = self.cipher.as_ref().ok_or(StoreError::NoSealKey)?;
        let body = sealed
            .strip_prefix(VERSION)
            .ok_or(StoreError::Sealed("unknown format"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StoreError::Sealed("not base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(StoreError::Sealed("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| StoreError::Sealed("too short"))?;
        let aad = format!("{uid}:{pid}");
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Sealed("wrong key or tampered"))?;
        String::from_utf8(plain).map_err(|_| StoreError::Sealed("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new("a deployment key");
        let sealed = s.seal("u1", "p1", r#"{"api_key_comfy_org":"k"}"#).unwrap();
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("api_key"));
        assert_eq!(
            s.open("u1", "p1", &sealed).unwrap(),
            r#"{"api_key_comfy_org":"k"}"#
        );
        // Another job, another key, a flipped byte: all refused.
        assert!(s.open("u1", "p2", &sealed).is_err());
        assert!(Sealer::new("other key").open("u1", "p1", &sealed).is_err());
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(s
            .open("u1", "p1", &String::from_utf8(bytes).unwrap())
            .is_err());
        // Two seals of one value differ (random nonce).
        assert_ne!(
            s.seal("u", "p", "x").unwrap(),
            s.seal("u", "p", "x").unwrap()
        );
    }

    #[test]
    fn no_key_refuses() {
        let s = Sealer::new("");
        assert!(matches!(s.seal("u", "p", "x"), Err(StoreError::NoSealKey)));
        assert!(format!("{s:?}").contains("false"));
    }
}
