//! Errors of the store.

use thiserror::Error;

/// What can go wrong talking to Redis.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Redis refused, timed out or the connection dropped.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Data in Redis did not have the expected shape.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key that was read.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A JSON document could not be (de)serialised.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A job carries `extra_data` secrets but no `redis.secrets_key` (or `auth.secret`) is set.
    #[error("no key configured to seal extra_data secrets")]
    NoSealKey,
    /// A sealed secret did not open (another deployment's key, or tampered).
    #[error("sealed secret: {0}")]
    Sealed(&'static str),
}

impl StoreError {
    /// True when the error means Redis is unreachable (answer 503 + Retry-After, retry later).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::MasterDown
                        )
                    )
            }
            _ => false,
        }
    }
}
