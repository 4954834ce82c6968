//! A whole stack of real `comfy-broker` processes for end-to-end tests: a real Redis, simulated
//! ComfyUI backends (`comfy-broker sim`), workers and gateways, all as child processes.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use store::test_redis::TestRedis;
use tokio_tungstenite::tungstenite::Message;

/// The JWT secret every test process shares.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The `POST /prompt` body limit the test gateways are configured with.
pub const PROMPT_LIMIT: usize = 256 * 1024;

/// The reference workflow of trace 01.
pub fn basic_prompt(width: u32, height: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "test"}}
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_comfy-broker")
}

/// How to build a [`Stack`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Gateway processes.
    pub gateways: usize,
    /// Simulated backends.
    pub backends: usize,
    /// Worker processes, each with the indexes of the backends it drives (empty: one worker
    /// driving every backend).
    pub workers: Vec<Vec<usize>>,
    /// A private Redis with AOF (`appendfsync always`) that tests may restart.
    pub own_redis_with_aof: bool,
    /// Extra environment for every worker (e.g. short leases).
    pub worker_env: Vec<(String, String)>,
    /// Extra arguments of every simulated backend (e.g. `--model checkpoints/x.safetensors`).
    pub sim_args: Vec<String>,
    /// Extra arguments of worker `i` of `workers` (e.g. `--label tier=premium`).
    pub worker_args: Vec<Vec<String>>,
    /// Extra arguments of simulated backend `i` (after `sim_args`), e.g. its own model list.
    pub backend_sim_args: Vec<Vec<String>>,
    /// Extra environment of every process (e.g. `COMFY_BROKER__FILES__OUTPUT_TTL`).
    pub env: Vec<(String, String)>,
    /// Write each gateway's log (at debug level) to `<dir>/gateway<i>.log` instead of stderr.
    pub gateway_logs: Option<PathBuf>,
    /// Give every gateway and worker a known metrics port (listed in [`Stack::metrics`]);
    /// otherwise each picks a free one nobody reads.
    pub metrics: bool,
}

