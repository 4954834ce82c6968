//! The file store: outputs, temp previews and uploads live here, never on a GPU node's disk.
//! One interface over `object_store` (a local directory by default; S3-compatible stores in
//! production). Keys are namespaced by user, so one user's path can never name another's file:
//! `users/<user id>/<kind>/<subfolder segments>/<filename>`.
//!
//! Content types are derived from the file name when served (and also stored as object
//! metadata on stores that keep it, such as S3). Retention: [`FileStore::sweep`] deletes outputs
//! and temp files older than their TTL (`files.output_ttl`, `files.temp_ttl`), and
//! [`FileStore::is_expired`] lets readers treat a file past its TTL as gone before the sweep.

mod config;
mod sniff;

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};
use thiserror::Error;

pub use config::{Backend, FilesConfig, DEFAULT_UPLOAD_TYPES};
pub use sniff::{content_type, sniff};

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
    /// The configuration cannot be used.
    #[error("file store configuration: {0}")]
    Config(String),
    /// A byte range outside the file.
    #[error("range not satisfiable")]
    BadRange,
    /// The source of a streamed write failed.
    #[error("source: {0}")]
    Source(String),
}

/// A validated location in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    path: Path,
    kind: FileKind,
    /// `<subfolder>/<filename>` inside the user's kind folder.
    rel: String,
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
        let rel = if sub.is_empty() {
            filename.to_owned()
        } else {
            format!("{sub}/{filename}")
        };
        Ok(FileKey {
            path: Path::from_iter(parts),
            kind,
            rel,
        })
    }

    /// The object path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder the file is in.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// `<type>/<subfolder>/<filename>`: the file's name inside its owner's space (used to key
    /// per-file records such as NSFW verdicts).
    pub fn name_in_space(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.rel)
    }
}

/// Splits a file input value as ComfyUI reads it (LoadImage's `image` ...): an optional
/// `" [input]"`, `" [output]"` or `" [temp]"` suffix, then `subfolder/filename`. Returns
/// `(type, annotation as written, subfolder, filename)`; `input` when there is no annotation.
pub fn parse_file_value(value: &str) -> (&'static str, &'static str, String, String) {
    let (kind, annotation, path) = [
        ("input", " [input]"),
        ("output", " [output]"),
        ("temp", " [temp]"),
    ]
    .iter()
    .find_map(|(k, a)| value.strip_suffix(a).map(|p| (*k, *a, p)))
    .unwrap_or(("input", "", value));
    let path = path.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((sub, name)) => (kind, annotation, sub.to_owned(), name.to_owned()),
        None => (kind, annotation, String::new(), path.to_owned()),
    }
}

/// Size and age of a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, ms since the Unix epoch.
    pub last_modified_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parts of a streamed upload sent to the store at once.
const PUT_CONCURRENCY: usize = 4;

/// A file being read: its size and a stream of its bytes.
pub struct FileBody {
    /// Size of the whole file in bytes.
    pub size: u64,
    /// The bytes this body carries (the whole file, or the requested range).
    pub range: Range<u64>,
    /// Last modification time, ms since the Unix epoch.
    pub last_modified_ms: i64,
    /// The bytes, streamed.
    pub stream: futures::stream::BoxStream<'static, Result<Bytes, FilesError>>,
}

/// The store of every user's files.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
    config: Arc<FilesConfig>,
    /// Whether the store keeps object attributes (S3 does, a local directory does not).
    attributes: bool,
}

impl FileStore {
    /// A store in a local directory (created if missing), with default retention.
    pub fn local(dir: &FsPath) -> Result<Self, FilesError> {
        Self::from_config(&FilesConfig {
            dir: dir.to_path_buf(),
            ..FilesConfig::default()
        })
    }

