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
    /// HS256 shared secret (at least 32 bytes).
    pub secret: String,
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
            secret: String::new(),
            issuer: "comfy-broker".into(),
            audience: "comfy-broker".into(),
            leeway_secs: 30,
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }
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
    encoding: EncodingKey,
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
    /// HS256 keys from the configured shared secret.
    pub fn new(config: JwtConfig) -> Result<Self, JwtError> {
        if config.secret.len() < 32 {
            return Err(JwtError::Config("jwt secret must be at least 32 bytes"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(config.secret.as_bytes()),
            decoding: DecodingKey::from_secret(config.secret.as_bytes()),
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
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| JwtError::Config("could not sign"))
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
    fn short_secret_is_refused() {
        assert!(JwtKeys::new(JwtConfig {
            secret: "short".into(),
            ..JwtConfig::default()
        })
        .is_err());
    }
}
