//! The Comfy Portal endpoints (`/api/cpe/...`, mss-login-api.md §7) over the shared workflow
//! store: list, get, save, get-and-convert, convert and health. Every answer carries `status`
//! (`success` / `error`). Files live under `workflows/` of the caller's space; reads fall back to
//! the global space. No headless browser runs here, so UI-format graphs are not converted: a file
//! already in API format is returned as it is, anything else answers 422.

use std::sync::Arc;

use auth::{Identity, Permission};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use store::workflows::{self as wf, WorkflowError};

use crate::auth::require;
use crate::body::{query_get, query_pairs, read_body};
use crate::error::{json_response, ApiError};
use crate::state::AppState;
use crate::workflows::{body_limit, limits, load, merged_list, timed, write_space, WORKFLOWS_DIR};

/// `{"status": "error", "message": ...}` with a status.
fn cpe_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::Raw(
        status,
        "cpe",
        json!({"status": "error", "message": message.into()}).to_string(),
    )
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

/// Why a name is refused.
enum NameError {
    /// Absolute or `..`.
    Traversal,
    /// Anything else.
    Invalid,
}

/// The Portal's name rules: `\` becomes `/`, absolute paths and `..` are refused, `.json` is
/// appended when missing; the result is `(clean name, path under workflows/)`.
fn clean_name(raw: &str) -> Result<(String, String), NameError> {
    let name = raw.trim().replace('\\', "/");
    if name.is_empty() {
        return Err(NameError::Invalid);
    }
    if name.starts_with('/') || name.split('/').any(|s| s == "..") {
        return Err(NameError::Traversal);
    }
    let name = if name.to_ascii_lowercase().ends_with(".json") {
        name
    } else {
        format!("{name}.json")
    };
    let path = format!("{WORKFLOWS_DIR}/{name}");
    match wf::file_path(&path) {
        Ok(_) => Ok((name, path)),
        Err(e) if e.is_traversal() => Err(NameError::Traversal),
        Err(_) => Err(NameError::Invalid),
    }
}

fn cpe_store_error(e: WorkflowError) -> ApiError {
    match e {
        WorkflowError::TooLarge(n) => cpe_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Workflow larger than {n} bytes"),
        ),
        WorkflowError::TooMany(n) => cpe_error(
            StatusCode::FORBIDDEN,
            format!("At most {n} workflow files may be stored; delete some first"),
        ),
        WorkflowError::InvalidPath(_) | WorkflowError::PathConflict(_) => {
            cpe_error(StatusCode::BAD_REQUEST, "Invalid filename path")
        }
        other => crate::workflows::common_error(other),
    }
}

/// Permission refusals in the Portal's shape.
fn cpe_require(id: &Identity, p: Permission) -> Result<(), ApiError> {
    require(id, p).map_err(|_| {
        cpe_error(
            StatusCode::FORBIDDEN,
            format!("Permission {} required", p.as_str()),
        )
    })
}

/// `GET /cpe/workflow/list`: the caller's and the global workflows (the caller's win), by name.
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiError> {
    let files = merged_list(&st, &id, WORKFLOWS_DIR, false).await?;
    let workflows: Vec<Value> = files
        .values()
        .map(|(f, _)| {
            let rel = f.path.strip_prefix("workflows/").unwrap_or(&f.path);
            json!({"filename": rel, "size": f.size, "modified": f.modified_secs()})
        })
        .collect();
    Ok(ok(json!({"status": "success", "workflows": workflows})))
}

/// Loads `?filename=` (the caller's first, then the global one): `(clean name, text)`.
async fn load_named(
    st: &AppState,
    id: &Identity,
    query: Option<&str>,
) -> Result<(String, String), ApiError> {
    let q = query_pairs(query);
    let required = || {
        cpe_error(
            StatusCode::BAD_REQUEST,
            "filename query parameter is required",
        )
    };
    let raw = query_get(&q, "filename").ok_or_else(required)?;
    let (name, path) = clean_name(raw).map_err(|_| required())?;
    match load(st, id, &path, false).await? {
        Some((bytes, _)) => Ok((name, String::from_utf8_lossy(&bytes).into_owned())),
        None => Err(cpe_error(
            StatusCode::NOT_FOUND,
            format!("Workflow file not found: {name}"),
        )),
    }
}

/// `GET /cpe/workflow/get?filename=`: the file's text as a JSON string.
pub(crate) async fn get(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, text) = load_named(&st, &id, query.as_deref()).await?;
    Ok(ok(
        json!({"status": "success", "filename": name, "workflow": text}),
    ))
}

