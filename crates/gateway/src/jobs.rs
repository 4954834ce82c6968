//! The jobs API (`/api/jobs`, `/api/jobs/{id}`, `/api/jobs/{id}/cancel`; comfyui-api.md §1.6),
//! a read model over the caller's job records.

use std::sync::Arc;

use auth::Identity;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use store::{JobRecord, JobState};

use crate::body::{query_get, query_pairs, read_body};
use crate::error::{json_response, ApiError};
use crate::state::AppState;

const STATUSES: [&str; 5] = ["pending", "in_progress", "completed", "failed", "cancelled"];
const VISUAL: [&str; 4] = ["images", "video", "gifs", "animated_images"];

fn jobs_error(msg: String) -> ApiError {
    ApiError::Raw(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        json!({ "error": msg }).to_string(),
    )
}

/// What the jobs API needs of one record, parsed once.
struct JobView {
    status: &'static str,
    obj: Map<String, Value>,
    create_time: i64,
    duration: Option<i64>,
    workflow_id: Option<String>,
    history: Option<Value>,
    item: Value,
}

fn status_of(rec: &JobRecord, history: Option<&Value>) -> &'static str {
    match rec.state {
        JobState::Pending => "pending",
        JobState::Running => "in_progress",
        JobState::Success => "completed",
        JobState::Cancelled | JobState::Interrupted => "cancelled",
        JobState::Error => {
            let interrupted = history
                .and_then(|h| h.pointer("/status/messages"))
                .and_then(Value::as_array)
                .is_some_and(|m| {
                    m.iter()
                        .any(|e| e.get(0).and_then(Value::as_str) == Some("execution_interrupted"))
                });
            if interrupted {
                "cancelled"
            } else {
                "failed"
            }
        }
    }
}

fn message_ts(history: &Value, kinds: &[&str]) -> Option<(i64, Value)> {
    history
        .pointer("/status/messages")?
        .as_array()?
        .iter()
        .find_map(|e| {
            let kind = e.get(0)?.as_str()?;
            if !kinds.contains(&kind) {
                return None;
            }
            let data = e.get(1)?;
            Some((data.get("timestamp")?.as_i64()?, data.clone()))
        })
}

/// `(outputs_count, previewable_outputs_count, preview_output)` of history outputs.
fn output_counts(outputs: Option<&Value>) -> (u64, u64, Option<Value>) {
    let Some(Value::Object(nodes)) = outputs else {
        return (0, 0, None);
    };
    let (mut count, mut previewable) = (0u64, 0u64);
    let mut first_saved: Option<Value> = None;
    let mut first_temp: Option<Value> = None;
    let mut first_text: Option<Value> = None;
    for (node_id, ui) in nodes {
        let Some(ui) = ui.as_object() else { continue };
        for (media, items) in ui {
            if media == "animated" {
                continue;
            }
            let Some(items) = items.as_array() else {
                continue;
            };
            for item in items {
                count += 1;
                let Some(obj) = item.as_object() else {
                    if first_text.is_none() && item.is_string() {
                        first_text =
                            Some(json!({"content": item, "nodeId": node_id, "mediaType": media}));
                    }
                    continue;
                };
                let is_media = VISUAL.contains(&media.as_str()) || media == "audio";
                if !is_media || !obj.contains_key("filename") {
                    continue;
                }
                previewable += 1;
                let mut with = obj.clone();
                with.insert("nodeId".into(), Value::String(node_id.clone()));
                with.insert("mediaType".into(), Value::String(media.clone()));
                let slot = match obj.get("type").and_then(Value::as_str) {
                    Some("output") => &mut first_saved,
                    _ => &mut first_temp,
                };
                if slot.is_none() {
                    *slot = Some(Value::Object(with));
                }
            }
        }
    }
    (
        count,
        previewable,
        first_saved.or(first_temp).or(first_text),
    )
}

