//! Rough `POST /prompt` throughput on this machine. Ignored by default; run in release:
//! `cargo test --release -p gateway --test submit_rate -- --ignored --nocapture`.
//! The load generator shares the machine (and Redis) with the gateway, so the number printed is
//! a floor; the project's benchmark measures it properly.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{basic_prompt, Env};
use serde_json::json;

async fn rate(url: &str, token: Option<&str>, body: Option<bytes::Bytes>, secs: u64) -> (u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = reqwest::Client::new();
        let (url, token, body) = (url.to_owned(), token.map(str::to_owned), body.clone());
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut req = match &body {
                    Some(b) => client.post(&url).body(b.clone()),
                    None => client.get(&url),
                };
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        done.load(Ordering::Relaxed) / secs,
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn submit_rate() {
    let env = Env::start().await;
    let token = env.token("bench");
    let body = bytes::Bytes::from(json!({"prompt": basic_prompt(), "client_id": "c"}).to_string());
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (healthz, _) = rate(&env.url("/healthz"), None, None, secs).await;
    let (features, _) = rate(&env.url("/features"), Some(&token), None, secs).await;
    let (submits, failed) = rate(&env.url("/prompt"), Some(&token), Some(body), secs).await;
    println!(
        "per second: /healthz {healthz}, /features (auth) {features}, POST /prompt {submits} ({failed} failed, {}% of /healthz)",
        submits * 100 / healthz.max(1)
    );
    assert_eq!(failed, 0);
}
