//! Workflows: ComfyUI's userdata API (comfyui-api.md §1.11, answers as ComfyUI 0.3.64 gives
//! them in trace 17) and MSS-Login's unencoded workflow forms (mss-login-api.md §8), over the
//! shared store (`store::workflows`), so every gateway answers the same.
//!
//! Two spaces: the caller's own files and the global ones. Reads see both (the caller's file wins
//! on a name clash); writes go to the caller's space, or to the global one with `?global=true`
//! (owner/admin only). Deleting or moving a file that exists only globally is allowed to admins
//! (as MSS-Login does) and refused to everyone else.

use std::collections::BTreeMap;
use std::sync::Arc;

use auth::{Identity, Permission};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use store::workflows::{self as wf, FileInfo, Limits, PathError, Space, WorkflowError};

use crate::auth::require;
use crate::body::{query_get, query_pairs, read_body};
use crate::error::{json_response, ApiError};
use crate::state::AppState;

/// The directory MSS-Login's forms and the Comfy Portal endpoints work in.
pub(crate) const WORKFLOWS_DIR: &str = "workflows";

type Query = Vec<(String, String)>;

/// ComfyUI's flag rule: true only for the literal `true` (any case).
pub(crate) fn flag(q: &Query, name: &str) -> bool {
    query_get(q, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `overwrite`: true unless the literal `false`.
fn overwrite(q: &Query) -> bool {
    query_get(q, "overwrite") != Some("false")
}

/// `?global=true` (or `1`): address the global space.
pub(crate) fn global_flag(q: &Query) -> bool {
    query_get(q, "global").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// ComfyUI un-escapes a path once more when a `%` is still present after routing.
fn unescape_again(s: String) -> String {
    if s.contains('%') {
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    } else {
        s
    }
}

/// The configured write limits.
pub(crate) fn limits(st: &AppState) -> Limits {
    Limits {
        max_bytes: st.config.workflow_max_bytes,
        max_files: st.config.workflow_max_files,
    }
}

/// Largest body a workflow write reads.
pub(crate) fn body_limit(st: &AppState) -> u64 {
    st.config
        .workflow_max_bytes
        .min(st.config.max_request_bytes)
}

/// 403 for a non-admin writing the global space.
pub(crate) fn require_global_writer(id: &Identity) -> Result<(), ApiError> {
    if id.role.is_admin() {
        Ok(())
    } else {
        Err(ApiError::ForbiddenOther(
            "global_workflows_admin_only",
            "Only admins may write global workflows".into(),
        ))
    }
}

/// The space a write goes to: the global one with `?global=true` (admins only), else the caller's.
pub(crate) fn write_space<'a>(id: &'a Identity, q: &Query) -> Result<Space<'a>, ApiError> {
    if global_flag(q) {
        require_global_writer(id)?;
        Ok(Space::Global)
    } else {
        Ok(Space::User(&id.user_id))
    }
}

/// Errors of the store other than the ones each API answers in its own way.
pub(crate) fn common_error(e: WorkflowError) -> ApiError {
    match e {
        WorkflowError::TooLarge(n) => ApiError::TooLarge(n),
        WorkflowError::TooMany(n) => ApiError::ForbiddenOther(
            "too_many_workflows",
            format!("At most {n} workflow files may be stored; delete some first"),
        ),
        WorkflowError::PathConflict(p) => ApiError::BadRequest(
            "path_conflict",
            format!("a file and a directory would share the path {p}"),
        ),
        WorkflowError::Store(e) => ApiError::Store(e),
        WorkflowError::InvalidPath(_) => ApiError::Text(StatusCode::FORBIDDEN, String::new()),
        WorkflowError::NotFound => ApiError::NotFoundEmpty,
        WorkflowError::Exists => ApiError::Text(StatusCode::CONFLICT, "File already exists".into()),
    }
}

/// Runs a workflow write under `redis_timeout` (a Redis outage answers 503, never hangs).
pub(crate) async fn timed<T>(
    st: &AppState,
    fut: impl std::future::Future<Output = Result<T, WorkflowError>>,
) -> Result<Result<T, WorkflowError>, ApiError> {
    tokio::time::timeout(st.config.redis_timeout, fut)
        .await
        .map_err(|_| ApiError::StoreTimeout)
}

/// A file of the caller's space, or else the global one (`global_only`: only the global one).
/// Returns the bytes and whether they are global.
pub(crate) async fn load(
    st: &AppState,
    id: &Identity,
    path: &str,
    global_only: bool,
) -> Result<Option<(Vec<u8>, bool)>, ApiError> {
    if !global_only {
        if let Some(b) = st
            .redis(st.store.workflow_get(Space::User(&id.user_id), path))
            .await?
        {
            return Ok(Some((b, false)));
        }
    }
    Ok(st
        .redis(st.store.workflow_get(Space::Global, path))
        .await?
        .map(|b| (b, true)))
}

/// Every file under `dir` the caller sees, by path: theirs and the global ones (theirs win).
/// The flag says "global".
pub(crate) async fn merged_list(
    st: &AppState,
    id: &Identity,
    dir: &str,
    global_only: bool,
) -> Result<BTreeMap<String, (FileInfo, bool)>, ApiError> {
    let mut out = BTreeMap::new();
    for f in st.redis(st.store.workflow_list(Space::Global, dir)).await? {
        out.insert(f.path.clone(), (f, true));
    }
    if !global_only {
        for f in st
            .redis(st.store.workflow_list(Space::User(&id.user_id), dir))
            .await?
        {
            out.insert(f.path.clone(), (f, false));
        }
    }
    Ok(out)
}

/// Where an existing file lives for a delete or move: the caller's space if it is there, else
/// the global one for admins (403 for others); `None` when it is nowhere.
async fn existing_space<'a>(
    st: &AppState,
    id: &'a Identity,
    path: &str,
    q: &Query,
    forbidden: impl FnOnce() -> ApiError,
) -> Result<Option<Space<'a>>, ApiError> {
    if global_flag(q) {
        require_global_writer(id)?;
        let there = st
            .redis(st.store.workflow_info(Space::Global, path))
            .await?;
        return Ok(there.map(|_| Space::Global));
    }
    let own = Space::User(&id.user_id);
    if st.redis(st.store.workflow_info(own, path)).await?.is_some() {
        return Ok(Some(own));
    }
    if st
        .redis(st.store.workflow_info(Space::Global, path))
        .await?
        .is_some()
    {
        if id.role.is_admin() {
            return Ok(Some(Space::Global));
        }
        return Err(forbidden());
    }
    Ok(None)
}

