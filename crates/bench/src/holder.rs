//! The socket-holder role (`comfy-broker bench --role socket-client`): opens many authenticated
//! `/ws` sockets, one user each, and records when bench events arrive.
//!
//! Protocol with the orchestrator: prints `ready <open> <failed>` once every socket is open, then
//! answers lines on stdin: `count` → `count <n>` (deliveries so far), `report` → one JSON line of
//! per-phase statistics (then cleared). Exits on end of input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{now_ns, pct_ms, r2};
use crate::BenchError;

/// Deliveries of one phase seen by one holder.
#[derive(Debug, Default)]
struct Phase {
    lat_us: Vec<u32>,
    max_recv_ns: u64,
}

/// What a holder reports for a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Events delivered.
    pub delivered: u64,
    /// Latency samples (µs), sorted.
    pub lat_us: Vec<u32>,
    /// Last delivery (ns since epoch).
    pub max_recv_ns: u64,
}

/// Merges holders' reports of one phase into (delivered, p50 ms, p99 ms, last delivery ns).
pub fn merge(reports: &[&PhaseReport]) -> (u64, f64, f64, u64) {
    let mut all: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.lat_us.iter().copied())
        .collect();
    all.sort_unstable();
    let last = reports.iter().map(|r| r.max_recv_ns).max().unwrap_or(0);
    (
        all.len() as u64,
        r2(pct_ms(&all, 0.5)),
        r2(pct_ms(&all, 0.99)),
        last,
    )
}

/// The JSON text of one bench event (sent through the broker's envelope).
pub fn event_json(phase: &str) -> String {
    format!(
        r#"{{"type":"bench","data":{{"p":"{phase}","t":{}}}}}"#,
        now_ns()
    )
}

#[derive(Deserialize)]
struct Ev {
    data: EvData,
}
#[derive(Deserialize)]
struct EvData {
    p: String,
    t: u64,
}

/// Runs the holder: `count` sockets for users `first..first+count` on `ws_base`
/// (`ws://host:port`), tokens signed with `secret`.
pub async fn run(
    ws_base: &str,
    first: usize,
    count: usize,
    secret: &str,
) -> Result<(), BenchError> {
    let keys = crate::jwt_keys(secret)?;
    let phases: Arc<Mutex<HashMap<String, Phase>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(count.max(1));
    for i in first..first + count {
        let token = crate::token(&keys, i)?;
        let url = format!("{ws_base}/ws?clientId=bench-c{i}&token={token}");
        let (phases, total, opened, failed, sem, done) = (
            phases.clone(),
            total.clone(),
            opened.clone(),
            failed.clone(),
            sem.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            // Open means upgraded and subscribed: the first `status` message arrived.
            let conn = tokio::time::timeout(Duration::from_secs(30), async {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str().contains("\"status\"")) {
                        return Some(ws);
                    }
                }
                None
            })
            .await;
            drop(permit);
            let mut ws = match conn {
                Ok(Some(ws)) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(()).await;
                    ws
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(()).await;
                    return;
                }
            };
            drop(done);
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                if !t.as_str().contains("\"bench\"") {
                    continue;
                }
                let now = now_ns();
                let Ok(ev) = serde_json::from_str::<Ev>(t.as_str()) else {
                    continue;
                };
                let us = (now.saturating_sub(ev.data.t) / 1000).min(u32::MAX as u64) as u32;
                total.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut p) = phases.lock() {
                    let ph = p.entry(ev.data.p).or_default();
                    ph.lat_us.push(us);
                    ph.max_recv_ns = ph.max_recv_ns.max(now);
                }
            }
        });
    }
    drop(done_tx);
    for _ in 0..count {
        if done_rx.recv().await.is_none() {
            break;
        }
    }
    let mut out = tokio::io::stdout();
    let line = format!(
        "ready {} {}\n",
        opened.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(cmd) = lines.next_line().await? {
        let reply = match cmd.trim() {
            "count" => format!("count {}\n", total.load(Ordering::Relaxed)),
            "report" => {
                let taken = match phases.lock() {
                    Ok(mut p) => std::mem::take(&mut *p),
                    Err(_) => HashMap::new(),
                };
                let rep: HashMap<String, PhaseReport> = taken
                    .into_iter()
                    .map(|(k, mut v)| {
                        v.lat_us.sort_unstable();
                        (
                            k,
                            PhaseReport {
                                delivered: v.lat_us.len() as u64,
                                lat_us: v.lat_us,
                                max_recv_ns: v.max_recv_ns,
                            },
                        )
                    })
                    .collect();
                format!("{}\n", serde_json::to_string(&rep)?)
            }
            _ => "?\n".to_owned(),
        };
        out.write_all(reply.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}
