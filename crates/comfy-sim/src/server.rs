//! The HTTP routes of a ComfyUI node (each also under `/api`), plus `/sim/*` for fault injection.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use protocol::validate::{self, FileCheck, FileRef, PromptError, ValidateOptions};
use serde_json::{json, Map, Value};

use crate::faults::Faults;
use crate::state::{QueueItem, Shared};
use crate::{nodes, pyjson};

type S = State<Arc<Shared>>;

/// aiohttp's `json_response`: Python-formatted JSON, `application/json; charset=utf-8`.
pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = pyjson::to_string(v);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn ok_json(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// 200 with an empty body (and no content type), as aiohttp's `web.Response(status=200)`.
fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// An unhandled exception inside an aiohttp handler.
fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

fn comfy_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ws", get(crate::ws::handler))
        .route("/prompt", post(post_prompt).get(get_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_item))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image))
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_class))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/embeddings", get(embeddings))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_folder))
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let comfy = comfy_routes();
    let sim = Router::new()
        .route("/sim/faults", get(get_faults).post(post_faults))
        .route("/sim/drop_ws", post(sim_drop_ws))
        .route("/sim/crash", post(sim_crash));
    // The jobs API exists only under /api (and, as in ComfyUI, /api/api).
    let jobs = Router::new()
        .route("/jobs", get(crate::jobs::list))
        .route("/jobs/cancel", post(crate::jobs::cancel_many))
        .route("/jobs/{job_id}", get(crate::jobs::get))
        .route("/jobs/{job_id}/cancel", post(crate::jobs::cancel));
    let hung = Router::new()
        .merge(comfy.clone())
        .nest("/api", comfy.merge(jobs.clone()))
        .nest("/api/api", jobs)
        .layer(middleware::from_fn_with_state(shared.clone(), hang_layer));
    Router::new()
        .merge(hung)
        .merge(sim)
        .layer(axum::extract::DefaultBodyLimit::max(
            shared.config.max_upload_size as usize,
        ))
        .with_state(shared)
}

/// `hang_http`: accept the request, never answer (until the fault clears).
async fn hang_layer(State(shared): S, req: Request, next: Next) -> Response {
    if shared.lock().faults.hang_http {
        shared.wait_while(|f| f.hang_http).await;
        if shared.kill.is_cancelled() || shared.shutdown.is_cancelled() {
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    next.run(req).await
}

// ---- POST /prompt ----------------------------------------------------------------------------

async fn post_prompt(State(shared): S, body: Bytes) -> Response {
    // A fault answering 5xx without touching the queue.
    {
        let mut inner = shared.lock();
        if let Some(code) = inner.faults.prompt_status {
            match inner.faults.prompt_status_count {
                Some(0) => {
                    inner.faults.prompt_status = None;
                    inner.faults.prompt_status_count = None;
                }
                other => {
                    if let Some(n) = other {
                        inner.faults.prompt_status_count = Some(n - 1);
                    }
                    let status =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    drop(inner);
                    let mut r = internal_error();
                    *r.status_mut() = status;
                    return r;
                }
            }
        }
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        // json.loads failing (or a non-object body, whose `"number" in` check raises).
        return internal_error();
    };
    // The counter advances before anything is validated.
    let number: Value = match body.get("number") {
        Some(n) => match py_float(n) {
            Some(f) => json!(f),
            None => return internal_error(),
        },
        None => {
            let mut inner = shared.lock();
            let mut n = inner.number;
            if body.get("front").is_some_and(protocol::pyrepr::truthy) {
                n = -n;
            }
            inner.number += 1;
            json!(n)
        }
    };
    let Some(prompt) = body.get("prompt") else {
        return error_response(&PromptError::no_prompt());
    };
    let prompt_id = match body.get("prompt_id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if protocol::ids::is_canonical_uuid(s) => s.clone(),
        Some(_) => return error_response(&PromptError::invalid_prompt_id()),
    };
    let Value::Object(prompt) = prompt else {
        return internal_error();
    };
    let targets = match body.get("partial_execution_targets") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        Some(_) => return internal_error(),
    };
    let files = {
        let s = shared.clone();
        FileCheck::Custom(Arc::new(move |f: &FileRef<'_>| {
            nodes::annotated_path(f.filename, &s.input_dir, &s.output_dir, &s.temp_dir)
                .is_some_and(|p| p.exists())
        }))
    };
    let opts = ValidateOptions {
        partial_execution_targets: targets,
        files,
    };
    let validated = match validate::validate(prompt, &shared.config.catalog, &opts) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!("invalid prompt: {e}");
            return error_response(&e);
        }
    };
    let mut extra_data = match body.get("extra_data") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return internal_error(),
    };
    if let Some(c) = body.get("client_id") {
        extra_data.insert("client_id".into(), c.clone());
    }
    let item = QueueItem {
        number: number.clone(),
        prompt_id: prompt_id.clone(),
        prompt: Arc::new(validated.prompt),
        extra_data,
        outputs: validated.outputs_to_execute,
    };
    {
        let mut inner = shared.lock();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        inner.create_times.insert(prompt_id.clone(), now);
        inner.queue.push(item);
        inner.queue_updated();
    }
    shared.wake.notify_one();
    ok_json(
        &json!({"prompt_id": prompt_id, "number": number, "node_errors": validated.node_errors.to_json()}),
    )
}

