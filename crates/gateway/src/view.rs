//! `GET /view`: the caller's own files (admins: anyone's outputs), with ComfyUI's parameters
//! and path rules (comfyui-api.md §1.7): `preview` re-encodes (JPEG with quality, lossless
//! WebP), `channel` extracts `rgb` or `a`, raw files stream with `Range` support. Another
//! user's path is simply not found; an NSFW-flagged file answers 403 to a `sfw_check` user.

use std::ops::Range;
use std::sync::Arc;

use auth::{Identity, Permission};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use files::{FileKey, FileKind, FileMeta, FilesError};

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

/// A located file: whose space it is in, its key and its size and age.
pub(crate) struct Located {
    pub owner: String,
    pub key: FileKey,
    pub meta: FileMeta,
}

/// Finds `target` in the caller's space; for a caller with `can_view_all`, also in the space
/// of whoever submitted the prompt id its subfolder starts with. Files past their TTL are gone.
pub(crate) async fn locate(
    st: &AppState,
    id: &Identity,
    target: &ViewTarget,
) -> Result<Option<Located>, ApiError> {
    let mut owners = vec![id.user_id.clone()];
    if id.can(Permission::CanViewAll) && target.kind != FileKind::Input {
        let first = target.subfolder.split('/').next().unwrap_or("");
        if protocol::ids::is_canonical_uuid(first) {
            for pool in &st.config.pools {
                for o in st.redis(st.store.owners_of(pool, first)).await? {
                    if !owners.contains(&o) {
                        owners.push(o);
                    }
                }
            }
        }
    }
    for owner in owners {
        let Ok(key) = FileKey::new(&owner, target.kind, &target.subfolder, &target.filename) else {
            return Ok(None);
        };
        match st.files.head(&key).await {
            Ok(meta) if !st.files.is_expired(target.kind, meta.last_modified_ms) => {
                return Ok(Some(Located { owner, key, meta }))
            }
            Ok(_) | Err(FilesError::NotFound | FilesError::InvalidPath(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// A `Range: bytes=...` header against a file of `size` bytes: `Ok(None)` serves the whole
/// file (no header, several ranges, or one we do not parse), `Err` is 416.
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<Range<u64>>, ApiError> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // The last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 {
            return Err(ApiError::RangeNotSatisfiable(size));
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => (e + 1).min(size),
                _ => return Ok(None),
            }
        };
        start..end
    };
    if range.start >= size || range.is_empty() {
        return Err(ApiError::RangeNotSatisfiable(size));
    }
    Ok(Some(range))
}

/// What `preview` and `channel` ask for (comfyui-api.md §1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transform {
    /// The raw file (`channel` absent or `rgba`, no `preview`).
    Raw,
    /// Re-encoded as `image/<format>` (`webp` is lossless: quality is ignored).
    Preview { jpeg: bool, quality: u8, rgb: bool },
    /// PNG without alpha.
    Rgb,
    /// PNG whose alpha is the source's alpha (opaque when it has none), colour black.
    Alpha,
}

pub(crate) fn transform_of(preview: Option<&str>, channel: Option<&str>) -> Transform {
    if let Some(p) = preview {
        // ComfyUI reads `channel` here without the `rgba` default.
        let channel = channel.unwrap_or("");
        let mut parts = p.split(';');
        let fmt = parts.next().unwrap_or("");
        let last = p.rsplit(';').next().unwrap_or("");
        let quality = if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
            last.parse::<u32>().unwrap_or(90).clamp(1, 100) as u8
        } else {
            90
        };
        // Anything but jpeg, or any channel with an `a` in it, is WebP.
        let jpeg = fmt == "jpeg" && !channel.contains('a');
        return Transform::Preview {
            jpeg,
            quality,
            rgb: jpeg || channel == "rgb",
        };
    }
    match channel.unwrap_or("rgba") {
        "rgb" => Transform::Rgb,
        "a" => Transform::Alpha,
        _ => Transform::Raw,
    }
}

/// Re-encodes an image as `t` asks; `(content type, bytes)`.
fn apply(t: &Transform, data: &[u8]) -> Result<(&'static str, Vec<u8>), String> {
    use image::{DynamicImage, ImageFormat, RgbaImage};
    let img = image::load_from_memory(data).map_err(|e| e.to_string())?;
    let mut out = std::io::Cursor::new(Vec::new());
    let ct = match t {
        Transform::Raw => return Err("nothing to do".into()),
        Transform::Preview {
            jpeg: true,
            quality,
            ..
        } => {
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, *quality);
            rgb.write_with_encoder(enc).map_err(|e| e.to_string())?;
            "image/jpeg"
        }
        Transform::Preview { rgb, .. } => {
            let img = if *rgb || !img.color().has_alpha() {
                DynamicImage::ImageRgb8(img.to_rgb8())
            } else {
                DynamicImage::ImageRgba8(img.to_rgba8())
            };
            img.write_to(&mut out, ImageFormat::WebP)
                .map_err(|e| e.to_string())?;
            "image/webp"
        }
        Transform::Rgb => {
            DynamicImage::ImageRgb8(img.to_rgb8())
                .write_to(&mut out, ImageFormat::Png)
                .map_err(|e| e.to_string())?;
            "image/png"
        }
        Transform::Alpha => {
            let has_alpha = img.color().has_alpha();
            let src = img.to_rgba8();
            let mut a = RgbaImage::new(src.width(), src.height());
            for (d, s) in a.pixels_mut().zip(src.pixels()) {
                d.0 = [0, 0, 0, if has_alpha { s.0[3] } else { 255 }];
            }
            DynamicImage::ImageRgba8(a)
                .write_to(&mut out, ImageFormat::Png)
                .map_err(|e| e.to_string())?;
            "image/png"
        }
    };
    Ok((ct, out.into_inner()))
}

