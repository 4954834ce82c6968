//! Soak test (not in the default suite; run `scripts/soak.sh`): jobs through the API while
//! workers are killed and restarted at random. The checker prints accepted, completed,
//! failed-with-reason, lost (must be 0) and duplicated deliveries (must be 0).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{fast_worker_env, Frame, Stack, StackOptions, Ws};
use serde_json::{json, Value};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
#[ignore = "soak test: run scripts/soak.sh"]
async fn soak_jobs_survive_workers_killed_at_random() {
    let jobs = env_or("SOAK_JOBS", 300) as usize;
    let seconds = env_or("SOAK_SECONDS", 120);
    let mut stack = Stack::with(StackOptions {
        gateways: 2,
        backends: 4,
        workers: vec![vec![0, 1], vec![2, 3]],
        worker_env: fast_worker_env(),
        ..StackOptions::default()
    })
    .await;
    for b in 0..4 {
        stack.sim_faults(b, json!({"work_ms": 30})).await;
    }
    let token = stack.token("soak");
    let mut ws = Ws::connect(&stack.ws_url(0, "soak-1", &token)).await;
    ws.next(Duration::from_secs(5)).await.expect("status");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut accepted = BTreeSet::new();
    let mut ends: BTreeMap<String, u32> = BTreeMap::new();
    let mut rng_state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut restarts = 0;
    let mut submitted = 0;
    while Instant::now() < deadline && (submitted < jobs || accepted.len() > ends.len()) {
        if submitted < jobs {
            let body = json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": submitted}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "soak"}}},
                "client_id": "soak-1"});
            let (status, a) = stack.post_prompt(submitted % 2, &token, &body).await;
            if status == 200 {
                accepted.insert(a["prompt_id"].as_str().unwrap_or("").to_owned());
            }
            submitted += 1;
        }
        // Now and then kill a worker (SIGKILL) and start a new one on its backends.
        if next_rand() % 40 == 0 {
            let w = (next_rand() % 2) as usize;
            let name = format!("w{}", w + 1);
            stack.kill(&name);
            stack.procs.retain(|p| p.name != name);
            tokio::time::sleep(Duration::from_millis(200)).await;
            stack.spawn_worker_for(&name, &[w * 2, w * 2 + 1]);
            restarts += 1;
        }
        // Drain whatever events are waiting.
        while let Some(Frame::Json(v)) = ws.next(Duration::from_millis(5)).await {
            if v["type"] == "executing" && v["data"]["node"].is_null() {
                if let Some(p) = v["data"]["prompt_id"].as_str() {
                    *ends.entry(p.to_owned()).or_default() += 1;
                }
            }
        }
    }
    // Let the last events arrive.
    while let Some(Frame::Json(v)) = ws.next(Duration::from_secs(3)).await {
        if v["type"] == "executing" && v["data"]["node"].is_null() {
            if let Some(p) = v["data"]["prompt_id"].as_str() {
                *ends.entry(p.to_owned()).or_default() += 1;
            }
        }
    }
    let mut completed = 0;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = Vec::new();
    for id in &accepted {
        let (_, v) = stack.get_json(1, &token, &format!("/history/{id}")).await;
        match v.get(id) {
            Some(e) if e["status"]["status_str"] == "success" => completed += 1,
            Some(e) => {
                let msgs = e["status"]["messages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let reason = msgs
                    .last()
                    .map(|m| m[1]["exception_message"].as_str().unwrap_or("?").to_owned())
                    .unwrap_or_default();
                *failed.entry(reason).or_default() += 1;
            }
            None => lost.push(id.clone()),
        }
    }
    let duplicated: Vec<&String> = ends
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    println!(
        "soak: {:.0}s, worker restarts {restarts}",
        started.elapsed().as_secs_f64()
    );
    println!("accepted   {}", accepted.len());
    println!("completed  {completed}");
    println!("failed     {} {failed:?}", failed.values().sum::<usize>());
    println!("lost       {}", lost.len());
    println!("duplicated {}", duplicated.len());
    assert!(lost.is_empty(), "lost jobs: {lost:?}");
    assert!(
        duplicated.is_empty(),
        "jobs that ended twice: {duplicated:?}"
    );
    let _: Value = Value::Null;
}
