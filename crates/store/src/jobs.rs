//! Job records: one Redis hash per job, read back for `/queue`, `/history` and `/api/jobs`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where a job is in its life cycle (DESIGN.md, job life cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Queued, not yet handed to a backend.
    Pending,
    /// Leased by a worker and running on a backend.
    Running,
    /// Finished with `execution_success`.
    Success,
    /// Finished with `execution_error`.
    Error,
    /// Finished with `execution_interrupted`.
    Interrupted,
    /// Removed from the queue before it ran (no history entry, as in ComfyUI).
    Cancelled,
}

impl JobState {
    /// Parses the `state` field.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "success" => JobState::Success,
            "error" => JobState::Error,
            "interrupted" => JobState::Interrupted,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// The `state` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Success => "success",
            JobState::Error => "error",
            JobState::Interrupted => "interrupted",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for the four end states.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running)
    }
}

/// A job as stored (secrets never included).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Pool the job was queued in.
    pub pool: String,
    /// Owner's user id.
    pub user_id: String,
    /// Owner's name.
    pub username: String,
    /// The prompt id (unique per owner).
    pub prompt_id: String,
    /// `number` as JSON text (`12`, `-3`, `7.5`).
    pub number: String,
    /// Life-cycle state.
    pub state: JobState,
    /// The submitter's WebSocket client id.
    pub client_id: Option<String>,
    /// Enqueue time, ms since the epoch.
    pub created_ms: i64,
    /// Start of the latest attempt, ms.
    pub started_ms: Option<i64>,
    /// End time, ms.
    pub ended_ms: Option<i64>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The `/queue` item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]` as JSON.
    pub item_json: String,
    /// The history entry (JSON) once finished with a history.
    pub history_json: Option<String>,
    /// Node currently executing (for reconnecting clients).
    pub current_node: Option<String>,
    /// Worker holding the lease.
    pub worker: Option<String>,
    /// Backend running it.
    pub backend: Option<String>,
    /// Request id of the submit, for following one job through the logs.
    pub request_id: Option<String>,
    /// Lease id of the latest start: stream ids grow, so they order starts pool-wide.
    pub claimed: Option<String>,
}

fn non_empty(map: &HashMap<String, String>, k: &str) -> Option<String> {
    map.get(k).filter(|v| !v.is_empty()).cloned()
}

fn number_of(map: &HashMap<String, String>, k: &str) -> Option<i64> {
    map.get(k).and_then(|v| v.parse().ok())
}

impl JobRecord {
    /// Builds a record from HGETALL output; `None` for a missing or malformed hash.
    pub(crate) fn from_hash(map: &HashMap<String, String>) -> Option<Self> {
        Some(JobRecord {
            pool: map.get("pool")?.clone(),
            user_id: map.get("uid")?.clone(),
            username: map.get("user").cloned().unwrap_or_default(),
            prompt_id: map.get("pid")?.clone(),
            number: map.get("number")?.clone(),
            state: JobState::parse(map.get("state")?)?,
            client_id: non_empty(map, "cid"),
            created_ms: number_of(map, "created").unwrap_or(0),
            started_ms: number_of(map, "started"),
            claimed: map.get("claimed").filter(|v| !v.is_empty()).cloned(),
            ended_ms: number_of(map, "ended"),
            attempts: number_of(map, "attempts").unwrap_or(0).max(0) as u32,
            item_json: map.get("item")?.clone(),
            history_json: non_empty(map, "history"),
            current_node: non_empty(map, "node"),
            worker: non_empty(map, "worker"),
            backend: non_empty(map, "backend"),
            request_id: non_empty(map, "reqid"),
        })
    }
}
