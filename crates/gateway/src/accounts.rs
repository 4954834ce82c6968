//! MSS-Login's account endpoints (shared/mss-login-api.md §5): sessions (`/login`, `/logout`),
//! API tokens (`/mss-login/generate_token`, `/mss-login/api/tokens`), `me`, sessions and the
//! users API. Bodies follow the plugin's own `{"error": "..."}` shapes so its clients switch
//! to the broker unchanged; the data lives in Redis (`store::accounts`), shared by every gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use auth::{Identity, Permission, Role};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use store::{ApiTokenInfo, CreateUser, NewUser, SessionInfo, User};

use crate::auth::{authenticate_parts, request_token};
use crate::body::read_body;
use crate::error::{json_response, ApiError};
use crate::state::AppState;

/// Longest user name looked up (MSS-Login cuts at 128).
const MAX_USERNAME: usize = 128;
/// Default and maximum lifetime of an API token, hours (MSS-Login's).
const DEFAULT_TOKEN_HOURS: f64 = 720.0;
const MAX_TOKEN_HOURS: f64 = 8760.0;

fn mss(status: StatusCode, body: Value) -> Response {
    json_response(status, body.to_string())
}

fn mss_error(status: StatusCode, msg: &str) -> Response {
    mss(status, json!({ "error": msg }))
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// ISO-8601 UTC with microseconds, as MSS-Login writes its timestamps.
fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let micros = ms.rem_euclid(1000) * 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn opt_iso(ms: Option<i64>) -> String {
    ms.map(iso).unwrap_or_default()
}

/// MSS-Login strips every character outside `[A-Za-z0-9_-]` from a user name before the look-up.
fn clean_username(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(MAX_USERNAME)
        .collect()
}

fn clean_password(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_control())
        .take(auth::MAX_PASSWORD_LEN)
        .collect()
}

/// Fields of a JSON or form body (`application/x-www-form-urlencoded`).
fn fields(headers: &HeaderMap, body: &[u8]) -> Map<String, Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.contains("application/x-www-form-urlencoded") {
        return url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn field<'a>(m: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| m.get(*n).and_then(Value::as_str))
}

fn flag(m: &Map<String, Value>, names: &[&str]) -> bool {
    names.iter().any(|n| match m.get(*n) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        }
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    })
}

/// The client address used for throttling.
fn client_address(st: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    if st.config.trust_forwarded_for {
        if let Some(first) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
        {
            let first = first.trim();
            if !first.is_empty() {
                return first.to_owned();
            }
        }
    }
    peer.map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn peer_of(req_ext: Option<&ConnectInfo<SocketAddr>>) -> Option<SocketAddr> {
    req_ext.map(|c| c.0)
}

/// True when the request reached us over HTTPS (directly or through a proxy saying so).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || headers
            .get("cf-visitor")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("\"scheme\":\"https\""))
}

