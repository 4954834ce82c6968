//! The job queue: submit, claim, finish, cancel, and the per-user read views over it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;

use crate::jobs::{JobRecord, JobState};
use crate::keys::LEASE_GROUP;
use crate::sched::{Claimed, JobClass, Limits, Offer, CLAIM_SCAN};
use crate::{Store, StoreError};

/// Current time in ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lifetime of a cancelled job's record (it has no history entry; `/api/jobs/{id}` shows it).
const CANCELLED_TTL_SECS: u64 = 24 * 3600;
/// Lifetime of an Idempotency-Key record.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

/// Who owns a job. Identity only ever comes from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Stable user id.
    pub user_id: String,
    /// Display name.
    pub username: String,
}

/// A validated job to queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Pool to queue in.
    pub pool: String,
    /// Its owner.
    pub owner: Owner,
    /// The prompt id (client-chosen canonical UUID, or minted).
    pub prompt_id: String,
    /// Submitter's WebSocket client id.
    pub client_id: Option<String>,
    /// `front: true`: ahead of the owner's normal jobs, newest first.
    pub front: bool,
    /// A client-chosen `number` (priority), echoed back as given.
    pub number: Option<f64>,
    /// The coerced graph, as JSON.
    pub prompt_json: String,
    /// `extra_data` without the sensitive keys, as JSON.
    pub extra_data_json: String,
    /// Output nodes that passed validation.
    pub outputs_to_execute: Vec<String>,
    /// Sensitive `extra_data` keys (forwarded to the backend, never shown), as a JSON object.
    pub sensitive_json: Option<String>,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
    /// Hash of the request body, to tell a retry from a different request under the same key.
    pub body_hash: String,
    /// Request id for tracing.
    pub request_id: Option<String>,
    /// What the job needs from a backend.
    pub class: JobClass,
    /// The owner's limits and weight.
    pub limits: Limits,
}

/// Outcome of [`Store::submit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Queued now.
    Created {
        /// The prompt id.
        prompt_id: String,
        /// `number` as JSON text.
        number: String,
    },
    /// Already submitted (same prompt id, or same Idempotency-Key and body): the first answer.
    Existing {
        /// The prompt id of the first submission.
        prompt_id: String,
        /// Its `number` as JSON text.
        number: String,
    },
    /// The Idempotency-Key was used before with a different body.
    IdempotencyConflict,
    /// The owner already has `limit` pending jobs: nothing was queued.
    QueueFull {
        /// The owner's `max_queued`.
        limit: u32,
    },
}

/// A worker's claim on one attempt of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Pool of the job.
    pub pool: String,
    /// Lease stream entry id (unique per attempt).
    pub lease_id: String,
    /// Consumer that holds the entry.
    pub consumer: String,
    /// Owner's user id.
    pub user_id: String,
    /// Owner's name.
    pub username: String,
    /// The prompt id.
    pub prompt_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Submitter's client id.
    pub client_id: Option<String>,
    /// The queue item `[number, prompt_id, prompt, extra_data, outputs_to_execute]` as JSON.
    pub item_json: String,
    /// Sensitive extra_data keys to forward to the backend.
    pub sensitive_json: Option<String>,
    /// Request id of the submit.
    pub request_id: Option<String>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalState {
    /// `execution_success`.
    Success,
    /// `execution_error`.
    Error,
    /// `execution_interrupted`.
    Interrupted,
}

impl TerminalState {
    fn as_state(self) -> JobState {
        match self {
            TerminalState::Success => JobState::Success,
            TerminalState::Error => JobState::Error,
            TerminalState::Interrupted => JobState::Interrupted,
        }
    }
}

/// Everything [`Store::finish`] writes and publishes.
#[derive(Debug, Clone)]
pub struct Finish {
    /// End state.
    pub state: TerminalState,
    /// The history entry `{prompt, outputs, status, meta}` as JSON.
    pub history_json: String,
    /// The terminal message (`execution_success` ...) as JSON, ids already translated.
    pub terminal_message_json: String,
    /// Set when the job ran out of attempts: it is also copied to the dead letters with this
    /// reason, for operators.
    pub dead_letter: Option<String>,
}

