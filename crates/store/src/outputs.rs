//! What the store knows about output files: who owns a prompt id (so admins can view anyone's
//! outputs) and which files were flagged NSFW (by the classifier or by an admin).

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Why a file is flagged NSFW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsfwVerdict {
    /// The classifier's score, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// `classifier`, `outage` (fail-closed while the classifier was down) or `admin`.
    pub source: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

impl Store {
    /// User ids that submitted `prompt_id` in `pool` (usually one; ids are unique per user).
    pub async fn owners_of(&self, pool: &str, prompt_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        Ok(conn.smembers(self.keys().owners(pool, prompt_id)).await?)
    }

    /// Records that the user's file `name` (`<type>/<subfolder>/<filename>`) is NSFW.
    pub async fn flag_nsfw(
        &self,
        user_id: &str,
        name: &str,
        verdict: &NsfwVerdict,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let json = serde_json::to_string(verdict)?;
        let _: () = conn.hset(self.keys().nsfw(user_id), name, json).await?;
        Ok(())
    }

    /// Clears the NSFW flag of the user's file `name`; `true` when it was flagged.
    pub async fn unflag_nsfw(&self, user_id: &str, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let n: u64 = conn.hdel(self.keys().nsfw(user_id), name).await?;
        Ok(n > 0)
    }

    /// The verdict on the user's file `name`, `None` when it is not flagged.
    pub async fn nsfw_verdict(
        &self,
        user_id: &str,
        name: &str,
    ) -> Result<Option<NsfwVerdict>, StoreError> {
        let mut conn = self.conn();
        let v: Option<String> = conn.hget(self.keys().nsfw(user_id), name).await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Every flagged file of the user (name → verdict); small: only flagged files are kept.
    pub async fn nsfw_flags(
        &self,
        user_id: &str,
    ) -> Result<HashMap<String, NsfwVerdict>, StoreError> {
        let mut conn = self.conn();
        let all: HashMap<String, String> = conn.hgetall(self.keys().nsfw(user_id)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v)))
            .collect())
    }
}
