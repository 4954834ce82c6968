//! The caller's own queue and history: `GET /prompt`, `GET/POST /queue`, `POST /interrupt`,
//! `GET /history`, `GET /history/{id}`, `POST /history`.

use std::sync::Arc;

use auth::Identity;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use protocol::ids;
use serde_json::Value;
use store::HistoryWindow;

use crate::body::{json_object, json_str, query_get, query_pairs, read_body, truthy};
use crate::error::{empty_ok, json_response, ApiError};
use crate::state::AppState;

/// `GET /prompt`: `{"exec_info": {"queue_remaining": N}}` for the caller.
pub(crate) async fn get_prompt(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiError> {
    let n = st
        .redis(st.store.queue_remaining(st.pool(), &id.user_id))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        format!("{{\"exec_info\": {{\"queue_remaining\": {n}}}}}"),
    ))
}

fn join(items: &[String]) -> String {
    let mut s = String::with_capacity(items.iter().map(|i| i.len() + 2).sum::<usize>() + 2);
    s.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(item);
    }
    s.push(']');
    s
}

/// `GET /queue`: the caller's running and pending items (stored 5-arrays, raw); everyone's for
/// `can_view_all`.
pub(crate) async fn get_queue(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiError> {
    let q = if id.can(auth::Permission::CanViewAll) {
        st.redis(st.store.queue_all(st.pool())).await?
    } else {
        st.redis(st.store.queue(st.pool(), &id.user_id)).await?
    };
    Ok(json_response(
        StatusCode::OK,
        format!(
            "{{\"queue_running\": {}, \"queue_pending\": {}}}",
            join(&q.running),
            join(&q.pending)
        ),
    ))
}

fn id_list(v: Option<&Value>) -> Result<Option<Vec<String>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        // Every job id the broker knows is a canonical UUID; anything else names nothing.
        Some(Value::Array(a)) => Ok(Some(
            a.iter()
                .filter_map(Value::as_str)
                .filter(|s| ids::is_canonical_uuid(s))
                .map(str::to_owned)
                .collect(),
        )),
        Some(_) => Err(ApiError::BadRequest(
            "invalid_delete",
            "delete must be a list of prompt ids".into(),
        )),
    }
}

/// `POST /queue` `{clear, delete}`: only the caller's pending jobs; empty 200.
pub(crate) async fn post_queue(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.config.max_request_bytes).await?;
    let req = json_object(&bytes)?;
    let delete = id_list(req.get("delete"))?;
    if truthy(req.get("clear")) {
        let removed = st
            .redis(st.store.clear_pending(st.pool(), &id.user_id))
            .await?;
        st.pool_metrics.cancelled.increment(removed.len() as u64);
    }
    if let Some(ids) = delete.filter(|d| !d.is_empty()) {
        let removed = st
            .redis(st.store.cancel_pending(st.pool(), &id.user_id, &ids))
            .await?;
        st.pool_metrics.cancelled.increment(removed.len() as u64);
    }
    Ok(empty_ok())
}

/// `POST /interrupt`: `{"prompt_id"}` → that job if the caller owns it and it runs; no body or
/// `{}` → the caller's own running jobs. Always an empty 200.
pub(crate) async fn post_interrupt(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.config.max_request_bytes).await?;
    let target = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let req = json_object(&bytes)?;
        match req.get("prompt_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if ids::is_canonical_uuid(s) => Some(s.clone()),
            // Not one of ours: it cannot be running, so (as in ComfyUI) nothing happens.
            Some(Value::String(_)) => return Ok(empty_ok()),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "invalid_prompt_id",
                    "prompt_id must be a string".into(),
                ))
            }
        }
    };
    let asked = st
        .redis(
            st.store
                .request_interrupt(st.pool(), &id.user_id, target.as_deref()),
        )
        .await?;
    tracing::debug!(asked, "interrupt requested");
    Ok(empty_ok())
}

fn int_param(pairs: &[(String, String)], key: &str) -> Result<Option<i64>, ApiError> {
    match query_get(pairs, key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::BadRequest("invalid_query", format!("{key} must be an integer"))
        }),
    }
}

/// `GET /history?max_items=&offset=`: the caller's finished jobs, oldest first (everyone's for
/// `can_view_all`).
pub(crate) async fn get_history(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let window = HistoryWindow {
        max_items: int_param(&pairs, "max_items")?,
        offset: int_param(&pairs, "offset")?,
    };
    let all = id.can(auth::Permission::CanViewAll);
    let mut entries = if all {
        st.redis(st.store.history_all(st.pool(), window)).await?
    } else {
        st.redis(st.store.history(st.pool(), &id.user_id, window))
            .await?
    };
    crate::nsfw::annotate_history(&st, &id, !all, &mut entries).await?;
    let mut s = String::with_capacity(entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
    s.push('{');
    for (i, (pid, entry)) in entries.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&json_str(pid));
        s.push_str(": ");
        s.push_str(entry);
    }
    s.push('}');
    Ok(json_response(StatusCode::OK, s))
}

/// `GET /history/{prompt_id}`: `{id: entry}`, or `{}` when unknown, unfinished or not the
/// caller's (for `can_view_all`, anyone's).
pub(crate) async fn get_history_one(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(prompt_id): Path<String>,
) -> Result<Response, ApiError> {
    if !ids::is_canonical_uuid(&prompt_id) {
        return Ok(json_response(StatusCode::OK, "{}"));
    }
    let mut entry = st
        .redis(st.store.history_entry(st.pool(), &id.user_id, &prompt_id))
        .await?;
    let own = entry.is_some();
    // Admins see everyone's history in the list, so by id too: whoever submitted this id.
    if entry.is_none() && id.can(auth::Permission::CanViewAll) {
        for owner in st.redis(st.store.owners_of(st.pool(), &prompt_id)).await? {
            entry = st
                .redis(st.store.history_entry(st.pool(), &owner, &prompt_id))
                .await?;
            if entry.is_some() {
                break;
            }
        }
    }
    let Some(entry) = entry else {
        return Ok(json_response(StatusCode::OK, "{}"));
    };
    let mut entries = [(prompt_id, entry)];
    crate::nsfw::annotate_history(&st, &id, own, &mut entries).await?;
    let [(prompt_id, entry)] = entries;
    Ok(json_response(
        StatusCode::OK,
        format!("{{{}: {}}}", json_str(&prompt_id), entry),
    ))
}

/// `POST /history` `{clear, delete}`: only the caller's entries; empty 200.
pub(crate) async fn post_history(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.config.max_request_bytes).await?;
    let req = json_object(&bytes)?;
    let delete = id_list(req.get("delete"))?;
    if truthy(req.get("clear")) {
        st.redis(st.store.delete_history(st.pool(), &id.user_id, None))
            .await?;
    }
    if let Some(ids) = delete.filter(|d| !d.is_empty()) {
        st.redis(st.store.delete_history(st.pool(), &id.user_id, Some(&ids)))
            .await?;
    }
    Ok(empty_ok())
}
