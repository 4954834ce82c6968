//! comfy-sim: a faithful simulator of one ComfyUI 0.3.64 node (HTTP + WebSocket), for tests, the
//! `dev` mode and the benchmark.
//!
//! It serves what a headless client and the broker's worker use of a real node (every route also
//! under `/api`): `POST/GET /prompt`, `GET/POST /queue`, `POST /interrupt`, `GET/POST /history`,
//! `GET /history/{id}`, `GET /view`, `POST /upload/image`, `GET /object_info[/{class}]`,
//! `GET /system_stats`, `/features`, `/embeddings`, `/models[/{folder}]`, `POST /free` and
//! `/ws?clientId=`, with the same status codes, bodies (Python-formatted JSON) and WebSocket message
//! sequences as the recordings in `shared/comfyui-traces/`. Graphs are validated with
//! [`protocol::validate`] against the real node catalogue (embedded). Model-free image nodes
//! (EmptyImage, LoadImage, ImageInvert, ImageScale, ImageBlur, GetImageSize, ImageBatch, SaveImage,
//! PreviewImage) really compute pixels; every other class runs as a stand-in with outputs of the
//! right types, samplers emitting progress and latent previews per step.
//!
//! Faults (slow nodes, failures, dropped sockets, hangs, 5xx, crashes) are set through
//! [`SimHandle::faults`] or `POST /sim/faults`; see [`faults`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let sim = comfy_sim::spawn(listener, comfy_sim::SimConfig::default()).await?;
//! println!("ComfyUI at {}", sim.url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

pub mod faults;

mod exec;
mod img;
mod jobs;
mod net;
mod nodes;
mod pyjson;
mod server;
mod state;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::catalog::Catalog;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultHandle, Faults};

use crate::state::{Heap, Inner, Shared};

/// The real ComfyUI 0.3.64 `/object_info` (495 classes) the simulator serves by default.
pub const OBJECT_INFO_JSON: &str = include_str!("../data/object_info.json");

/// ComfyUI's model folders in its registration order (what `GET /models` lists).
pub const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

/// Configuration of one simulated node.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The node catalogue (default: the embedded real one, [`OBJECT_INFO_JSON`]).
    pub catalog: Arc<Catalog>,
    /// Where SaveImage writes (default: a fresh temporary directory, removed with the sim).
    pub output_dir: Option<PathBuf>,
    /// Where uploads go and LoadImage reads (default: a fresh temporary directory).
    pub input_dir: Option<PathBuf>,
    /// Where PreviewImage writes (default: a fresh temporary directory).
    pub temp_dir: Option<PathBuf>,
    /// Work time of every executed node (default 0). Samplers spread it over their steps.
    pub work_time: Duration,
    /// Send latent previews for sampler steps (as with `--preview-method auto`; default true).
    /// A prompt's `extra_data.preview_method: "none"` turns them off for that prompt.
    pub previews: bool,
    /// Largest preview side in pixels (`--preview-size`, default 512).
    pub preview_size: u32,
    /// Model files by folder, served by `/models`, `/models/{folder}` and (folder `embeddings`)
    /// `/embeddings`; non-empty lists also become the options of the catalogue's loader inputs
    /// (`ckpt_name`, `lora_name`, ... see `protocol::catalog::MODEL_INPUTS`), so graphs naming
    /// them validate. Default: ComfyUI's folder names, all empty.
    pub models: BTreeMap<String, Vec<String>>,
    /// `max_upload_size` in bytes (features, and the request body limit; default 100 MiB).
    pub max_upload_size: u64,
    /// `system.comfyui_version` (default "0.3.64").
    pub comfyui_version: String,
    /// `devices[0].name` of `/system_stats` (default "cpu", as recorded; any other name reports a
    /// `cuda` device with index 0).
    pub device_name: String,
    /// `devices[0].vram_total` of `/system_stats`, in bytes.
    pub vram_total: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        let catalog = Catalog::from_slice(OBJECT_INFO_JSON.as_bytes()).unwrap_or_default();
        let folders = MODEL_FOLDERS;
        SimConfig {
            catalog: Arc::new(catalog),
            output_dir: None,
            input_dir: None,
            temp_dir: None,
            work_time: Duration::ZERO,
            previews: true,
            preview_size: 512,
            models: folders
                .iter()
                .map(|f| (f.to_string(), Vec::new()))
                .collect(),
            max_upload_size: 104_857_600,
            comfyui_version: "0.3.64".into(),
            device_name: "cpu".into(),
            vram_total: 25_386_352_640,
        }
    }
}

