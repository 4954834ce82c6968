//! Session JWTs: MSS-Login's claims (`id`, `username`, `jti`, `exp`) plus `sub`, `role`, `iat`,
//! `iss`, `aud`; one pinned algorithm, every claim checked with a small leeway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Identity, Role};

/// The claims of a session JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id (MSS-Login).
    pub id: String,
    /// User name (MSS-Login).
    pub username: String,
    /// Session id: 32 lowercase hex characters (MSS-Login).
    pub jti: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Subject: the user id again.
    pub sub: String,
    /// Role at issue time.
    pub role: String,
    /// Issued at.
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Signing and verification settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The one algorithm tokens are signed and verified with: `HS256` (shared secret, the
    /// default), `RS256` or `EdDSA` (key pair in PEM files).
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (at least 32 bytes).
    pub secret: String,
    /// RS256/EdDSA: PEM file of the private key (gateways that issue tokens at `/login`).
    pub private_key_file: Option<std::path::PathBuf>,
    /// RS256/EdDSA: PEM file of the public key (every verifier).
    pub public_key_file: Option<std::path::PathBuf>,
    /// `iss` written and required.
    pub issuer: String,
    /// `aud` written and required.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// Lifetime of a session JWT.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: String::new(),
            private_key_file: None,
            public_key_file: None,
            issuer: "comfy-broker".into(),
            audience: "comfy-broker".into(),
            leeway_secs: 30,
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The pinned signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `secret`.
    HS256,
    /// RSA PKCS#1 v1.5 SHA-256 with a key pair.
    RS256,
    /// Ed25519 with a key pair.
    EdDSA,
}

/// Why a token was refused (the reason is logged and counted, never echoed with the token).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwtError {
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Signature, algorithm, issuer, audience or shape wrong.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The secret is unusable.
    #[error("jwt configuration: {0}")]
    Config(&'static str),
}

