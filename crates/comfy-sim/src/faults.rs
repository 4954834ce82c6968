//! Fault injection: make the simulated node slow, failing, hanging, disconnecting or crashing.
//!
//! The same [`Faults`] document is read and written through [`FaultHandle`] (in-process) and over
//! HTTP (`GET /sim/faults`, `POST /sim/faults` with the JSON document, which replaces the current
//! one; missing fields take their defaults). One-shot actions: `POST /sim/drop_ws` (drop every
//! WebSocket now) and `POST /sim/crash` (stop the server abruptly). The `/sim/*` routes are never
//! hung by `hang_http`.
//!
//! A "node matcher" (`fail_at`, `drop_ws_at`, `crash_at`, `hang_at`) matches a node whose id *or*
//! `class_type` equals the string.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::Shared;

/// The fault document. Every field is optional in JSON; `{}` means "no faults".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Work time of every executed node in milliseconds (overrides `SimConfig::work_time`).
    pub work_ms: Option<u64>,
    /// Work time per `class_type` in milliseconds (wins over `work_ms`).
    pub class_work_ms: BTreeMap<String, u64>,
    /// Work time per node id in milliseconds (wins over `class_work_ms`).
    pub node_work_ms: BTreeMap<String, u64>,
    /// Fail the matching node with an `execution_error`.
    pub fail_at: Option<String>,
    /// The exception message of `fail_at` (default: "Simulated failure").
    pub fail_message: Option<String>,
    /// The exception type of `fail_at` (default: "RuntimeError"), e.g. `torch.OutOfMemoryError`.
    pub fail_exception_type: Option<String>,
    /// Drop every WebSocket (abruptly, no close frame) when the matching node starts. One-shot:
    /// cleared once it fired.
    pub drop_ws_at: Option<String>,
    /// Crash (stop the whole server abruptly) when the matching node starts.
    pub crash_at: Option<String>,
    /// Set `hang_http` and `hang_ws` when the matching node starts, and freeze execution there.
    pub hang_at: Option<String>,
    /// Accept connections but never answer HTTP requests (except `/sim/*`).
    pub hang_http: bool,
    /// Stop sending WebSocket frames (they are held, and sent once this is cleared) and freeze
    /// execution before its next message.
    pub hang_ws: bool,
    /// Answer `POST /prompt` with this status (e.g. 500, 503) and ComfyUI's plain-text 500 body,
    /// without queueing anything.
    pub prompt_status: Option<u16>,
    /// How many `POST /prompt` get `prompt_status` before the fault clears itself (None: all).
    pub prompt_status_count: Option<u32>,
}

impl Faults {
    /// The work time (ms) of node `id` of class `class`, if a fault sets one.
    pub(crate) fn work_ms_for(&self, id: &str, class: &str) -> Option<u64> {
        self.node_work_ms
            .get(id)
            .or_else(|| self.class_work_ms.get(class))
            .copied()
            .or(self.work_ms)
    }
}

/// True when `matcher` names node `id` or its class.
pub(crate) fn matches(matcher: &Option<String>, id: &str, class: &str) -> bool {
    matcher.as_deref().is_some_and(|m| m == id || m == class)
}

/// Sets faults on a running simulator (from [`crate::SimHandle::faults`]).
#[derive(Clone)]
pub struct FaultHandle {
    pub(crate) shared: Arc<Shared>,
}

impl FaultHandle {
    /// The current fault document.
    pub fn get(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the fault document.
    pub fn set(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Edits the fault document in place.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        let mut cur = self.shared.faults();
        f(&mut cur);
        self.shared.set_faults(cur);
    }

    /// Clears every fault (and un-hangs).
    pub fn clear(&self) {
        self.shared.set_faults(Faults::default());
    }

    /// Drops every open WebSocket now, abruptly (the TCP connection is closed without a close
    /// frame, as when a node's network goes away).
    pub fn drop_websockets(&self) {
        self.shared.drop_websockets();
    }

    /// Stops the server abruptly: every connection is cut, the listener is closed, the running
    /// prompt is abandoned (no history, no terminal message).
    pub fn crash(&self) {
        self.shared.crash();
    }

    /// True once the simulator crashed (by [`FaultHandle::crash`] or `crash_at`).
    pub fn crashed(&self) -> bool {
        self.shared.kill.is_cancelled()
    }
}