fn session_cookie(token: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("jwt_token={token}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

fn clearing_cookies(secure: bool) -> Vec<String> {
    ["jwt_token", "mss-login-jwt", "mss_login_jwt"]
        .iter()
        .map(|name| {
            let mut c = format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
            if secure {
                c.push_str("; Secure");
            }
            c
        })
        .collect()
}

/// A browser navigating (rather than a script) gets redirects instead of JSON.
fn is_navigation(headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok()) {
        return mode.eq_ignore_ascii_case("navigate");
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !ct.contains("application/json")
        && (accept.contains("text/html") || accept.contains("application/xhtml+xml"))
        && !accept.contains("application/json")
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Refuses a login attempt while the name or the address has too many recent failures.
async fn throttled(st: &AppState, username: &str, address: &str) -> Result<(), Response> {
    let by_name = st
        .redis(st.store.login_failures(&format!("user:{username}")))
        .await
        .map_err(IntoResponse::into_response)?;
    let by_addr = st
        .redis(st.store.login_failures(&format!("addr:{address}")))
        .await
        .map_err(IntoResponse::into_response)?;
    let over = |(n, _): (u64, u64), max: u64| n >= max;
    if over(by_name, st.config.login_max_failures)
        || over(by_addr, st.config.login_max_failures_per_address)
    {
        let wait = by_name.1.max(by_addr.1);
        crate::metrics::auth_failure(crate::metrics::AuthFailure::Throttled);
        tracing::warn!("login throttled");
        return Err(with_retry_after(
            mss(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": format!("Too many failed attempts. Please wait {wait} seconds"),
                       "remaining_seconds": wait}),
            ),
            wait,
        ));
    }
    Ok(())
}

async fn count_failure(st: &AppState, username: &str, address: &str) {
    let window = st.config.login_failure_window.as_secs().max(1);
    let _ = st
        .redis(
            st.store
                .count_login_failure(&format!("user:{username}"), window),
        )
        .await;
    let _ = st
        .redis(
            st.store
                .count_login_failure(&format!("addr:{address}"), window),
        )
        .await;
}

/// Checks a name and password (argon2 runs off the async threads); `Ok(None)` for bad
/// credentials, counted against the name and the address.
async fn check_password(
    st: &AppState,
    username: &str,
    password: &str,
    address: &str,
) -> Result<Option<User>, Response> {
    throttled(st, username, address).await?;
    let found = st
        .redis(st.store.user_with_hash(username))
        .await
        .map_err(IntoResponse::into_response)?;
    let password = password.to_owned();
    // Verify against a dummy hash when the user does not exist, so timing does not tell.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, dummy_hash().to_owned()),
    };
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    match user {
        Some(u) if ok => {
            let _ = st
                .redis(st.store.clear_login_failures(&format!("user:{username}")))
                .await;
            Ok(Some(u))
        }
        _ => {
            crate::metrics::auth_failure(crate::metrics::AuthFailure::LoginFailed);
            count_failure(st, username, address).await;
            Ok(None)
        }
    }
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("not-a-real-password-1!").unwrap_or_default())
}

fn role_of(user: &User) -> Role {
    Role::parse(&user.role).unwrap_or(Role::User)
}

