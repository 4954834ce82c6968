//! Authentication and authorisation: roles and permissions, session JWTs (HS256 by default,
//! one pinned algorithm), opaque API tokens, and finding the token a request carries
//! (`Authorization: Bearer`, cookie `jwt_token`, `?token=`, `?access_token=`).

mod api_token;
mod carrier;
mod jwt;
mod password;
mod roles;

pub use api_token::{generate_api_token, hash_api_token, is_api_token_shaped};
pub use carrier::{find_token, is_jwt_shaped, Carrier};
pub use jwt::{Claims, JwtAlgorithm, JwtConfig, JwtError, JwtKeys};
pub use password::{
    check_new_password, check_username, hash_password, verify_password, PasswordError,
    MAX_PASSWORD_LEN,
};
pub use roles::{Permission, Role};

/// Who a verified request runs as. Built only from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable user id (the JWT `id` / `sub` claim).
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Role, which decides the permissions.
    pub role: Role,
    /// Session id (`jti`) for JWTs; `None` for API tokens.
    pub session_id: Option<String>,
}

impl Identity {
    /// True when the role grants `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.role.grants(p)
    }
}
