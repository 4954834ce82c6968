//! The backend registry: what each worker reports about the ComfyUI nodes it drives (health,
//! node catalogue, model lists), read by gateways to validate graphs and answer `/object_info`,
//! `/models`, `/embeddings` and `/system_stats` for the whole pool.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError};

/// A backend's state as its worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Reachable and idle.
    Healthy,
    /// Reachable and running a job.
    Busy,
    /// Failing health checks; gets no work.
    Unhealthy,
}

/// What a worker publishes about one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend id (unique in the pool).
    pub id: String,
    /// Pool it serves.
    pub pool: String,
    /// Worker driving it.
    pub worker: String,
    /// Current state.
    pub state: BackendState,
    /// SHA-256 of its `/object_info` document (stored separately, content-addressed).
    pub object_info_sha256: Option<String>,
    /// Model files by folder (`/models/{folder}`).
    #[serde(default)]
    pub models: BTreeMap<String, Vec<String>>,
    /// `/embeddings`.
    #[serde(default)]
    pub embeddings: Vec<String>,
    /// Its `/system_stats` document.
    #[serde(default)]
    pub system_stats: Option<serde_json::Value>,
    /// Operator labels (`gpu=a100` ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Jobs it has run.
    #[serde(default)]
    pub jobs_run: u64,
    /// When this was written, ms since the epoch.
    pub updated_ms: i64,
}

/// SHA-256 hex of a document.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Store {
    /// Publishes a backend's info; `object_info` (its raw `/object_info` JSON) is stored
    /// content-addressed under `info.object_info_sha256`, which is filled in here.
    pub async fn publish_backend(
        &self,
        info: &BackendInfo,
        object_info: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let k = self.keys();
        let mut info = info.clone();
        let mut conn = self.conn();
        if let Some(doc) = object_info {
            let sha = sha256_hex(doc);
            let _: () = redis::cmd("SET")
                .arg(k.object_info(&info.pool, &sha))
                .arg(doc)
                .arg("NX")
                .query_async(&mut conn)
                .await?;
            info.object_info_sha256 = Some(sha);
        }
        let json = serde_json::to_string(&info)?;
        let _: () = conn.hset(k.backends(&info.pool), &info.id, json).await?;
        Ok(())
    }

    /// Every backend registered in the pool (malformed entries skipped).
    pub async fn backends(&self, pool: &str) -> Result<Vec<BackendInfo>, StoreError> {
        let mut conn = self.conn();
        let raw: BTreeMap<String, String> = conn.hgetall(self.keys().backends(pool)).await?;
        Ok(raw
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect())
    }

    /// Removes a backend from the registry (a worker dropping it from its config).
    pub async fn remove_backend(&self, pool: &str, backend_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: () = conn.hdel(self.keys().backends(pool), backend_id).await?;
        Ok(())
    }

    /// A stored `/object_info` document.
    pub async fn object_info_doc(
        &self,
        pool: &str,
        sha256: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn();
        Ok(conn.get(self.keys().object_info(pool, sha256)).await?)
    }
}
