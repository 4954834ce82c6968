//! ComfyUI's JSON WebSocket messages (`{"type", "data"}`) and who receives each of them.

use serde_json::{json, Value};

/// Who a message goes to, following ComfyUI (comfyui-api.md §2.3), before confining it to the
/// job's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to every socket (of the owner, in the broker).
    Broadcast,
    /// Sent to the submitter's socket if the job has a `client_id`, otherwise broadcast.
    SubmitterOrBroadcast,
    /// Sent to the submitter's socket only; dropped when the job has no `client_id`.
    SubmitterOnly,
}

/// Delivery rule for a JSON message type. Unknown types (custom nodes) follow the submitter rule
/// with a broadcast fallback, as ComfyUI's `send_sync(..., client_id)` does for them.
pub fn delivery_of(message_type: &str) -> Delivery {
    match message_type {
        "status" => Delivery::Broadcast,
        "execution_start" | "execution_cached" | "executing" | "executed" | "execution_success" => {
            Delivery::SubmitterOnly
        }
        // A terminal execution_error is submitter-only; the non-terminal blocker variant is
        // broadcast without a client id. Callers pass the blocker through `is_blocker_error`.
        "execution_error" => Delivery::SubmitterOnly,
        "progress" | "progress_state" | "execution_interrupted" => Delivery::SubmitterOrBroadcast,
        _ => Delivery::SubmitterOrBroadcast,
    }
}

/// True for the non-terminal `execution_error` that ComfyUI sends for an `ExecutionBlocked`.
pub fn is_blocker_error(data: &Value) -> bool {
    data.get("exception_type").and_then(Value::as_str) == Some("ExecutionBlocked")
}

/// The `status` message; `sid` only on the copy sent when a socket connects.
pub fn status(queue_remaining: u64, sid: Option<&str>) -> Value {
    let mut data = json!({"status": {"exec_info": {"queue_remaining": queue_remaining}}});
    if let (Some(sid), Value::Object(map)) = (sid, &mut data) {
        map.insert("sid".into(), Value::String(sid.to_owned()));
    }
    json!({"type": "status", "data": data})
}

/// The end-of-prompt marker `executing {node: null, prompt_id}`.
pub fn executing_done(prompt_id: &str) -> Value {
    json!({"type": "executing", "data": {"node": null, "prompt_id": prompt_id}})
}

/// The catch-up message for a reconnecting submitter: `executing {node}` without prompt_id,
/// exactly as ComfyUI sends it (trace 15).
pub fn executing_replay(node: &str) -> Value {
    json!({"type": "executing", "data": {"node": node}})
}

/// `{"type": t, "data": data}`.
pub fn message(message_type: &str, data: Value) -> Value {
    json!({"type": message_type, "data": data})
}

/// Message types that end a job (`execution_error` only when not a blocker).
pub fn is_terminal(message_type: &str, data: &Value) -> bool {
    match message_type {
        "execution_success" | "execution_interrupted" => true,
        "execution_error" => !is_blocker_error(data),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shapes_match_trace_01() {
        assert_eq!(
            status(0, Some("abc")),
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}})
        );
        assert_eq!(
            status(2, None),
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 2}}}})
        );
    }

    #[test]
    fn delivery_rules() {
        assert_eq!(delivery_of("status"), Delivery::Broadcast);
        assert_eq!(delivery_of("executing"), Delivery::SubmitterOnly);
        assert_eq!(delivery_of("progress"), Delivery::SubmitterOrBroadcast);
        assert!(is_terminal("execution_success", &json!({})));
        assert!(!is_terminal(
            "execution_error",
            &json!({"exception_type": "ExecutionBlocked"})
        ));
        assert!(is_terminal(
            "execution_error",
            &json!({"exception_type": "Exception"})
        ));
    }
}
