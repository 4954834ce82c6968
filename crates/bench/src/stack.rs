//! Starting the measured stack as separate processes: a private `redis-server`, simulated
//! backends, one worker and gateways, all killed when the [`Stack`] is dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::http::{request, Conn};
use crate::BenchError;

/// A child process.
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Its pid (0 when it already exited).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// A running stack.
pub struct Stack {
    /// `redis://` URL of its Redis.
    pub redis_url: String,
    /// Key prefix.
    pub prefix: String,
    /// Gateway addresses (`host:port`).
    pub gateways: Vec<String>,
    /// Gateway pids (empty when targeting an existing stack).
    pub gateway_pids: Vec<u32>,
    /// The worker process, when started here.
    pub worker: Option<Proc>,
    /// Every other process started here.
    pub procs: Vec<Proc>,
    /// Temporary files directory.
    pub dir: Option<PathBuf>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(w) = self.worker.as_mut() {
            let _ = w.child.start_kill();
        }
        for p in &mut self.procs {
            let _ = p.child.start_kill();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn exe() -> Result<PathBuf, BenchError> {
    Ok(std::env::current_exe()?)
}

/// Options of a started stack.
pub struct StackSpec<'a> {
    /// Existing Redis (else one is started).
    pub redis: Option<&'a str>,
    /// Gateways to start.
    pub gateways: usize,
    /// Simulated backends.
    pub backends: usize,
    /// Work time of every simulated node.
    pub node_time: Duration,
    /// JWT secret.
    pub secret: &'a str,
}

impl Stack {
    /// Starts everything and waits until gateways answer and the catalogue is published.
    pub async fn start(spec: StackSpec<'_>) -> Result<Stack, BenchError> {
        let dir = std::env::temp_dir().join(format!("comfy-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut s = Stack {
            redis_url: String::new(),
            prefix: format!("cbbench{}", std::process::id()),
            gateways: Vec::new(),
            gateway_pids: Vec::new(),
            worker: None,
            procs: Vec::new(),
            dir: Some(dir.clone()),
        };
        s.redis_url = match spec.redis {
            Some(u) => u.to_owned(),
            None => {
                let port = free_port()?;
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--maxclients", "15000"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| BenchError::Msg(format!("starting redis-server: {e}")))?;
                s.procs.push(Proc { child });
                let url = format!("redis://127.0.0.1:{port}");
                wait_redis(&url).await?;
                url
            }
        };
        let env = |c: &mut Command, s: &Stack| {
            c.env_remove("REDIS_URL")
                .env("COMFY_BROKER__REDIS__URL", &s.redis_url)
                .env("COMFY_BROKER__REDIS__KEY_PREFIX", &s.prefix)
                .env("COMFY_BROKER__AUTH__SECRET", spec.secret)
                .env("COMFY_BROKER__FILES__DIR", &dir)
                .env("RUST_LOG", "warn")
                // The submit run piles up jobs of one user on purpose (the worker is stopped).
                .env("COMFY_BROKER__GATEWAY__MAX_QUEUED", "0")
                // Two processes on one machine: not both on the default metrics port.
                .env("COMFY_BROKER__METRICS__LISTEN", "127.0.0.1:0")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
        };
        let mut backends = Vec::new();
        for _ in 0..spec.backends {
            let port = free_port()?;
            let mut c = Command::new(exe()?);
            c.args(["sim", "--listen", &format!("127.0.0.1:{port}")]);
            c.args(["--node-time", &format!("{}ms", spec.node_time.as_millis())]);
            env(&mut c, &s);
            s.procs.push(Proc { child: c.spawn()? });
            backends.push(format!("127.0.0.1:{port}"));
        }
        for b in &backends {
            wait_http(b, "/system_stats").await?;
        }
        if !backends.is_empty() {
            let mut c = Command::new(exe()?);
            c.arg("worker");
            for b in &backends {
                c.args(["--backend", &format!("http://{b}")]);
            }
            c.env("COMFY_BROKER__WORKER__ID", "bench-w1");
            env(&mut c, &s);
            s.worker = Some(Proc { child: c.spawn()? });
        }
        for _ in 0..spec.gateways {
            let port = free_port()?;
            let mut c = Command::new(exe()?);
            c.args(["gateway", "--listen", &format!("127.0.0.1:{port}")]);
            env(&mut c, &s);
            let p = Proc { child: c.spawn()? };
            s.gateway_pids.push(p.pid());
            s.procs.push(p);
            s.gateways.push(format!("127.0.0.1:{port}"));
        }
        for g in &s.gateways {
            wait_http(g, "/readyz").await?;
        }
        Ok(s)
    }

    /// SIGKILLs the worker (its backends stay registered, so the catalogue stays).
    pub async fn kill_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let _ = w.child.kill().await;
        }
    }
}

async fn wait_redis(url: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = redis::Client::open(url) {
            if let Ok(mut conn) = c.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Msg(format!("redis at {url} never answered")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET path` answers 2xx.
pub async fn wait_http(addr: &str, path: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let req = request("GET", path, None, None);
    loop {
        if let Ok(mut c) = Conn::connect(addr).await {
            if let Ok((s, _)) = c.send(&req).await {
                if (200..300).contains(&s) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Msg(format!("{addr}{path} never answered")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway serves the pool's catalogue (so prompts validate).
pub async fn wait_catalog(addr: &str, token: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let req = request("GET", "/object_info/EmptyImage", Some(token), None);
    loop {
        if let Ok(mut c) = Conn::connect(addr).await {
            if let Ok((200, body)) = c.send(&req).await {
                if String::from_utf8_lossy(&body).contains("EmptyImage") {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Msg("catalogue never published".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
