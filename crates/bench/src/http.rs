//! A minimal HTTP/1.1 keep-alive client (one request in flight per connection): cheap enough
//! that the load generator costs the machine less than the server it measures.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::{pct_ms, r2};
use crate::BenchError;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Builds the bytes of one request.
pub fn request(method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let mut out = match body {
        Some(b) => {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            ));
            let mut v = r.into_bytes();
            v.extend_from_slice(b);
            v
        }
        None => {
            r.push_str("\r\n");
            r.into_bytes()
        }
    };
    out.shrink_to_fit();
    out
}

impl Conn {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Conn, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its response: (status, body).
    pub async fn send(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>), BenchError> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let mut tmp = [0u8; 8192];
        loop {
            if let Some(h) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..h]).to_ascii_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| BenchError::Msg("bad status line".into()))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| BenchError::Msg("response without content-length".into()))?;
                let need = h + 4 + len;
                while self.buf.len() < need {
                    let n = self.stream.read(&mut tmp).await?;
                    if n == 0 {
                        return Err(BenchError::Msg("connection closed".into()));
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                }
                return Ok((status, self.buf[h + 4..need].to_vec()));
            }
            let n = self.stream.read(&mut tmp).await?;
            if n == 0 {
                return Err(BenchError::Msg("connection closed".into()));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Result of one closed-loop load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// Successful (2xx) requests.
    pub ok: u64,
    /// Failed requests (non-2xx or I/O error).
    pub errors: u64,
    /// Successful requests per second.
    pub rps: f64,
    /// Latency p50 (ms).
    pub p50_ms: f64,
    /// Latency p99 (ms).
    pub p99_ms: f64,
}

/// Most latency samples kept per connection (bounds memory).
const MAX_SAMPLES: usize = 1_000_000;

/// Runs `concurrency` connections each sending `req` back to back for `duration`.
pub async fn closed_loop(
    addr: &str,
    req: Vec<u8>,
    concurrency: usize,
    duration: Duration,
) -> Result<LoadResult, BenchError> {
    let req = std::sync::Arc::new(req);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (addr, req) = (addr.to_owned(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            let mut conn = Conn::connect(&addr).await.ok();
            while Instant::now() < deadline && lat.len() < MAX_SAMPLES {
                let Some(c) = conn.as_mut() else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    conn = Conn::connect(&addr).await.ok();
                    continue;
                };
                let t = Instant::now();
                match c.send(&req).await {
                    Ok((s, _)) if (200..300).contains(&s) => {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(LoadResult {
        ok: all.len() as u64,
        errors,
        rps: r2(all.len() as f64 / secs),
        p50_ms: r2(pct_ms(&all, 0.5) * 1.0),
        p99_ms: r2(pct_ms(&all, 0.99)),
    })
}