/// Mints a session JWT and registers its session.
async fn open_session(st: &AppState, user: &User) -> Result<(String, i64), Response> {
    let ttl = st.jwt.config().session_ttl;
    let (token, claims) = st
        .jwt
        .mint(&user.id, &user.username, role_of(user), ttl)
        .map_err(|_| mss_error(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected error"))?;
    let session = SessionInfo {
        jti: claims.jti.clone(),
        user_id: user.id.clone(),
        created_ms: now_ms(),
        last_used_ms: None,
        expires_ms: claims.exp * 1000,
        revoked: false,
    };
    st.redis(st.store.create_session(&session))
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((token, claims.exp))
}

/// `POST /login`: JSON `{username, password}` or a form post → `{"jwt_token": ...}` and the
/// `jwt_token` cookie.
pub(crate) async fn login(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let peer = peer_of(req.extensions().get::<ConnectInfo<SocketAddr>>());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let bytes = match read_body(body, &headers, 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let f = fields(&headers, &bytes);
    if flag(&f, &["guest_login"]) {
        return mss_error(
            StatusCode::FORBIDDEN,
            "Guest login is disabled. Guests cannot obtain JWT tokens.",
        );
    }
    let username = clean_username(field(&f, &["username"]).unwrap_or(""));
    let password = clean_password(field(&f, &["password"]).unwrap_or(""));
    if username.is_empty() || password.is_empty() {
        return mss_error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    let address = client_address(&st, &headers, peer);
    let user = match check_password(&st, &username, &password, &address).await {
        Ok(Some(u)) => u,
        Ok(None) => return mss_error(StatusCode::UNAUTHORIZED, "Invalid credentials"),
        Err(r) => return r,
    };
    if user.disabled {
        crate::metrics::auth_failure(crate::metrics::AuthFailure::Disabled);
        return mss_error(StatusCode::FORBIDDEN, "Account disabled");
    }
    let (token, exp) = match open_session(&st, &user).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let remember = flag(&f, &["remember_me", "remember"]);
    let max_age = remember.then(|| st.jwt.config().session_ttl.as_secs());
    let cookie = session_cookie(&token, is_https(&headers), max_age);
    tracing::info!(user = %user.username, "login");
    let mut r = if is_navigation(&headers) {
        let mut r = empty(StatusCode::FOUND);
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        r
    } else {
        mss(
            StatusCode::OK,
            json!({"message": "Login successful", "jwt_token": token, "redirect_url": "/",
                   "remember_me": remember, "expires_at": iso(exp * 1000)}),
        )
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET`/`POST /logout`: revokes the session JWT on the request (expired ones too), clears the
/// cookies and redirects to the login page. API tokens are never revoked here.
pub(crate) async fn logout(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let query = req.uri().query().map(str::to_owned);
    if let Some((token, _)) = request_token(&headers, query.as_deref()) {
        if auth::is_jwt_shaped(&token) {
            if let Ok(claims) = st.jwt.claims_ignoring_expiry(&token) {
                if let Err(e) = st
                    .redis(st.store.revoke_session(&claims.jti, Some(&claims.id)))
                    .await
                {
                    return e.into_response();
                }
            }
        }
    }
    let mut r = empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&st.config.login_path) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    for c in clearing_cookies(is_https(&headers)) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `GET /mss-login/generate_token`: the plugin redirects browsers to its login page.
pub(crate) async fn generate_token_page(State(st): State<Arc<AppState>>) -> Response {
    let mut r = empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&st.config.login_path) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Effective lifetime of a new API token: MSS-Login's rules for `expire_hours`.
fn token_hours(raw: Option<&Value>) -> Option<f64> {
    let parsed = match raw {
        None | Some(Value::Null) => Some(DEFAULT_TOKEN_HOURS),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let h = parsed
        .filter(|h| h.is_finite())
        .unwrap_or(DEFAULT_TOKEN_HOURS);
    if h <= 0.0 {
        None
    } else {
        Some(h.clamp(1.0, MAX_TOKEN_HOURS))
    }
}

/// `POST /mss-login/generate_token` (legacy `/generate_token`): a long-lived API token for the
/// user of the session JWT on the request, or for `username` + `password`.
pub(crate) async fn generate_token(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let peer = peer_of(req.extensions().get::<ConnectInfo<SocketAddr>>());
    let query = req.uri().query().map(str::to_owned);
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let bytes = match read_body(body, &headers, 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let f = fields(&headers, &bytes);
    let reauth = flag(&f, &["require_password_reauth"]);

    // 1. A session JWT on the request (not an API token), unless re-authentication is asked.
    let mut user: Option<User> = None;
    if !reauth {
        if let Some((token, _)) = request_token(&headers, query.as_deref()) {
            if auth::is_jwt_shaped(&token) {
                if let Ok((identity, _)) =
                    authenticate_parts(&st, &path, &headers, query.as_deref()).await
                {
                    user = st
                        .redis(st.store.user_by_id(&identity.user_id))
                        .await
                        .ok()
                        .flatten();
                }
            }
        }
    }
    // 2. Name and password.
    if user.is_none() {
        let username = clean_username(field(&f, &["username"]).unwrap_or(""));
        let password = clean_password(field(&f, &["password"]).unwrap_or(""));
        if username.is_empty() || password.is_empty() {
            return mss_error(StatusCode::UNAUTHORIZED, "Username and password required.");
        }
        let address = client_address(&st, &headers, peer);
        user = match check_password(&st, &username, &password, &address).await {
            Ok(Some(u)) => Some(u),
            Ok(None) => return mss_error(StatusCode::UNAUTHORIZED, "Invalid credentials."),
            Err(r) => return r,
        };
    }
    let Some(user) = user else {
        return mss_error(StatusCode::UNAUTHORIZED, "Username and password required.");
    };
    if user.disabled {
        crate::metrics::auth_failure(crate::metrics::AuthFailure::Disabled);
        return mss_error(StatusCode::FORBIDDEN, "Account disabled");
    }
    let role = role_of(&user);
    if !role.grants(Permission::CanHaveApiTokens) {
        return mss_error(
            StatusCode::FORBIDDEN,
            "MSS-Login: You do not have permission to create API tokens.",
        );
    }
    let hours = token_hours(f.get("expire_hours"));
    if hours.is_none() && role != Role::Owner {
        return mss_error(
            StatusCode::FORBIDDEN,
            "MSS-Login: Never-expiring tokens (0 hours) require the Non-expiring JWT permission. Ask an admin to enable it for your role.",
        );
    }
    let label: String = field(&f, &["label"])
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    let (raw, hash) = auth::generate_api_token();
    let created = now_ms();
    let info = ApiTokenInfo {
        hash,
        user_id: user.id.clone(),
        username: user.username.clone(),
        label,
        created_ms: created,
        expires_ms: hours.map(|h| created + (h * 3_600_000.0) as i64),
        last_used_ms: None,
    };
    if let Err(e) = st.redis(st.store.create_api_token(&info)).await {
        return e.into_response();
    }
    tracing::info!(user = %user.username, "api token created");
    mss(
        StatusCode::OK,
        json!({"message": "API token created.", "jwt_token": raw, "expires_in_hours": hours}),
    )
}

/// `GET /mss-login/api/tokens`: the caller's live API tokens (never the secret).
pub(crate) async fn list_tokens(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiError> {
    let tokens = st.redis(st.store.api_tokens_of(&id.user_id)).await?;
    let list: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "token_hash_prefix": format!("{}...", &t.hash[..8.min(t.hash.len())]),
                "expires_iso": t.expires_ms.map(iso).unwrap_or_else(|| "9999-12-31T23:59:59+00:00".into()),
                "label": t.label,
                "created_at_iso": iso(t.created_ms),
                "last_used_at_iso": opt_iso(t.last_used_ms),
            })
        })
        .collect();
    Ok(mss(StatusCode::OK, json!({ "tokens": list })))
}

async fn revoke_prefix(st: &AppState, id: &Identity, raw: &str) -> Result<Response, ApiError> {
    let prefix: String = raw
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase();
    if prefix.len() < 8 {
        return Ok(mss_error(
            StatusCode::BAD_REQUEST,
            "token_hash_prefix must be at least 8 alphanumeric characters.",
        ));
    }
    let n = st
        .redis(st.store.revoke_api_tokens(&id.user_id, &prefix))
        .await?;
    Ok(if n == 0 {
        mss_error(StatusCode::NOT_FOUND, "Token not found.")
    } else {
        mss(StatusCode::OK, json!({"message": "Token revoked."}))
    })
}

/// `DELETE /mss-login/api/tokens` `{"token_hash_prefix": ...}`: revokes the caller's token(s).
pub(crate) async fn delete_token(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, 64 * 1024).await?;
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(mss_error(StatusCode::BAD_REQUEST, "Invalid JSON body."));
    };
    let raw = m
        .get("token_hash_prefix")
        .and_then(Value::as_str)
        .unwrap_or("");
    revoke_prefix(&st, &id, raw).await
}

/// `DELETE /mss-login/api/tokens/{prefix}`.
pub(crate) async fn delete_token_path(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(prefix): Path<String>,
) -> Result<Response, ApiError> {
    revoke_prefix(&st, &id, &prefix).await
}

/// `GET /mss-login/me/sessions`: the caller's live sessions.
pub(crate) async fn list_sessions(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiError> {
    let sessions = st.redis(st.store.sessions_of(&id.user_id)).await?;
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "jti": s.jti,
                "created_at_iso": iso(s.created_ms),
                "last_used_at_iso": opt_iso(s.last_used_ms),
                "exp_at_iso": iso(s.expires_ms),
                "is_current": id.session_id.as_deref() == Some(s.jti.as_str()),
            })
        })
        .collect();
    Ok(mss(StatusCode::OK, json!({ "sessions": list })))
}

/// `POST /mss-login/me/sessions/revoke` `{"jti": ...}`.
pub(crate) async fn revoke_session(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, 64 * 1024).await?;
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(mss_error(StatusCode::BAD_REQUEST, "Invalid JSON"));
    };
    let Some(jti) = m
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
    else {
        return Ok(mss_error(StatusCode::BAD_REQUEST, "jti required"));
    };
    let done = st
        .redis(st.store.revoke_session(jti, Some(&id.user_id)))
        .await?;
    Ok(if done {
        mss(StatusCode::OK, json!({"status": "ok"}))
    } else {
        mss_error(
            StatusCode::NOT_FOUND,
            "Session not found or already revoked",
        )
    })
}

fn permissions_of(role: Role) -> Value {
    let mut m = Map::new();
    for p in Permission::ALL {
        m.insert(p.as_str().to_owned(), Value::Bool(role.grants(p)));
    }
    Value::Object(m)
}

/// `GET /mss-login/api/me`: MSS-Login's fields plus `permissions` and `sfw_check`; a guest
/// payload without a token (the `/api/...` alias requires one).
pub(crate) async fn me(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let query = req.uri().query().map(str::to_owned);
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let identity = match authenticate_parts(&st, &path, &headers, query.as_deref()).await {
        Ok((identity, _)) => Some(identity),
        Err(_) if path.starts_with("/api/") => {
            return ApiError::Unauthorized("Authentication required".into()).into_response()
        }
        Err(_) => None,
    };
    let Some(identity) = identity else {
        return mss(
            StatusCode::OK,
            json!({"username": null, "role": "guest", "groups": ["guest"], "is_admin": false,
                   "mfa_enabled": false, "experimental_features": false, "experimental": {},
                   "permissions": permissions_of(Role::Guest), "sfw_check": true}),
        );
    };
    let sfw = match st.redis(st.store.user_by_id(&identity.user_id)).await {
        Ok(u) => u.map(|u| u.sfw_check).unwrap_or(true),
        Err(e) => return e.into_response(),
    };
    mss(
        StatusCode::OK,
        json!({"username": identity.username, "role": identity.role.as_str(),
               "groups": [identity.role.as_str()], "is_admin": identity.role.is_admin(),
               "mfa_enabled": false, "experimental_features": false, "experimental": {},
               "permissions": permissions_of(identity.role), "sfw_check": sfw}),
    )
}

fn user_json(u: &User) -> Value {
    let role = role_of(u);
    json!({"username": u.username, "groups": [role.as_str()], "role": role.as_str(),
           "is_admin": role.is_admin(), "sfw_check": u.sfw_check, "disabled": u.disabled,
           "max_queued": u.max_queued, "max_running": u.max_running})
}

/// Admin check of the users API: MSS-Login answers 403 `Admin only`, even without a token.
async fn admin(st: &AppState, parts: &Parts) -> Result<Identity, Response> {
    let path = parts.uri.path();
    match authenticate_parts(st, path, &parts.headers, parts.uri.query()).await {
        Ok((identity, _)) if identity.role.is_admin() => Ok(identity),
        Err(e) if path.starts_with("/api/") => Err(e.into_response()),
        _ => Err(mss_error(StatusCode::FORBIDDEN, "Admin only")),
    }
}

/// Whether `caller` may change or delete `target` through the users API: the owner may act on
/// anyone; an admin only on users below admin (and on itself, see [`update_user`]). Stricter
/// than MSS-Login, whose admins can reset the owner: with a password field that is a takeover.
fn may_manage(caller: &Identity, target: &User) -> bool {
    caller.role == Role::Owner || !role_of(target).is_admin() || caller.user_id == target.id
}

/// An admin's request with a JSON object body (the users API's writes): the caller and the
/// object, or the answer to give (403 `Admin only`, 413, 400 `Invalid JSON`).
async fn admin_json(
    st: &AppState,
    req: Request,
) -> Result<(Identity, serde_json::Map<String, Value>), Response> {
    let (parts, body) = req.into_parts();
    let caller = admin(st, &parts).await?;
    let bytes = read_body(body, &parts.headers, 64 * 1024)
        .await
        .map_err(IntoResponse::into_response)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok((caller, m)),
        _ => Err(mss_error(StatusCode::BAD_REQUEST, "Invalid JSON")),
    }
}

/// `GET /mss-login/api/users` (admins).
pub(crate) async fn list_users(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = admin(&st, &parts).await {
        return r;
    }
    match st.redis(st.store.users()).await {
        Ok(users) => mss(
            StatusCode::OK,
            json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
        ),
        Err(e) => e.into_response(),
    }
}

/// `POST /mss-login/api/users` `{username, password, role}` (owner and admins; only the owner
/// creates admins) → 201.
pub(crate) async fn create_user(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (caller, m) = match admin_json(&st, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let username = field(&m, &["username", "new_user_username"]).unwrap_or("");
    let password = field(&m, &["password", "new_user_password"]).unwrap_or("");
    let role_name = field(&m, &["role", "group"]).unwrap_or("user");
    if let Err(msg) = auth::check_username(username) {
        return mss_error(StatusCode::BAD_REQUEST, msg);
    }
    if let Err(msg) = auth::check_new_password(password) {
        return mss_error(StatusCode::BAD_REQUEST, msg);
    }
    let role = match Role::parse(role_name) {
        Some(Role::Owner) => {
            return mss_error(
                StatusCode::BAD_REQUEST,
                "Cannot create a second owner via this endpoint. Transfer ownership from Users & Roles.",
            )
        }
        Some(r) => r,
        None => {
            return mss_error(
                StatusCode::BAD_REQUEST,
                "Invalid role. Allowed: admin, guest, power, user",
            )
        }
    };
    if role == Role::Admin && caller.role != Role::Owner {
        return mss_error(StatusCode::FORBIDDEN, "Owner only");
    }
    let password = password.to_owned();
    let hash = match tokio::task::spawn_blocking(move || auth::hash_password(&password)).await {
        Ok(Ok(h)) => h,
        _ => return mss_error(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected error"),
    };
    let new = NewUser {
        username: username.to_owned(),
        password_hash: hash,
        role: role.as_str().to_owned(),
    };
    match st.redis(st.store.create_user(&new)).await {
        Ok(CreateUser::Created(u)) => {
            tracing::info!(user = %u.username, role = %u.role, "user created");
            mss(
                StatusCode::CREATED,
                json!({"status": "ok", "username": u.username, "role": u.role}),
            )
        }
        Ok(CreateUser::Exists) => mss_error(StatusCode::BAD_REQUEST, "Username exists"),
        Err(e) => e.into_response(),
    }
}

/// `PUT /mss-login/api/users/{name}` (admins): `groups`/`role`, `sfw_check`, `disabled`,
/// `max_queued`, `max_running`, `password`. Fields left out stay as they are (MSS-Login clears
/// the groups instead; we do not, on purpose). The owner's role changes only by transfer.
pub(crate) async fn update_user(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let (caller, m) = match admin_json(&st, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let target = match st.redis(st.store.user(&name)).await {
        Ok(Some(u)) => u,
        Ok(None) => return empty(StatusCode::NOT_FOUND),
        Err(e) => return e.into_response(),
    };
    if !may_manage(&caller, &target) {
        return mss_error(StatusCode::FORBIDDEN, "Owner only");
    }
    let mut changes: Vec<(&str, String)> = Vec::new();
    let wanted_role = m
        .get("role")
        .and_then(Value::as_str)
        .or_else(|| {
            m.get("groups")
                .and_then(Value::as_array)
                .and_then(|g| g.first())
                .and_then(Value::as_str)
        })
        .map(|r| Role::parse(r).ok_or(()));
    if let Some(wanted) = wanted_role {
        let Ok(wanted) = wanted else {
            return mss_error(StatusCode::BAD_REQUEST, "Invalid role");
        };
        let current = role_of(&target);
        // Making or unmaking an admin is the owner's call (an admin may not even demote itself
        // here: that is a role change too).
        if (wanted == Role::Admin || current == Role::Admin)
            && wanted != current
            && caller.role != Role::Owner
        {
            return mss_error(StatusCode::FORBIDDEN, "Owner only");
        }
        if current == Role::Owner && wanted != Role::Owner {
            return mss_error(
                StatusCode::FORBIDDEN,
                "Owner's role cannot be changed. Only transfer of ownership is allowed.",
            );
        }
        if wanted == Role::Owner && current != Role::Owner {
            if caller.role != Role::Owner {
                return mss_error(
                    StatusCode::FORBIDDEN,
                    "Only the current owner can assign the owner role (transfer).",
                );
            }
            // Transfer: the caller steps down to admin.
            if let Err(e) = st
                .redis(
                    st.store
                        .update_user(&caller.username, &[("role", "admin".into())]),
                )
                .await
            {
                return e.into_response();
            }
        }
        changes.push(("role", wanted.as_str().to_owned()));
    }
    for (key, field_name) in [("sfw_check", "sfw_check"), ("disabled", "disabled")] {
        if let Some(v) = m.get(key).and_then(Value::as_bool) {
            changes.push((field_name, if v { "1" } else { "0" }.to_owned()));
        }
    }
    for key in ["max_queued", "max_running"] {
        match m.get(key) {
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                changes.push((key, n.to_string()));
            }
            Some(Value::Null) => changes.push((key, String::new())),
            Some(_) => return mss_error(StatusCode::BAD_REQUEST, "limits must be whole numbers"),
            None => {}
        }
    }
    if let Some(pw) = m.get("password").and_then(Value::as_str) {
        if let Err(msg) = auth::check_new_password(pw) {
            return mss_error(StatusCode::BAD_REQUEST, msg);
        }
        let pw = pw.to_owned();
        match tokio::task::spawn_blocking(move || auth::hash_password(&pw)).await {
            Ok(Ok(h)) => changes.push(("hash", h)),
            _ => return mss_error(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected error"),
        }
    }
    match st.redis(st.store.update_user(&name, &changes)).await {
        Ok(true) => mss(StatusCode::OK, json!({"status": "ok"})),
        Ok(false) => empty(StatusCode::NOT_FOUND),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /mss-login/api/users/{name}` (admins: users below admin; the owner: anyone but the
/// last owner or admin).
pub(crate) async fn delete_user(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    let caller = match admin(&st, &parts).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if name == "guest" {
        return mss_error(StatusCode::BAD_REQUEST, "Cannot delete guest");
    }
    let users = match st.redis(st.store.users()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Some(target) = users.iter().find(|u| u.username == name) else {
        return empty(StatusCode::NOT_FOUND);
    };
    if !may_manage(&caller, target) {
        return mss_error(StatusCode::FORBIDDEN, "Owner only");
    }
    let admins = users.iter().filter(|u| role_of(u).is_admin()).count();
    if role_of(target).is_admin() && admins <= 1 {
        return mss_error(StatusCode::BAD_REQUEST, "Cannot delete last admin");
    }
    match st.redis(st.store.delete_user(&name)).await {
        Ok(_) => {
            tracing::info!(user = %name, "user deleted");
            mss(StatusCode::OK, json!({"status": "ok"}))
        }
        Err(e) => e.into_response(),
    }
}

/// Creates the bootstrap owner when the installation has no user yet. Returns true if created.
pub async fn bootstrap_owner(
    store: &store::Store,
    username: &str,
    password: &str,
) -> Result<bool, BootstrapError> {
    auth::check_username(username).map_err(BootstrapError::Invalid)?;
    if store.user_count().await? > 0 {
        return Ok(false);
    }
    let hash =
        auth::hash_password(password).map_err(|_| BootstrapError::Invalid("hashing failed"))?;
    let created = store
        .create_user(&NewUser {
            username: username.to_owned(),
            password_hash: hash,
            role: Role::Owner.as_str().to_owned(),
        })
        .await?;
    Ok(matches!(created, CreateUser::Created(_)))
}

/// Why the bootstrap owner could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A bad name or password.
    #[error("bootstrap owner: {0}")]
    Invalid(&'static str),
    /// Redis failed.
    #[error("bootstrap owner: {0}")]
    Store(#[from] store::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_match_python() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso(1_767_312_000_123), "2026-01-02T00:00:00.123000+00:00");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000000+00:00");
    }

    #[test]
    fn token_lifetimes_follow_mss_login() {
        assert_eq!(token_hours(None), Some(720.0));
        assert_eq!(token_hours(Some(&json!(0))), None);
        assert_eq!(token_hours(Some(&json!(-5))), None);
        assert_eq!(token_hours(Some(&json!(0.5))), Some(1.0));
        assert_eq!(token_hours(Some(&json!(99999))), Some(8760.0));
        assert_eq!(token_hours(Some(&json!("48"))), Some(48.0));
        assert_eq!(token_hours(Some(&json!("soon"))), Some(720.0));
    }

    #[test]
    fn user_names_are_cleaned_like_mss_login() {
        assert_eq!(clean_username("al ice<script>"), "alicescript");
        assert_eq!(clean_username("bob_1-x"), "bob_1-x");
    }
}