/// Answer of [`Store::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Still ours.
    Kept,
    /// Still ours, and someone asked to interrupt it (a control message may have been missed).
    InterruptRequested,
    /// Someone else owns the job now.
    Lost,
}

/// A user's `/queue` view: items as JSON arrays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueView {
    /// Running items.
    pub running: Vec<String>,
    /// Pending items in execution order.
    pub pending: Vec<String>,
}

/// ComfyUI's `/history` window parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryWindow {
    /// `max_items`.
    pub max_items: Option<i64>,
    /// `offset`.
    pub offset: Option<i64>,
}

impl HistoryWindow {
    /// Index range `[start, end)` over `len` entries, as ComfyUI computes it.
    pub fn range(self, len: usize) -> (usize, usize) {
        let len_i = len as i64;
        let (start, count) = match (self.max_items, self.offset) {
            (None, None) => (0, len_i),
            (Some(n), None) => ((len_i - n).max(0), n),
            (None, Some(o)) => (o.max(0), len_i),
            (Some(n), Some(o)) if o < 0 => ((len_i - n).max(0), n),
            (Some(n), Some(o)) => (o, n),
        };
        let start = start.clamp(0, len_i) as usize;
        let end = (start as i64 + count.max(0)).clamp(0, len_i) as usize;
        (start, end.max(start))
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Store {
    /// Opens a claimed job's sealed secrets. One that does not open (a key changed while the
    /// job waited) is dropped with a warning: the job still runs, and the backend node that
    /// needed the secret reports its own error, rather than the job cycling through reclaims.
    fn open_secret(&self, uid: &str, pid: &str, sealed: &str) -> Option<String> {
        if sealed.is_empty() {
            return None;
        }
        match self.inner.sealer.open(uid, pid, sealed) {
            Ok(plain) => Some(plain),
            Err(e) => {
                tracing::warn!(prompt_id = %pid, error = %e, "extra_data secrets dropped");
                None
            }
        }
    }

    /// Writes the job and queues it in one round trip; `Created` means it is durable in Redis.
    pub async fn submit(&self, job: &NewJob) -> Result<Submitted, StoreError> {
        let k = self.keys();
        let uid = &job.owner.user_id;
        let outputs = serde_json::to_string(&job.outputs_to_execute)?;
        let tail = format!(
            ",{},{},{},{}]",
            json_string(&job.prompt_id),
            job.prompt_json,
            job.extra_data_json,
            outputs
        );
        let number = job.number.map(format_number).unwrap_or_default();
        let idem_key = job.idempotency_key.as_deref().unwrap_or("");
        // Secrets are sealed before they reach Redis (DESIGN.md: never stored in clear).
        let sealed = match job.sensitive_json.as_deref() {
            Some(plain) => self.inner.sealer.seal(uid, &job.prompt_id, plain)?,
            None => String::new(),
        };
        let mut conn = self.conn();
        let out: Vec<String> = self
            .inner
            .scripts
            .submit
            .key(k.job(&job.pool, uid, &job.prompt_id))
            .key(k.pending(&job.pool, uid))
            .key(k.ready(&job.pool))
            .key(k.seq(&job.pool))
            .key(k.running(&job.pool, uid))
            .key(k.idempotency(&job.pool, uid, idem_key))
            .key(k.owners(&job.pool, &job.prompt_id))
            .key(k.sched(&job.pool))
            .key(k.classes(&job.pool))
            .key(k.class_queue(&job.pool, &job.class.id, uid))
            .key(k.user_classes(&job.pool, uid))
            .arg(uid)
            .arg(&job.owner.username)
            .arg(&job.prompt_id)
            .arg(if job.front { "1" } else { "0" })
            .arg(number)
            .arg(tail)
            .arg(job.client_id.as_deref().unwrap_or(""))
            .arg(sealed)
            .arg(&job.body_hash)
            .arg(if job.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(now_ms())
            .arg(k.events(uid))
            .arg(k.wake(&job.pool))
            .arg(job.request_id.as_deref().unwrap_or(""))
            .arg(&job.pool)
            .arg(IDEMPOTENCY_TTL_SECS)
            .arg(k.pool_base(&job.pool))
            .arg(job.limits.max_queued)
            .arg(format!(
                "{} {}",
                job.limits.max_running,
                if job.limits.weight.is_finite() && job.limits.weight > 0.0 {
                    job.limits.weight
                } else {
                    1.0
                }
            ))
            .arg(&job.class.id)
            .arg(&job.class.requirement_json)
            .invoke_async(&mut conn)
            .await?;
        match out.as_slice() {
            [tag, pid, number] if tag == "created" => Ok(Submitted::Created {
                prompt_id: pid.clone(),
                number: number.clone(),
            }),
            [tag, pid, number] if tag == "existing" => Ok(Submitted::Existing {
                prompt_id: pid.clone(),
                number: number.clone(),
            }),
            [tag, ..] if tag == "conflict" => Ok(Submitted::IdempotencyConflict),
            [tag, _, limit] if tag == "full" => Ok(Submitted::QueueFull {
                limit: limit.parse().unwrap_or(0),
            }),
            _ => Err(StoreError::Corrupt {
                key: k.job(&job.pool, uid, &job.prompt_id),
                reason: format!("unexpected submit answer {out:?}"),
            }),
        }
    }

    /// The next job of any class (fair across users, front jobs first), leased to
    /// `consumer`; `None` when nothing is pending. Workers use [`Store::claim_for`].
    pub async fn claim(
        &self,
        pool: &str,
        worker_id: &str,
        backend_id: &str,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(self
            .claim_for(pool, worker_id, backend_id, &Offer::Any)
            .await?
            .lease)
    }

    /// The next job this backend can run (`offer`): users in weighted fair-share order, those
    /// at their running limit skipped; within a user front jobs first, then arrival order,
    /// preferring a warm class. One round trip.
    pub async fn claim_for(
        &self,
        pool: &str,
        worker_id: &str,
        backend_id: &str,
        offer: &Offer,
    ) -> Result<Claimed, StoreError> {
        let k = self.keys();
        let consumer = format!("{worker_id}/{backend_id}");
        let script = &self.inner.scripts.claim;
        let mut inv = script.prepare_invoke();
        inv.key(k.ready(pool))
            .key(k.leases(pool))
            .key(k.runners(pool))
            .key(k.sched(pool))
            .key(k.classes(pool))
            .arg(k.pool_base(pool))
            .arg(&consumer)
            .arg(now_ms())
            .arg(k.events_prefix())
            .arg(worker_id)
            .arg(backend_id)
            .arg(LEASE_GROUP)
            .arg(CLAIM_SCAN);
        match offer {
            Offer::Any => {
                inv.arg("*");
            }
            Offer::Classes(classes) => {
                if classes.is_empty() {
                    // Nothing this backend can run; still learn how many classes exist.
                    let mut conn = self.conn();
                    let known: u64 = conn.hlen(k.classes(pool)).await?;
                    return Ok(Claimed {
                        lease: None,
                        class: None,
                        known_classes: known,
                    });
                }
                for (c, warm) in classes {
                    inv.arg(format!("{}{c}", if *warm { 'w' } else { 'c' }));
                }
            }
        }
        let mut conn = self.conn();
        let out: Vec<String> = inv.invoke_async(&mut conn).await?;
        match out.as_slice() {
            [known] => Ok(Claimed {
                lease: None,
                class: None,
                known_classes: known.parse().unwrap_or(0),
            }),
            [lease_id, uid, pid, attempt, user, cid, item, secret, reqid, class, known] => {
                Ok(Claimed {
                    lease: Some(Lease {
                        pool: pool.to_owned(),
                        lease_id: lease_id.clone(),
                        consumer,
                        user_id: uid.clone(),
                        username: user.clone(),
                        prompt_id: pid.clone(),
                        attempt: attempt.parse().unwrap_or(1),
                        client_id: Some(cid.clone()).filter(|c| !c.is_empty()),
                        item_json: item.clone(),
                        sensitive_json: self.open_secret(uid, pid, secret),
                        request_id: Some(reqid.clone()).filter(|r| !r.is_empty()),
                    }),
                    class: Some(class.clone()),
                    known_classes: known.parse().unwrap_or(0),
                })
            }
            _ => Err(StoreError::Corrupt {
                key: k.leases(pool),
                reason: format!("unexpected claim answer of {} fields", out.len()),
            }),
        }
    }

    /// Ends the job: history, terminal state, acknowledgement and the terminal messages in
    /// ComfyUI's order, atomically. `Ok(false)` when the lease was lost (nothing written).
    pub async fn finish(&self, lease: &Lease, finish: &Finish) -> Result<bool, StoreError> {
        let k = self.keys();
        let (pool, uid, pid) = (&lease.pool, &lease.user_id, &lease.prompt_id);
        let mut conn = self.conn();
        let done: i64 = self
            .inner
            .scripts
            .finish
            .key(k.job(pool, uid, pid))
            .key(k.leases(pool))
            .key(k.running(pool, uid))
            .key(k.runners(pool))
            .key(k.history(pool, uid))
            .key(k.history_seq(pool))
            .key(k.pending(pool, uid))
            .key(k.dead(pool))
            .key(k.history_all(pool))
            .arg(&lease.lease_id)
            .arg(finish.state.as_state().as_str())
            .arg(&finish.history_json)
            .arg(&finish.terminal_message_json)
            .arg(now_ms())
            .arg(k.events(uid))
            .arg(uid)
            .arg(pid)
            .arg(LEASE_GROUP)
            .arg(self.config().history_max_items)
            .arg(k.pool_base(pool))
            .arg(finish.dead_letter.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await?;
        Ok(done == 1)
    }

    /// Gives a leased job back to its owner's queue at its original priority (a draining
    /// worker, a backend lost before the job could run). `counts_as_attempt: false` does not
    /// use up one of the job's attempts. `Ok(false)` when the lease was lost.
    pub async fn release(
        &self,
        lease: &Lease,
        counts_as_attempt: bool,
    ) -> Result<bool, StoreError> {
        let k = self.keys();
        let (pool, uid, pid) = (&lease.pool, &lease.user_id, &lease.prompt_id);
        let mut conn = self.conn();
        let done: i64 = self
            .inner
            .scripts
            .release
            .key(k.job(pool, uid, pid))
            .key(k.leases(pool))
            .key(k.running(pool, uid))
            .key(k.runners(pool))
            .key(k.pending(pool, uid))
            .key(k.ready(pool))
            .arg(&lease.lease_id)
            .arg(pid)
            .arg(uid)
            .arg(LEASE_GROUP)
            .arg(k.wake(pool))
            .arg(if counts_as_attempt { "1" } else { "0" })
            .arg(k.pool_base(pool))
            .invoke_async(&mut conn)
            .await?;
        Ok(done == 1)
    }

    /// Keeps the lease alive. `Lost` means another worker owns the job now: stop publishing.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<Heartbeat, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let out: i64 = self
            .inner
            .scripts
            .heartbeat
            .key(k.job(&lease.pool, &lease.user_id, &lease.prompt_id))
            .key(k.leases(&lease.pool))
            .arg(&lease.lease_id)
            .arg(LEASE_GROUP)
            .arg(&lease.consumer)
            .invoke_async(&mut conn)
            .await?;
        Ok(match out {
            0 => Heartbeat::Lost,
            2 => Heartbeat::InterruptRequested,
            _ => Heartbeat::Kept,
        })
    }

    /// Records the node a running job is executing (`None` between nodes), so reconnecting
    /// clients can be told where it stands. Ignored once the lease is gone.
    pub async fn set_current_node(
        &self,
        lease: &Lease,
        node: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = self
            .keys()
            .job(&lease.pool, &lease.user_id, &lease.prompt_id);
        let mut conn = self.conn();
        let _: () = conn.hset(key, "node", node.unwrap_or("")).await?;
        Ok(())
    }

    /// Removes the user's pending jobs among `prompt_ids` (running ones are untouched);
    /// returns the ids removed.
    pub async fn cancel_pending(
        &self,
        pool: &str,
        user_id: &str,
        prompt_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if prompt_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run_cancel(pool, user_id, prompt_ids.iter().map(String::as_str))
            .await
    }

    /// Removes all of the user's pending jobs; returns the ids removed.
    pub async fn clear_pending(
        &self,
        pool: &str,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.run_cancel(pool, user_id, std::iter::once("*")).await
    }

    async fn run_cancel<'a>(
        &self,
        pool: &str,
        user_id: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys();
        let script = &self.inner.scripts.cancel;
        let mut inv = script.prepare_invoke();
        inv.key(k.pending(pool, user_id))
            .key(k.ready(pool))
            .key(k.running(pool, user_id))
            .arg(k.pool_base(pool))
            .arg(user_id)
            .arg(now_ms())
            .arg(k.events(user_id))
            .arg(CANCELLED_TTL_SECS);
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.conn();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// The user's running and pending queue items in one pool.
    pub async fn queue(&self, pool: &str, user_id: &str) -> Result<QueueView, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (running, pending): (Vec<String>, Vec<String>) = redis::pipe()
            .smembers(k.running(pool, user_id))
            .zrange(k.pending(pool, user_id), 0, -1)
            .query_async(&mut conn)
            .await?;
        let mut view = QueueView {
            running: self.items(pool, user_id, &running).await?,
            pending: self.items(pool, user_id, &pending).await?,
        };
        view.running.sort();
        Ok(view)
    }

    async fn items(
        &self,
        pool: &str,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.keys();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(k.job(pool, user_id, id), "item");
        }
        let mut conn = self.conn();
        let items: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        Ok(items.into_iter().flatten().collect())
    }

    /// `queue_remaining` for the user (pending + running) in one pool.
    pub async fn queue_remaining(&self, pool: &str, user_id: &str) -> Result<u64, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (p, r): (u64, u64) = redis::pipe()
            .zcard(k.pending(pool, user_id))
            .scard(k.running(pool, user_id))
            .query_async(&mut conn)
            .await?;
        Ok(p + r)
    }

