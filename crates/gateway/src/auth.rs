//! Authentication at the edge: find the token, verify it, attach the [`Identity`] to the request.
//!
//! Handlers never look at tokens; they receive `Extension<Identity>`. Verification sits behind
//! [`Authenticator`], so API tokens, revocation lists or user look-ups in Redis can be added
//! without touching a handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::{Carrier, Identity, JwtError, JwtKeys};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use thiserror::Error;

use crate::error::ApiError;
use crate::metrics::AuthFailure;
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
    /// The `auth_failures_total{reason}` label of this refusal.
    pub(crate) fn metric_reason(&self) -> AuthFailure {
        match self {
            AuthError::Missing => AuthFailure::Missing,
            AuthError::Invalid(_) | AuthError::Unavailable => AuthFailure::Invalid,
            AuthError::Expired => AuthFailure::Expired,
            AuthError::Revoked => AuthFailure::Revoked,
        }
    }

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

/// The authenticator [`crate::Gateway::new`] uses: session JWTs verified locally, plus the
/// accounts kept in Redis —
/// * opaque API tokens (`comfy-broker token create`) looked up by their SHA-256;
/// * a JWT whose session record says `revoked`, or whose user is disabled, is refused; when
///   the user exists, the role comes from the account (it may have changed since issue).
///
/// Tokens with no record (sessions minted by the CLI, users not in the store) are trusted on
/// their signature alone. Answers are cached for `ttl` per token, so revocation takes effect on
/// every gateway within `ttl` and the hot path costs no Redis round trip.
pub struct AccountsAuthenticator {
    keys: JwtKeys,
    store: store::Store,
    ttl: Duration,
    cache: Mutex<HashMap<String, CachedAnswer>>,
}

/// A use to record.
enum Touch {
    /// A session JWT, by its `jti`.
    Session(String),
    /// An API token, by its SHA-256.
    ApiToken(String),
}

/// An authentication answer and when it was made.
type CachedAnswer = (Instant, Result<Identity, AuthError>);

/// Entries kept before the cache is emptied (a crude bound; entries are tiny).
const AUTH_CACHE_MAX: usize = 100_000;

impl AccountsAuthenticator {
    /// JWTs verified with `keys`; accounts read from `store`; answers cached for `ttl`.
    pub fn new(keys: JwtKeys, store: store::Store, ttl: Duration) -> Self {
        AccountsAuthenticator {
            keys,
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &str) -> Option<Result<Identity, AuthError>> {
        let cache = self.cache.lock().ok()?;
        let (at, r) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| r.clone())
    }

