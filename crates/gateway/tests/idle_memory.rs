//! Rough check of the memory an idle `/ws` socket costs. Ignored by default (it opens thousands
//! of sockets); run with `cargo test -p gateway --test idle_memory -- --ignored --nocapture`.
//! Clients live in the same process, so the figure printed is an upper bound for the server side.

mod common;

use std::time::Duration;

use common::Env;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_sockets_stay_small() {
    let env = Env::start().await;
    let n: usize = std::env::var("IDLE_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let tokens: Vec<String> = (0..50).map(|i| env.token(&format!("u{i}"))).collect();
    // Warm up allocator and runtime.
    let mut keep = Vec::new();
    for i in 0..50 {
        keep.push(env.ws(&tokens[i % tokens.len()], None).await.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    for i in 0..n {
        keep.push(env.ws(&tokens[i % tokens.len()], None).await.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) / n as u64;
    println!(
        "{n} idle sockets: RSS {} MiB -> {} MiB, {per} bytes per socket (client + server)",
        before >> 20,
        after >> 20
    );
    assert_eq!(env.hub.stats().sockets, n + 50);
    assert!(per < 20 * 1024, "{per} bytes per socket");
}
