//! `POST /upload/image` and `/upload/mask` (comfyui-api.md §1.8): files go into the caller's
//! own space in the file store, checked by content against `files.upload_types`; the worker
//! ships them to whichever backend runs a job that names them. Also the look-up that lets graph
//! validation accept file inputs naming the caller's uploads.

use std::collections::HashSet;
use std::sync::Arc;

use auth::{Identity, Permission};
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use files::{FileKey, FileKind, FilesError};
use protocol::catalog::Catalog;
use serde_json::{json, Map, Value};

use crate::auth::require;
use crate::error::{json_response, ApiError};
use crate::state::AppState;

/// Candidate names tried before giving up on finding a free `name (n).ext`.
const MAX_RENAMES: u32 = 10_000;

/// The fields of an upload form.
#[derive(Default)]
struct Form {
    image: Option<(String, Bytes)>,
    kind: Option<String>,
    subfolder: String,
    overwrite: bool,
    original_ref: Option<String>,
}

fn bad(kind: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(kind, msg.into())
}

fn multipart_error(e: MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit)
    } else {
        bad("invalid_multipart", e.body_text())
    }
}

async fn read_form(
    st: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Form, ApiError> {
    let limit = st.config.max_request_bytes;
    let mut mp = multipart.map_err(|e| bad("invalid_multipart", e.body_text()))?;
    let mut form = Form::default();
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "image" => {
                let filename = field.file_name().unwrap_or("").to_owned();
                let data = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                form.image = Some((filename, data));
            }
            "type" | "subfolder" | "overwrite" | "original_ref" => {
                let v = field.text().await.map_err(|e| multipart_error(e, limit))?;
                match name.as_str() {
                    "type" => form.kind = Some(v),
                    "subfolder" => form.subfolder = v,
                    "overwrite" => form.overwrite = v == "true" || v == "1",
                    _ => form.original_ref = Some(v),
                }
            }
            // Unknown fields are drained and ignored, as aiohttp's form reading does.
            _ => {
                let _ = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            }
        }
    }
    Ok(form)
}

