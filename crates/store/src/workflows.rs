//! Workflows: ComfyUI's userdata files (comfyui-api.md §1.11), per user and global, shared by
//! every gateway.
//!
//! A *space* is one user's files ([`Space::User`]) or the global ones ([`Space::Global`]). Each
//! space is three keys under one hash tag (see [`crate::keys`]): the bytes of every file exactly
//! as they were saved (never re-serialised), their size and times, and a lexicographic index of
//! the paths (a directory is a prefix range of it). Writes and moves are Lua scripts
//! (`lua/wf_put.lua`, `lua/wf_move.lua`): put-if-absent, the count limit and the
//! file-versus-directory checks are atomic, and times come from the Redis clock.
//!
//! Paths are relative to the space root, `/`-separated, and must start with one of
//! [`ALLOWED_DIRS`] (checked by [`file_path`] and [`dir_path`]).

use redis::AsyncCommands;
use thiserror::Error;

use crate::{Store, StoreError};

/// Top-level directories a path may live in. `workflows` holds saved workflows; `subgraphs`
/// holds the frontend's saved subgraph blueprints (workflow files too). Anything else
/// (settings, templates, `user.css`, ...) is not stored by the broker.
pub const ALLOWED_DIRS: &[&str] = &["workflows", "subgraphs"];

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Longest accepted path segment (file or directory name), in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Whose files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space<'a> {
    /// One user's own files (by user id).
    User(&'a str),
    /// The files every user reads and only admins write.
    Global,
}

impl Space<'_> {
    /// The space's part of its keys: `u:<uid>` or `global`.
    fn tag(&self) -> String {
        match self {
            Space::User(uid) => format!("u:{uid}"),
            Space::Global => "global".into(),
        }
    }

    /// True for the global space.
    pub fn is_global(&self) -> bool {
        matches!(self, Space::Global)
    }
}

/// Size and times of a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the space root (e.g. `workflows/my flow.json`).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// First written, microseconds since the epoch (Redis clock).
    pub created_us: i64,
    /// Last written, microseconds since the epoch (Redis clock).
    pub modified_us: i64,
}

impl FileInfo {
    /// `modified` as ComfyUI 0.3.64 reports it: float seconds.
    pub fn modified_secs(&self) -> f64 {
        self.modified_us as f64 / 1e6
    }

    /// `created` as ComfyUI 0.3.64 reports it: float seconds.
    pub fn created_secs(&self) -> f64 {
        self.created_us as f64 / 1e6
    }

    fn from_meta(path: String, meta: &str) -> FileInfo {
        let mut it = meta.split(' ').map(|v| v.parse::<i64>().unwrap_or(0));
        let size = it.next().unwrap_or(0).max(0) as u64;
        let created_us = it.next().unwrap_or(0);
        let modified_us = it.next().unwrap_or(0);
        FileInfo {
            path,
            size,
            created_us,
            modified_us,
        }
    }
}

/// Limits applied when writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Most files in one space.
    pub max_files: u64,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    /// Nothing given.
    #[error("the path is empty")]
    Empty,
    /// Starts with `/` (or is a Windows drive path).
    #[error("absolute paths are not allowed")]
    Absolute,
    /// A `..` or `.` segment.
    #[error("'..' and '.' segments are not allowed")]
    Traversal,
    /// `//` or a trailing `/`.
    #[error("empty path segments are not allowed")]
    EmptySegment,
    /// A `\`.
    #[error("backslashes are not allowed")]
    Backslash,
    /// NUL or another control character.
    #[error("control characters are not allowed")]
    Control,
    /// Over [`MAX_PATH_BYTES`] or a segment over [`MAX_SEGMENT_BYTES`].
    #[error("the path is too long")]
    TooLong,
    /// Not under one of [`ALLOWED_DIRS`].
    #[error("only files under workflows/ and subgraphs/ are stored")]
    NotAllowed,
}

impl PathError {
    /// True for the refusals that mean "tries to leave its folder" (absolute, `..`).
    pub fn is_traversal(&self) -> bool {
        matches!(self, PathError::Absolute | PathError::Traversal)
    }
}