    fn remember(&self, key: String, r: &Result<Identity, AuthError>) {
        if self.ttl.is_zero() || matches!(r, Err(AuthError::Unavailable)) {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= AUTH_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), r.clone()));
        }
    }

    async fn account_checks(&self, mut identity: Identity) -> Result<Identity, AuthError> {
        let unavailable = |_| AuthError::Unavailable;
        let mut had_session = false;
        if let Some(jti) = &identity.session_id {
            if let Some(session) = self.store.session(jti).await.map_err(unavailable)? {
                if session.revoked || session.user_id != identity.user_id {
                    return Err(AuthError::Revoked);
                }
                had_session = true;
            }
        }
        // Deleting or disabling a user ends all of their tokens and sessions. A JWT minted by
        // an operator (`comfy-broker token jwt`) for an identity outside the accounts store has
        // no session record and no user: it is trusted on its signature.
        let Some(user) = self
            .store
            .user_by_id(&identity.user_id)
            .await
            .map_err(unavailable)?
        else {
            let deleted = self
                .store
                .user_was_deleted(&identity.user_id)
                .await
                .map_err(unavailable)?;
            if deleted || had_session || identity.session_id.is_none() {
                return Err(AuthError::Revoked);
            }
            return Ok(identity);
        };
        if user.disabled {
            return Err(AuthError::Revoked);
        }
        if let Some(role) = auth::Role::parse(&user.role) {
            identity.role = role;
        }
        identity.username = user.username;
        Ok(identity)
    }

    /// Records a use (`last_used_at_iso` of the token and session lists) without making the
    /// request wait. Only on cache misses, so at most once per token per `ttl` and gateway.
    fn touch(&self, what: Touch) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let r = match &what {
                Touch::Session(jti) => store.touch_session(jti).await,
                Touch::ApiToken(hash) => store.touch_api_token(hash).await,
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not record a token use");
            }
        });
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if auth::is_jwt_shaped(token) {
            // Signature and expiry are checked on every request, cached or not.
            let identity = self.keys.identity(token)?;
            let key = format!(
                "s:{}:{}",
                identity.user_id,
                identity.session_id.as_deref().unwrap_or("")
            );
            if let Some(r) = self.cached(&key) {
                return r;
            }
            let r = self.account_checks(identity).await;
            if let Ok(Identity {
                session_id: Some(jti),
                ..
            }) = &r
            {
                self.touch(Touch::Session(jti.clone()));
            }
            self.remember(key, &r);
            r
        } else if auth::is_api_token_shaped(token) {
            let hash = auth::hash_api_token(token);
            let key = format!("t:{hash}");
            if let Some(r) = self.cached(&key) {
                return r;
            }
            let r = match self.store.api_token(&hash).await {
                Err(_) => Err(AuthError::Unavailable),
                Ok(None) => Err(AuthError::Invalid("unknown, expired or revoked API token")),
                Ok(Some(info)) => {
                    let identity = Identity {
                        user_id: info.user_id,
                        username: info.username,
                        role: auth::Role::User,
                        session_id: None,
                    };
                    match self.store.user_by_id(&identity.user_id).await {
                        Err(_) => Err(AuthError::Unavailable),
                        // An API token only works for a user that exists.
                        Ok(None) => Err(AuthError::Revoked),
                        Ok(Some(_)) => self.account_checks(identity).await,
                    }
                }
            };
            if r.is_ok() {
                self.touch(Touch::ApiToken(hash));
            }
            self.remember(key, &r);
            r
        } else {
            Err(AuthError::Invalid("not a session or API token"))
        }
    }
}

impl Authenticator for AccountsAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _carrier: Carrier,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(self.verify(token))
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
                crate::metrics::auth_failure(AuthFailure::Forbidden);
                return Err(ApiError::Forbidden(auth::Permission::CanAccessApi.as_str()));
            }
            let carrier = found.map(|(_, c)| c).unwrap_or(Carrier::Bearer);
            Ok((identity, carrier))
        }
        Err(AuthError::Unavailable) => {
            // Not the caller's fault: Redis did not answer.
            crate::metrics::redis_error("gateway");
            Err(AuthError::Unavailable.into_api_error())
        }
        Err(e) => {
            crate::metrics::auth_failure(e.metric_reason());
            tracing::debug!(reason = %e, "request refused");
            if wants_login_page(path, headers) {
                Err(ApiError::LoginRedirect(state.config.login_path.clone()))
            } else {
                Err(e.into_api_error())
            }
        }
    }
}

/// True when a browser-sent request may use the cookie: not `Sec-Fetch-Site: cross-site`, and
/// its `Origin` (if any) is listed in `allowed_origins` or is the request's own host. A cookie
/// is the one carrier a browser attaches by itself, so this is the CSRF guard.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"));
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return !cross_site;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if cross_site {
        return false;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Middleware: refuse unauthenticated requests, attach `Identity` and [`AuthInfo`].
pub(crate) async fn require_auth(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let uri = req.uri().clone();
    match authenticate_parts(&state, uri.path(), req.headers(), uri.query()).await {
        Ok((_, Carrier::Cookie))
            if !origin_allowed(req.headers(), &state.config.allowed_origins) =>
        {
            crate::metrics::auth_failure(AuthFailure::Forbidden);
            ApiError::ForbiddenOther(
                "forbidden_origin",
                "this Origin may not use the session cookie; send the token as Authorization: Bearer".into(),
            )
            .into_response()
        }
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

    #[test]
    fn cookie_origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]));
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8190"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gw.example:8190"),
        );
        assert!(origin_allowed(&h, &[]));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".into()]));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!origin_allowed(&h, &[]));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(origin_allowed(&h, &[]));
    }
}
