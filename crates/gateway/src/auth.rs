//! Authentication at the edge: find the token, verify it, attach the [`Identity`] to the request.
//!
//! Handlers never look at tokens; they receive `Extension<Identity>`. Verification sits behind
//! [`Authenticator`], so API tokens, revocation lists or user look-ups in Redis can be added
//! without touching a handler.

use std::sync::Arc;

use auth::{Carrier, Identity, JwtError, JwtKeys};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use thiserror::Error;

use crate::error::ApiError;
use crate::state::AppState;

/// Why a token was refused. The messages never contain the token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token in any carrier.
    #[error("missing token")]
    Missing,
    /// Signature, shape, issuer, audience ... wrong.
    #[error("invalid token")]
    Invalid(&'static str),
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Revoked (logout, deleted token, disabled user).
    #[error("token revoked")]
    Revoked,
    /// The authority could not be asked (e.g. Redis down).
    #[error("authentication unavailable")]
    Unavailable,
}

impl From<JwtError> for AuthError {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::Expired => AuthError::Expired,
            JwtError::NotYetValid => AuthError::Invalid("token not yet valid"),
            JwtError::Invalid(why) => AuthError::Invalid(why),
            JwtError::Config(_) => AuthError::Invalid("token cannot be verified"),
        }
    }
}

impl AuthError {
    /// The 401 message (or 503 for `Unavailable`).
    pub(crate) fn into_api_error(self) -> ApiError {
        match self {
            AuthError::Missing => ApiError::Unauthorized(
                "Authentication required: no token (send Authorization: Bearer, the jwt_token cookie, ?token= or ?access_token=)".into(),
            ),
            AuthError::Invalid(why) => ApiError::Unauthorized(format!("Invalid token: {why}")),
            AuthError::Expired => ApiError::Unauthorized("Token expired".into()),
            AuthError::Revoked => ApiError::Unauthorized("Token revoked".into()),
            AuthError::Unavailable => {
                ApiError::Unavailable("Authentication temporarily unavailable".into())
            }
        }
    }
}

/// Turns a token into an identity. Implementations must be cheap on the hot path (every request
/// calls this once).
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token` (found in `carrier`).
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        carrier: Carrier,
    ) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

/// Today's authenticator: HS256 session JWTs, verified locally (no Redis round trip).
pub struct JwtAuthenticator {
    keys: JwtKeys,
}

impl JwtAuthenticator {
    /// Verifies with these keys.
    pub fn new(keys: JwtKeys) -> Self {
        JwtAuthenticator { keys }
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _carrier: Carrier,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        let r = if auth::is_jwt_shaped(token) {
            self.keys.identity(token).map_err(AuthError::from)
        } else {
            Err(AuthError::Invalid("not a session token"))
        };
        Box::pin(std::future::ready(r))
    }
}

/// How the caller authenticated (kept in the request extensions next to the [`Identity`]).
#[derive(Debug, Clone, Copy)]
pub struct AuthInfo {
    /// Where the token came from.
    pub carrier: Carrier,
}

/// The token of a request and where it was found.
pub(crate) fn request_token(headers: &HeaderMap, query: Option<&str>) -> Option<(String, Carrier)> {
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Several Cookie headers are legal (HTTP/2); join them.
    let mut cookie_buf = String::new();
    for v in headers.get_all(header::COOKIE) {
        if let Ok(s) = v.to_str() {
            if !cookie_buf.is_empty() {
                cookie_buf.push_str("; ");
            }
            cookie_buf.push_str(s);
        }
    }
    let cookie = (!cookie_buf.is_empty()).then_some(cookie_buf.as_str());
    auth::find_token(authz, cookie, query)
}

/// True when a browser navigates here and should see the login page rather than JSON.
fn wants_login_page(path: &str, headers: &HeaderMap) -> bool {
    if path.starts_with("/api/") || path == "/api" || path == "/ws" || path.starts_with("/ws/") {
        return false;
    }
    let navigate = headers
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("navigate"));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    navigate || (accept.contains("text/html") && !accept.contains("application/json"))
}

/// Authenticates a request: the identity comes only from the verified token.
pub(crate) async fn authenticate_parts(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Identity, Carrier), ApiError> {
    let found = request_token(headers, query);
    let result = match &found {
        None => Err(AuthError::Missing),
        Some((token, carrier)) => state.auth.authenticate(token, *carrier).await,
    };
    match result {
        Ok(identity) => {
            if !identity.can(auth::Permission::CanAccessApi) {
                return Err(ApiError::Forbidden(auth::Permission::CanAccessApi.as_str()));
            }
            let carrier = found.map(|(_, c)| c).unwrap_or(Carrier::Bearer);
            Ok((identity, carrier))
        }
        Err(AuthError::Unavailable) => Err(AuthError::Unavailable.into_api_error()),
        Err(e) => {
            tracing::debug!(reason = %e, "request refused");
            if wants_login_page(path, headers) {
                Err(ApiError::LoginRedirect(state.config.login_path.clone()))
            } else {
                Err(e.into_api_error())
            }
        }
    }
}

/// Middleware: refuse unauthenticated requests, attach `Identity` and [`AuthInfo`].
pub(crate) async fn require_auth(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let uri = req.uri().clone();
    match authenticate_parts(&state, uri.path(), req.headers(), uri.query()).await {
        Ok((identity, carrier)) => {
            req.extensions_mut().insert(identity);
            req.extensions_mut().insert(AuthInfo { carrier });
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Requires a permission of an authenticated identity.
pub(crate) fn require(identity: &Identity, p: auth::Permission) -> Result<(), ApiError> {
    if identity.can(p) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn browsers_get_the_login_page_only_outside_api_and_ws() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(wants_login_page("/queue", &h));
        assert!(!wants_login_page("/api/queue", &h));
        assert!(!wants_login_page("/ws", &h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/json"),
        );
        assert!(!wants_login_page("/queue", &h));
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(wants_login_page("/queue", &h));
        assert!(!wants_login_page("/queue", &HeaderMap::new()));
    }
}
