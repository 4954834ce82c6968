//! Worker configuration: which ComfyUI backends to drive and the timings of the loops.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::WorkerError;

/// Configuration of one worker process (`[worker]` section of the broker's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Worker id, unique among the workers of a deployment. Default: `<hostname>-<pid>`.
    pub id: String,
    /// The ComfyUI backends this worker drives (one job at a time each).
    pub backends: Vec<BackendConfig>,
    /// How often an idle backend is health-checked (`/system_stats`, WebSocket ping) and its
    /// state republished; also the retry period of an unhealthy backend.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How often the backend's catalogue (`/object_info`, `/models`, `/embeddings`) is
    /// fetched again and republished.
    #[serde(with = "humantime_serde")]
    pub catalog_interval: Duration,
    /// Timeout of one backend HTTP call (except output downloads).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout of opening a TCP connection (HTTP or WebSocket) to a backend.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of downloading one output file from a backend's `/view`.
    #[serde(with = "humantime_serde")]
    pub transfer_timeout: Duration,
    /// A free backend tries to claim work this often even when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// How often a running job's lease is renewed (must be well below the store's lease
    /// timeout).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A lease not renewed for this long is taken over by a live worker's reclaim pass (its
    /// worker is presumed dead): the job runs again elsewhere, or ends past `max_attempts`.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// How often this worker looks for expired leases in each of its pools.
    #[serde(with = "humantime_serde")]
    pub reclaim_interval: Duration,
    /// A running job whose backend WebSocket stays silent this long is checked against the
    /// backend's `/history` and `/queue`.
    #[serde(with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// How long a dropped backend WebSocket is retried during a job before the job is given
    /// back to the queue.
    #[serde(with = "humantime_serde")]
    pub reconnect_timeout: Duration,
    /// Attempts after which a job that keeps failing for backend reasons ends with an
    /// `execution_error` instead of being queued again.
    pub max_attempts: u32,
    /// On shutdown (SIGTERM) a worker stops claiming at once; a running job gets this long to
    /// finish before it is interrupted on its backend and given back to the queue (not counted
    /// as an attempt). Match it with the pod's termination grace period.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// NSFW classifier run on every output image before its `executed` event is published:
    /// `none` or `http` (POST the image bytes to `nsfw_url`, read `{"score": f}`).
    pub nsfw_classifier: NsfwClassifier,
    /// URL of the HTTP classifier.
    pub nsfw_url: String,
    /// Scores at or above this flag the image.
    pub nsfw_threshold: f64,
    /// Timeout of one classifier call.
    #[serde(with = "humantime_serde")]
    pub nsfw_timeout: Duration,
    /// When the classifier cannot be reached or answers nonsense: `true` flags the image
    /// (fail closed), `false` lets it through (fail open).
    pub nsfw_fail_closed: bool,
}

/// Which NSFW classifier the worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsfwClassifier {
    /// Nothing is classified; previews are never withheld.
    None,
    /// An HTTP service.
    Http,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_worker_id(),
            backends: Vec::new(),
            health_interval: Duration::from_secs(5),
            catalog_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            transfer_timeout: Duration::from_secs(300),
            idle_poll: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(30),
            reclaim_interval: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(120),
            reconnect_timeout: Duration::from_secs(10),
            max_attempts: 3,
            drain_grace: Duration::from_secs(30),
            nsfw_classifier: NsfwClassifier::None,
            nsfw_url: String::new(),
            nsfw_threshold: 0.5,
            nsfw_timeout: Duration::from_secs(5),
            nsfw_fail_closed: false,
        }
    }
}

/// One ComfyUI backend. Its `Debug` output shows header names only, never their values.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Backend id, unique in its pool. Default: derived from `url` (`host:port[/path]`).
    pub id: Option<String>,
    /// Base URL of the ComfyUI server (`http://10.0.0.5:8188`, `https://gpu1/comfy`).
    pub url: String,
    /// Pool the backend serves.
    pub pool: String,
    /// Headers sent on every request to this backend, WebSocket included (e.g. auth for a
    /// protected ComfyUI). Values are never logged.
    pub headers: BTreeMap<String, String>,
    /// Operator labels published with the backend (`gpu = "a100"`).
    pub labels: BTreeMap<String, String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            id: None,
            url: String::new(),
            pool: "default".into(),
            headers: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// The URL without any password in it (for logs).
pub(crate) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("id", &self.id)
            .field("url", &redact_url(&self.url))
            .field("pool", &self.pool)
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(|k| (k.as_str(), "<redacted>"))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("labels", &self.labels)
            .finish()
    }
}

impl BackendConfig {
    /// A backend at `url` in the default pool.
    pub fn new(url: impl Into<String>) -> Self {
        BackendConfig {
            url: url.into(),
            ..BackendConfig::default()
        }
    }

