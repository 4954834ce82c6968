//! The file store: outputs, temp previews and uploads live here, never on a GPU node's disk.
//! One interface over `object_store` (a local directory by default; S3-compatible stores in
//! production). Keys are namespaced by user, so one user's path can never name another's file:
//! `users/<user id>/<kind>/<subfolder segments>/<filename>`.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, PutPayload};
use thiserror::Error;

/// The three ComfyUI folders a file can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Saved outputs (`type=output`).
    Output,
    /// Uploads (`type=input`).
    Input,
    /// Previews (`type=temp`).
    Temp,
}

impl FileKind {
    /// Parses ComfyUI's `type` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "output" => Some(FileKind::Output),
            "input" => Some(FileKind::Input),
            "temp" => Some(FileKind::Temp),
            _ => None,
        }
    }

    /// ComfyUI's `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Output => "output",
            FileKind::Input => "input",
            FileKind::Temp => "temp",
        }
    }
}

/// Why a file operation failed.
#[derive(Debug, Error)]
pub enum FilesError {
    /// A name or subfolder that could address something outside the caller's space.
    #[error("invalid file path: {0}")]
    InvalidPath(&'static str),
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// The backing store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The local directory could not be prepared.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A validated location in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    path: Path,
}

fn check_segment(seg: &str) -> Result<(), FilesError> {
    if seg.is_empty() {
        return Err(FilesError::InvalidPath("empty path segment"));
    }
    if seg == "." || seg == ".." || seg.contains("..") {
        return Err(FilesError::InvalidPath("'..' in path"));
    }
    if seg
        .chars()
        .any(|c| c == '\\' || c == '\0' || c.is_control())
    {
        return Err(FilesError::InvalidPath(
            "control character or backslash in path",
        ));
    }
    if seg.contains(':') {
        return Err(FilesError::InvalidPath("':' in path"));
    }
    Ok(())
}

impl FileKey {
    /// `users/<user>/<kind>/<subfolder...>/<filename>`; every segment is checked (no `..`,
    /// empty segments, backslashes, NUL or control characters; `subfolder` may have `/`).
    pub fn new(
        user_id: &str,
        kind: FileKind,
        subfolder: &str,
        filename: &str,
    ) -> Result<Self, FilesError> {
        check_segment(user_id)?;
        check_segment(filename)?;
        if filename.contains('/') {
            return Err(FilesError::InvalidPath("'/' in file name"));
        }
        let mut parts: Vec<PathPart<'static>> = vec![
            PathPart::from("users"),
            PathPart::from(user_id.to_owned()),
            PathPart::from(kind.as_str()),
        ];
        let sub = subfolder.trim_matches('/');
        if subfolder.starts_with('/') {
            return Err(FilesError::InvalidPath("absolute subfolder"));
        }
        if !sub.is_empty() {
            for seg in sub.split('/') {
                check_segment(seg)?;
                parts.push(PathPart::from(seg.to_owned()));
            }
        }
        parts.push(PathPart::from(filename.to_owned()));
        Ok(FileKey {
            path: Path::from_iter(parts),
        })
    }

    /// The object path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file being read: its size and a stream of its bytes.
pub struct FileBody {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, ms since the Unix epoch.
    pub last_modified_ms: i64,
    /// The bytes, streamed.
    pub stream: futures::stream::BoxStream<'static, Result<Bytes, FilesError>>,
}

/// The store of every user's files.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
}

impl FileStore {
    /// A store in a local directory (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, FilesError> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(FileStore {
            inner: Arc::new(fs),
        })
    }

    /// Wraps any `object_store` implementation (S3, memory ...).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        FileStore { inner: store }
    }

    /// Writes a whole file.
    pub async fn put(&self, key: &FileKey, data: Bytes) -> Result<(), FilesError> {
        self.inner
            .put(key.path(), PutPayload::from_bytes(data))
            .await?;
        Ok(())
    }

    /// True when the file exists.
    pub async fn exists(&self, key: &FileKey) -> Result<bool, FilesError> {
        match self.inner.head(key.path()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a file for streaming; `NotFound` when it does not exist.
    pub async fn open(&self, key: &FileKey) -> Result<FileBody, FilesError> {
        use futures::StreamExt;
        let got = match self.inner.get(key.path()).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(FilesError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let size = got.meta.size;
        let last_modified_ms = got.meta.last_modified.timestamp_millis();
        let stream = got
            .into_stream()
            .map(|r| r.map_err(FilesError::from))
            .boxed();
        Ok(FileBody {
            size,
            last_modified_ms,
            stream,
        })
    }

    /// Reads a whole file (small files only: previews, uploads to ship to a backend).
    pub async fn read(&self, key: &FileKey) -> Result<Bytes, FilesError> {
        match self.inner.get(key.path()).await {
            Ok(g) => Ok(g.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(FilesError::NotFound),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_by_user() {
        let k = FileKey::new("u1", FileKind::Output, "p1/sub", "a.png").unwrap();
        assert_eq!(k.path().as_ref(), "users/u1/output/p1/sub/a.png");
    }

    #[test]
    fn traversal_is_refused() {
        for (sub, name) in [
            ("..", "a.png"),
            ("a/../b", "a.png"),
            ("", "../a.png"),
            ("", "a..b.png"),
            ("/etc", "passwd"),
            ("a\\..\\b", "x.png"),
            ("", "x\0.png"),
            ("a//b", "x.png"),
            ("", ""),
            ("", "a/b.png"),
            ("c:", "x.png"),
        ] {
            assert!(
                FileKey::new("u1", FileKind::Output, sub, name).is_err(),
                "{sub:?} {name:?}"
            );
        }
    }

    #[tokio::test]
    async fn put_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FileStore::local(dir.path()).unwrap();
        let k = FileKey::new("u1", FileKind::Temp, "", "x.png").unwrap();
        assert!(!fs.exists(&k).await.unwrap());
        fs.put(&k, Bytes::from_static(b"png")).await.unwrap();
        assert_eq!(fs.read(&k).await.unwrap(), Bytes::from_static(b"png"));
        let other = FileKey::new("u2", FileKind::Temp, "", "x.png").unwrap();
        assert!(matches!(fs.read(&other).await, Err(FilesError::NotFound)));
    }
}
