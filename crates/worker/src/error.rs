//! Errors of the worker.

use thiserror::Error;

/// Why the worker could not start or stopped.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error("worker config: {0}")]
    Config(String),
    /// Redis failed in a way the worker cannot work around.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

/// Why a call to a backend failed.
#[derive(Debug, Error)]
pub enum BackendError {
    /// Connection refused, reset, DNS failure, timeout, TLS failure.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The backend answered with an unexpected status.
    #[error("backend answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body (for the log and error messages).
        body: String,
    },
    /// The backend's answer could not be read as expected.
    #[error("bad answer from backend: {0}")]
    BadAnswer(String),
}

impl BackendError {
    /// True when the backend itself looks down or broken (not the job's fault).
    pub fn is_backend_fault(&self) -> bool {
        match self {
            BackendError::Unreachable(_) | BackendError::BadAnswer(_) => true,
            BackendError::Status { status, .. } => {
                *status >= 500 || *status == 401 || *status == 403
            }
        }
    }
}