    /// The configured id, or one derived from the URL (`host:port` plus any path).
    pub fn effective_id(&self) -> Result<String, WorkerError> {
        if let Some(id) = self.id.as_deref().filter(|s| !s.is_empty()) {
            return Ok(id.to_owned());
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| WorkerError::Config(format!("backend url {:?}: {e}", self.url)))?;
        let host = url.host_str().ok_or_else(|| {
            WorkerError::Config(format!("backend url {:?} has no host", self.url))
        })?;
        let mut id = match url.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = url.path().trim_matches('/');
        if !path.is_empty() {
            id.push('/');
            id.push_str(path);
        }
        Ok(id)
    }
}

impl WorkerConfig {
    /// Checks the configuration; returns the backends with their effective ids.
    pub fn validate(&self) -> Result<Vec<(String, BackendConfig)>, WorkerError> {
        if self.id.is_empty() {
            return Err(WorkerError::Config("worker id is empty".into()));
        }
        if self.backends.is_empty() {
            return Err(WorkerError::Config("no backends configured".into()));
        }
        for (name, d) in [
            ("health_interval", self.health_interval),
            ("idle_poll", self.idle_poll),
            ("heartbeat_interval", self.heartbeat_interval),
            ("request_timeout", self.request_timeout),
            ("silence_timeout", self.silence_timeout),
            ("reclaim_interval", self.reclaim_interval),
        ] {
            if d.is_zero() {
                return Err(WorkerError::Config(format!("{name} must be > 0")));
            }
        }
        if self.nsfw_classifier == NsfwClassifier::Http {
            let ok = url::Url::parse(&self.nsfw_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(WorkerError::Config(
                    "nsfw_url must be an http(s) URL when nsfw_classifier = \"http\"".into(),
                ));
            }
            if self.nsfw_timeout.is_zero() {
                return Err(WorkerError::Config("nsfw_timeout must be > 0".into()));
            }
        }
        if self.lease_timeout < self.heartbeat_interval * 2 {
            return Err(WorkerError::Config(
                "lease_timeout must be at least twice heartbeat_interval".into(),
            ));
        }
        let mut out: Vec<(String, BackendConfig)> = Vec::new();
        for b in &self.backends {
            let url = url::Url::parse(&b.url)
                .map_err(|e| WorkerError::Config(format!("backend url {:?}: {e}", b.url)))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(WorkerError::Config(format!(
                    "backend url {:?}: scheme must be http or https",
                    b.url
                )));
            }
            if b.pool.is_empty() {
                return Err(WorkerError::Config(format!(
                    "backend {:?}: empty pool",
                    b.url
                )));
            }
            let id = b.effective_id()?;
            if out.iter().any(|(o, ob)| *o == id && ob.pool == b.pool) {
                return Err(WorkerError::Config(format!(
                    "duplicate backend id {id:?} in pool {:?}",
                    b.pool
                )));
            }
            out.push((id, b.clone()));
        }
        Ok(out)
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        });
    match host {
        Some(h) => format!("{h}-{}", std::process::id()),
        None => format!(
            "worker-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_ids_derive_from_urls() {
        assert_eq!(
            BackendConfig::new("http://10.0.0.5:8188")
                .effective_id()
                .unwrap(),
            "10.0.0.5:8188"
        );
        assert_eq!(
            BackendConfig::new("https://gpu1.example/comfy/")
                .effective_id()
                .unwrap(),
            "gpu1.example:443/comfy"
        );
        let named = BackendConfig {
            id: Some("a100-1".into()),
            ..BackendConfig::new("http://x:1")
        };
        assert_eq!(named.effective_id().unwrap(), "a100-1");
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_keys() {
        let c: WorkerConfig = serde_json::from_str(
            r#"{"backends":[{"url":"http://127.0.0.1:8188","headers":{"Authorization":"x"}}],"idle_poll":"250ms"}"#,
        )
        .unwrap();
        assert_eq!(c.idle_poll, Duration::from_millis(250));
        assert_eq!(c.backends[0].pool, "default");
        assert!(!c.id.is_empty());
        assert_eq!(c.validate().unwrap()[0].0, "127.0.0.1:8188");
        assert!(serde_json::from_str::<WorkerConfig>(r#"{"nope":1}"#).is_err());
        let dup: WorkerConfig =
            serde_json::from_str(r#"{"backends":[{"url":"http://a:1"},{"url":"http://a:1/"}]}"#)
                .unwrap();
        assert!(dup.validate().is_err());
        assert!(WorkerConfig::default().validate().is_err());
        let shown = format!("{:?}", c);
        assert!(redact_url("http://u:secret@h:1/").contains("redacted"));
        assert!(!redact_url("http://u:secret@h:1/").contains("secret"));
        assert!(
            shown.contains("Authorization") && !shown.contains("\"x\""),
            "{shown}"
        );
    }
}
