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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn submit_rate() {
    let env = Env::start().await;
    let token = env.token("bench");
    let body = bytes::Bytes::from(json!({"prompt": basic_prompt(), "client_id": "c"}).to_string());
    let url = env.url("/prompt");
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, token, body) = (
            reqwest::Client::new(),
            url.clone(),
            token.clone(),
            body.clone(),
        );
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .body(body.clone())
                    .send()
                    .await;
                match r {
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
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} submits in {secs}s = {}/s ({} failed)",
        n / secs,
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}