/// Fast failure detection for reliability tests.
pub fn fast_worker_env() -> Vec<(String, String)> {
    [
        ("COMFY_BROKER__WORKER__HEARTBEAT_INTERVAL", "100ms"),
        ("COMFY_BROKER__WORKER__LEASE_TIMEOUT", "800ms"),
        ("COMFY_BROKER__WORKER__RECLAIM_INTERVAL", "100ms"),
        ("COMFY_BROKER__WORKER__HEALTH_INTERVAL", "200ms"),
        ("COMFY_BROKER__WORKER__IDLE_POLL", "200ms"),
        ("COMFY_BROKER__WORKER__REQUEST_TIMEOUT", "2s"),
        ("COMFY_BROKER__WORKER__SILENCE_TIMEOUT", "2s"),
        ("COMFY_BROKER__WORKER__RECONNECT_TIMEOUT", "1s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A running stack.
pub struct Stack {
    pub worker_env: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub redis: TestRedis,
    pub files_dir: tempfile::TempDir,
    pub gateways: Vec<String>,
    pub backends: Vec<String>,
    pub procs: Vec<Proc>,
    pub http: reqwest::Client,
    /// `(process name, http://addr)` of each metrics listener when `StackOptions::metrics`.
    pub metrics: Vec<(String, String)>,
    metrics_ports: bool,
}

impl Stack {
    fn env(&self, cmd: &mut Command) {
        cmd.env_remove("REDIS_URL")
            .env("COMFY_BROKER__REDIS__URL", &self.redis.url)
            .env("COMFY_BROKER__REDIS__KEY_PREFIX", &self.redis.prefix)
            .env("COMFY_BROKER__AUTH__SECRET", SECRET)
            .env("COMFY_BROKER__FILES__DIR", self.files_dir.path())
            .env(
                "COMFY_BROKER__GATEWAY__MAX_PROMPT_BYTES",
                PROMPT_LIMIT.to_string(),
            )
            .env("RUST_LOG", "warn")
            // Many processes per machine: never the fixed default metrics port.
            .env("COMFY_BROKER__METRICS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// Starts `backends` simulated backends, one worker driving them all, and `gateways`
    /// gateways; returns once every gateway is ready and the pool's catalogue is published.
    pub async fn start(gateways: usize, backends: usize) -> Stack {
        Self::with(StackOptions {
            gateways,
            backends,
            ..StackOptions::default()
        })
        .await
    }

    /// Starts a stack as `opts` says.
    pub async fn with(opts: StackOptions) -> Stack {
        let (gateways, backends) = (opts.gateways, opts.backends);
        let mut s = Stack {
            worker_env: opts.worker_env.clone(),
            env: opts.env.clone(),
            redis: if opts.own_redis_with_aof {
                TestRedis::own(true)
            } else {
                TestRedis::start()
            },
            files_dir: tempfile::tempdir().unwrap(),
            gateways: Vec::new(),
            backends: Vec::new(),
            procs: Vec::new(),
            http: reqwest::Client::new(),
            metrics: Vec::new(),
            metrics_ports: opts.metrics,
        };
        for i in 0..backends {
            let port = free_port();
            let mut cmd = Command::new(bin());
            cmd.args(["sim", "--listen", &format!("127.0.0.1:{port}")]);
            cmd.args(&opts.sim_args);
            if let Some(own) = opts.backend_sim_args.get(i) {
                cmd.args(own);
            }
            s.env(&mut cmd);
            s.procs.push(Proc {
                name: format!("sim{i}"),
                child: cmd.spawn().unwrap(),
            });
            s.backends.push(format!("http://127.0.0.1:{port}"));
        }
        for b in s.backends.clone() {
            wait_http(&format!("{b}/system_stats")).await;
        }
        if backends > 0 {
            if opts.workers.is_empty() {
                s.spawn_worker("w1");
            } else {
                for (i, set) in opts.workers.iter().enumerate() {
                    let extra = opts.worker_args.get(i).cloned().unwrap_or_default();
                    s.spawn_worker_with(&format!("w{}", i + 1), set, &extra);
                }
            }
        }
        for i in 0..gateways {
            let port = free_port();
            let mut cmd = Command::new(bin());
            cmd.args(["gateway", "--listen", &format!("127.0.0.1:{port}")]);
            s.env(&mut cmd);
            s.metrics_port(&mut cmd, &format!("gateway{i}"));
            if let Some(dir) = &opts.gateway_logs {
                let file = std::fs::File::create(dir.join(format!("gateway{i}.log"))).unwrap();
                cmd.env("RUST_LOG", "debug").stderr(Stdio::from(file));
            }
            s.procs.push(Proc {
                name: format!("gateway{i}"),
                child: cmd.spawn().unwrap(),
            });
            s.gateways.push(format!("http://127.0.0.1:{port}"));
        }
        for g in s.gateways.clone() {
            wait_http(&format!("{g}/readyz")).await;
        }
        if backends > 0 {
            let t = s.token("probe");
            let deadline = Instant::now() + Duration::from_secs(20);
            for g in s.gateways.clone() {
                loop {
                    let r = s
                        .http
                        .get(format!("{g}/object_info/EmptyImage"))
                        .bearer_auth(&t)
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if let Ok(v) = r.json::<Value>().await {
                            if v.get("EmptyImage").is_some() {
                                break;
                            }
                        }
                    }
                    assert!(Instant::now() < deadline, "catalogue never published");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        s
    }

    /// Starts a worker process driving every backend.
    pub fn spawn_worker(&mut self, id: &str) {
        let all: Vec<usize> = (0..self.backends.len()).collect();
        self.spawn_worker_for(id, &all);
    }

    /// Starts a worker process driving the backends with these indexes.
    pub fn spawn_worker_for(&mut self, id: &str, backends: &[usize]) {
        self.spawn_worker_with(id, backends, &[]);
    }

    /// Starts a worker process driving these backends, with extra arguments.
    pub fn spawn_worker_with(&mut self, id: &str, backends: &[usize], extra: &[String]) {
        let mut cmd = Command::new(bin());
        cmd.arg("worker");
        cmd.args(extra);
        for &b in backends {
            cmd.args(["--backend", &self.backends[b]]);
        }
        cmd.env("COMFY_BROKER__WORKER__ID", id);
        self.env(&mut cmd);
        self.metrics_port(&mut cmd, id);
        for (k, v) in &self.worker_env {
            cmd.env(k, v);
        }
        self.procs.push(Proc {
            name: id.to_owned(),
            child: cmd.spawn().unwrap(),
        });
    }

    /// Gives the process a known metrics port when the stack was asked for them.
    fn metrics_port(&mut self, cmd: &mut Command, name: &str) {
        if self.metrics_ports {
            let addr = format!("127.0.0.1:{}", free_port());
            cmd.env("COMFY_BROKER__METRICS__LISTEN", &addr);
            self.metrics
                .push((name.to_owned(), format!("http://{addr}")));
        }
    }

    /// The metrics URL of process `name` (needs `StackOptions::metrics`).
    pub fn metrics_url(&self, name: &str) -> String {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| format!("{u}/metrics"))
            .unwrap_or_else(|| panic!("no metrics listener for {name}"))
    }

    /// A session JWT for `name` with role `user`.
    pub fn token(&self, name: &str) -> String {
        self.token_with_role(name, auth::Role::User)
    }

    pub fn token_with_role(&self, name: &str, role: auth::Role) -> String {
        let keys = auth::JwtKeys::new(auth::JwtConfig {
            secret: SECRET.into(),
            ..auth::JwtConfig::default()
        })
        .unwrap();
        keys.mint(&format!("id-{name}"), name, role, Duration::from_secs(3600))
            .unwrap()
            .0
    }

    pub async fn post_prompt(&self, gw: usize, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/prompt", self.gateways[gw]))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, gw: usize, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{}", self.gateways[gw], path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `/history/{id}` until the entry appears.
    pub async fn wait_history(&self, gw: usize, token: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.get_json(gw, token, &format!("/history/{id}")).await;
            if let Some(e) = v.get(id) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Runs the `comfy-broker` command line against this stack's Redis, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut cmd = Command::new(bin());
        cmd.args(args);
        self.env(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().unwrap()
    }

    /// Kills simulated backend `i` and starts a fresh one on the same port (a GPU node that
    /// restarted), returning once it answers.
    pub async fn restart_backend(&mut self, i: usize) {
        let name = format!("sim{i}");
        self.kill(&name);
        self.procs.retain(|p| p.name != name);
        let url = self.backends[i].clone();
        let addr = url.trim_start_matches("http://").to_owned();
        let mut cmd = Command::new(bin());
        cmd.args(["sim", "--listen", &addr]);
        self.env(&mut cmd);
        self.procs.push(Proc {
            name,
            child: cmd.spawn().unwrap(),
        });
        wait_http(&format!("{url}/system_stats")).await;
    }

    /// Kills (SIGKILL) the process named `name`.
    pub fn kill(&mut self, name: &str) {
        for p in self.procs.iter_mut().filter(|p| p.name == name) {
            p.kill();
        }
    }

    /// Sets a simulated backend's faults (see comfy-sim's `faults.rs`).
    pub async fn sim_faults(&self, backend: usize, faults: Value) {
        let r = self
            .http
            .post(format!("{}/sim/faults", self.backends[backend]))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "sim faults: {}", r.status());
    }

    /// Submits and returns the prompt id.
    pub async fn submit(&self, gw: usize, token: &str, body: &Value) -> String {
        let (status, a) = self.post_prompt(gw, token, body).await;
        assert_eq!(status, 200, "{a}");
        a["prompt_id"].as_str().unwrap().to_owned()
    }

    pub fn ws_url(&self, gw: usize, client_id: &str, token: &str) -> String {
        format!(
            "{}/ws?clientId={client_id}&token={token}",
            self.gateways[gw].replacen("http", "ws", 1)
        )
    }
}

async fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = reqwest::Client::new();
    loop {
        if let Ok(r) = c.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// A WebSocket client that records every frame.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// One received frame.
#[derive(Debug, Clone)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { stream }
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Next text or binary frame (pings skipped); `None` on close or after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return Some(Frame::Json(serde_json::from_str(&t).unwrap())),
                Message::Binary(b) => return Some(Frame::Binary(b.to_vec())),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Collects JSON messages until `executing {node: null, prompt_id}` for `prompt_id`.
    pub async fn until_done(&mut self, prompt_id: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            match self.next(Duration::from_secs(20)).await {
                Some(Frame::Json(v)) => {
                    let done = v["type"] == "executing"
                        && v["data"]["node"].is_null()
                        && v["data"]["prompt_id"] == prompt_id;
                    got.push(v);
                    if done {
                        return got;
                    }
                }
                Some(Frame::Binary(_)) => {}
                None => panic!("socket ended before {prompt_id} finished; got {got:?}"),
            }
        }
    }
}

pub fn files_root(stack: &Stack) -> PathBuf {
    stack.files_dir.path().to_path_buf()
}
