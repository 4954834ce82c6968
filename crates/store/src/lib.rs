//! Everything that touches Redis: the key schema ([`keys`]), the Lua scripts (`src/lua/`), the
//! job queue (submit, claim, finish, cancel), job and history records, the event bus and the
//! backend registry. Gateways and workers share state only through this crate.

pub mod keys;

mod accounts;
mod bus;
mod error;
mod jobs;
mod outputs;
mod queue;
mod reclaim;
mod registry;
mod sched;
mod scripts;
mod seal;
mod stats;
#[cfg(feature = "test-support")]
pub mod test_redis;
pub mod workflows;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

pub use accounts::{ApiTokenInfo, CreateUser, NewUser, SessionInfo, User};
pub use bus::{ControlMessage, ControlSubscriber, EventStream, EventSubscriber, Subscriptions};
pub use error::StoreError;
pub use jobs::{JobRecord, JobState};
pub use keys::Keys;
pub use outputs::NsfwVerdict;
pub use queue::{
    Finish, Heartbeat, HistoryWindow, Lease, NewJob, Owner, QueueView, Submitted, TerminalState,
};
pub use reclaim::{DeadLetter, Reclaimed};
pub use registry::{sha256_hex, BackendInfo, BackendState};
pub use sched::{Capabilities, Claimed, JobClass, Limits, Offer, Requirement};
pub use stats::QueueStats;

/// How to reach Redis and how much to keep there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://` or `rediss://` URL (passwords allowed).
    pub url: String,
    /// Prefix of every key and channel, so deployments and tests can share one Redis.
    pub key_prefix: String,
    /// Finished jobs kept per user and pool (ComfyUI keeps 10000).
    pub history_max_items: usize,
    /// Timeout of one Redis command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Key material (any string, 32+ characters advised) that seals the `extra_data` secrets
    /// (`api_key_comfy_org`, `auth_token_comfy_org`) while a job waits in Redis. Every gateway
    /// and worker of a deployment needs the same value; when empty the binary uses
    /// `auth.secret`.
    pub secrets_key: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "cb".into(),
            history_max_items: 10_000,
            command_timeout: Duration::from_secs(5),
            secrets_key: String::new(),
        }
    }
}

/// A handle on the shared state. Cheap to clone; one multiplexed connection underneath.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    scripts: scripts::Scripts,
    sealer: seal::Sealer,
    config: StoreConfig,
}

impl Store {
    /// Connects (retrying is the connection manager's job after the first success).
    pub async fn connect(config: StoreConfig) -> Result<Self, StoreError> {
        if config.url.starts_with("rediss:") {
            // rustls needs a process-wide crypto provider; an Err only means one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(config.url.as_str())?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.command_timeout))
            .set_connection_timeout(Some(config.command_timeout));
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
        Ok(Store {
            inner: Arc::new(Inner {
                client,
                conn,
                keys: Keys::new(config.key_prefix.clone()),
                scripts: scripts::Scripts::load(),
                sealer: seal::Sealer::new(&config.secrets_key),
                config,
            }),
        })
    }

    /// The key schema in use.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// True when `extra_data` secrets can be accepted (a sealing key is configured).
    pub fn can_seal_secrets(&self) -> bool {
        !self.inner.config.secrets_key.is_empty()
    }

    /// A connection for one operation (a cheap clone of the multiplexed connection).
    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Round trip to Redis (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }
}