impl SimConfig {
    /// The default config with a catalogue parsed from `object_info` JSON.
    pub fn with_object_info(object_info: &Value) -> Result<Self, protocol::catalog::CatalogError> {
        Ok(SimConfig {
            catalog: Arc::new(Catalog::from_json(object_info)?),
            ..SimConfig::default()
        })
    }
}

impl Shared {
    /// The server feature flags (`GET /features` and the WebSocket negotiation answer).
    pub(crate) fn features(&self) -> Value {
        json!({"supports_preview_metadata": true, "max_upload_size": self.config.max_upload_size})
    }
}

/// A running simulator.
/// A running simulator. Dropping it stops it abruptly (like [`FaultHandle::crash`]); call
/// [`SimHandle::shutdown`] for an orderly stop.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.kill.cancel();
        self.shared.unhang.notify_waiters();
        self.shared.wake.notify_waiters();
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://<addr>/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sets faults at run time.
    pub fn faults(&self) -> FaultHandle {
        FaultHandle {
            shared: self.shared.clone(),
        }
    }

    /// The directory SaveImage writes to.
    pub fn output_dir(&self) -> PathBuf {
        self.shared.output_dir.clone()
    }

    /// The directory uploads go to (LoadImage reads here).
    pub fn input_dir(&self) -> PathBuf {
        self.shared.input_dir.clone()
    }

    /// The directory PreviewImage writes to.
    pub fn temp_dir(&self) -> PathBuf {
        self.shared.temp_dir.clone()
    }

    /// Stops the server: open sockets are closed, the running prompt is abandoned.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.shared.unhang.notify_waiters();
        self.shared.wake.notify_waiters();
        // Sockets and keep-alive connections would hold a graceful shutdown open: cut them.
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            while !self.shared.lock().sockets.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        self.shared.kill.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
        if let Some(worker) = self.worker.take() {
            worker.abort();
            let _ = worker.await;
        }
    }

    /// Waits until the server task ends (after a crash or a shutdown from elsewhere).
    pub async fn wait(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

fn dir_or_temp(
    given: &Option<PathBuf>,
    name: &str,
    keep: &mut Vec<tempfile::TempDir>,
) -> std::io::Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("comfy-sim-{name}-"))
                .tempdir()?;
            let p = t.path().to_path_buf();
            keep.push(t);
            p
        }
    };
    std::fs::create_dir_all(&p)?;
    // Absolute, so that path confinement checks compare like with like.
    std::fs::canonicalize(&p)
}

/// Starts a simulator on `listener` (bind it to port 0 for tests).
pub async fn spawn(
    listener: tokio::net::TcpListener,
    mut config: SimConfig,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    // The loaders' dropdowns list this node's model files (so graphs naming them validate).
    if config.models.values().any(|f| !f.is_empty()) {
        let mut cat = (*config.catalog).clone();
        for (folder, files) in &config.models {
            if !files.is_empty() {
                cat.set_model_files(folder, files);
            }
        }
        config.catalog = Arc::new(cat);
    }
    let mut dirs = Vec::new();
    let output_dir = dir_or_temp(&config.output_dir, "output", &mut dirs)?;
    let input_dir = dir_or_temp(&config.input_dir, "input", &mut dirs)?;
    let temp_dir = dir_or_temp(&config.temp_dir, "temp", &mut dirs)?;
    let object_info = config.catalog.to_json();
    let kill = CancellationToken::new();
    let shared = Arc::new(Shared {
        config,
        output_dir,
        input_dir,
        temp_dir,
        inner: Mutex::new(Inner {
            number: 0,
            queue: Heap::default(),
            running: None,
            history: Map::new(),
            sockets: Default::default(),
            client_id: None,
            last_node_id: None,
            free_memory: false,
            faults: Faults::default(),
            create_times: Default::default(),
        }),
        interrupt: AtomicBool::new(false),
        wake: Notify::new(),
        unhang: Notify::new(),
        kill: kill.clone(),
        shutdown: CancellationToken::new(),
        next_conn: AtomicU64::new(1),
        object_info,
    });

    let app = server::router(shared.clone());
    let listener = net::KillableListener {
        inner: listener,
        kill: kill.clone(),
    };
    let stop = shared.clone();
    let server = tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<net::ConnMeta>();
        let res = axum::serve(listener, svc)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stop.kill.cancelled() => {}
                    _ = stop.shutdown.cancelled() => {}
                }
            })
            .await;
        if let Err(e) = res {
            tracing::warn!("comfy-sim server ended: {e}");
        }
    });
    let worker = tokio::spawn(exec::Executor::new(shared.clone()).run());
    tracing::info!("comfy-sim listening on {addr}");
    Ok(SimHandle {
        addr,
        shared,
        server: Some(server),
        worker: Some(worker),
        _dirs: dirs,
    })
}
