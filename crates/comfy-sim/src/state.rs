//! Shared state of one simulated node: queue (a binary heap in Python's `heapq` layout), running
//! item, history, WebSocket registry and the message fan-out.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Message;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::faults::Faults;
use crate::pyjson;
use crate::SimConfig;

/// `MAXIMUM_HISTORY_SIZE` of ComfyUI.
const MAX_HISTORY: usize = 10000;

/// One queue entry: `(number, prompt_id, prompt, extra_data, outputs_to_execute)`.
#[derive(Debug, Clone)]
pub(crate) struct QueueItem {
    /// Priority as sent back to the client (int, or float when the client gave `number`).
    pub number: Value,
    pub prompt_id: String,
    pub prompt: Arc<Map<String, Value>>,
    pub extra_data: Map<String, Value>,
    pub outputs: Vec<String>,
}

impl QueueItem {
    pub fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            Value::Object((*self.prompt).clone()),
            Value::Object(self.extra_data.clone()),
            self.outputs
        ])
    }

    /// Python tuple ordering: number first, then prompt_id.
    fn cmp(&self, other: &QueueItem) -> Ordering {
        let a = self.number.as_f64().unwrap_or(0.0);
        let b = other.number.as_f64().unwrap_or(0.0);
        a.partial_cmp(&b)
            .unwrap_or(Ordering::Equal)
            .then_with(|| self.prompt_id.cmp(&other.prompt_id))
    }

    fn lt(&self, other: &QueueItem) -> bool {
        self.cmp(other) == Ordering::Less
    }

    pub fn client_id(&self) -> Option<String> {
        self.extra_data
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// A min-heap laid out exactly like Python's `heapq` (so `/queue` shows the same array order).
#[derive(Debug, Default)]
pub(crate) struct Heap(pub Vec<QueueItem>);

impl Heap {
    pub fn push(&mut self, item: QueueItem) {
        self.0.push(item);
        let n = self.0.len() - 1;
        self.sift_down(0, n);
    }

    pub fn pop(&mut self) -> Option<QueueItem> {
        let last = self.0.pop()?;
        if self.0.is_empty() {
            return Some(last);
        }
        let ret = std::mem::replace(&mut self.0[0], last);
        self.sift_up(0);
        Some(ret)
    }

    pub fn heapify(&mut self) {
        let n = self.0.len();
        for i in (0..n / 2).rev() {
            self.sift_up(i);
        }
    }

    // Python's _siftdown: move the item at `pos` up towards `start`.
    fn sift_down(&mut self, start: usize, mut pos: usize) {
        while pos > start {
            let parent = (pos - 1) >> 1;
            if self.0[pos].lt(&self.0[parent]) {
                self.0.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    // Python's _siftup: bubble the smaller child up to the leaf, then _siftdown.
    fn sift_up(&mut self, mut pos: usize) {
        let end = self.0.len();
        let start = pos;
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !self.0[child].lt(&self.0[right]) {
                child = right;
            }
            self.0.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        self.sift_down(start, pos);
    }
}

/// A connected WebSocket.
pub(crate) struct SocketEntry {
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Message>,
    /// The client's feature flags (from its first `feature_flags` frame).
    pub flags: Value,
    /// Cancelling this cuts the TCP connection.
    pub kill: CancellationToken,
    /// Frames queued but not yet written (see [`Shared::flush`]).
    pub queued: Arc<AtomicUsize>,
}

/// Everything guarded by the one state lock. Never held across an `.await`.
pub(crate) struct Inner {
    pub number: i64,
    pub queue: Heap,
    pub running: Option<QueueItem>,
    pub history: Map<String, Value>,
    pub sockets: HashMap<String, SocketEntry>,
    /// `server.client_id`: the client of the prompt being (or last) executed.
    pub client_id: Option<String>,
    /// `server.last_node_id`: replayed to a reconnecting submitter.
    pub last_node_id: Option<String>,
    pub free_memory: bool,
    pub faults: Faults,
    /// Enqueue time (ms) per prompt id, for the jobs API (0.3.64 keeps none in extra_data).
    pub create_times: HashMap<String, i64>,
}

impl Inner {
    pub fn queue_remaining(&self) -> usize {
        self.queue.0.len() + usize::from(self.running.is_some())
    }

    pub fn queue_info(&self) -> Value {
        json!({"exec_info": {"queue_remaining": self.queue_remaining()}})
    }

    /// Sends a JSON message to `sid`, or to every socket when `sid` is None.
    pub fn send_json(&self, event: &str, data: Value, sid: Option<&str>) {
        let text = pyjson::to_string(&json!({"type": event, "data": data}));
        self.send(Message::Text(text.into()), sid);
    }

    pub fn send_bytes(&self, frame: Vec<u8>, sid: Option<&str>) {
        self.send(Message::Binary(Bytes::from(frame)), sid);
    }

    fn send(&self, msg: Message, sid: Option<&str>) {
        match sid {
            None => {
                for s in self.sockets.values() {
                    s.queued.fetch_add(1, AtOrd::SeqCst);
                    let _ = s.tx.send(msg.clone());
                }
            }
            Some(sid) => {
                if let Some(s) = self.sockets.get(sid) {
                    s.queued.fetch_add(1, AtOrd::SeqCst);
                    let _ = s.tx.send(msg);
                }
            }
        }
    }

    /// `PromptServer.queue_updated`: broadcast the queue size.
    pub fn queue_updated(&self) {
        self.send_json("status", json!({"status": self.queue_info()}), None);
    }

    /// True when `sid` negotiated `supports_preview_metadata`.
    pub fn supports_preview_metadata(&self, sid: Option<&str>) -> bool {
        sid.and_then(|s| self.sockets.get(s))
            .and_then(|s| s.flags.get("supports_preview_metadata"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn insert_history(&mut self, prompt_id: String, entry: Value) {
        if self.history.len() > MAX_HISTORY {
            if let Some(first) = self.history.keys().next().cloned() {
                self.history.shift_remove(&first);
                self.create_times.remove(&first);
            }
        }
        self.history.insert(prompt_id, entry);
    }
}

/// The simulator's shared state.
pub(crate) struct Shared {
    pub config: SimConfig,
    pub output_dir: PathBuf,
    pub input_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub inner: Mutex<Inner>,
    /// The global "interrupt requested" flag of ComfyUI.
    pub interrupt: AtomicBool,
    /// Wakes the executor (new queue item, flags, fault changes).
    pub wake: Notify,
    /// Wakes whatever waits for a hang to end.
    pub unhang: Notify,
    /// Cancelled on crash: every connection dies at once.
    pub kill: CancellationToken,
    /// Cancelled on graceful shutdown.
    pub shutdown: CancellationToken,
    pub next_conn: AtomicU64,
    /// The full `/object_info` document (catalogue order).
    pub object_info: Value,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
        self.unhang.notify_waiters();
        self.wake.notify_one();
    }

    pub fn drop_websockets(&self) {
        let mut inner = self.lock();
        for (_, s) in inner.sockets.drain() {
            s.kill.cancel();
        }
    }

    pub fn crash(&self) {
        tracing::warn!("comfy-sim: simulated crash");
        self.kill.cancel();
        self.drop_websockets();
        self.unhang.notify_waiters();
        self.wake.notify_waiters();
    }

    /// Waits (briefly) until every socket wrote what was queued for it, so that a fault that fires
    /// now happens after the client saw the messages sent before it.
    pub async fn flush(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            let busy = self
                .lock()
                .sockets
                .values()
                .any(|s| s.queued.load(AtOrd::SeqCst) > 0);
            if !busy || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Waits while `pred(faults)` holds (a hang), until it clears or the sim dies.
    pub async fn wait_while(&self, pred: impl Fn(&Faults) -> bool) {
        loop {
            let notified = self.unhang.notified();
            if !pred(&self.lock().faults)
                || self.kill.is_cancelled()
                || self.shutdown.is_cancelled()
            {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.kill.cancelled() => return,
                _ = self.shutdown.cancelled() => return,
                // Belt and braces against a missed notification.
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: i64, id: &str) -> QueueItem {
        QueueItem {
            number: json!(n),
            prompt_id: id.into(),
            prompt: Arc::new(Map::new()),
            extra_data: Map::new(),
            outputs: vec![],
        }
    }

    #[test]
    fn heap_matches_python_heapq() {
        // heapq.heappush of 5, 3, 8, 1, -2 gives [-2, 1, 8, 5, 3] in Python.
        let mut h = Heap::default();
        for (n, id) in [(5, "a"), (3, "b"), (8, "c"), (1, "d"), (-2, "e")] {
            h.push(item(n, id));
        }
        let order: Vec<i64> = h.0.iter().map(|i| i.number.as_i64().unwrap_or(0)).collect();
        assert_eq!(order, [-2, 1, 8, 5, 3]);
        let popped: Vec<i64> = std::iter::from_fn(|| h.pop())
            .map(|i| i.number.as_i64().unwrap_or(0))
            .collect();
        assert_eq!(popped, [-2, 1, 3, 5, 8]);
    }
}