fn error_response(e: &PromptError) -> Response {
    json_response(StatusCode::BAD_REQUEST, &e.to_json())
}

/// Python's `float(x)` for a JSON value.
fn py_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(*b as u8 as f64),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

async fn get_prompt(State(shared): S) -> Response {
    let info = shared.lock().queue_info();
    ok_json(&info)
}

// ---- queue, interrupt, free, history ---------------------------------------------------------

async fn get_queue(State(shared): S) -> Response {
    let inner = shared.lock();
    let running: Vec<Value> = inner.running.iter().map(QueueItem::to_json).collect();
    let pending: Vec<Value> = inner.queue.0.iter().map(QueueItem::to_json).collect();
    ok_json(&json!({"queue_running": running, "queue_pending": pending}))
}

async fn post_queue(State(shared): S, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return internal_error();
    };
    let mut inner = shared.lock();
    if body.get("clear").is_some_and(protocol::pyrepr::truthy) {
        inner.queue.0.clear();
        inner.queue_updated();
    }
    if let Some(del) = body.get("delete") {
        let Value::Array(ids) = del else {
            return internal_error();
        };
        for id in ids {
            let Some(pos) = inner
                .queue
                .0
                .iter()
                .position(|it| Value::String(it.prompt_id.clone()) == *id)
            else {
                continue;
            };
            if inner.queue.0.len() == 1 {
                // wipe_queue broadcasts too: two identical status messages.
                inner.queue.0.clear();
                inner.queue_updated();
            } else {
                inner.queue.0.remove(pos);
                inner.queue.heapify();
            }
            inner.queue_updated();
        }
    }
    empty(StatusCode::OK)
}

async fn post_interrupt(State(shared): S, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
    let Value::Object(json) = json else {
        return internal_error();
    };
    match json
        .get("prompt_id")
        .filter(|p| protocol::pyrepr::truthy(p))
    {
        Some(pid) => {
            let running = shared
                .lock()
                .running
                .as_ref()
                .is_some_and(|r| Value::String(r.prompt_id.clone()) == *pid);
            if running {
                shared
                    .interrupt
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            } else {
                tracing::debug!("prompt {pid} is not running; interrupt ignored");
            }
        }
        None => shared
            .interrupt
            .store(true, std::sync::atomic::Ordering::SeqCst),
    }
    empty(StatusCode::OK)
}

async fn post_free(State(shared): S, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return internal_error();
    };
    if body
        .get("free_memory")
        .is_some_and(protocol::pyrepr::truthy)
    {
        shared.lock().free_memory = true;
        shared.wake.notify_one();
    }
    empty(StatusCode::OK)
}

