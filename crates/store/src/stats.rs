//! Queue statistics of a pool for metrics (gateways sample them periodically): pending and
//! running counts and the age of the oldest pending job.
//!
//! Self-contained on purpose: it reads the queue's keys directly (`ready`, `pending:<uid>`,
//! `job:<uid>:<pid>`, `runners`; see [`crate::keys`]), so a change of the queue's shape only
//! has to be mirrored here. Reads are pipelined and bounded: at most [`MAX_USERS`] users with
//! pending work are looked at, [`CHUNK`] per round trip.

use redis::aio::ConnectionManager;

use crate::{Store, StoreError};

/// Users with pending work looked at per sample; beyond this the counts are a lower bound.
pub const MAX_USERS: usize = 10_000;

/// Users read per pipelined round trip.
const CHUNK: usize = 500;

/// One sample of a pool's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Pending jobs (sum over the users with pending work).
    pub pending: u64,
    /// Running jobs (leased to a worker).
    pub running: u64,
    /// Users with pending work.
    pub users: u64,
    /// `created` (ms since the epoch) of the oldest job at the head of a user's queue; `None`
    /// when nothing is pending.
    pub oldest_pending_created_ms: Option<i64>,
    /// True when more than [`MAX_USERS`] users had pending work (counts are a lower bound).
    pub truncated: bool,
}

impl QueueStats {
    /// Age in seconds of the oldest pending job at `now_ms` (0 when nothing is pending).
    pub fn oldest_pending_age_secs(&self, now_ms: i64) -> f64 {
        match self.oldest_pending_created_ms {
            Some(created) => (now_ms.saturating_sub(created)).max(0) as f64 / 1000.0,
            None => 0.0,
        }
    }
}

impl Store {
    /// Samples the queue of `pool`: pending = Σ ZCARD `pending:<uid>` over the users in
    /// `ready`, running = ZCARD `runners`, oldest = min `created` of each user's head job.
    pub async fn queue_stats(&self, pool: &str) -> Result<QueueStats, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (running, users): (u64, u64) = redis::pipe()
            .zcard(k.runners(pool))
            .zcard(k.ready(pool))
            .query_async(&mut conn)
            .await?;
        let mut stats = QueueStats {
            running,
            users,
            truncated: users as usize > MAX_USERS,
            ..QueueStats::default()
        };
        let mut start = 0usize;
        while start < MAX_USERS.min(users as usize) {
            let stop = (start + CHUNK).min(MAX_USERS) - 1;
            let uids: Vec<String> = redis::cmd("ZRANGE")
                .arg(k.ready(pool))
                .arg(start)
                .arg(stop)
                .query_async(&mut conn)
                .await?;
            if uids.is_empty() {
                break;
            }
            self.add_users(&mut conn, pool, &uids, &mut stats).await?;
            if uids.len() < CHUNK {
                break;
            }
            start += CHUNK;
        }
        Ok(stats)
    }

    /// Adds the pending counts and head jobs of `uids` to `stats` (two round trips).
    async fn add_users(
        &self,
        conn: &mut ConnectionManager,
        pool: &str,
        uids: &[String],
        stats: &mut QueueStats,
    ) -> Result<(), StoreError> {
        let k = self.keys();
        let mut pipe = redis::pipe();
        for uid in uids {
            // The best-priority head (a `front` job, newest first, has a negative score) and the
            // first job in arrival order: the oldest job is one of the two.
            pipe.zcard(k.pending(pool, uid));
            pipe.cmd("ZRANGE").arg(k.pending(pool, uid)).arg(0).arg(0);
            pipe.zrangebyscore_limit(k.pending(pool, uid), 0, "+inf", 0, 1);
        }
        let answers: Vec<redis::Value> = pipe.query_async(conn).await?;
        let mut heads = Vec::with_capacity(uids.len());
        for (uid, triple) in uids.iter().zip(answers.chunks(3)) {
            let [count, head, first] = triple else {
                continue;
            };
            stats.pending += redis::from_redis_value_ref::<u64>(count).unwrap_or(0);
            for v in [head, first] {
                if let Ok(Some(pid)) = redis::from_redis_value_ref::<Vec<String>>(v)
                    .map(|mut v| (!v.is_empty()).then(|| v.swap_remove(0)))
                {
                    heads.push(k.job(pool, uid, &pid));
                }
            }
        }
        if heads.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in &heads {
            pipe.hget(key, "created");
        }
        let created: Vec<Option<i64>> = pipe.query_async(conn).await?;
        if let Some(min) = created.into_iter().flatten().min() {
            stats.oldest_pending_created_ms = Some(
                stats
                    .oldest_pending_created_ms
                    .map_or(min, |m: i64| m.min(min)),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_never_negative() {
        let s = QueueStats {
            oldest_pending_created_ms: Some(10_000),
            ..QueueStats::default()
        };
        assert_eq!(s.oldest_pending_age_secs(12_500), 2.5);
        assert_eq!(s.oldest_pending_age_secs(5_000), 0.0);
        assert_eq!(QueueStats::default().oldest_pending_age_secs(1), 0.0);
    }
}