/// ComfyUI's `os.path.normpath` of a subfolder, refusing anything that leaves the folder.
fn normalise_subfolder(sub: &str) -> Result<String, ApiError> {
    if sub.starts_with('/') || sub.contains('\\') || sub.contains('\0') {
        return Err(bad(
            "invalid_subfolder",
            "subfolder leaves the upload folder",
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in sub.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(bad(
                        "invalid_subfolder",
                        "subfolder leaves the upload folder",
                    ));
                }
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// `name (n).ext` as ComfyUI builds it (`os.path.splitext`).
fn renamed(filename: &str, n: u32) -> String {
    match filename.rfind('.') {
        Some(i) if i > 0 => format!("{} ({n}){}", &filename[..i], &filename[i..]),
        _ => format!("{filename} ({n})"),
    }
}

/// Stores `data` under `filename` in the caller's `kind`/`subfolder`, renaming as ComfyUI does
/// when `overwrite` is false (identical content reuses the existing file); the final name.
async fn store_named(
    st: &AppState,
    user: &str,
    kind: FileKind,
    subfolder: &str,
    filename: &str,
    overwrite: bool,
    data: Bytes,
) -> Result<String, ApiError> {
    let mut name = filename.to_owned();
    let mut n = 0;
    loop {
        let key = FileKey::new(user, kind, subfolder, &name)
            .map_err(|e| bad("invalid_filename", e.to_string()))?;
        if overwrite {
            st.files.put(&key, data).await?;
            return Ok(name);
        }
        match st.files.head(&key).await {
            Err(FilesError::NotFound) => {
                st.files.put(&key, data).await?;
                return Ok(name);
            }
            Ok(meta) if meta.size == data.len() as u64 => {
                if st.files.read(&key).await? == data {
                    return Ok(name);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        n += 1;
        if n > MAX_RENAMES {
            return Err(bad("too_many_duplicates", "no free name for this upload"));
        }
        name = renamed(filename, n);
    }
}

/// Checks and normalises the common fields; `(kind, normalised subfolder, filename, data)`.
fn checked(st: &AppState, form: &mut Form) -> Result<(FileKind, String, String, Bytes), ApiError> {
    let Some((filename, data)) = form.image.take() else {
        return Err(bad(
            "missing_image",
            "the multipart field 'image' is required",
        ));
    };
    if filename.is_empty() {
        return Err(bad("invalid_filename", "the uploaded file has no name"));
    }
    if filename.contains('/') || filename.contains('\\') || filename.contains("..") {
        return Err(bad(
            "invalid_filename",
            "the file name must be a plain name",
        ));
    }
    let kind = match form.kind.as_deref().filter(|k| !k.is_empty()) {
        None => FileKind::Input,
        Some(k) => FileKind::parse(k)
            .ok_or_else(|| bad("invalid_type", "type must be input, temp or output"))?,
    };
    let sub = normalise_subfolder(&form.subfolder)?;
    let sniffed = files::sniff(&data);
    let allowed = sniffed.is_some_and(|m| st.files.config().upload_types.iter().any(|t| t == m));
    if !allowed {
        return Err(bad(
            "unsupported_file_type",
            format!(
                "the file's content is {}, not an accepted image, video or audio type",
                sniffed.unwrap_or("not recognised")
            ),
        ));
    }
    Ok((kind, sub, filename, data))
}

fn answer(name: &str, subfolder: &str, kind: FileKind) -> Response {
    json_response(
        StatusCode::OK,
        json!({"name": name, "subfolder": subfolder, "type": kind.as_str()}).to_string(),
    )
}

/// `POST /upload/image`.
pub(crate) async fn upload_image(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    require(&id, Permission::CanUpload)?;
    let mut form = read_form(&st, multipart).await?;
    let (kind, sub, filename, data) = checked(&st, &mut form)?;
    let name = store_named(
        &st,
        &id.user_id,
        kind,
        &sub,
        &filename,
        form.overwrite,
        data,
    )
    .await?;
    tracing::debug!(user = %id.user_id, kind = kind.as_str(), "upload stored");
    Ok(answer(&name, &form.subfolder, kind))
}

/// `POST /upload/mask`: the mask's alpha is copied into the `original_ref` image (one of the
/// caller's files), saved as PNG under the upload's own name.
pub(crate) async fn upload_mask(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    require(&id, Permission::CanUpload)?;
    let mut form = read_form(&st, multipart).await?;
    let Some(original_ref) = form.original_ref.take() else {
        return Err(bad("missing_original_ref", "original_ref is required"));
    };
    let (kind, sub, filename, mask) = checked(&st, &mut form)?;
    let reference: Map<String, Value> = match serde_json::from_str(&original_ref) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(bad(
                "invalid_original_ref",
                "original_ref must be a JSON object",
            ))
        }
    };
    let text = |k: &str| reference.get(k).and_then(Value::as_str).unwrap_or("");
    let ref_kind = match text("type") {
        "" => Some(FileKind::Output),
        k => FileKind::parse(k),
    };
    // As in ComfyUI, a reference that cannot be read writes nothing and still answers 200.
    let original = match ref_kind
        .and_then(|k| FileKey::new(&id.user_id, k, text("subfolder"), text("filename")).ok())
    {
        Some(key) => match st.files.read(&key).await {
            Ok(b) => Some(b),
            Err(FilesError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let Some(original) = original else {
        return Ok(answer(&filename, &form.subfolder, kind));
    };
    let composite = tokio::task::spawn_blocking(move || apply_mask(&original, &mask))
        .await
        .map_err(|_| bad("invalid_image", "could not combine the mask"))?
        .map_err(|e| bad("invalid_image", e))?;
    let name = store_named(
        &st,
        &id.user_id,
        kind,
        &sub,
        &filename,
        form.overwrite,
        composite,
    )
    .await?;
    Ok(answer(&name, &form.subfolder, kind))
}

/// The original image with the mask's alpha (PIL's `putalpha`), as PNG.
fn apply_mask(original: &[u8], mask: &[u8]) -> Result<Bytes, String> {
    let orig = image::load_from_memory(original).map_err(|e| format!("original: {e}"))?;
    let mask = image::load_from_memory(mask).map_err(|e| format!("mask: {e}"))?;
    let mut out = orig.to_rgba8();
    let mask = mask.to_rgba8();
    if out.dimensions() != mask.dimensions() {
        return Err("the mask and the original image differ in size".into());
    }
    for (o, m) in out.pixels_mut().zip(mask.pixels()) {
        o.0[3] = m.0[3];
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(out)
        .write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(Bytes::from(buf.into_inner()))
}

/// The values of the graph's upload inputs (LoadImage's `image` ...) that name one of the
/// caller's files: an upload, or with `" [output]"` / `" [temp]"` an earlier output. Graphs
/// without such inputs cost nothing; the others one store look-up per distinct value.
pub(crate) async fn callers_files(
    st: &AppState,
    user_id: &str,
    prompt: &Map<String, Value>,
    catalog: &Catalog,
) -> Result<HashSet<String>, ApiError> {
    let mut values: HashSet<&str> = HashSet::new();
    for node in prompt.values() {
        let Some(class) = node
            .get("class_type")
            .and_then(Value::as_str)
            .and_then(|c| catalog.class(c))
        else {
            continue;
        };
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for def in class.inputs.iter().filter(|d| d.upload.is_some()) {
            if let Some(v) = inputs.get(&def.name).and_then(Value::as_str) {
                values.insert(v);
            }
        }
    }
    let checks = values.into_iter().map(|v| async move {
        let (kind, _, sub, name) = files::parse_file_value(v);
        let Some(key) =
            FileKind::parse(kind).and_then(|k| FileKey::new(user_id, k, &sub, &name).ok())
        else {
            return Ok(None);
        };
        match st.files.head(&key).await {
            Ok(m) if !st.files.is_expired(key.kind(), m.last_modified_ms) => Ok(Some(v.to_owned())),
            Ok(_) | Err(FilesError::NotFound) => Ok(None),
            Err(e) => Err(ApiError::from(e)),
        }
    });
    let mut found = HashSet::new();
    for r in futures::future::join_all(checks).await {
        if let Some(v) = r? {
            found.insert(v);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_like_comfyui() {
        assert_eq!(renamed("cat.png", 1), "cat (1).png");
        assert_eq!(renamed("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(renamed("noext", 1), "noext (1)");
        assert_eq!(renamed(".hidden", 1), ".hidden (1)");
    }

    #[test]
    fn subfolders_are_normalised_and_confined() {
        assert_eq!(normalise_subfolder("a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(normalise_subfolder("a/../b").unwrap(), "b");
        assert!(normalise_subfolder("../x").is_err());
        assert!(normalise_subfolder("/abs").is_err());
        assert!(normalise_subfolder("a\\..\\..\\x").is_err());
    }
}