/// `POST /cpe/workflow/save` `{"workflow": <string | object | array>, "name": "optional.json"}`.
/// A string is stored exactly as given (it must parse as JSON); an object or array is written
/// as compact JSON. Admins may add `?global=true`.
pub(crate) async fn save(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    cpe_require(&id, Permission::CanModifyWorkflows)?;
    let q = query_pairs(query.as_deref());
    let space = write_space(&id, &q)?;
    // The body holds the workflow as a JSON string: allow for escaping.
    let limit = body_limit(&st).saturating_mul(2).saturating_add(4096);
    let bytes = read_body(body, &headers, limit)
        .await
        .map_err(|e| match e {
            ApiError::TooLarge(_) => cpe_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Workflow larger than {} bytes",
                    st.config.workflow_max_bytes
                ),
            ),
            other => other,
        })?;
    let required = || cpe_error(StatusCode::BAD_REQUEST, "workflow field is required");
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| required())?;
    let text = match doc.get("workflow") {
        None | Some(Value::Null) => return Err(required()),
        Some(Value::String(s)) => {
            if serde_json::from_str::<Value>(s).is_err() {
                return Err(cpe_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid JSON in workflow field",
                ));
            }
            s.clone()
        }
        Some(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
        Some(_) => {
            return Err(cpe_error(
                StatusCode::BAD_REQUEST,
                "Invalid JSON in workflow field",
            ))
        }
    };
    let raw_name = match doc.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => format!("workflow_{}.json", unix_secs()),
    };
    let (name, path) = clean_name(&raw_name).map_err(|e| match e {
        NameError::Traversal => cpe_error(StatusCode::BAD_REQUEST, "Invalid filename path"),
        NameError::Invalid => cpe_error(StatusCode::BAD_REQUEST, "Invalid filename"),
    })?;
    timed(
        &st,
        st.store
            .workflow_put(space, &path, text.as_bytes(), true, &limits(&st)),
    )
    .await?
    .map_err(cpe_store_error)?;
    Ok(ok(json!({
        "status": "success",
        "message": "Workflow saved successfully",
        "filename": name,
    })))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// True for an API-format prompt: a non-empty object whose every value is a node with a string
/// `class_type` and an object `inputs`.
pub(crate) fn is_api_format(v: &Value) -> bool {
    match v.as_object() {
        Some(m) if !m.is_empty() => m.values().all(|n| {
            n.get("class_type").is_some_and(Value::is_string)
                && n.get("inputs").is_some_and(Value::is_object)
        }),
        _ => false,
    }
}

/// The conversion answer for a parsed document (`Err` when it cannot be given).
fn convert(doc: Value) -> Result<Value, ApiError> {
    let empty = match &doc {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if empty {
        return Err(cpe_error(
            StatusCode::BAD_REQUEST,
            "Workflow file contains no data or is an empty JSON object",
        ));
    }
    if is_api_format(&doc) {
        return Ok(doc);
    }
    Err(ApiError::Raw(
        StatusCode::UNPROCESSABLE_ENTITY,
        "cpe",
        json!({
            "status": "error",
            "message": "Workflow conversion is not available",
            "details": "this workflow is in UI format (nodes and links); comfy-broker only \
                        returns workflows already saved in API format (\"Export (API)\"). \
                        Save the API-format prompt instead.",
        })
        .to_string(),
    ))
}

/// `GET /cpe/workflow/get-and-convert?filename=`: the API-format prompt when the file already
/// is one; 422 for UI-format graphs (no converter here).
pub(crate) async fn get_and_convert(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, text) = load_named(&st, &id, query.as_deref()).await?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|_| cpe_error(StatusCode::BAD_REQUEST, "Invalid JSON in workflow file"))?;
    let workflow = convert(doc)?;
    Ok(ok(json!({
        "status": "success",
        "message": "Workflow converted successfully",
        "data": {"workflow": workflow},
        "filename": name,
    })))
}

/// `POST /cpe/workflow/convert` (body: a workflow): as get-and-convert, without `filename`.
pub(crate) async fn convert_body(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, body_limit(&st)).await?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|_| cpe_error(StatusCode::BAD_REQUEST, "Invalid JSON body"))?;
    if !doc.is_object() {
        return Err(cpe_error(
            StatusCode::BAD_REQUEST,
            "Workflow JSON object is required",
        ));
    }
    let workflow = convert(doc)?;
    Ok(ok(json!({
        "status": "success",
        "message": "Workflow converted successfully",
        "data": {"workflow": workflow},
    })))
}

/// `GET /cpe/health`: the converter's state — no browser runs in the broker.
pub(crate) async fn health() -> Response {
    ok(json!({
        "status": "success",
        "browser": {
            "status": "not_installed",
            "error": "no UI-format converter in comfy-broker; API-format workflows are returned as saved",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert!(
            matches!(clean_name("face"), Ok((n, p)) if n == "face.json" && p == "workflows/face.json")
        );
        assert!(
            matches!(clean_name("portraits\\face.json"), Ok((n, _)) if n == "portraits/face.json")
        );
        assert!(matches!(clean_name("../x"), Err(NameError::Traversal)));
        assert!(matches!(clean_name("/etc/x"), Err(NameError::Traversal)));
        assert!(matches!(clean_name(""), Err(NameError::Invalid)));
        assert!(matches!(clean_name("a\0b"), Err(NameError::Invalid)));
    }

    #[test]
    fn api_format_is_recognised() {
        assert!(is_api_format(
            &json!({"3": {"class_type": "KSampler", "inputs": {}}})
        ));
        assert!(!is_api_format(&json!({"nodes": [], "links": []})));
        assert!(!is_api_format(&json!({})));
    }
}