/// Why a write failed.
#[derive(Debug, Error)]
pub enum WorkflowError {
    /// The path is refused.
    #[error("invalid path: {0}")]
    InvalidPath(#[from] PathError),
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// The file exists and overwriting was not allowed.
    #[error("file already exists")]
    Exists,
    /// The content is over the size limit (the limit in bytes).
    #[error("file larger than {0} bytes")]
    TooLarge(u64),
    /// The space holds the maximum number of files (the limit).
    #[error("at most {0} files may be stored")]
    TooMany(u64),
    /// A directory (files under this path) or a file where a directory should be.
    #[error("a file and a directory would share the path {0}")]
    PathConflict(String),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redis::RedisError> for WorkflowError {
    fn from(e: redis::RedisError) -> Self {
        WorkflowError::Store(StoreError::Redis(e))
    }
}

fn check_segments(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let bytes = path.as_bytes();
    if path.starts_with('/')
        || path.starts_with('~')
        || (bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic())
    {
        return Err(PathError::Absolute);
    }
    let segments: Vec<&str> = path.split('/').collect();
    for s in &segments {
        match *s {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::Traversal),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(PathError::TooLong),
            _ => {}
        }
    }
    Ok(segments)
}

/// Checks the path of a file: relative, `/`-separated, no empty, `.` or `..` segments, no `\`,
/// no control characters, under one of [`ALLOWED_DIRS`] and not the directory itself.
pub fn file_path(path: &str) -> Result<&str, PathError> {
    let segments = check_segments(path)?;
    if segments.len() < 2 || !ALLOWED_DIRS.contains(&segments[0]) {
        return Err(PathError::NotAllowed);
    }
    Ok(path)
}

/// Checks the path of a directory to list (one trailing `/` is ignored). `Ok(None)` means a
/// well-formed path outside [`ALLOWED_DIRS`] (nothing can be there); the empty path is the root.
pub fn dir_path(path: &str) -> Result<Option<&str>, PathError> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(Some(""));
    }
    let segments = check_segments(path)?;
    if !ALLOWED_DIRS.contains(&segments[0]) {
        return Ok(None);
    }
    Ok(Some(path))
}

fn put_outcome(path: &str, reply: Vec<String>, limits: &Limits) -> Result<FileInfo, WorkflowError> {
    match reply.first().map(String::as_str) {
        Some("ok") if reply.len() == 4 => {
            let meta = format!("{} {} {}", reply[1], reply[2], reply[3]);
            Ok(FileInfo::from_meta(path.to_owned(), &meta))
        }
        Some("exists") => Err(WorkflowError::Exists),
        Some("full") => Err(WorkflowError::TooMany(limits.max_files)),
        Some("isdir") | Some("parent") => Err(WorkflowError::PathConflict(path.to_owned())),
        _ => Err(WorkflowError::Store(StoreError::Corrupt {
            key: path.to_owned(),
            reason: format!("unexpected wf_put reply {reply:?}"),
        })),
    }
}

impl Store {
    /// Every file under `dir` (recursively; `""` is the whole space), sorted by path.
    pub async fn workflow_list(
        &self,
        space: Space<'_>,
        dir: &str,
    ) -> Result<Vec<FileInfo>, StoreError> {
        let tag = space.tag();
        let k = self.keys();
        let mut conn = self.conn();
        let paths: Vec<String> = if dir.is_empty() {
            conn.zrangebylex(k.workflow_index(&tag), "-", "+").await?
        } else {
            conn.zrangebylex(
                k.workflow_index(&tag),
                format!("[{dir}/"),
                format!("({dir}0"),
            )
            .await?
        };
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let metas: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(k.workflow_meta(&tag))
            .arg(&paths)
            .query_async(&mut conn)
            .await?;
        Ok(paths
            .into_iter()
            .zip(metas)
            .filter_map(|(p, m)| m.map(|m| FileInfo::from_meta(p, &m)))
            .collect())
    }

    /// A file's bytes, exactly as saved.
    pub async fn workflow_get(
        &self,
        space: Space<'_>,
        path: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn();
        let v: Option<Vec<u8>> = conn
            .hget(self.keys().workflow_data(&space.tag()), path)
            .await?;
        Ok(v)
    }

    /// A file's size and times.
    pub async fn workflow_info(
        &self,
        space: Space<'_>,
        path: &str,
    ) -> Result<Option<FileInfo>, StoreError> {
        let mut conn = self.conn();
        let v: Option<String> = conn
            .hget(self.keys().workflow_meta(&space.tag()), path)
            .await?;
        Ok(v.map(|m| FileInfo::from_meta(path.to_owned(), &m)))
    }