fn set_common(h: &mut HeaderMap, name: &str, active: bool) {
    let name = disposition_name(name);
    let disp = if active {
        format!("attachment; filename=\"{name}\"")
    } else {
        format!("filename=\"{name}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// `GET /view`.
pub(crate) async fn view(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
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
    let Some(found) = locate(&st, &id, &target).await? else {
        return Err(ApiError::NotFoundEmpty);
    };
    if crate::nsfw::blocked(&st, &id, &found.owner, &found.key).await? {
        return Err(ApiError::NsfwBlocked);
    }
    let transform = transform_of(query_get(&pairs, "preview"), query_get(&pairs, "channel"));
    if transform != Transform::Raw {
        let data = match st.files.read(&found.key).await {
            Ok(d) => d,
            Err(FilesError::NotFound) => return Err(ApiError::NotFoundEmpty),
            Err(e) => return Err(e.into()),
        };
        let t = transform.clone();
        let (ct, bytes) = tokio::task::spawn_blocking(move || apply(&t, &data))
            .await
            .map_err(|_| ApiError::BadRequest("invalid_image", "could not decode".into()))?
            .map_err(|e| {
                ApiError::BadRequest("invalid_image", format!("not a decodable image: {e}"))
            })?;
        let mut resp = Response::new(Body::from(bytes));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        set_common(h, &target.filename, false);
        return Ok(resp);
    }

    let size = found.meta.size;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    )?;
    let file = match st.files.open_range(&found.key, range.clone()).await {
        Ok(f) => f,
        Err(FilesError::NotFound | FilesError::InvalidPath(_)) => {
            return Err(ApiError::NotFoundEmpty)
        }
        Err(FilesError::BadRange) => return Err(ApiError::RangeNotSatisfiable(size)),
        Err(e) => return Err(e.into()),
    };
    let mime = files::content_type(&target.filename);
    // SVG is only safe inline when the browser loads it as an image (ComfyUI's exception).
    let svg_as_image = mime == "image/svg+xml"
        && headers.get("sec-fetch-dest").and_then(|v| v.to_str().ok()) == Some("image");
    let active = is_active_content(mime) && !svg_as_image;
    let sent = file.range.end - file.range.start;
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
    set_common(h, &target.filename, active);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(sent));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if is_active_content(mime) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::VARY, HeaderValue::from_static("Sec-Fetch-Dest"));
    }
    let secs = (file.last_modified_ms / 1000).max(0) as u64;
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if range.is_some() {
        let cr = format!(
            "bytes {}-{}/{}",
            file.range.start,
            file.range.end.saturating_sub(1),
            size
        );
        if let Ok(v) = HeaderValue::from_str(&cr) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    } else {
        *resp.status_mut() = StatusCode::OK;
    }
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

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(r("bytes=0-9").unwrap(), Some(0..10));
        assert_eq!(r("bytes=90-").unwrap(), Some(90..100));
        assert_eq!(r("bytes=-5").unwrap(), Some(95..100));
        assert_eq!(r("bytes=95-200").unwrap(), Some(95..100));
        assert_eq!(r("bytes=0-1,5-6").unwrap(), None);
        assert!(matches!(
            r("bytes=100-"),
            Err(ApiError::RangeNotSatisfiable(100))
        ));
        assert_eq!(parse_range(None, 100).unwrap(), None);
    }

    #[test]
    fn preview_and_channel_follow_comfyui() {
        assert_eq!(transform_of(None, None), Transform::Raw);
        assert_eq!(transform_of(None, Some("rgba")), Transform::Raw);
        assert_eq!(transform_of(None, Some("rgb")), Transform::Rgb);
        assert_eq!(transform_of(None, Some("a")), Transform::Alpha);
        assert_eq!(
            transform_of(Some("jpeg;80"), None),
            Transform::Preview {
                jpeg: true,
                quality: 80,
                rgb: true
            }
        );
        assert_eq!(
            transform_of(Some("jpeg;80"), Some("rgba")),
            Transform::Preview {
                jpeg: false,
                quality: 80,
                rgb: false
            },
            "a channel with an 'a' forces WebP"
        );
        assert_eq!(
            transform_of(Some("jpeg;80"), Some("rgb")),
            Transform::Preview {
                jpeg: true,
                quality: 80,
                rgb: true
            }
        );
        assert_eq!(
            transform_of(Some("png"), Some("rgb")),
            Transform::Preview {
                jpeg: false,
                quality: 90,
                rgb: true
            }
        );
    }
}
