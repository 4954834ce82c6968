//! The `[files]` section of the broker's configuration: which store, and how long files live.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which object store holds the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A local directory (`files.dir`).
    Local,
    /// Any S3-compatible store (AWS S3, MinIO, Ceph, R2 ...).
    S3,
}

/// Where outputs, previews and uploads live, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// `local` or `s3`.
    pub backend: Backend,
    /// Local directory (backend `local`).
    pub dir: PathBuf,
    /// S3 endpoint URL (empty: AWS for `s3_region`); e.g. `http://127.0.0.1:9000` for MinIO.
    pub s3_endpoint: String,
    /// Bucket name (backend `s3`; must exist).
    pub s3_bucket: String,
    /// Region (`us-east-1` when empty and `AWS_REGION` is unset).
    pub s3_region: String,
    /// Access key id (empty: `AWS_ACCESS_KEY_ID` and the usual AWS credential chain).
    pub s3_access_key_id: String,
    /// Secret access key (empty: `AWS_SECRET_ACCESS_KEY` ...). Never logged.
    pub s3_secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO-like servers need.
    pub s3_path_style: bool,
    /// Allow a plain `http://` endpoint (local test servers).
    pub s3_allow_http: bool,
    /// Outputs older than this are deleted and answer 404; `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub output_ttl: Duration,
    /// Temp files (previews saved by PreviewImage) older than this are deleted; `0s` keeps them.
    #[serde(with = "humantime_serde")]
    pub temp_ttl: Duration,
    /// How often a worker sweeps expired files (when a TTL is set).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// MIME types accepted by `/upload/image` and `/upload/mask`, checked against the file's
    /// content (magic bytes), never its name or declared type.
    pub upload_types: Vec<String>,
}

/// Every type [`crate::sniff`] recognises.
pub const DEFAULT_UPLOAD_TYPES: [&str; 15] = [
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "video/x-matroska",
    "audio/mpeg",
    "audio/wav",
    "audio/flac",
    "audio/ogg",
    "audio/mp4",
];

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            backend: Backend::Local,
            dir: PathBuf::from("./comfy-broker-files"),
            s3_endpoint: String::new(),
            s3_bucket: String::new(),
            s3_region: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_path_style: false,
            s3_allow_http: false,
            output_ttl: Duration::ZERO,
            temp_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
            upload_types: DEFAULT_UPLOAD_TYPES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl FilesConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == Backend::S3 && self.s3_bucket.is_empty() {
            return Err("files.s3_bucket is required with files.backend = \"s3\"".into());
        }
        if self.sweep_interval.is_zero() {
            return Err("files.sweep_interval must be positive".into());
        }
        Ok(())
    }

    /// The TTL of a kind of file, `None` when it is kept forever (uploads always are).
    pub fn ttl(&self, kind: crate::FileKind) -> Option<Duration> {
        let d = match kind {
            crate::FileKind::Output => self.output_ttl,
            crate::FileKind::Temp => self.temp_ttl,
            crate::FileKind::Input => Duration::ZERO,
        };
        (!d.is_zero()).then_some(d)
    }
}