    /// Writes a file (checked with [`file_path`]). With `overwrite == false` an existing file is
    /// [`WorkflowError::Exists`]; over `limits` → [`WorkflowError::TooLarge`] /
    /// [`WorkflowError::TooMany`] (the count limit applies to new files only).
    pub async fn workflow_put(
        &self,
        space: Space<'_>,
        path: &str,
        bytes: &[u8],
        overwrite: bool,
        limits: &Limits,
    ) -> Result<FileInfo, WorkflowError> {
        let path = file_path(path)?;
        if bytes.len() as u64 > limits.max_bytes {
            return Err(WorkflowError::TooLarge(limits.max_bytes));
        }
        let tag = space.tag();
        let k = self.keys();
        let mut conn = self.conn();
        let reply: Vec<String> = self
            .inner
            .scripts
            .wf_put
            .key(k.workflow_data(&tag))
            .key(k.workflow_meta(&tag))
            .key(k.workflow_index(&tag))
            .arg(path)
            .arg(bytes)
            .arg(if overwrite { "1" } else { "0" })
            .arg(limits.max_files)
            .invoke_async(&mut conn)
            .await?;
        put_outcome(path, reply, limits)
    }

    /// Deletes a file; `false` when there was none.
    pub async fn workflow_delete(&self, space: Space<'_>, path: &str) -> Result<bool, StoreError> {
        let tag = space.tag();
        let k = self.keys();
        let mut conn = self.conn();
        let (removed, _, _): (u32, u32, u32) = redis::pipe()
            .atomic()
            .hdel(k.workflow_data(&tag), path)
            .hdel(k.workflow_meta(&tag), path)
            .zrem(k.workflow_index(&tag), path)
            .query_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    /// Renames a file within its space (size and times kept); `dest` is checked with
    /// [`file_path`]. Missing source → [`WorkflowError::NotFound`]; an existing `dest` with
    /// `overwrite == false` → [`WorkflowError::Exists`].
    pub async fn workflow_move(
        &self,
        space: Space<'_>,
        from: &str,
        dest: &str,
        overwrite: bool,
    ) -> Result<FileInfo, WorkflowError> {
        let dest = file_path(dest)?;
        let tag = space.tag();
        let k = self.keys();
        let mut conn = self.conn();
        let reply: Vec<String> = self
            .inner
            .scripts
            .wf_move
            .key(k.workflow_data(&tag))
            .key(k.workflow_meta(&tag))
            .key(k.workflow_index(&tag))
            .arg(from)
            .arg(dest)
            .arg(if overwrite { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() == 2 => Ok(FileInfo::from_meta(dest.to_owned(), &reply[1])),
            Some("missing") => Err(WorkflowError::NotFound),
            Some("exists") => Err(WorkflowError::Exists),
            Some("isdir") | Some("parent") => Err(WorkflowError::PathConflict(dest.to_owned())),
            _ => Err(WorkflowError::Store(StoreError::Corrupt {
                key: dest.to_owned(),
                reason: format!("unexpected wf_move reply {reply:?}"),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_redis::TestRedis;

    const LIMITS: Limits = Limits {
        max_bytes: 1024,
        max_files: 3,
    };

    #[test]
    fn paths_are_checked() {
        assert_eq!(file_path("workflows/a.json"), Ok("workflows/a.json"));
        assert_eq!(
            file_path("workflows/sub/é ü.json"),
            Ok("workflows/sub/é ü.json")
        );
        assert_eq!(file_path("subgraphs/x.json"), Ok("subgraphs/x.json"));
        for (p, e) in [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("C:/x.json", PathError::Absolute),
            ("~/x.json", PathError::Absolute),
            ("workflows/../x.json", PathError::Traversal),
            ("../workflows/x.json", PathError::Traversal),
            ("workflows/./x.json", PathError::Traversal),
            ("workflows//x.json", PathError::EmptySegment),
            ("workflows/x/", PathError::EmptySegment),
            ("workflows\\x.json", PathError::Backslash),
            ("workflows/x\0.json", PathError::Control),
            ("workflows/x\n.json", PathError::Control),
            ("comfy.settings.json", PathError::NotAllowed),
            ("workflows", PathError::NotAllowed),
            ("other/x.json", PathError::NotAllowed),
        ] {
            assert_eq!(file_path(p), Err(e), "{p:?}");
        }
        assert_eq!(
            file_path(&format!("workflows/{}", "a".repeat(300))),
            Err(PathError::TooLong)
        );
        assert_eq!(dir_path("workflows"), Ok(Some("workflows")));
        assert_eq!(dir_path("workflows/"), Ok(Some("workflows")));
        assert_eq!(dir_path(""), Ok(Some("")));
        assert_eq!(dir_path("no-such-dir"), Ok(None));
        assert_eq!(dir_path("../x"), Err(PathError::Traversal));
    }

    async fn store() -> (TestRedis, Store) {
        let r = TestRedis::start();
        let s = Store::connect(r.store_config()).await.unwrap();
        (r, s)
    }

    #[tokio::test]
    async fn put_get_list_move_delete() {
        let (_r, s) = store().await;
        let u = Space::User("u1");
        let body = b"{ \"a\" :1 }\n".to_vec();
        let info = s
            .workflow_put(u, "workflows/a.json", &body, true, &LIMITS)
            .await
            .unwrap();
        assert_eq!(info.size, body.len() as u64);
        assert_eq!(info.created_us, info.modified_us);
        assert!(info.modified_us > 1_700_000_000_000_000);
        assert_eq!(
            s.workflow_get(u, "workflows/a.json").await.unwrap(),
            Some(body.clone())
        );
        // put-if-absent
        assert!(matches!(
            s.workflow_put(u, "workflows/a.json", b"{}", false, &LIMITS)
                .await,
            Err(WorkflowError::Exists)
        ));
        // overwrite keeps the creation time
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = s
            .workflow_put(u, "workflows/a.json", b"{}", true, &LIMITS)
            .await
            .unwrap();
        assert_eq!(again.created_us, info.created_us);
        assert!(again.modified_us > info.modified_us);
        s.workflow_put(u, "workflows/sub/b.json", b"[]", true, &LIMITS)
            .await
            .unwrap();
        let all = s.workflow_list(u, "workflows").await.unwrap();
        let names: Vec<&str> = all.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["workflows/a.json", "workflows/sub/b.json"]);
        assert_eq!(s.workflow_list(u, "workflows/sub").await.unwrap().len(), 1);
        assert!(s
            .workflow_list(Space::Global, "workflows")
            .await
            .unwrap()
            .is_empty());
        assert!(s
            .workflow_list(Space::User("u2"), "workflows")
            .await
            .unwrap()
            .is_empty());
        // file vs directory
        assert!(matches!(
            s.workflow_put(u, "workflows/sub", b"{}", true, &LIMITS)
                .await,
            Err(WorkflowError::PathConflict(_))
        ));
        assert!(matches!(
            s.workflow_put(u, "workflows/a.json/c.json", b"{}", true, &LIMITS)
                .await,
            Err(WorkflowError::PathConflict(_))
        ));
        // count limit (3 files) and size limit
        s.workflow_put(u, "workflows/c.json", b"{}", true, &LIMITS)
            .await
            .unwrap();
        assert!(matches!(
            s.workflow_put(u, "workflows/d.json", b"{}", true, &LIMITS)
                .await,
            Err(WorkflowError::TooMany(3))
        ));
        s.workflow_put(u, "workflows/c.json", b"{ }", true, &LIMITS)
            .await
            .unwrap();
        assert!(matches!(
            s.workflow_put(u, "workflows/c.json", &[b' '; 1025], true, &LIMITS)
                .await,
            Err(WorkflowError::TooLarge(1024))
        ));
        // move
        assert!(matches!(
            s.workflow_move(u, "workflows/c.json", "workflows/a.json", false)
                .await,
            Err(WorkflowError::Exists)
        ));
        let moved = s
            .workflow_move(u, "workflows/c.json", "workflows/e.json", false)
            .await
            .unwrap();
        assert_eq!(moved.path, "workflows/e.json");
        assert_eq!(moved.size, 3);
        assert_eq!(s.workflow_get(u, "workflows/c.json").await.unwrap(), None);
        s.workflow_move(u, "workflows/e.json", "workflows/a.json", true)
            .await
            .unwrap();
        assert_eq!(
            s.workflow_get(u, "workflows/a.json").await.unwrap(),
            Some(b"{ }".to_vec())
        );
        assert_eq!(s.workflow_list(u, "").await.unwrap().len(), 2);
        assert!(matches!(
            s.workflow_move(u, "workflows/nope.json", "workflows/x.json", true)
                .await,
            Err(WorkflowError::NotFound)
        ));
        assert!(matches!(
            s.workflow_move(u, "workflows/a.json", "../x.json", true)
                .await,
            Err(WorkflowError::InvalidPath(PathError::Traversal))
        ));
        // delete
        assert!(s.workflow_delete(u, "workflows/a.json").await.unwrap());
        assert!(!s.workflow_delete(u, "workflows/a.json").await.unwrap());
        assert_eq!(s.workflow_info(u, "workflows/a.json").await.unwrap(), None);
        assert_eq!(s.workflow_list(u, "workflows").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bytes_are_kept_exactly() {
        let (_r, s) = store().await;
        let raw: Vec<u8> = (0u8..=255).collect();
        s.workflow_put(Space::Global, "workflows/bin.json", &raw, true, &LIMITS)
            .await
            .unwrap();
        assert_eq!(
            s.workflow_get(Space::Global, "workflows/bin.json")
                .await
                .unwrap(),
            Some(raw)
        );
    }
}
