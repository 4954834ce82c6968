//! The client's errors and the exit code each one maps to.

use std::path::PathBuf;

use thiserror::Error;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the job (or a request) failed on the server.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage, bad input, missing or refused credentials, unreachable server.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: timed out or interrupted.
pub const EXIT_TIMEOUT: i32 = 3;

/// Everything that can go wrong in a client command. Messages never contain a token.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The command line or an input file is wrong.
    #[error("{0}")]
    Usage(String),
    /// No credentials, or the server refused them (401).
    #[error("{0}")]
    Auth(String),
    /// The server could not be reached at all.
    #[error("cannot connect to {url}: {reason} (is the broker running, and is the URL right?)")]
    Connect {
        /// The URL that was tried.
        url: String,
        /// Why (connection refused, DNS, TLS ...).
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Http {
        /// Request method.
        method: String,
        /// Request path (never the query: it may hold a token).
        path: String,
        /// Status code.
        status: u16,
        /// The server's error message, made readable.
        message: String,
    },
    /// A transport error after the connection was made (reset, timeout, bad body).
    #[error("{0}")]
    Transport(String),
    /// The graph was refused by the server (400 with node errors), already formatted.
    #[error("{0}")]
    Rejected(String),
    /// The job ran and failed on a node, already formatted.
    #[error("{0}")]
    Execution(String),
    /// The job did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The job was interrupted (Ctrl-C, or by someone else).
    #[error("{0}")]
    Interrupted(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The process exit code for this error (see the `EXIT_*` constants).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) | ClientError::Auth(_) | ClientError::Connect { .. } => {
                EXIT_USAGE
            }
            ClientError::Http { status: 401, .. } => EXIT_USAGE,
            ClientError::Timeout(_) | ClientError::Interrupted(_) => EXIT_TIMEOUT,
            ClientError::Http { .. }
            | ClientError::Transport(_)
            | ClientError::Rejected(_)
            | ClientError::Execution(_)
            | ClientError::Io { .. } => EXIT_FAILED,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }

    /// The message given for a 401 anywhere.
    pub fn auth_failed(detail: &str) -> Self {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        ClientError::Auth(format!(
            "authentication failed{detail}: run `comfy-broker login` or check COMFY_BROKER_TOKEN"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ClientError::Usage("x".into()).exit_code(), 2);
        assert_eq!(ClientError::auth_failed("").exit_code(), 2);
        assert_eq!(
            ClientError::Connect {
                url: "http://x".into(),
                reason: "refused".into()
            }
            .exit_code(),
            2
        );
        assert_eq!(ClientError::Execution("x".into()).exit_code(), 1);
        assert_eq!(ClientError::Timeout("x".into()).exit_code(), 3);
        assert_eq!(ClientError::Interrupted("x".into()).exit_code(), 3);
        assert!(ClientError::auth_failed("Token expired")
            .to_string()
            .contains("comfy-broker login"));
    }
}