/// Keys and validation rules for session JWTs.
#[derive(Clone)]
pub struct JwtKeys {
    alg: Algorithm,
    /// `None` for a verifier holding only the public key.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    config: JwtConfig,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl JwtKeys {
    /// Keys for the configured algorithm: the HS256 shared secret, or the RS256/EdDSA PEM files
    /// (a verifier without the private key cannot mint).
    pub fn new(config: JwtConfig) -> Result<Self, JwtError> {
        let read = |p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, JwtError> {
            match p {
                Some(path) => std::fs::read(path)
                    .map(Some)
                    .map_err(|_| JwtError::Config("cannot read a jwt key file")),
                None => Ok(None),
            }
        };
        let (alg, encoding, decoding) = match config.algorithm {
            JwtAlgorithm::HS256 => {
                if config.secret.len() < 32 {
                    return Err(JwtError::Config("jwt secret must be at least 32 bytes"));
                }
                (
                    Algorithm::HS256,
                    Some(EncodingKey::from_secret(config.secret.as_bytes())),
                    DecodingKey::from_secret(config.secret.as_bytes()),
                )
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA => {
                let public = read(&config.public_key_file)?
                    .ok_or(JwtError::Config("auth.public_key_file is required"))?;
                let private = read(&config.private_key_file)?;
                let bad = |_| JwtError::Config("a jwt key file is not a valid PEM key");
                if config.algorithm == JwtAlgorithm::RS256 {
                    (
                        Algorithm::RS256,
                        private
                            .map(|k| EncodingKey::from_rsa_pem(&k).map_err(bad))
                            .transpose()?,
                        DecodingKey::from_rsa_pem(&public).map_err(bad)?,
                    )
                } else {
                    (
                        Algorithm::EdDSA,
                        private
                            .map(|k| EncodingKey::from_ed_pem(&k).map_err(bad))
                            .transpose()?,
                        DecodingKey::from_ed_pem(&public).map_err(bad)?,
                    )
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(JwtKeys {
            alg,
            encoding,
            decoding,
            validation,
            config,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Mints a session JWT for a user; returns the token and its claims.
    pub fn mint(
        &self,
        user_id: &str,
        username: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, Claims), JwtError> {
        let iat = now_secs();
        let claims = Claims {
            id: user_id.to_owned(),
            username: username.to_owned(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            exp: iat + ttl.as_secs() as i64,
            sub: user_id.to_owned(),
            role: role.as_str().to_owned(),
            iat,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            nbf: None,
        };
        self.sign(&claims).map(|t| (t, claims))
    }

    /// Signs arbitrary claims (tests use it to build expired or odd tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or(JwtError::Config("no private key to sign with"))?;
        encode(&Header::new(self.alg), claims, key).map_err(|_| JwtError::Config("could not sign"))
    }

    /// Verifies signature, algorithm, `exp`, `nbf`, `iss` and `aud`, and that `id` = `sub`.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    K::ExpiredSignature => JwtError::Expired,
                    K::ImmatureSignature => JwtError::NotYetValid,
                    K::InvalidSignature => JwtError::Invalid("bad signature"),
                    K::InvalidAlgorithm => JwtError::Invalid("algorithm not allowed"),
                    K::InvalidIssuer => JwtError::Invalid("wrong issuer"),
                    K::InvalidAudience => JwtError::Invalid("wrong audience"),
                    K::MissingRequiredClaim(_) => JwtError::Invalid("missing claim"),
                    _ => JwtError::Invalid("malformed token"),
                }
            })?;
        let claims = data.claims;
        if claims.id != claims.sub {
            return Err(JwtError::Invalid("id and sub differ"));
        }
        Ok(claims)
    }

    /// The claims of a token with a valid signature, issuer and audience, even when it has
    /// expired: logout revokes expired sessions too.
    pub fn claims_ignoring_expiry(&self, token: &str) -> Result<Claims, JwtError> {
        let mut v = self.validation.clone();
        v.validate_exp = false;
        v.validate_nbf = false;
        decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|_| JwtError::Invalid("malformed token"))
    }

    /// Verifies a token and turns it into an identity (role from the claim; the accounts
    /// store may override it with the current role).
    pub fn identity(&self, token: &str) -> Result<Identity, JwtError> {
        let c = self.verify(token)?;
        let role = Role::parse(&c.role).ok_or(JwtError::Invalid("unknown role"))?;
        Ok(Identity {
            user_id: c.id,
            username: c.username,
            role,
            session_id: Some(c.jti),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> JwtKeys {
        JwtKeys::new(JwtConfig {
            secret: "0123456789abcdef0123456789abcdef".into(),
            ..JwtConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let k = keys();
        let (t, c) = k
            .mint("u1", "alice", Role::User, Duration::from_secs(60))
            .unwrap();
        assert_eq!(k.verify(&t).unwrap(), c);
        assert_eq!(c.jti.len(), 32);
        let id = k.identity(&t).unwrap();
        assert_eq!(id.username, "alice");
        assert_eq!(id.role, Role::User);
    }

    #[test]
    fn refuses_bad_tokens() {
        let k = keys();
        let (good, claims) = k
            .mint("u1", "alice", Role::User, Duration::from_secs(60))
            .unwrap();
        // Tampered payload.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c2 = claims.clone();
        c2.role = "owner".into();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c2).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(matches!(k.verify(&tampered), Err(JwtError::Invalid(_))));
        // alg: none.
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let none = format!("{}.{}.", none_header, parts[1]);
        assert!(k.verify(&none).is_err());
        // Expired beyond leeway.
        let mut old = claims.clone();
        old.exp = now_secs() - 3600;
        assert_eq!(k.verify(&k.sign(&old).unwrap()), Err(JwtError::Expired));
        // Future nbf.
        let mut future = claims.clone();
        future.nbf = Some(now_secs() + 3600);
        assert_eq!(
            k.verify(&k.sign(&future).unwrap()),
            Err(JwtError::NotYetValid)
        );
        // Wrong issuer / audience.
        let mut iss = claims.clone();
        iss.iss = "evil".into();
        assert!(k.verify(&k.sign(&iss).unwrap()).is_err());
        let mut aud = claims.clone();
        aud.aud = "evil".into();
        assert!(k.verify(&k.sign(&aud).unwrap()).is_err());
        // Another secret.
        let other = JwtKeys::new(JwtConfig {
            secret: "another-secret-another-secret-xx".into(),
            ..JwtConfig::default()
        })
        .unwrap();
        assert!(other.verify(&good).is_err());
        assert!(k.verify("garbage").is_err());
    }

    #[test]
    fn expired_tokens_can_still_be_read_for_revocation() {
        let k = keys();
        let (_, mut c) = k
            .mint("u1", "alice", Role::User, Duration::from_secs(60))
            .unwrap();
        c.exp = now_secs() - 3600;
        let old = k.sign(&c).unwrap();
        assert_eq!(k.claims_ignoring_expiry(&old).unwrap().jti, c.jti);
        let other = JwtKeys::new(JwtConfig {
            secret: "another-secret-another-secret-xx".into(),
            ..JwtConfig::default()
        })
        .unwrap();
        assert!(other.claims_ignoring_expiry(&old).is_err());
    }

    #[test]
    fn ed25519_key_pairs_sign_and_verify_and_refuse_hs256() {
        // A throwaway Ed25519 key pair (PKCS#8 / SPKI PEM) for this test only.
        let dir = std::env::temp_dir().join(format!("cb-jwt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let private = dir.join("ed.pem");
        let public = dir.join("ed.pub.pem");
        std::fs::write(&private, "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEID4mabocQqljHFJdd3zFKZdd5rXtJKEeB7pnmQN6IYXr\n-----END PRIVATE KEY-----\n").unwrap();
        std::fs::write(&public, "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAd8p4UMqlHecKNhVg1Ewee194F7ch+fi0064zPzRfnwA=\n-----END PUBLIC KEY-----\n").unwrap();
        let config = JwtConfig {
            algorithm: JwtAlgorithm::EdDSA,
            private_key_file: Some(private),
            public_key_file: Some(public.clone()),
            ..JwtConfig::default()
        };
        let k = JwtKeys::new(config.clone()).unwrap();
        let (t, c) = k
            .mint("u1", "a", Role::User, Duration::from_secs(60))
            .unwrap();
        assert_eq!(k.verify(&t).unwrap(), c);
        // A verifier with only the public key verifies but cannot mint.
        let verifier = JwtKeys::new(JwtConfig {
            private_key_file: None,
            ..config
        })
        .unwrap();
        assert!(verifier.verify(&t).is_ok());
        assert!(verifier
            .mint("u1", "a", Role::User, Duration::from_secs(60))
            .is_err());
        // An HS256 token is refused by an EdDSA verifier (algorithm pinned).
        assert!(verifier
            .verify(
                &keys()
                    .mint("u1", "a", Role::User, Duration::from_secs(60))
                    .unwrap()
                    .0
            )
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(JwtKeys::new(JwtConfig {
            secret: "short".into(),
            ..JwtConfig::default()
        })
        .is_err());
    }
}