/// True when writing `path` into the caller's `space` would hide a global file of that name:
/// with `overwrite=false` that counts as "exists" (the caller sees the global file listed).
async fn shadows_global(st: &AppState, space: Space<'_>, path: &str) -> Result<bool, ApiError> {
    if space.is_global() {
        return Ok(false);
    }
    Ok(st
        .redis(st.store.workflow_info(Space::Global, path))
        .await?
        .is_some())
}

/// `{path, size, modified, created}` as ComfyUI 0.3.64 (float seconds).
fn full_info(path: &str, f: &FileInfo) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("path".into(), json!(path));
    m.insert("size".into(), json!(f.size));
    m.insert("modified".into(), json!(f.modified_secs()));
    m.insert("created".into(), json!(f.created_secs()));
    m
}

fn json_ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

/// The answer to a write or move: the path as a JSON string, or the full info.
fn written(f: &FileInfo, q: &Query) -> Response {
    if flag(q, "full_info") {
        json_ok(&Value::Object(full_info(&f.path, f)))
    } else {
        json_ok(&json!(f.path))
    }
}

/// A file's bytes with a content type from its extension.
fn file_response(path: &str, bytes: Vec<u8>) -> Response {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut r = Response::new(Body::from(bytes));
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// A refused path when reading or deleting: a well-formed path outside the workflow directories
/// simply does not exist (404, as ComfyUI answers a missing file); anything else is 403.
fn unreadable(e: PathError) -> ApiError {
    if e == PathError::NotAllowed {
        ApiError::NotFoundEmpty
    } else {
        forbidden_empty()
    }
}

fn forbidden_empty() -> ApiError {
    ApiError::Text(StatusCode::FORBIDDEN, String::new())
}

fn cannot_touch_global() -> ApiError {
    ApiError::ForbiddenOther(
        "global_workflows_admin_only",
        "Cannot modify global workflows".into(),
    )
}

fn text(status: StatusCode, s: &str) -> ApiError {
    ApiError::Text(status, s.into())
}

/// `GET /userdata?dir=&recurse=&split=&full_info=` (also `global=true`: only the global files).
pub(crate) async fn list_userdata(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let dir = query_get(&q, "dir").unwrap_or("");
    if dir.is_empty() {
        return Err(text(StatusCode::BAD_REQUEST, "Directory not provided"));
    }
    let dir = match wf::dir_path(dir) {
        Err(_) => return Err(text(StatusCode::FORBIDDEN, "Invalid directory")),
        Ok(None) => return Err(text(StatusCode::NOT_FOUND, "Directory not found")),
        Ok(Some(d)) => d,
    };
    let files = merged_list(&st, &id, dir, global_flag(&q)).await?;
    // The allowed top-level directories always exist; deeper ones only while they hold files.
    if files.is_empty() && !wf::ALLOWED_DIRS.contains(&dir) {
        return Err(text(StatusCode::NOT_FOUND, "Directory not found"));
    }
    let (recurse, split, info) = (
        flag(&q, "recurse"),
        flag(&q, "split"),
        flag(&q, "full_info"),
    );
    let mut out = Vec::with_capacity(files.len());
    for (path, (f, global)) in &files {
        let rel = path.get(dir.len() + 1..).unwrap_or_default();
        // glob('*') as ComfyUI uses it: no subdirectories unless recursing, no dotfiles.
        if (!recurse && rel.contains('/')) || rel.split('/').any(|s| s.starts_with('.')) {
            continue;
        }
        out.push(if info {
            let mut m = full_info(rel, f);
            if *global {
                m.insert("global".into(), Value::Bool(true));
            }
            Value::Object(m)
        } else if split {
            let mut parts = vec![json!(rel)];
            parts.extend(rel.split('/').map(|s| json!(s)));
            Value::Array(parts)
        } else {
            json!(rel)
        });
    }
    Ok(json_ok(&Value::Array(out)))
}

/// `GET /userdata/{file}`: the caller's file, else the global one; bytes as saved.
pub(crate) async fn get_userdata(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let file = unescape_again(file);
    if file == WORKFLOWS_DIR {
        return mss_list(&st, &id).await;
    }
    let path = wf::file_path(&file).map_err(unreadable)?;
    match load(&st, &id, path, global_flag(&q)).await? {
        Some((bytes, _)) => Ok(file_response(path, bytes)),
        None => Err(ApiError::NotFoundEmpty),
    }
}

/// `POST /userdata/{file}?overwrite=&full_info=&global=`: the raw body becomes the file.
pub(crate) async fn post_userdata(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let file = unescape_again(file);
    if file == WORKFLOWS_DIR {
        return mss_save(&st, &id, None, &q, &headers, body).await;
    }
    require(&id, Permission::CanModifyWorkflows)?;
    let path = wf::file_path(&file).map_err(|_| forbidden_empty())?;
    let space = write_space(&id, &q)?;
    let bytes = read_body(body, &headers, body_limit(&st)).await?;
    if !overwrite(&q) && shadows_global(&st, space, path).await? {
        return Err(common_error(WorkflowError::Exists));
    }
    let f = timed(
        &st,
        st.store
            .workflow_put(space, path, &bytes, overwrite(&q), &limits(&st)),
    )
    .await?
    .map_err(common_error)?;
    Ok(written(&f, &q))
}

/// `DELETE /userdata/{file}`: 204; 404 (empty) when missing.
pub(crate) async fn delete_userdata(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let file = unescape_again(file);
    if file == WORKFLOWS_DIR {
        return mss_delete(&st, &id, None, &q).await;
    }
    require(&id, Permission::CanModifyWorkflows)?;
    let path = wf::file_path(&file).map_err(unreadable)?;
    match existing_space(&st, &id, path, &q, cannot_touch_global).await? {
        Some(space) if st.redis(st.store.workflow_delete(space, path)).await? => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::NotFoundEmpty),
    }
}

