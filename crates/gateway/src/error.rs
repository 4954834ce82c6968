//! The one place where failures become HTTP answers (DESIGN.md "Error bodies").

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use protocol::error::ErrorBody;
use protocol::validate::PromptError;
use thiserror::Error;

/// Why the gateway could not be built.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The configuration is unusable.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// Redis failed while starting.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

/// Every way a request can fail; [`IntoResponse`] maps each to its status and body.
#[derive(Debug, Error)]
pub enum ApiError {
    /// No token, or a token that does not verify (never carries the token itself).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A browser without a valid token: redirect to the login page.
    #[error("redirect to login")]
    LoginRedirect(String),
    /// Authenticated, but the role lacks a permission.
    #[error("missing permission {0}")]
    Forbidden(&'static str),
    /// A request refused for another reason with 403 (`type`, message).
    #[error("forbidden: {1}")]
    ForbiddenOther(&'static str, String),
    /// A malformed request (`type`, message).
    #[error("bad request: {1}")]
    BadRequest(&'static str, String),
    /// ComfyUI's own validation answer (400).
    #[error("invalid prompt: {0}")]
    Prompt(Box<PromptError>),
    /// Body over a limit (the limit in bytes).
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// 404 with an empty body (ComfyUI's `/view`).
    #[error("not found")]
    NotFoundEmpty,
    /// 404 with our JSON body.
    #[error("not found: {0}")]
    NotFound(String),
    /// An Idempotency-Key reused with another body.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The caller already has this many pending jobs (its `max_queued`): 429.
    #[error("queue full ({0} pending jobs)")]
    QueueFull(u32),
    /// Nothing can serve this right now (no catalogue yet, draining, ...).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Redis failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// A Redis operation took longer than `redis_timeout`.
    #[error("redis timed out")]
    StoreTimeout,
    /// The file store failed.
    #[error("files: {0}")]
    Files(#[from] files::FilesError),
    /// A file flagged NSFW asked for by a user with `sfw_check` on: MSS-Login's 403 text.
    #[error("NSFW content blocked")]
    NsfwBlocked,
    /// A `Range` outside the file (its size).
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// A text/plain answer (ComfyUI's own bodies, e.g. userdata's `409 File already exists`);
    /// an empty text gives an empty body without a content type, as ComfyUI sends it.
    #[error("{0}: {1}")]
    Text(StatusCode, String),
    /// A fixed answer with a given status and JSON body (ComfyUI's own shapes, e.g. the jobs
    /// API's `{"error": "Job not found"}`).
    #[error("{0}")]
    Raw(StatusCode, &'static str, String),
}

/// Retry-After seconds used for 503s (set once at start from the config).
static RETRY_AFTER: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

pub(crate) fn set_retry_after(secs: u64) {
    let _ = RETRY_AFTER.set(secs);
}

fn retry_after() -> u64 {
    RETRY_AFTER.get().copied().unwrap_or(2)
}

/// A JSON response with the given status.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// An empty 200 (ComfyUI's answer to POST /queue, /interrupt, /history).
pub(crate) fn empty_ok() -> Response {
    Response::new(Body::empty())
}

fn error_body(status: StatusCode, body: ErrorBody) -> Response {
    let mut r = json_response(status, Bytes::from(body.to_json()));
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        if let Ok(v) = HeaderValue::from_str(&retry_after().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized(msg) => {
                let mut r = error_body(
                    StatusCode::UNAUTHORIZED,
                    ErrorBody::new("unauthorized", msg.clone(), msg),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::LoginRedirect(to) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::FOUND;
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            ApiError::Forbidden(perm) => error_body(
                StatusCode::FORBIDDEN,
                ErrorBody::new(
                    "forbidden",
                    format!("Permission {perm} required"),
                    format!("this account lacks the {perm} permission"),
                )
                .with_extra("permission", perm),
            ),
            ApiError::ForbiddenOther(kind, msg) => error_body(
                StatusCode::FORBIDDEN,
                ErrorBody::new(kind, msg.clone(), msg),
            ),
            ApiError::BadRequest(kind, msg) => error_body(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(kind, msg.clone(), msg),
            ),
            ApiError::Prompt(e) => json_response(
                StatusCode::BAD_REQUEST,
                Bytes::from(e.to_json().to_string()),
            ),
            ApiError::TooLarge(limit) => error_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::new(
                    "request_too_large",
                    "Request body too large",
                    format!("the body exceeds the limit of {limit} bytes"),
                )
                .with_extra("limit_bytes", limit),
            ),
            ApiError::NotFoundEmpty => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
            ApiError::NotFound(msg) => error_body(
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", msg.clone(), msg),
            ),
            ApiError::IdempotencyConflict => error_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new(
                    "idempotency_conflict",
                    "Idempotency-Key already used with a different request",
                    "send a new Idempotency-Key for a different request body",
                ),
            ),
            ApiError::QueueFull(limit) => error_body(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorBody::new(
                    "queue_full",
                    format!("Too many queued jobs: the limit max_queued is {limit}"),
                    format!(
                        "you already have {limit} pending jobs (max_queued); wait for some to start or cancel some"
                    ),
                )
                .with_extra("limit", "max_queued")
                .with_extra("max_queued", limit),
            ),
            ApiError::Unavailable(msg) => error_body(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("service_unavailable", msg.clone(), msg),
            ),
            ApiError::Store(e) => {
                if e.is_unavailable() {
                    tracing::warn!(error = %e, "redis unavailable");
                    error_body(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorBody::new(
                            "service_unavailable",
                            "Job store unavailable",
                            "the job store (Redis) did not answer; retry later",
                        ),
                    )
                } else {
                    tracing::error!(error = %e, "store error");
                    error_body(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorBody::new("internal_error", "Internal error", ""),
                    )
                }
            }
            ApiError::StoreTimeout => {
                tracing::warn!("redis operation timed out");
                error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody::new(
                        "service_unavailable",
                        "Job store unavailable",
                        "the job store (Redis) did not answer in time; retry later",
                    ),
                )
            }
            ApiError::Files(e) => {
                tracing::error!(error = %e, "file store error");
                error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody::new(
                        "service_unavailable",
                        "File store unavailable",
                        "the file store failed; retry later",
                    ),
                )
            }
            ApiError::NsfwBlocked => {
                let mut r = Response::new(Body::from("NSFW content blocked for this user."));
                *r.status_mut() = StatusCode::FORBIDDEN;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            ApiError::RangeNotSatisfiable(size) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            ApiError::Raw(status, _kind, body) => json_response(status, body),
            ApiError::Text(status, text) => {
                let empty = text.is_empty();
                let mut r = Response::new(Body::from(text));
                *r.status_mut() = status;
                if !empty {
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                r
            }
        }
    }
}
