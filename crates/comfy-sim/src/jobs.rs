//! The jobs API of newer ComfyUI (`/api/jobs...`, only under `/api`): a read model over the queue
//! and the history, and state-agnostic cancellation.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::server::json_response;
use crate::state::{Inner, QueueItem, Shared};

type S = State<Arc<Shared>>;

const STATUSES: &[&str] = &["pending", "in_progress", "completed", "failed", "cancelled"];

fn bad(msg: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": msg.into()}))
}

fn ts_of(messages: &Value, kinds: &[&str]) -> Option<i64> {
    messages.as_array()?.iter().find_map(|m| {
        let k = m.get(0)?.as_str()?;
        if kinds.contains(&k) {
            m.get(1)?.get("timestamp")?.as_i64()
        } else {
            None
        }
    })
}

fn workflow_id(extra: &Value) -> Option<Value> {
    extra.pointer("/extra_pnginfo/workflow/id").cloned()
}

/// Output items of a history `outputs` dict: (node id, media key, item).
fn output_items(outputs: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (node, ui) in outputs.as_object().into_iter().flatten() {
        for (key, items) in ui.as_object().into_iter().flatten() {
            for it in items.as_array().into_iter().flatten() {
                out.push((node.clone(), key.clone(), it.clone()));
            }
        }
    }
    out
}

fn media_type(key: &str) -> &'static str {
    match key {
        "images" => "images",
        "gifs" | "videos" | "animated" => "video",
        "audio" => "audio",
        "text" => "text",
        _ => "files",
    }
}

