//! Passwords (argon2id, PHC strings) and the account name and password rules of MSS-Login.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use thiserror::Error;

/// A password could not be hashed.
#[derive(Debug, Error)]
#[error("password hashing failed")]
pub struct PasswordError;

/// Longest password accepted (MSS-Login cuts at 4096).
pub const MAX_PASSWORD_LEN: usize = 4096;

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError)
}

/// Checks a password against a stored PHC string (constant time inside argon2).
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// MSS-Login's user name rule: `^[A-Za-z0-9_]{3,}$` (bounded to 64 here).
pub fn check_username(name: &str) -> Result<(), &'static str> {
    if name.len() < 3 || name.len() > 64 {
        return Err("Username must be 3 to 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("Username may contain only letters, digits and '_'");
    }
    Ok(())
}

/// MSS-Login's password rule: at least 8 printable ASCII characters with a digit and a symbol,
/// no spaces.
pub fn check_new_password(password: &str) -> Result<(), &'static str> {
    if password.len() < 8 || password.len() > MAX_PASSWORD_LEN {
        return Err("Password must be at least 8 characters");
    }
    if !password.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("Password may contain only letters, digits and symbols, no spaces");
    }
    if !password.bytes().any(|b| b.is_ascii_digit()) {
        return Err("Password must contain a digit");
    }
    if !password.bytes().any(|b| b.is_ascii_punctuation()) {
        return Err("Password must contain a symbol");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret!pw").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret!pw", &h));
        assert!(!verify_password("s3cret!pX", &h));
        assert!(!verify_password("s3cret!pw", "not a hash"));
    }

    #[test]
    fn rules() {
        assert!(check_username("alice_1").is_ok());
        assert!(check_username("al").is_err());
        assert!(check_username("al ice").is_err());
        assert!(check_username("../x").is_err());
        assert!(check_new_password("abcdefg1!").is_ok());
        assert!(check_new_password("abcdefgh!").is_err());
        assert!(check_new_password("abcdefg11").is_err());
        assert!(check_new_password("abc def1!").is_err());
    }
}
