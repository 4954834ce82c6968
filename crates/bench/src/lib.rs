//! `comfy-broker bench`: a reproducible load benchmark of a whole broker stack.
//!
//! The orchestrator starts (or, with `--url`, targets) a stack of separate processes — a private
//! `redis-server`, simulated ComfyUI backends, a worker and two gateways — and measures, over
//! loopback, with load generators that are separate processes too (`--role ...`, the same
//! binary re-invoked):
//!
//! 1. `POST /prompt` throughput and latency beside `GET /healthz` and raw Redis `XADD`;
//! 2. end-to-end overhead per job (`POST /prompt` → `executing {node: null}` on the socket);
//! 3. fan-out latency and deliveries/s with 1,000 and 10,000 sockets over two gateways;
//! 4. resident memory of a gateway holding 10,000 idle authenticated sockets;
//! 5. a sustained run showing latency and memory at its start and end.
//!
//! Every loop is bounded in count and time. Results: a table on stdout and JSON (`--json`).

mod holder;
mod http;
mod orchestrate;
mod report;
mod stack;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Why the benchmark failed.
#[derive(Debug, Error)]
pub enum BenchError {
    /// I/O (processes, sockets, files).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Redis.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Tokens.
    #[error("JWT: {0}")]
    Jwt(#[from] auth::JwtError),
    /// Anything else.
    #[error("{0}")]
    Msg(String),
}

/// A process role: the orchestrator or one of its load generators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Starts the stack, drives the measurements, reports.
    Orchestrator,
    /// Holds sockets and records event delivery (internal).
    SocketClient,
    /// Closed-loop HTTP load (internal).
    HttpLoad,
}

/// `comfy-broker bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Process role (the load generators are this binary re-invoked).
    #[arg(long, value_enum, default_value = "orchestrator")]
    pub role: Role,
    /// Target existing gateways (`http://host:port`, repeatable) instead of starting a stack;
    /// needs `--redis` and the stack's `COMFY_BROKER__AUTH__SECRET` and key prefix.
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// Use this Redis instead of starting a private `redis-server`.
    #[arg(long)]
    pub redis: Option<String>,
    /// Key prefix of a targeted stack (with `--url`).
    #[arg(long, default_value = "cb")]
    pub key_prefix: String,
    /// Scale everything down for a smoke run (seconds instead of minutes).
    #[arg(long)]
    pub quick: bool,
    /// Runs of each short measurement (figures are medians); default 3, 1 with `--quick`.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Concurrent connections of the submit / healthz load.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Length of each submit / healthz run (default 5s, 1s with `--quick`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Jobs per end-to-end run (default 300, 20 with `--quick`).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Socket counts of the fan-out measurements (default 1000,10000; 100 with `--quick`).
    #[arg(long, value_delimiter = ',')]
    pub sockets: Option<Vec<usize>>,
    /// Idle sockets on one gateway for the memory figure (default 10000; 200 with `--quick`).
    #[arg(long)]
    pub idle_sockets: Option<usize>,
    /// Length of the sustained run (default 2m; 6s with `--quick`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sustain: Option<Duration>,
    /// Work time of every simulated node (0: instant).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub node_time: Duration,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    // Internal arguments of the load-generator roles.
    /// (internal) address `host:port` a load generator targets.
    #[arg(long, hide = true)]
    pub addr: Option<String>,
    /// (internal) first user index of a socket client.
    #[arg(long, hide = true, default_value_t = 0)]
    pub first: usize,
    /// (internal) sockets of a socket client.
    #[arg(long, hide = true, default_value_t = 0)]
    pub count: usize,
    /// (internal) request of the HTTP load: `healthz` or `prompt`.
    #[arg(long, hide = true, default_value = "healthz")]
    pub what: String,
}

/// The secret tokens are signed with: `COMFY_BROKER__AUTH__SECRET` or a fixed bench secret.
pub(crate) fn secret() -> String {
    std::env::var("COMFY_BROKER__AUTH__SECRET")
        .ok()
        .filter(|s| s.len() >= 32)
        .unwrap_or_else(|| "comfy-broker-bench-secret-0123456789abcdef".to_owned())
}

pub(crate) fn jwt_keys(secret: &str) -> Result<auth::JwtKeys, BenchError> {
    Ok(auth::JwtKeys::new(auth::JwtConfig {
        secret: secret.to_owned(),
        ..auth::JwtConfig::default()
    })?)
}

/// User id of bench user `i`.
pub(crate) fn user_id(i: usize) -> String {
    format!("bench-u{i}")
}

/// A session JWT of bench user `i` (role power).
pub(crate) fn token(keys: &auth::JwtKeys, i: usize) -> Result<String, BenchError> {
    Ok(keys
        .mint(
            &user_id(i),
            &format!("bu{i}"),
            auth::Role::Power,
            Duration::from_secs(6 * 3600),
        )?
        .0)
}

/// Runs the benchmark (or, for internal roles, one load generator).
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    match args.role {
        Role::SocketClient => {
            let addr = args
                .addr
                .ok_or_else(|| BenchError::Msg("--addr required".into()))?;
            holder::run(&format!("ws://{addr}"), args.first, args.count, &secret()).await
        }
        Role::HttpLoad => orchestrate::http_load_role(&args).await,
        Role::Orchestrator => orchestrate::run(args).await,
    }
}
