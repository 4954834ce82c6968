//! Crash recovery: reclaiming expired leases, the dead-letter stream, and retrying from it.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use crate::keys::LEASE_GROUP;
use crate::queue::now_ms;
use crate::{Store, StoreError};

/// What one reclaim pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Jobs put back in their owner's queue to run again.
    pub requeued: u64,
    /// Jobs ended with an error after their last attempt (now dead letters).
    pub dead: u64,
}

/// A job that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream (what `jobs retry` takes).
    pub id: String,
    /// Pool.
    pub pool: String,
    /// Owner.
    pub user_id: String,
    /// The job.
    pub prompt_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it ended.
    pub reason: String,
    /// When, ms.
    pub at_ms: i64,
}

impl Store {
    /// Takes over leases idle for longer than `lease_timeout` (their worker stopped
    /// heartbeating): each job goes back to its owner's queue, or past `max_attempts` ends with an
    /// `execution_error` and a dead letter. Safe to run from every worker at once.
    pub async fn reclaim_expired(
        &self,
        pool: &str,
        consumer: &str,
        lease_timeout: Duration,
        max_attempts: u32,
    ) -> Result<Reclaimed, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (requeued, dead): (u64, u64) = self
            .inner
            .scripts
            .reclaim
            .key(k.leases(pool))
            .key(k.ready(pool))
            .key(k.runners(pool))
            .key(k.dead(pool))
            .key(k.history_seq(pool))
            .key(k.history_all(pool))
            .arg(k.pool_base(pool))
            .arg(LEASE_GROUP)
            .arg(consumer)
            .arg(lease_timeout.as_millis() as u64)
            .arg(max_attempts.max(1))
            .arg(now_ms())
            .arg(k.events_prefix())
            .arg(k.wake(pool))
            .arg(self.config().history_max_items)
            .arg(50)
            .invoke_async(&mut conn)
            .await?;
        Ok(Reclaimed { requeued, dead })
    }

    /// The newest dead letters of a pool (up to `count`).
    pub async fn dead_letters(
        &self,
        pool: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.conn();
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg(self.keys().dead(pool))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, f)| {
                let (uid, pid) = f.get("job")?.split_once(':')?;
                Some(DeadLetter {
                    id,
                    pool: pool.to_owned(),
                    user_id: uid.to_owned(),
                    prompt_id: pid.to_owned(),
                    attempts: f.get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
                    reason: f.get("reason").cloned().unwrap_or_default(),
                    at_ms: f.get("at").and_then(|a| a.parse().ok()).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Requeues a dead letter by entry id; returns `(user id, prompt id)` or `None`.
    pub async fn retry_dead(
        &self,
        pool: &str,
        entry_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let out: Option<String> = self
            .inner
            .scripts
            .retry
            .key(k.dead(pool))
            .key(k.ready(pool))
            .arg(k.pool_base(pool))
            .arg(entry_id)
            .arg(k.wake(pool))
            .arg(k.events_prefix())
            .invoke_async(&mut conn)
            .await?;
        Ok(out.and_then(|r| r.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))))
    }

    /// Number of leases currently held in a pool (running jobs).
    pub async fn lease_count(&self, pool: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        Ok(conn.zcard(self.keys().runners(pool)).await?)
    }
}