    /// The user's history entries in ComfyUI's window, oldest first: `(prompt_id, entry JSON)`.
    pub async fn history(
        &self,
        pool: &str,
        user_id: &str,
        window: HistoryWindow,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let len: usize = conn.zcard(k.history(pool, user_id)).await?;
        let (start, end) = window.range(len);
        if start >= end {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = conn
            .zrange(k.history(pool, user_id), start as isize, end as isize - 1)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(k.job(pool, user_id, id), "history");
        }
        let entries: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(entries)
            .filter_map(|(id, e)| e.map(|e| (id, e)))
            .collect())
    }

    /// One history entry of the user (JSON), `None` when unknown, pending or running.
    pub async fn history_entry(
        &self,
        pool: &str,
        user_id: &str,
        prompt_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn();
        let entry: Option<String> = conn
            .hget(self.keys().job(pool, user_id, prompt_id), "history")
            .await?;
        Ok(entry.filter(|e| !e.is_empty()))
    }

    /// Deletes the user's history entries among `prompt_ids` (or all of them with `None`).
    pub async fn delete_history(
        &self,
        pool: &str,
        user_id: &str,
        prompt_ids: Option<&[String]>,
    ) -> Result<(), StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let ids: Vec<String> = match prompt_ids {
            Some(ids) => ids.to_vec(),
            None => conn.zrange(k.history(pool, user_id), 0, -1).await?,
        };
        if ids.is_empty() {
            return Ok(());
        }
        // Only ids that are in this user's history: never touch a pending or running job.
        let mut check = redis::pipe();
        for id in &ids {
            check.zscore(k.history(pool, user_id), id);
        }
        let present: Vec<Option<f64>> = check.query_async(&mut conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (id, score) in ids.iter().zip(present) {
            if score.is_some() {
                pipe.zrem(k.history(pool, user_id), id)
                    .del(k.job(pool, user_id, id));
            }
        }
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Every user's running and pending items (admins). Pending items are grouped by user in
    /// the order users would be served.
    pub async fn queue_all(&self, pool: &str) -> Result<QueueView, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (runners, users): (Vec<String>, Vec<String>) = redis::pipe()
            .zrange(k.runners(pool), 0, -1)
            .zrange(k.ready(pool), 0, -1)
            .query_async(&mut conn)
            .await?;
        let mut view = QueueView::default();
        let mut pipe = redis::pipe();
        let mut asked = 0;
        for r in &runners {
            if let Some((uid, pid)) = r.split_once(':') {
                pipe.hget(k.job(pool, uid, pid), "item");
                asked += 1;
            }
        }
        // An empty pipeline is an error in the client ("empty command"): an idle pool.
        if asked > 0 {
            let items: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            view.running = items.into_iter().flatten().collect();
        }
        for uid in users {
            let ids: Vec<String> = conn.zrange(k.pending(pool, &uid), 0, -1).await?;
            view.pending.extend(self.items(pool, &uid, &ids).await?);
        }
        Ok(view)
    }

    /// Every user's history entries in ComfyUI's window (admins), oldest first.
    pub async fn history_all(
        &self,
        pool: &str,
        window: HistoryWindow,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let len: usize = conn.zcard(k.history_all(pool)).await?;
        let (start, end) = window.range(len);
        if start >= end {
            return Ok(Vec::new());
        }
        let refs: Vec<String> = conn
            .zrange(k.history_all(pool), start as isize, end as isize - 1)
            .await?;
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mut ids = Vec::new();
        for r in &refs {
            if let Some((uid, pid)) = r.split_once(':') {
                pipe.hget(k.job(pool, uid, pid), "history");
                ids.push(pid.to_owned());
            }
        }
        let entries: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(entries)
            .filter_map(|(id, e)| e.filter(|e| !e.is_empty()).map(|e| (id, e)))
            .collect())
    }

    /// One job record of the user.
    pub async fn job(
        &self,
        pool: &str,
        user_id: &str,
        prompt_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn();
        let map: HashMap<String, String> = conn
            .hgetall(self.keys().job(pool, user_id, prompt_id))
            .await?;
        Ok(JobRecord::from_hash(&map))
    }

    /// Every job record of the user that is pending, running or in history (for `/api/jobs`).
    pub async fn jobs(&self, pool: &str, user_id: &str) -> Result<Vec<JobRecord>, StoreError> {
        let k = self.keys();
        let mut conn = self.conn();
        let (pending, running, hist): (Vec<String>, Vec<String>, Vec<String>) = redis::pipe()
            .zrange(k.pending(pool, user_id), 0, -1)
            .smembers(k.running(pool, user_id))
            .zrange(k.history(pool, user_id), 0, -1)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = pending.into_iter().chain(running).chain(hist).collect();
        self.records(pool, user_id, &ids).await
    }

    /// The user's running jobs (for reconnect replay and interrupts).
    pub async fn running_jobs(
        &self,
        pool: &str,
        user_id: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut conn = self.conn();
        let ids: Vec<String> = conn.smembers(self.keys().running(pool, user_id)).await?;
        self.records(pool, user_id, &ids).await
    }

    async fn records(
        &self,
        pool: &str,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<JobRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys().job(pool, user_id, id));
        }
        let mut conn = self.conn();
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(maps.iter().filter_map(JobRecord::from_hash).collect())
    }
}

/// Formats a client-chosen number the way ComfyUI echoes it (a float: `7.0`).
fn format_number(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.1}")
    } else if n.is_finite() {
        n.to_string()
    } else {
        "0.0".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_window_follows_comfyui() {
        let w = |m, o| HistoryWindow {
            max_items: m,
            offset: o,
        };
        assert_eq!(w(None, None).range(5), (0, 5));
        assert_eq!(w(Some(2), None).range(5), (3, 5));
        assert_eq!(w(Some(9), None).range(5), (0, 5));
        assert_eq!(w(None, Some(3)).range(5), (3, 5));
        assert_eq!(w(Some(2), Some(1)).range(5), (1, 3));
        assert_eq!(w(Some(2), Some(-1)).range(5), (3, 5));
        assert_eq!(w(Some(2), Some(9)).range(5), (5, 5));
        assert_eq!(w(Some(-2), None).range(5), (5, 5));
    }

    #[test]
    fn client_numbers_echo_as_floats() {
        assert_eq!(format_number(7.0), "7.0");
        assert_eq!(format_number(-2.5), "-2.5");
        assert_eq!(format_number(f64::NAN), "0.0");
    }
}
