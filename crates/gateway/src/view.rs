//! `GET /view`: the caller's own files, with ComfyUI's parameters and path rules
//! (comfyui-api.md §1.7). Another user's path is simply not found.

use std::sync::Arc;

use auth::Identity;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use files::{FileKey, FileKind, FilesError};

use crate::body::{query_get, query_pairs};
use crate::error::ApiError;
use crate::state::AppState;

/// Where a `/view` request points, after ComfyUI's checks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ViewTarget {
    pub kind: FileKind,
    pub subfolder: String,
    pub filename: String,
}

/// Applies ComfyUI's rules in order: type, empty name (400), `/`-prefix or `..` (400), subfolder
/// escaping (403), basename. `Ok(None)` means "cannot exist" (404).
pub(crate) fn resolve(
    filename: Option<&str>,
    subfolder: Option<&str>,
    kind: Option<&str>,
) -> Result<Option<ViewTarget>, ApiError> {
    let Some(mut name) = filename else {
        return Ok(None);
    };
    let mut kind_s = kind.unwrap_or("output");
    // An annotation suffix " [output]" / " [input]" / " [temp]" picks the folder.
    for (suffix, k) in [
        (" [output]", "output"),
        (" [input]", "input"),
        (" [temp]", "temp"),
    ] {
        if let Some(stripped) = name.strip_suffix(suffix) {
            name = stripped;
            kind_s = k;
            break;
        }
    }
    let Some(kind) = FileKind::parse(kind_s) else {
        return Err(ApiError::BadRequest(
            "invalid_type",
            "type must be output, input or temp".into(),
        ));
    };
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "invalid_filename",
            "filename is empty".into(),
        ));
    }
    if name.starts_with('/') || name.contains("..") {
        return Err(ApiError::BadRequest(
            "invalid_filename",
            "filename must not be absolute or contain '..'".into(),
        ));
    }
    // Join the subfolder to the base and refuse anything that leaves it.
    let sub = subfolder.unwrap_or("");
    if sub.starts_with('/') {
        return Err(ApiError::ForbiddenOther(
            "forbidden_path",
            "subfolder leaves the folder".into(),
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in sub.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ApiError::ForbiddenOther(
                        "forbidden_path",
                        "subfolder leaves the folder".into(),
                    ));
                }
            }
            s => parts.push(s),
        }
    }
    let base = name.rsplit('/').next().unwrap_or("");
    if base.is_empty() {
        return Ok(None);
    }
    Ok(Some(ViewTarget {
        kind,
        subfolder: parts.join("/"),
        filename: base.to_owned(),
    }))
}

/// Types a browser would execute: served as downloads (ComfyUI since 2026-07-02).
fn is_active_content(mime: &str) -> bool {
    let m = mime.split(';').next().unwrap_or("").trim();
    m == "text/html"
        || m == "application/xhtml+xml"
        || m == "text/javascript"
        || m == "application/javascript"
        || m == "text/css"
        || m.ends_with("/xml")
        || m.ends_with("+xml")
        || m == "message/rfc822"
        || m == "multipart/related"
}

/// A header-safe rendering of a file name for `Content-Disposition`.
fn disposition_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `GET /view`.
pub(crate) async fn view(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let Some(target) = resolve(
        query_get(&pairs, "filename"),
        query_get(&pairs, "subfolder"),
        query_get(&pairs, "type"),
    )?
    else {
        return Err(ApiError::NotFoundEmpty);
    };
    let Ok(key) = FileKey::new(
        &id.user_id,
        target.kind,
        &target.subfolder,
        &target.filename,
    ) else {
        return Err(ApiError::NotFoundEmpty);
    };
    let file = match st.files.open(&key).await {
        Ok(f) => f,
        Err(FilesError::NotFound | FilesError::InvalidPath(_)) => {
            return Err(ApiError::NotFoundEmpty)
        }
        Err(e) => return Err(e.into()),
    };
    let mime = mime_guess::from_path(&target.filename)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let active = is_active_content(mime);
    let name = disposition_name(&target.filename);
    let mut resp = Response::new(Body::from_stream(file.stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if active {
            "application/octet-stream"
        } else {
            mime
        }),
    );
    let disp = if active {
        format!("attachment; filename=\"{name}\"")
    } else {
        format!("filename=\"{name}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if active {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let secs = (file.last_modified_ms / 1000).max(0) as u64;
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<Option<ViewTarget>, ApiError>) -> u16 {
        match r {
            Ok(Some(_)) => 200,
            Ok(None) => 404,
            Err(ApiError::BadRequest(..)) => 400,
            Err(ApiError::ForbiddenOther(..)) => 403,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn comfyui_path_rules_in_order() {
        assert_eq!(status(resolve(None, None, None)), 404);
        assert_eq!(status(resolve(Some(""), None, None)), 400);
        assert_eq!(status(resolve(Some("a.png"), None, Some("bogus"))), 400);
        assert_eq!(status(resolve(Some("/etc/passwd"), None, None)), 400);
        assert_eq!(status(resolve(Some("a..b.png"), None, None)), 400);
        assert_eq!(status(resolve(Some("a.png"), Some("../x"), None)), 403);
        assert_eq!(status(resolve(Some("a.png"), Some("/abs"), None)), 403);
        assert_eq!(status(resolve(Some("a.png"), Some("x/../y"), None)), 200);
        let t = resolve(Some("dir/a.png"), Some("p1//sub/"), Some("temp"))
            .unwrap()
            .unwrap();
        assert_eq!(
            t,
            ViewTarget {
                kind: FileKind::Temp,
                subfolder: "p1/sub".into(),
                filename: "a.png".into()
            }
        );
        let t = resolve(Some("a.png [input]"), None, None).unwrap().unwrap();
        assert_eq!(t.kind, FileKind::Input);
    }
}