/// `POST /userdata/{file}/move/{dest}?overwrite=&full_info=`: a rename within the file's space.
pub(crate) async fn move_userdata(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    Path((file, dest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    require(&id, Permission::CanModifyWorkflows)?;
    let (file, dest) = (unescape_again(file), unescape_again(dest));
    let src = wf::file_path(&file).map_err(unreadable)?;
    let dst = wf::file_path(&dest).map_err(|_| forbidden_empty())?;
    let Some(space) = existing_space(&st, &id, src, &q, cannot_touch_global).await? else {
        return Err(ApiError::NotFoundEmpty);
    };
    if !overwrite(&q) && shadows_global(&st, space, dst).await? {
        return Err(common_error(WorkflowError::Exists));
    }
    let f = timed(&st, st.store.workflow_move(space, src, dst, overwrite(&q)))
        .await?
        .map_err(common_error)?;
    Ok(written(&f, &q))
}

/// `GET /v2/userdata?path=`: directories and files under `path` (recursively), directories
/// first, then by name ignoring case; paths relative to the root.
pub(crate) async fn list_userdata_v2(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let raw = query_get(&q, "path").unwrap_or("");
    let dir = match wf::dir_path(raw) {
        Err(_) => return Err(forbidden_empty()),
        Ok(None) => return Err(text(StatusCode::NOT_FOUND, "Path not found")),
        Ok(Some(d)) => d,
    };
    let files = merged_list(&st, &id, dir, global_flag(&q)).await?;
    if files.is_empty() && !dir.is_empty() && !wf::ALLOWED_DIRS.contains(&dir) {
        let is_file = load(&st, &id, dir, false).await?.is_some();
        return Err(if is_file {
            text(StatusCode::BAD_REQUEST, "Path is not a directory")
        } else {
            text(StatusCode::NOT_FOUND, "Path not found")
        });
    }
    let base = if dir.is_empty() { 0 } else { dir.len() + 1 };
    let mut dirs = BTreeMap::new();
    let mut entries = Vec::new();
    for (path, (f, _)) in &files {
        let rel = path.get(base..).unwrap_or_default();
        let mut at = base;
        for seg in rel
            .split('/')
            .take(rel.split('/').count().saturating_sub(1))
        {
            at += seg.len();
            dirs.entry(path[..at].to_owned())
                .or_insert_with(|| seg.to_owned());
            at += 1;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        entries.push(json!({"name": name, "path": path, "type": "file",
                            "size": f.size, "modified": f.modified_secs()}));
    }
    let mut out: Vec<Value> = dirs
        .into_iter()
        .map(|(path, name)| json!({"name": name, "path": path, "type": "directory"}))
        .collect();
    out.extend(entries);
    out.sort_by_key(|v| {
        (
            v["type"] != "directory",
            v["name"].as_str().unwrap_or("").to_lowercase(),
        )
    });
    Ok(json_ok(&Value::Array(out)))
}

// ---- MSS-Login's forms (mss-login-api.md §8) ----

/// MSS-Login's name rules, relaxed to allow subfolders: `\` becomes `/`, `.json` is appended
/// when missing, and the result must be a valid path under `workflows/`.
fn mss_path(name: &str) -> Option<String> {
    let name = name.replace('\\', "/");
    let name = name.trim_start_matches('/');
    if name.is_empty() || name.contains("..") {
        return None;
    }
    let name = if name.to_ascii_lowercase().ends_with(".json") {
        name.to_owned()
    } else {
        format!("{name}.json")
    };
    let path = format!("{WORKFLOWS_DIR}/{name}");
    wf::file_path(&path).ok()?;
    Some(path)
}

/// MSS-Login's file-info object (`rel` relative to `workflows/`).
fn mss_info(f: &FileInfo, writable: bool) -> Value {
    let rel = f
        .path
        .strip_prefix("workflows/")
        .unwrap_or(&f.path)
        .to_owned();
    let (subfolder, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (d.to_owned(), n.to_owned()),
        None => (String::new(), rel.clone()),
    };
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let data = json!({
        "name": name, "filename": name, "file": rel, "id": rel, "path": rel,
        "subfolder": subfolder, "ext": ext, "extension": ext, "type": "file", "format": "json",
        "created": f.created_secs(), "modified": f.modified_secs(), "size": f.size,
        "writable": writable,
    });
    let mut m = data.as_object().cloned().unwrap_or_default();
    m.insert("data".into(), data);
    Value::Object(m)
}

async fn mss_list(st: &AppState, id: &Identity) -> Result<Response, ApiError> {
    let files = merged_list(st, id, WORKFLOWS_DIR, false).await?;
    let out: Vec<Value> = files
        .values()
        .map(|(f, global)| mss_info(f, !global || id.role.is_admin()))
        .collect();
    Ok(json_ok(&Value::Array(out)))
}

async fn mss_load(st: &AppState, id: &Identity, name: &str) -> Result<Response, ApiError> {
    let Some(path) = mss_path(name) else {
        return Err(ApiError::NotFoundEmpty);
    };
    match load(st, id, &path, false).await? {
        Some((bytes, _)) => Ok(file_response(&path, bytes)),
        None => Err(text(StatusCode::NOT_FOUND, "Workflow not found")),
    }
}

async fn mss_save(
    st: &AppState,
    id: &Identity,
    name: Option<String>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(id, Permission::CanModifyWorkflows)?;
    let space = write_space(id, q)?;
    let bytes = read_body(body, headers, body_limit(st)).await?;
    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(text(StatusCode::BAD_REQUEST, "Invalid JSON"));
    };
    let name = name
        .filter(|n| !n.is_empty())
        .or_else(|| query_get(q, "file").map(str::to_owned))
        .or_else(|| query_get(q, "name").map(str::to_owned))
        .or_else(|| doc.get("name").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "untitled.json".into());
    let Some(path) = mss_path(&name) else {
        return Err(text(StatusCode::BAD_REQUEST, "Invalid filename"));
    };
    let f = timed(
        st,
        st.store
            .workflow_put(space, &path, &bytes, true, &limits(st)),
    )
    .await?
    .map_err(common_error)?;
    Ok(json_ok(&mss_info(&f, true)))
}

async fn mss_delete(
    st: &AppState,
    id: &Identity,
    name: Option<String>,
    q: &Query,
) -> Result<Response, ApiError> {
    require(id, Permission::CanModifyWorkflows)?;
    let name = name
        .filter(|n| !n.is_empty())
        .or_else(|| query_get(q, "file").map(str::to_owned))
        .or_else(|| query_get(q, "name").map(str::to_owned))
        .unwrap_or_default();
    let Some(path) = mss_path(&name) else {
        return Err(text(StatusCode::BAD_REQUEST, "Invalid filename"));
    };
    let refused = || text(StatusCode::FORBIDDEN, "Cannot delete global workflows");
    match existing_space(st, id, &path, q, refused).await? {
        Some(space) if st.redis(st.store.workflow_delete(space, &path)).await? => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(text(StatusCode::NOT_FOUND, "Workflow not found")),
    }
}

/// `GET /userdata/workflows/` (the list) and `GET /userdata/workflows/{*name}` (a file).
pub(crate) async fn mss_get(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    name: Option<Path<String>>,
) -> Result<Response, ApiError> {
    match name.map(|Path(n)| n).filter(|n| !n.is_empty()) {
        Some(n) => mss_load(&st, &id, &n).await,
        None => mss_list(&st, &id).await,
    }
}

/// `POST /userdata/workflows/{*name}` (and without a name: `?file=`, `?name=`, a `name` field).
pub(crate) async fn mss_post(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    name: Option<Path<String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    mss_save(&st, &id, name.map(|Path(n)| n), &q, &headers, body).await
}

/// `DELETE /userdata/workflows/{*name}` (and without a name: `?file=`, `?name=`).
pub(crate) async fn mss_remove(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    name: Option<Path<String>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    mss_delete(&st, &id, name.map(|Path(n)| n), &q).await
}

/// `POST /userdata?dir=workflows&file=` (MSS-Login's save form).
pub(crate) async fn post_userdata_dir(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    if query_get(&q, "dir") != Some(WORKFLOWS_DIR) {
        return Err(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405: Method Not Allowed",
        ));
    }
    mss_save(&st, &id, None, &q, &headers, body).await
}

/// `DELETE /userdata?dir=workflows&file=` (MSS-Login's delete form).
pub(crate) async fn delete_userdata_dir(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    if query_get(&q, "dir") != Some(WORKFLOWS_DIR) {
        return Err(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405: Method Not Allowed",
        ));
    }
    mss_delete(&st, &id, None, &q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_names() {
        assert_eq!(mss_path("a").as_deref(), Some("workflows/a.json"));
        assert_eq!(mss_path("a.JSON").as_deref(), Some("workflows/a.JSON"));
        assert_eq!(
            mss_path("sub\\b.json").as_deref(),
            Some("workflows/sub/b.json")
        );
        assert_eq!(mss_path("../x"), None);
        assert_eq!(mss_path(""), None);
        assert_eq!(mss_path("a//b"), None);
    }

    #[test]
    fn double_escapes_are_undone() {
        assert_eq!(
            unescape_again("workflows%2Fa%20b.json".into()),
            "workflows/a b.json"
        );
        assert_eq!(unescape_again("plain".into()), "plain");
    }
}
