//! The comfy-broker command-line client: `login`, `logout`, `run`, `queue`, `history`, `cancel`
//! and `workflows`, speaking only the broker's public HTTP and WebSocket API (the same API as
//! ComfyUI, plus the MSS-Login token routes).
//!
//! Exit codes: 0 success, 1 execution error (or a request the server refused), 2 usage or
//! authentication error, 3 timeout or interrupted.

pub mod api;
pub mod cli;
pub mod credentials;
pub mod display;
pub mod error;
pub mod run;
pub mod workflow;

pub use error::ClientError;
