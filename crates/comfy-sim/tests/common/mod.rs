//! Test harness: spawn a simulator in-process, talk to it over HTTP and WebSocket, replay the
//! recorded ComfyUI traces against it and compare shapes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use comfy_sim::{SimConfig, SimHandle};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn sim(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    comfy_sim::spawn(listener, config).await.expect("spawn")
}

/// `shared/comfyui-traces/` beside the repository (CI: X/main and X/shared).
pub fn traces_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // crates/comfy-sim → repo root → its parent holds shared/.
    let root = manifest.join("../..");
    root.join("../shared/comfyui-traces")
}

pub fn load_trace(name: &str) -> Vec<Value> {
    let dir = traces_dir();
    let path = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("traces at {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(name))
        })
        .unwrap_or_else(|| panic!("trace {name} not found in {}", dir.display()));
    std::fs::read_to_string(&path)
        .expect("read trace")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("trace line"))
        .collect()
}

/// One frame received on a socket.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Value),
    Binary(Vec<u8>),
}

impl Frame {
    pub fn kind(&self) -> String {
        match self {
            Frame::Text(v) => v["type"].as_str().unwrap_or("?").to_string(),
            Frame::Binary(b) => format!("binary:{}", b.get(3).copied().unwrap_or(0)),
        }
    }
}

pub struct Ws {
    pub rx: mpsc::UnboundedReceiver<Option<Frame>>,
    pub tx: mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Ws {
    pub async fn connect(sim: &SimHandle, path: &str) -> Result<Ws> {
        let url = format!("ws://{}{}", sim.addr(), path);
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut sink, mut read) = stream.split();
        let (ftx, frx) = mpsc::unbounded_channel();
        let (stx, mut srx) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = read.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                            let _ = ftx.send(Some(Frame::Text(v)));
                        }
                        Some(Ok(Message::Binary(b))) => { let _ = ftx.send(Some(Frame::Binary(b.to_vec()))); }
                        Some(Ok(_)) => {}
                        _ => { let _ = ftx.send(None); break; }
                    },
                    s = srx.recv() => match s {
                        Some(s) => { let _ = sink.send(Message::Text(s.into())).await; }
                        None => { let _ = sink.close().await; break; }
                    }
                }
            }
        });
        Ok(Ws {
            rx: frx,
            tx: stx,
            task,
        })
    }

    /// The next frame, or an error on timeout / close.
    pub async fn next(&mut self) -> Result<Frame> {
        match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
            Ok(Some(Some(f))) => Ok(f),
            Ok(_) => bail!("socket closed"),
            Err(_) => bail!("timed out waiting for a frame"),
        }
    }

    pub async fn next_json(&mut self) -> Result<Value> {
        match self.next().await? {
            Frame::Text(v) => Ok(v),
            Frame::Binary(b) => bail!(
                "expected text, got binary type {}",
                b.get(3).copied().unwrap_or(0)
            ),
        }
    }

    /// Frames until (and including) `executing {node: null}` for `prompt_id`.
    pub async fn until_done(&mut self, prompt_id: &str) -> Result<Vec<Frame>> {
        let mut out = Vec::new();
        loop {
            let f = self.next().await?;
            let done = matches!(&f, Frame::Text(v) if v["type"] == "executing" && v["data"]["node"].is_null() && v["data"]["prompt_id"] == prompt_id);
            out.push(f);
            if done {
                return Ok(out);
            }
        }
    }

    /// True when the socket was closed (or cut) within `d`.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Some(_))) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn send(&self, text: &str) {
        let _ = self.tx.send(text.to_string());
    }

    pub fn close(self) {
        drop(self.tx);
        let t = self.task;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        });
    }
}

pub struct Resp {
    pub status: u16,
    pub content_type: Option<String>,
    pub disposition: Option<String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn http(sim: &SimHandle, method: &str, path: &str, body: Option<&str>) -> Result<Resp> {
    let client = reqwest::Client::new();
    let url = format!("{}{}", sim.url(), path);
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        other => bail!("method {other}"),
    };
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let r = tokio::time::timeout(TIMEOUT, req.send())
        .await
        .map_err(|_| anyhow!("HTTP timeout"))??;
    let status = r.status().as_u16();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = h("content-type");
    let disposition = h("content-disposition");
    let body = r.bytes().await?.to_vec();
    Ok(Resp {
        status,
        content_type,
        disposition,
        body,
    })
}

pub async fn post_json(sim: &SimHandle, path: &str, body: &Value) -> Result<Resp> {
    http(sim, "POST", path, Some(&body.to_string())).await
}

/// Compares the *shape* of two JSON values: same object keys (recursively), same array lengths,
/// same scalar kinds (int and float told apart).
pub fn same_shape(expected: &Value, actual: &Value, path: &str) -> Result<()> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<&String> = e.keys().collect();
            let mut ak: Vec<&String> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                bail!("{path}: keys differ: expected {ek:?}, got {ak:?}");
            }
            for (k, v) in e {
                same_shape(v, &a[k], &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if path.ends_with(".traceback") || path.ends_with(".argv") {
                return if a.iter().all(Value::is_string) {
                    Ok(())
                } else {
                    bail!("{path}: not strings")
                };
            }
            if e.len() != a.len() {
                bail!(
                    "{path}: expected {} elements, got {}: {actual}",
                    e.len(),
                    a.len()
                );
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                same_shape(x, y, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(e), Value::Number(a)) => {
            if e.is_f64() != a.is_f64() {
                bail!("{path}: number kind differs: expected {e}, got {a}");
            }
            Ok(())
        }
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        (e, a) => bail!("{path}: expected {e}, got {a}"),
    }
}

/// Replaces every string of `v` found in `map` (trace ids → our ids).
pub fn rewrite(v: &Value, map: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (from, to) in map {
                s = s.replace(from, to);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| rewrite(x, map)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    (
                        rewrite(&json!(k), map).as_str().unwrap_or(k).to_string(),
                        rewrite(x, map),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

pub fn rewrite_str(s: &str, map: &HashMap<String, String>) -> String {
    let mut s = s.to_string();
    for (from, to) in map {
        s = s.replace(from, to);
    }
    s
}

/// Values that differ on every run (ids, timestamps, numbers, temp names): kept out of exact
/// comparisons.
pub fn scrub(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let x = match k.as_str() {
                        "timestamp" | "prompt_id" | "sid" | "number" | "traceback"
                        | "create_time" | "filename" | "current_inputs" => json!("*"),
                        _ => scrub(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(scrub).collect()),
        other => other.clone(),
    }
}