async fn get_history(State(shared): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let parse = |k: &str| -> Result<Option<i64>, ()> {
        match q.get(k) {
            None => Ok(None),
            Some(s) => s.trim().parse::<i64>().map(Some).map_err(|_| ()),
        }
    };
    let (Ok(max_items), Ok(offset)) = (parse("max_items"), parse("offset")) else {
        return internal_error();
    };
    let inner = shared.lock();
    let len = inner.history.len() as i64;
    let mut offset = offset.unwrap_or(-1);
    if offset < 0 {
        if let Some(m) = max_items {
            offset = len - m;
        }
    }
    let mut out = Map::new();
    for (i, (k, v)) in inner.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(k.clone(), v.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    ok_json(&Value::Object(out))
}

async fn get_history_item(State(shared): S, UrlPath(prompt_id): UrlPath<String>) -> Response {
    let inner = shared.lock();
    match inner.history.get(&prompt_id) {
        Some(e) => ok_json(&json!({ prompt_id: e })),
        None => ok_json(&json!({})),
    }
}

async fn post_history(State(shared): S, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return internal_error();
    };
    let mut inner = shared.lock();
    if body.get("clear").is_some_and(protocol::pyrepr::truthy) {
        inner.history.clear();
    }
    if let Some(Value::Array(ids)) = body.get("delete") {
        for id in ids.iter().filter_map(Value::as_str) {
            inner.history.shift_remove(id);
        }
    }
    empty(StatusCode::OK)
}

// ---- files -----------------------------------------------------------------------------------

fn dir_by_type(shared: &Shared, t: &str) -> Option<PathBuf> {
    match t {
        "output" => Some(shared.output_dir.clone()),
        "input" => Some(shared.input_dir.clone()),
        "temp" => Some(shared.temp_dir.clone()),
        _ => None,
    }
}

/// `os.path.join(base, sub)` resolved lexically; None when it leaves `base` (ComfyUI's 403).
fn confined(base: &Path, sub: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    if sub.starts_with('/') {
        return None;
    }
    for c in Path::new(sub).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || !out.starts_with(base) {
                    return None;
                }
            }
            _ => return None,
        }
    }
    out.starts_with(base).then_some(out)
}

async fn view(State(shared): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(filename) = q.get("filename") else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (name, annotated_dir) = if let Some(n) = filename.strip_suffix("[output]") {
        (&n[..n.len().saturating_sub(1)], Some("output"))
    } else if let Some(n) = filename.strip_suffix("[input]") {
        (&n[..n.len().saturating_sub(1)], Some("input"))
    } else if let Some(n) = filename.strip_suffix("[temp]") {
        (&n[..n.len().saturating_sub(1)], Some("temp"))
    } else {
        (filename.as_str(), None)
    };
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let t = annotated_dir.unwrap_or_else(|| q.get("type").map(String::as_str).unwrap_or("output"));
    let Some(mut dir) = dir_by_type(&shared, t) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if let Some(sub) = q.get("subfolder") {
        match confined(&dir, sub) {
            Some(d) => dir = d,
            None => return empty(StatusCode::FORBIDDEN),
        }
    }
    let base = name.rsplit('/').next().unwrap_or(name).to_string();
    let path = dir.join(&base);
    if !path.is_file() {
        return empty(StatusCode::NOT_FOUND);
    }
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return empty(StatusCode::NOT_FOUND);
    };
    let disposition = format!("filename=\"{base}\"");
    let channel = q.get("channel").map(String::as_str);
    if let Some(preview) = q.get("preview") {
        let mut parts = preview.split(';');
        let mut fmt = parts.next().unwrap_or("webp").to_string();
        if !(fmt == "webp" || fmt == "jpeg") || channel.is_some_and(|c| c.contains('a')) {
            fmt = "webp".into();
        }
        let quality = preview
            .rsplit(';')
            .next()
            .and_then(|q| q.parse::<u8>().ok())
            .unwrap_or(90);
        if let Ok(img) = image::load_from_memory(&bytes) {
            let mut out = std::io::Cursor::new(Vec::new());
            let res = if fmt == "jpeg" {
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut out,
                    quality.clamp(1, 100),
                );
                img.to_rgb8().write_with_encoder(enc)
            } else {
                img.write_to(&mut out, image::ImageFormat::WebP)
            };
            if res.is_ok() {
                return file_response(out.into_inner(), &format!("image/{fmt}"), &disposition);
            }
        }
        return internal_error();
    }
    match channel.unwrap_or("rgba") {
        "rgb" => match image::load_from_memory(&bytes) {
            Ok(img) => png_response(image::DynamicImage::ImageRgb8(img.to_rgb8()), &disposition),
            Err(_) => internal_error(),
        },
        "a" => match image::load_from_memory(&bytes) {
            Ok(img) => {
                let rgba = img.to_rgba8();
                let alpha = image::RgbaImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                    let a = if img.color().has_alpha() {
                        rgba.get_pixel(x, y)[3]
                    } else {
                        255
                    };
                    image::Rgba([0, 0, 0, a])
                });
                png_response(image::DynamicImage::ImageRgba8(alpha), &disposition)
            }
            Err(_) => internal_error(),
        },
        _ => {
            let mut ct = mime_guess::from_path(&base)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string();
            if matches!(
                ct.as_str(),
                "text/html"
                    | "text/html-sandboxed"
                    | "application/xhtml+xml"
                    | "text/javascript"
                    | "text/css"
            ) {
                ct = "application/octet-stream".into();
            }
            file_response(bytes, &ct, &disposition)
        }
    }
}