    /// The store `config` describes: a local directory or an S3-compatible bucket.
    pub fn from_config(config: &FilesConfig) -> Result<Self, FilesError> {
        config.validate().map_err(FilesError::Config)?;
        let (inner, attributes): (Arc<dyn ObjectStore>, bool) = match config.backend {
            Backend::Local => {
                std::fs::create_dir_all(&config.dir)?;
                (
                    Arc::new(LocalFileSystem::new_with_prefix(&config.dir)?),
                    false,
                )
            }
            Backend::S3 => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(&config.s3_bucket)
                    .with_allow_http(config.s3_allow_http)
                    .with_virtual_hosted_style_request(!config.s3_path_style);
                if !config.s3_endpoint.is_empty() {
                    b = b.with_endpoint(&config.s3_endpoint);
                }
                if !config.s3_region.is_empty() {
                    b = b.with_region(&config.s3_region);
                }
                if !config.s3_access_key_id.is_empty() {
                    b = b.with_access_key_id(&config.s3_access_key_id);
                }
                if !config.s3_secret_access_key.is_empty() {
                    b = b.with_secret_access_key(&config.s3_secret_access_key);
                }
                (Arc::new(b.build()?), true)
            }
        };
        Ok(FileStore {
            inner,
            config: Arc::new(config.clone()),
            attributes,
        })
    }

    /// Wraps any `object_store` implementation (S3, memory ...), with default retention.
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        FileStore {
            inner: store,
            config: Arc::new(FilesConfig::default()),
            attributes: false,
        }
    }

    /// The configuration (retention, upload types).
    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    fn attributes_for(&self, key: &FileKey) -> Attributes {
        let mut a = Attributes::new();
        if self.attributes {
            a.insert(
                Attribute::ContentType,
                content_type(key.path().filename().unwrap_or("")).into(),
            );
        }
        a
    }

    /// Writes a whole file.
    pub async fn put(&self, key: &FileKey, data: Bytes) -> Result<(), FilesError> {
        let opts = PutOptions {
            attributes: self.attributes_for(key),
            ..PutOptions::default()
        };
        self.inner
            .put_opts(key.path(), PutPayload::from_bytes(data), opts)
            .await?;
        Ok(())
    }

    /// Writes a file from a stream of chunks without holding it in memory (a multipart upload
    /// on S3; aborted, leaving nothing, when the source fails). Returns the bytes written.
    pub async fn put_stream<S, E>(&self, key: &FileKey, mut source: S) -> Result<u64, FilesError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let opts = PutMultipartOptions {
            attributes: self.attributes_for(key),
            ..PutMultipartOptions::default()
        };
        let upload = self.inner.put_multipart_opts(key.path(), opts).await?;
        let mut w = WriteMultipart::new(upload);
        let mut total = 0u64;
        loop {
            let chunk = match source.next().await {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    let _ = w.abort().await;
                    return Err(FilesError::Source(e.to_string()));
                }
            };
            total += chunk.len() as u64;
            if let Err(e) = w.wait_for_capacity(PUT_CONCURRENCY).await {
                return Err(e.into());
            }
            w.put(chunk);
        }
        w.finish().await?;
        Ok(total)
    }

    /// Size and age of a file; `NotFound` when it does not exist.
    pub async fn head(&self, key: &FileKey) -> Result<FileMeta, FilesError> {
        match self.inner.head(key.path()).await {
            Ok(m) => Ok(FileMeta {
                size: m.size,
                last_modified_ms: m.last_modified.timestamp_millis(),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(FilesError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// True when the file exists.
    pub async fn exists(&self, key: &FileKey) -> Result<bool, FilesError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(FilesError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when a file of this kind, last written at `last_modified_ms`, is past its TTL
    /// (it answers as gone even before the sweeper deletes it).
    pub fn is_expired(&self, kind: FileKind, last_modified_ms: i64) -> bool {
        self.config
            .ttl(kind)
            .is_some_and(|ttl| last_modified_ms + ttl.as_millis() as i64 <= now_ms())
    }

    /// Opens a file for streaming; `NotFound` when it does not exist.
    pub async fn open(&self, key: &FileKey) -> Result<FileBody, FilesError> {
        self.open_range(key, None).await
    }

    /// Opens a file, or the byte range `range` of it (end exclusive, clamped to the size),
    /// for streaming. `BadRange` when the range starts at or past the end.
    pub async fn open_range(
        &self,
        key: &FileKey,
        range: Option<Range<u64>>,
    ) -> Result<FileBody, FilesError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = match self.inner.get_opts(key.path(), opts).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(FilesError::NotFound),
            Err(object_store::Error::Generic { source, .. })
                if source.to_string().contains("range") =>
            {
                return Err(FilesError::BadRange)
            }
            Err(e) => return Err(e.into()),
        };
        let size = got.meta.size;
        let last_modified_ms = got.meta.last_modified.timestamp_millis();
        let range = got.range.clone();
        let stream = got.into_stream().map_err(FilesError::from).boxed();
        Ok(FileBody {
            size,
            range,
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

    /// Deletes a file (no error when it is already gone).
    pub async fn delete(&self, key: &FileKey) -> Result<(), FilesError> {
        match self.inner.delete(key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every output and temp file past its TTL; returns how many were deleted. Safe to
    /// run from several processes at once.
    pub async fn sweep(&self) -> Result<usize, FilesError> {
        let out_ttl = self.config.ttl(FileKind::Output);
        let temp_ttl = self.config.ttl(FileKind::Temp);
        if out_ttl.is_none() && temp_ttl.is_none() {
            return Ok(0);
        }
        let now = now_ms();
        let expired = |ttl: Option<Duration>, modified: i64| {
            ttl.is_some_and(|t| modified + t.as_millis() as i64 <= now)
        };
        let prefix = Path::from("users");
        let mut list = self.inner.list(Some(&prefix));
        let mut deleted = 0usize;
        while let Some(meta) = list.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            // users/<uid>/<kind>/...
            let kind = meta
                .location
                .parts()
                .nth(2)
                .and_then(|p| FileKind::parse(p.as_ref()));
            let ttl = match kind {
                Some(FileKind::Output) => out_ttl,
                Some(FileKind::Temp) => temp_ttl,
                _ => None,
            };
            if expired(ttl, meta.last_modified.timestamp_millis()) {
                match self.inner.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_by_user() {
        let k = FileKey::new("u1", FileKind::Output, "p1/sub", "a.png").unwrap();
        assert_eq!(k.path().as_ref(), "users/u1/output/p1/sub/a.png");
        assert_eq!(k.name_in_space(), "output/p1/sub/a.png");
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

    #[tokio::test]
    async fn streamed_puts_ranges_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FileStore::from_config(&FilesConfig {
            dir: dir.path().to_path_buf(),
            output_ttl: Duration::from_millis(300),
            temp_ttl: Duration::ZERO,
            ..FilesConfig::default()
        })
        .unwrap();
        let k = FileKey::new("u1", FileKind::Output, "p1", "big.bin").unwrap();
        // 12 MiB in 1 MiB chunks: more than one multipart part.
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..12u8)
            .map(|i| Ok(Bytes::from(vec![i; 1 << 20])))
            .collect();
        let n = fs
            .put_stream(&k, futures::stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(n, 12 << 20);
        assert_eq!(fs.head(&k).await.unwrap().size, 12 << 20);
        let body = fs
            .open_range(&k, Some((3 << 20) - 2..(3 << 20) + 2))
            .await
            .unwrap();
        assert_eq!(body.size, 12 << 20);
        let got: Vec<Bytes> = body.stream.try_collect().await.unwrap();
        assert_eq!(got.concat(), vec![2, 2, 3, 3]);
        // A failing source leaves nothing behind.
        let bad = FileKey::new("u1", FileKind::Output, "p1", "bad.bin").unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"x")),
            Err(std::io::Error::other("cut")),
        ];
        assert!(fs
            .put_stream(&bad, futures::stream::iter(chunks))
            .await
            .is_err());
        assert!(!fs.exists(&bad).await.unwrap());

        let upload = FileKey::new("u1", FileKind::Input, "", "in.png").unwrap();
        fs.put(&upload, Bytes::from_static(b"png")).await.unwrap();
        let temp = FileKey::new("u1", FileKind::Temp, "", "t.png").unwrap();
        fs.put(&temp, Bytes::from_static(b"png")).await.unwrap();
        assert!(!fs.is_expired(FileKind::Output, now_ms()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(fs.is_expired(
            FileKind::Output,
            fs.head(&k).await.unwrap().last_modified_ms
        ));
        assert_eq!(fs.sweep().await.unwrap(), 1);
        assert!(!fs.exists(&k).await.unwrap());
        // Uploads and (with a zero TTL) temp files stay.
        assert!(fs.exists(&upload).await.unwrap());
        assert!(fs.exists(&temp).await.unwrap());
    }

    #[test]
    fn file_values_split_like_comfyui() {
        assert_eq!(
            parse_file_value("a/b/c.png [output]"),
            ("output", " [output]", "a/b".to_owned(), "c.png".to_owned())
        );
        assert_eq!(
            parse_file_value("x.png"),
            ("input", "", String::new(), "x.png".to_owned())
        );
    }
}