fn build(rec: &JobRecord) -> JobView {
    let item: Value = serde_json::from_str(&rec.item_json).unwrap_or(Value::Null);
    let history: Option<Value> = rec
        .history_json
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok());
    let status = status_of(rec, history.as_ref());
    let extra = item.get(3);
    let create_time = extra
        .and_then(|e| e.get("create_time"))
        .and_then(Value::as_i64)
        .unwrap_or(rec.created_ms);
    let workflow_id = extra
        .and_then(|e| e.pointer("/extra_pnginfo/workflow/id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut obj = Map::new();
    obj.insert("id".into(), Value::String(rec.prompt_id.clone()));
    obj.insert("status".into(), Value::String(status.into()));
    obj.insert(
        "priority".into(),
        serde_json::from_str(&rec.number).unwrap_or(Value::Null),
    );
    obj.insert("create_time".into(), Value::from(create_time));
    let mut duration = None;
    if let Some(h) = &history {
        let start = message_ts(h, &["execution_start"]);
        let end = message_ts(
            h,
            &[
                "execution_success",
                "execution_error",
                "execution_interrupted",
            ],
        );
        if let Some((t, _)) = &start {
            obj.insert("execution_start_time".into(), Value::from(*t));
        }
        if let Some((t, _)) = &end {
            obj.insert("execution_end_time".into(), Value::from(*t));
        }
        if let (Some((s, _)), Some((e, _))) = (&start, &end) {
            duration = Some(e - s);
        }
        if let Some((_, data)) = message_ts(h, &["execution_error"]) {
            obj.insert("execution_error".into(), data);
        }
    }
    let (count, previewable, preview) =
        output_counts(history.as_ref().and_then(|h| h.get("outputs")));
    obj.insert("outputs_count".into(), Value::from(count));
    obj.insert("previewable_outputs_count".into(), Value::from(previewable));
    if let Some(p) = preview {
        obj.insert("preview_output".into(), p);
    }
    if let Some(w) = &workflow_id {
        obj.insert("workflow_id".into(), Value::String(w.clone()));
    }
    JobView {
        status,
        obj,
        create_time,
        duration,
        workflow_id,
        history,
        item,
    }
}

/// `GET /api/jobs`.
pub(crate) async fn list_jobs(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let wanted: Option<Vec<String>> = match query_get(&pairs, "status") {
        None => None,
        Some(s) => {
            let list: Vec<String> = s
                .split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect();
            let bad: Vec<&String> = list
                .iter()
                .filter(|x| !STATUSES.contains(&x.as_str()))
                .collect();
            if !bad.is_empty() {
                let names: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
                return Err(jobs_error(format!(
                    "Invalid status value(s): {}. Valid values: {}",
                    names.join(", "),
                    STATUSES.join(", ")
                )));
            }
            Some(list)
        }
    };
    let sort_by = query_get(&pairs, "sort_by").unwrap_or("created_at");
    if sort_by != "created_at" && sort_by != "execution_duration" {
        return Err(jobs_error(
            "sort_by must be 'created_at' or 'execution_duration'".into(),
        ));
    }
    let order = query_get(&pairs, "sort_order").unwrap_or("desc");
    if order != "asc" && order != "desc" {
        return Err(jobs_error("sort_order must be 'asc' or 'desc'".into()));
    }
    let limit = match query_get(&pairs, "limit") {
        None => None,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            _ => return Err(jobs_error("limit must be a positive integer".into())),
        },
    };
    let offset = match query_get(&pairs, "offset") {
        None => 0,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) => n.max(0) as usize,
            Err(_) => return Err(jobs_error("offset must be an integer".into())),
        },
    };
    let workflow = query_get(&pairs, "workflow_id");

    let records = st.redis(st.store.jobs(st.pool(), &id.user_id)).await?;
    let mut views: Vec<JobView> = records
        .iter()
        .map(build)
        .filter(|v| {
            wanted
                .as_ref()
                .is_none_or(|w| w.iter().any(|s| s == v.status))
        })
        .filter(|v| workflow.is_none_or(|w| v.workflow_id.as_deref() == Some(w)))
        .collect();
    if sort_by == "execution_duration" {
        views.sort_by_key(|v| v.duration.unwrap_or(0));
    } else {
        views.sort_by_key(|v| v.create_time);
    }
    if order == "desc" {
        views.reverse();
    }
    let total = views.len();
    let page: Vec<Value> = views
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|v| Value::Object(v.obj))
        .collect();
    let has_more = offset + page.len() < total;
    let body = json!({
        "jobs": page,
        "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": has_more}
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

fn not_found() -> ApiError {
    ApiError::Raw(
        StatusCode::NOT_FOUND,
        "not_found",
        json!({"error": "Job not found"}).to_string(),
    )
}

/// `GET /api/jobs/{id}`.
pub(crate) async fn get_job(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    if !protocol::ids::is_canonical_uuid(&job_id) {
        return Err(not_found());
    }
    let Some(rec) = st
        .redis(st.store.job(st.pool(), &id.user_id, &job_id))
        .await?
    else {
        return Err(not_found());
    };
    let mut v = build(&rec);
    if let Some(h) = &v.history {
        if let Some(o) = h.get("outputs") {
            v.obj.insert("outputs".into(), o.clone());
        }
        if let Some(s) = h.get("status") {
            v.obj.insert("execution_status".into(), s.clone());
        }
    }
    v.obj.insert(
        "workflow".into(),
        json!({
            "prompt": v.item.get(2).cloned().unwrap_or(Value::Null),
            "extra_data": v.item.get(3).cloned().unwrap_or(Value::Null),
        }),
    );
    Ok(json_response(
        StatusCode::OK,
        Value::Object(v.obj).to_string(),
    ))
}

/// `POST /api/jobs/{id}/cancel`: pending → dequeued; running → interrupted; else `false`.
pub(crate) async fn cancel_job(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let cancelled = cancel_one(&st, &id, &job_id).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "cancelled": cancelled }).to_string(),
    ))
}