fn finished_job(id: &str, entry: &Value, create_time: Option<i64>, full: bool) -> Value {
    let status = &entry["status"];
    let messages = &status["messages"];
    let kinds: Vec<&str> = messages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.get(0).and_then(Value::as_str))
        .collect();
    let state = match status["status_str"].as_str() {
        Some("error") if kinds.contains(&"execution_interrupted") => "cancelled",
        Some("error") => "failed",
        _ => "completed",
    };
    let items = output_items(&entry["outputs"]);
    let previewable: Vec<&(String, String, Value)> = items
        .iter()
        .filter(|(_, k, it)| {
            matches!(media_type(k), "images" | "video" | "audio") && it.is_object()
        })
        .collect();
    let mut job = Map::new();
    job.insert("id".into(), json!(id));
    job.insert("status".into(), json!(state));
    job.insert("priority".into(), entry["prompt"][0].clone());
    if let Some(t) = create_time {
        job.insert("create_time".into(), json!(t));
    }
    if let Some(t) = ts_of(messages, &["execution_start"]) {
        job.insert("execution_start_time".into(), json!(t));
    }
    if let Some(t) = ts_of(
        messages,
        &[
            "execution_success",
            "execution_error",
            "execution_interrupted",
        ],
    ) {
        job.insert("execution_end_time".into(), json!(t));
    }
    if let Some(err) = messages
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m.get(0).and_then(Value::as_str) == Some("execution_error"))
    {
        job.insert("execution_error".into(), err[1].clone());
    }
    job.insert("outputs_count".into(), json!(items.len()));
    job.insert("previewable_outputs_count".into(), json!(previewable.len()));
    // Saved outputs first, then temp ones.
    let preview = previewable
        .iter()
        .find(|(_, _, it)| it["type"] == "output")
        .or_else(|| previewable.first());
    if let Some((node, key, it)) = preview {
        let mut p = it.as_object().cloned().unwrap_or_default();
        p.insert("nodeId".into(), json!(node));
        p.insert("mediaType".into(), json!(media_type(key)));
        job.insert("preview_output".into(), Value::Object(p));
    }
    if let Some(w) = workflow_id(&entry["prompt"][3]) {
        job.insert("workflow_id".into(), w);
    }
    if full {
        job.insert("outputs".into(), entry["outputs"].clone());
        job.insert("execution_status".into(), status.clone());
        job.insert(
            "workflow".into(),
            json!({"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]}),
        );
    }
    Value::Object(job)
}

fn queued_job(item: &QueueItem, running: bool, create_time: Option<i64>, full: bool) -> Value {
    let mut job = Map::new();
    job.insert("id".into(), json!(item.prompt_id));
    job.insert(
        "status".into(),
        json!(if running { "in_progress" } else { "pending" }),
    );
    job.insert("priority".into(), item.number.clone());
    if let Some(t) = create_time {
        job.insert("create_time".into(), json!(t));
    }
    job.insert("outputs_count".into(), json!(0));
    job.insert("previewable_outputs_count".into(), json!(0));
    let extra = Value::Object(item.extra_data.clone());
    if let Some(w) = workflow_id(&extra) {
        job.insert("workflow_id".into(), w);
    }
    if full {
        job.insert(
            "workflow".into(),
            json!({"prompt": Value::Object((*item.prompt).clone()), "extra_data": extra}),
        );
    }
    Value::Object(job)
}

fn all_jobs(inner: &Inner) -> Vec<Value> {
    let ct = |id: &str| inner.create_times.get(id).copied();
    let mut jobs = Vec::new();
    for it in inner.running.iter() {
        jobs.push(queued_job(it, true, ct(&it.prompt_id), false));
    }
    for it in &inner.queue.0 {
        jobs.push(queued_job(it, false, ct(&it.prompt_id), false));
    }
    for (id, e) in &inner.history {
        jobs.push(finished_job(id, e, ct(id), false));
    }
    jobs
}

pub(crate) async fn list(State(shared): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let wanted: Option<Vec<String>> = q.get("status").map(|s| {
        s.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    });
    if let Some(w) = &wanted {
        let invalid: Vec<&String> = w
            .iter()
            .filter(|s| !STATUSES.contains(&s.as_str()))
            .collect();
        if !invalid.is_empty() {
            let list: Vec<&str> = invalid.iter().map(|s| s.as_str()).collect();
            return bad(format!("Invalid status value(s): {}", list.join(", ")));
        }
    }
    let sort_by = q.get("sort_by").map(String::as_str).unwrap_or("created_at");
    if !matches!(sort_by, "created_at" | "execution_duration") {
        return bad("sort_by must be 'created_at' or 'execution_duration'");
    }
    let desc = match q.get("sort_order").map(String::as_str).unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        _ => return bad("sort_order must be 'asc' or 'desc'"),
    };
    let limit = match q.get("limit") {
        None => None,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            _ => return bad("limit must be a positive integer"),
        },
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) => n.max(0) as usize,
            Err(_) => return bad("offset must be an integer"),
        },
    };
    let mut jobs = all_jobs(&shared.lock());
    if let Some(w) = &wanted {
        jobs.retain(|j| {
            j["status"]
                .as_str()
                .is_some_and(|s| w.iter().any(|x| x == s))
        });
    }
    if let Some(wf) = q.get("workflow_id") {
        jobs.retain(|j| j["workflow_id"].as_str() == Some(wf.as_str()));
    }
    let key = |j: &Value| -> i64 {
        if sort_by == "execution_duration" {
            match (
                j["execution_end_time"].as_i64(),
                j["execution_start_time"].as_i64(),
            ) {
                (Some(e), Some(s)) => e - s,
                _ => 0,
            }
        } else {
            j["create_time"].as_i64().unwrap_or(0)
        }
    };
    jobs.sort_by_key(key);
    if desc {
        jobs.reverse();
    }
    let total = jobs.len();
    let page: Vec<Value> = jobs
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let has_more = offset + page.len() < total;
    json_response(
        StatusCode::OK,
        &json!({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": has_more}}),
    )
}

pub(crate) async fn get(State(shared): S, UrlPath(id): UrlPath<String>) -> Response {
    let inner = shared.lock();
    let ct = inner.create_times.get(&id).copied();
    let job = if let Some(it) = inner.running.as_ref().filter(|r| r.prompt_id == id) {
        Some(queued_job(it, true, ct, true))
    } else if let Some(it) = inner.queue.0.iter().find(|r| r.prompt_id == id) {
        Some(queued_job(it, false, ct, true))
    } else {
        inner
            .history
            .get(&id)
            .map(|e| finished_job(&id, e, ct, true))
    };
    match job {
        Some(j) => json_response(StatusCode::OK, &j),
        None => json_response(StatusCode::NOT_FOUND, &json!({"error": "Job not found"})),
    }
}

/// Cancels one job: pending → dequeued, running → interrupted; false otherwise.
fn cancel_one(shared: &Shared, id: &str) -> bool {
    let mut inner = shared.lock();
    if let Some(pos) = inner.queue.0.iter().position(|it| it.prompt_id == id) {
        inner.queue.0.remove(pos);
        inner.queue.heapify();
        inner.queue_updated();
        return true;
    }
    if inner.running.as_ref().is_some_and(|r| r.prompt_id == id) {
        shared.interrupt.store(true, Ordering::SeqCst);
        return true;
    }
    false
}

pub(crate) async fn cancel(State(shared): S, UrlPath(id): UrlPath<String>) -> Response {
    let cancelled = cancel_one(&shared, &id);
    json_response(StatusCode::OK, &json!({"cancelled": cancelled}))
}

pub(crate) async fn cancel_many(State(shared): S, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("Request body must be valid JSON");
    };
    let Some(ids) = v.get("job_ids").and_then(Value::as_array) else {
        return bad("job_ids must be a list");
    };
    let invalid: Vec<&Value> = ids
        .iter()
        .filter(|i| !i.as_str().is_some_and(protocol::ids::is_canonical_uuid))
        .collect();
    if !invalid.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}),
        );
    }
    let mut any = false;
    for id in ids.iter().filter_map(Value::as_str) {
        any |= cancel_one(&shared, id);
    }
    json_response(StatusCode::OK, &json!({"cancelled": any}))
}