fn png_response(img: image::DynamicImage, disposition: &str) -> Response {
    let mut out = std::io::Cursor::new(Vec::new());
    match img.write_to(&mut out, image::ImageFormat::Png) {
        Ok(()) => file_response(out.into_inner(), "image/png", disposition),
        Err(_) => internal_error(),
    }
}

fn file_response(bytes: Vec<u8>, content_type: &str, disposition: &str) -> Response {
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn upload_image(State(shared): S, mut mp: Multipart) -> Response {
    let mut image: Option<(String, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "image" {
            let filename = field.file_name().unwrap_or("").to_string();
            match field.bytes().await {
                Ok(b) => image = Some((filename, b)),
                Err(_) => return empty(StatusCode::BAD_REQUEST),
            }
        } else {
            match field.text().await {
                Ok(t) => {
                    fields.insert(name, t);
                }
                Err(_) => return empty(StatusCode::BAD_REQUEST),
            }
        }
    }
    let Some((filename, data)) = image else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if filename.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let t = fields.get("type").map(String::as_str).unwrap_or("input");
    let Some(dir) = dir_by_type(&shared, t) else {
        return internal_error();
    };
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    let Some(folder) = confined(&dir, &subfolder) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Some(mut path) = confined(&folder, &filename) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if tokio::fs::create_dir_all(&folder).await.is_err() {
        return internal_error();
    }
    let overwrite = fields
        .get("overwrite")
        .is_some_and(|o| o == "true" || o == "1");
    let mut final_name = filename.clone();
    let mut duplicate = false;
    if !overwrite {
        let (stem, ext) = match filename.rfind('.') {
            Some(i) if i > 0 => (&filename[..i], &filename[i..]),
            _ => (filename.as_str(), ""),
        };
        let mut i = 1;
        while path.exists() {
            if tokio::fs::read(&path)
                .await
                .is_ok_and(|existing| existing == data.as_ref())
            {
                duplicate = true;
                break;
            }
            final_name = format!("{stem} ({i}){ext}");
            path = folder.join(&final_name);
            i += 1;
        }
    }
    if !duplicate {
        if let Some(parent) = path.parent() {
            let _ = tokio::fs::create_dir_all(parent).await;
        }
        if tokio::fs::write(&path, &data).await.is_err() {
            return internal_error();
        }
    }
    ok_json(&json!({"name": final_name, "subfolder": subfolder, "type": t}))
}

// ---- catalogue and system --------------------------------------------------------------------

/// The catalogue with LoadImage's file list replaced by the input folder's images, as ComfyUI
/// lists its input directory on every `/object_info`.
fn patched_class(shared: &Shared, class: &str, v: &Value) -> Value {
    if !matches!(class, "LoadImage" | "LoadImageMask") {
        return v.clone();
    }
    let mut v = v.clone();
    let files = input_images(&shared.input_dir);
    if let Some(spec) = v.pointer_mut("/input/required/image/0") {
        *spec = json!(files);
    }
    v
}

fn input_images(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| {
                    mime_guess::from_path(n)
                        .first_raw()
                        .is_some_and(|m| m.starts_with("image/"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

async fn object_info(State(shared): S) -> Response {
    let mut all = shared.object_info.clone();
    if let Value::Object(m) = &mut all {
        for c in ["LoadImage", "LoadImageMask"] {
            if let Some(v) = m.get(c).cloned() {
                m.insert(c.into(), patched_class(&shared, c, &v));
            }
        }
    }
    ok_json(&all)
}

async fn object_info_class(State(shared): S, UrlPath(class): UrlPath<String>) -> Response {
    match shared.object_info.get(&class) {
        Some(v) => ok_json(&json!({ class.clone(): patched_class(&shared, &class, v) })),
        None => ok_json(&json!({})),
    }
}

async fn system_stats(State(shared): S) -> Response {
    let ram: u64 = 25_276_071_936;
    let free: u64 = 23_595_515_904;
    let v = &shared.config.comfyui_version;
    let cpu = shared.config.device_name == "cpu";
    ok_json(&json!({
        "system": {
            "os": "posix",
            "ram_total": ram,
            "ram_free": free,
            "comfyui_version": v,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
            "pytorch_version": "comfy-sim",
            "embedded_python": false,
            "argv": ["main.py", "--comfy-sim"]
        },
        "devices": [{
            "name": shared.config.device_name,
            "type": if cpu { "cpu" } else { "cuda" },
            "index": if cpu { Value::Null } else { json!(0) },
            "vram_total": shared.config.vram_total,
            "vram_free": shared.config.vram_total,
            "torch_vram_total": shared.config.vram_total,
            "torch_vram_free": shared.config.vram_total
        }]
    }))
}

async fn features(State(shared): S) -> Response {
    ok_json(&shared.features())
}

async fn embeddings(State(shared): S) -> Response {
    let names: Vec<String> = shared
        .config
        .models
        .get("embeddings")
        .map(|files| {
            files
                .iter()
                .map(|f| match f.rfind('.') {
                    Some(i) if i > 0 => f[..i].to_string(),
                    _ => f.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    ok_json(&json!(names))
}

async fn models(State(shared): S) -> Response {
    // ComfyUI's registration order first, then any other configured folder.
    let known = crate::MODEL_FOLDERS;
    let m = &shared.config.models;
    let mut names: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| m.contains_key(*k))
        .collect();
    names.extend(m.keys().map(String::as_str).filter(|k| !known.contains(k)));
    ok_json(&json!(names))
}

async fn models_folder(State(shared): S, UrlPath(folder): UrlPath<String>) -> Response {
    match shared.config.models.get(&folder) {
        Some(files) => ok_json(&json!(files)),
        None => empty(StatusCode::NOT_FOUND),
    }
}

// ---- /sim ------------------------------------------------------------------------------------

async fn get_faults(State(shared): S) -> Response {
    ok_json(&serde_json::to_value(shared.faults()).unwrap_or_else(|_| json!({})))
}

async fn post_faults(State(shared): S, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            shared.set_faults(f);
            get_faults(State(shared)).await
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"type": "invalid_faults", "message": e.to_string(), "details": "", "extra_info": {}}, "node_errors": {}}),
        ),
    }
}

async fn sim_drop_ws(State(shared): S) -> Response {
    shared.drop_websockets();
    empty(StatusCode::OK)
}

async fn sim_crash(State(shared): S) -> Response {
    // Answer first, then die (a crash right away would cut this very response).
    let s = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        s.crash();
    });
    empty(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let base = Path::new("/o");
        assert_eq!(confined(base, ""), Some(PathBuf::from("/o")));
        assert_eq!(confined(base, "a/b"), Some(PathBuf::from("/o/a/b")));
        assert_eq!(confined(base, "a/../b"), Some(PathBuf::from("/o/b")));
        assert_eq!(confined(base, "../x"), None);
        assert_eq!(confined(base, "/etc"), None);
    }
}