/// `POST /api/jobs/cancel` `{"job_ids": [...]}`: `cancelled` is true if any one was.
pub(crate) async fn cancel_jobs(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw =
        |msg: Value| ApiError::Raw(StatusCode::BAD_REQUEST, "invalid_request", msg.to_string());
    let bytes = read_body(body, &headers, st.config.max_request_bytes).await?;
    let Ok(req) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(raw(json!({"error": "Request body must be valid JSON"})));
    };
    let Some(list) = req.get("job_ids").and_then(Value::as_array) else {
        return Err(raw(json!({"error": "job_ids must be a list"})));
    };
    let invalid: Vec<&Value> = list
        .iter()
        .filter(|v| !v.as_str().is_some_and(protocol::ids::is_canonical_uuid))
        .collect();
    if !invalid.is_empty() {
        return Err(raw(
            json!({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}),
        ));
    }
    let mut any = false;
    for job_id in list.iter().filter_map(Value::as_str) {
        any |= cancel_one(&st, &id, job_id).await?;
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "cancelled": any }).to_string(),
    ))
}

async fn cancel_one(st: &AppState, id: &Identity, job_id: &str) -> Result<bool, ApiError> {
    if !protocol::ids::is_canonical_uuid(job_id) {
        return Ok(false);
    }
    let pool = st.pool();
    let job_id = job_id.to_owned();
    let rec = st.redis(st.store.job(pool, &id.user_id, &job_id)).await?;
    let mut cancelled = false;
    if let Some(rec) = rec {
        if rec.state == JobState::Pending {
            let removed = st
                .redis(
                    st.store
                        .cancel_pending(pool, &id.user_id, std::slice::from_ref(&job_id)),
                )
                .await?;
            cancelled = !removed.is_empty();
            st.pool_metrics.cancelled.increment(removed.len() as u64);
        }
        if !cancelled && matches!(rec.state, JobState::Pending | JobState::Running) {
            // Started meanwhile (or running already): interrupt it.
            let asked = st
                .redis(st.store.request_interrupt(pool, &id.user_id, Some(&job_id)))
                .await?;
            cancelled = asked > 0;
        }
    }
    Ok(cancelled)
}
