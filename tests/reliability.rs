//! Nothing lost: crashed workers, dying backends, cluster-wide interrupts and Redis restarts,
//! with real processes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{basic_prompt, fast_worker_env, Frame, Stack, StackOptions, Ws};
use serde_json::{json, Value};

/// Reads frames until `executing {node: null}` for `pid`, then `linger` more; returns the types
/// of every JSON message about `pid` (plus statuses).
async fn collect_for(ws: &mut Ws, pid: &str, linger: Duration) -> Vec<String> {
    let mut types = Vec::new();
    let mut done_at: Option<Instant> = None;
    loop {
        let wait = match done_at {
            Some(t) => match linger.checked_sub(t.elapsed()) {
                Some(left) => left,
                None => return types,
            },
            None => Duration::from_secs(30),
        };
        match ws.next(wait).await {
            Some(Frame::Json(v)) => {
                let about = v["data"].get("prompt_id").and_then(Value::as_str);
                if about == Some(pid) {
                    let t = v["type"].as_str().unwrap_or("").to_owned();
                    if t == "executing" && v["data"]["node"].is_null() {
                        done_at.get_or_insert_with(Instant::now);
                        types.push("done".into());
                    } else {
                        types.push(t);
                    }
                }
            }
            Some(Frame::Binary(_)) => {}
            None if done_at.is_some() => return types,
            None => panic!("socket closed before {pid} finished: {types:?}"),
        }
    }
}

fn count(types: &[String], t: &str) -> usize {
    types.iter().filter(|x| *x == t).count()
}

fn slow_prompt() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}}
    })
}

#[tokio::test]
async fn a_worker_killed_mid_job_hands_the_job_to_another_and_the_client_sees_one_ending() {
    let mut stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        workers: vec![vec![0]],
        worker_env: fast_worker_env(),
        ..StackOptions::default()
    })
    .await;
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 400})).await;
    }
    let token = stack.token("kim");
    let mut ws = Ws::connect(&stack.ws_url(0, "kim-1", &token)).await;
    ws.next(Duration::from_secs(5)).await.unwrap();
    let pid = stack
        .submit(
            0,
            &token,
            &json!({"prompt": slow_prompt(), "client_id": "kim-1"}),
        )
        .await;
    // Wait until it runs on w1's backend, then start w2 (other backend) and kill w1 hard.
    loop {
        match ws.next(Duration::from_secs(10)).await {
            Some(Frame::Json(v)) if v["type"] == "executing" && v["data"]["node"] == "1" => break,
            Some(_) => continue,
            None => panic!("no executing"),
        }
    }
    stack.spawn_worker_for("w2", &[1]);
    stack.kill("w1");
    let types = collect_for(&mut ws, &pid, Duration::from_millis(1500)).await;
    assert_eq!(count(&types, "execution_success"), 1, "{types:?}");
    assert_eq!(count(&types, "done"), 1, "{types:?}");
    assert_eq!(count(&types, "execution_error"), 0, "{types:?}");
    let entry = stack.wait_history(0, &token, &pid).await;
    assert_eq!(entry["status"]["status_str"], "success");
    let (_, job) = stack.get_json(0, &token, &format!("/api/jobs/{pid}")).await;
    assert_eq!(job["status"], "completed", "{job}");
}

#[tokio::test]
async fn a_job_that_kills_every_backend_ends_as_an_error_and_is_dead_lettered() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        workers: vec![vec![0, 1]],
        worker_env: fast_worker_env()
            .into_iter()
            .chain([(
                "COMFY_BROKER__WORKER__MAX_ATTEMPTS".to_string(),
                "2".to_string(),
            )])
            .collect(),
        ..StackOptions::default()
    })
    .await;
    // Node 2 takes down whichever backend runs it.
    for b in 0..2 {
        stack.sim_faults(b, json!({"crash_at": "2"})).await;
    }
    let token = stack.token("lee");
    let mut ws = Ws::connect(&stack.ws_url(0, "lee-1", &token)).await;
    ws.next(Duration::from_secs(5)).await.unwrap();
    let pid = stack
        .submit(
            0,
            &token,
            &json!({"prompt": slow_prompt(), "client_id": "lee-1"}),
        )
        .await;
    let types = collect_for(&mut ws, &pid, Duration::from_millis(500)).await;
    assert_eq!(count(&types, "execution_error"), 1, "{types:?}");
    assert_eq!(count(&types, "done"), 1, "{types:?}");
    let entry = stack.wait_history(0, &token, &pid).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let msgs = entry["status"]["messages"].as_array().unwrap();
    let (kind, data) = (&msgs[msgs.len() - 1][0], &msgs[msgs.len() - 1][1]);
    assert_eq!(kind, "execution_error");
    assert!(
        data["exception_message"]
            .as_str()
            .unwrap_or("")
            .contains("attempt"),
        "{data}"
    );
    // The operator sees it in the dead letters.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .args(["jobs", "dead"])
        .env_remove("REDIS_URL")
        .env("COMFY_BROKER__REDIS__URL", &stack.redis.url)
        .env("COMFY_BROKER__REDIS__KEY_PREFIX", &stack.redis.prefix)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pid));
}

#[tokio::test]
async fn interrupts_land_on_the_right_job_and_never_on_another_users() {
    let stack = Stack::with(StackOptions {
        gateways: 2,
        backends: 3,
        workers: vec![vec![0], vec![1], vec![2]],
        worker_env: fast_worker_env(),
        ..StackOptions::default()
    })
    .await;
    for b in 0..3 {
        stack.sim_faults(b, json!({"work_ms": 700})).await;
    }
    let ann = stack.token("ann");
    let bob = stack.token("bob");
    let a1 = stack
        .submit(0, &ann, &json!({"prompt": slow_prompt()}))
        .await;
    let a2 = stack
        .submit(1, &ann, &json!({"prompt": slow_prompt()}))
        .await;
    let b1 = stack
        .submit(0, &bob, &json!({"prompt": slow_prompt()}))
        .await;
    // Wait until all three run.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, qa) = stack.get_json(0, &ann, "/queue").await;
        let (_, qb) = stack.get_json(0, &bob, "/queue").await;
        if qa["queue_running"].as_array().unwrap().len() == 2
            && qb["queue_running"].as_array().unwrap().len() == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never all ran: {qa} {qb}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Ann interrupts a1 by id on the other gateway; bob's global interrupt touches only his.
    let r = stack
        .http
        .post(format!("{}/interrupt", stack.gateways[1]))
        .bearer_auth(&ann)
        .json(&json!({"prompt_id": a1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = stack
        .http
        .post(format!("{}/interrupt", stack.gateways[0]))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = |e: &Value| {
        let m = e["status"]["messages"].as_array().unwrap();
        m[m.len() - 1][0].as_str().unwrap().to_owned()
    };
    let ea1 = stack.wait_history(0, &ann, &a1).await;
    let ea2 = stack.wait_history(0, &ann, &a2).await;
    let eb1 = stack.wait_history(0, &bob, &b1).await;
    assert_eq!(last(&ea1), "execution_interrupted");
    assert_eq!(last(&ea2), "execution_success");
    assert_eq!(last(&eb1), "execution_interrupted");
}

#[tokio::test]
async fn redis_restarting_under_load_loses_and_repeats_nothing() {
    let mut stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        own_redis_with_aof: true,
        // Leases outlive the outage: a Redis outage longer than `worker.lease_timeout` may run
        // a job twice (never lose it); this test checks the shorter-outage promise.
        worker_env: fast_worker_env()
            .into_iter()
            .filter(|(k, _)| !k.ends_with("LEASE_TIMEOUT"))
            .chain([(
                "COMFY_BROKER__WORKER__LEASE_TIMEOUT".to_string(),
                "10s".to_string(),
            )])
            .collect(),
        ..StackOptions::default()
    })
    .await;
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 20})).await;
    }
    let token = stack.token("max");
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            stack
                .submit(0, &token, &json!({"prompt": basic_prompt(8 + i, 8)}))
                .await,
        );
    }
    // Restart Redis (clean shutdown, AOF) while jobs are queued and running.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.redis.stop();
    // During the outage the API answers 503 with Retry-After, and does not hang.
    let t0 = Instant::now();
    let r = stack
        .http
        .get(format!("{}/queue", stack.gateways[0]))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.redis.restart();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut outcomes = BTreeMap::new();
    for id in &ids {
        loop {
            let (status, v) = stack.get_json(0, &token, &format!("/history/{id}")).await;
            if status == 200 {
                if let Some(e) = v.get(id) {
                    outcomes.insert(id.clone(), e["status"]["status_str"].clone());
                    break;
                }
            }
            assert!(Instant::now() < deadline, "job {id} never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(outcomes.len(), 50);
    assert!(outcomes.values().all(|s| s == "success"), "{outcomes:?}");
    // None ran twice: the backends executed exactly 50 prompts between them.
    let mut executed = 0;
    for b in &stack.backends {
        let h: Value = stack
            .http
            .get(format!("{b}/history"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        executed += h.as_object().unwrap().len();
    }
    assert_eq!(executed, 50);

    // A socket opened before the restart still gets events: the gateway re-subscribed.
    let mut ws = Ws::connect(&stack.ws_url(0, "max-1", &token)).await;
    ws.next(Duration::from_secs(5)).await.unwrap();
    stack.redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = loop {
        let (status, a) = stack
            .post_prompt(
                0,
                &token,
                &json!({"prompt": basic_prompt(9, 9), "client_id": "max-1"}),
            )
            .await;
        if status == 200 {
            break a["prompt_id"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let types = collect_for(&mut ws, &pid, Duration::from_millis(100)).await;
    assert_eq!(count(&types, "execution_success"), 1, "{types:?}");
}

#[tokio::test]
async fn a_dead_backend_is_taken_out_and_put_back_when_it_returns() {
    let mut stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        worker_env: fast_worker_env(),
        ..StackOptions::default()
    })
    .await;
    stack.sim_faults(0, json!({"work_ms": 300})).await;
    stack.sim_faults(1, json!({"work_ms": 300})).await;
    let token = stack.token("ivy");
    let first = stack
        .submit(0, &token, &json!({"prompt": slow_prompt()}))
        .await;
    let second = stack
        .submit(0, &token, &json!({"prompt": slow_prompt()}))
        .await;
    // Both backends are busy; kill backend 0 under its job.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.kill("sim0");
    for id in [&first, &second] {
        let e = stack.wait_history(0, &token, id).await;
        assert_eq!(e["status"]["status_str"], "success", "{e}");
    }
    // The registry shows it out; once it is back it is healthy and takes work again.
    let registry = |stack: &Stack| {
        let url = stack.redis.url.clone();
        let prefix = stack.redis.prefix.clone();
        async move {
            let s = store::Store::connect(store::StoreConfig {
                url,
                key_prefix: prefix,
                ..store::StoreConfig::default()
            })
            .await
            .unwrap();
            s.backends("default").await.unwrap()
        }
    };
    let port0 = stack.backends[0].rsplit(':').next().unwrap().to_owned();
    let state_of = |list: &Vec<store::BackendInfo>| {
        list.iter()
            .find(|b| b.id.ends_with(&port0))
            .map(|b| b.state)
    };
    assert_eq!(
        state_of(&registry(&stack).await),
        Some(store::BackendState::Unhealthy)
    );
    stack.restart_backend(0).await;
    stack.sim_faults(0, json!({"work_ms": 0})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while state_of(&registry(&stack).await) != Some(store::BackendState::Healthy) {
        assert!(Instant::now() < deadline, "backend never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With backend 1 slowed right down, the next job runs on the returned backend 0.
    stack.sim_faults(1, json!({"work_ms": 5000})).await;
    let blocker = stack
        .submit(0, &token, &json!({"prompt": slow_prompt()}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = stack
        .submit(0, &token, &json!({"prompt": basic_prompt(12, 12)}))
        .await;
    let e = stack.wait_history(0, &token, &quick).await;
    assert_eq!(e["status"]["status_str"], "success");
    let r = stack
        .http
        .post(format!("{}/interrupt", stack.gateways[0]))
        .bearer_auth(&token)
        .json(&json!({"prompt_id": blocker}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_client_reconnecting_on_another_gateway_is_told_where_its_job_stands() {
    let stack = Stack::with(StackOptions {
        gateways: 2,
        backends: 1,
        worker_env: fast_worker_env(),
        ..StackOptions::default()
    })
    .await;
    stack.sim_faults(0, json!({"work_ms": 400})).await;
    let token = stack.token("joe");
    let mut ws = Ws::connect(&stack.ws_url(0, "joe-phone", &token)).await;
    ws.next(Duration::from_secs(5)).await.unwrap();
    let pid = stack
        .submit(
            0,
            &token,
            &json!({"prompt": slow_prompt(), "client_id": "joe-phone"}),
        )
        .await;
    let mut node = None;
    while node.is_none() {
        if let Some(Frame::Json(v)) = ws.next(Duration::from_secs(10)).await {
            if v["type"] == "executing" && v["data"]["node"] == "2" {
                node = Some("2");
            }
        }
    }
    drop(ws);
    let mut again = Ws::connect(&stack.ws_url(1, "joe-phone", &token)).await;
    let Some(Frame::Json(first)) = again.next(Duration::from_secs(5)).await else {
        panic!("no status")
    };
    assert_eq!(first["type"], "status");
    assert_eq!(first["data"]["sid"], "joe-phone");
    assert_eq!(first["data"]["status"]["exec_info"]["queue_remaining"], 1);
    let Some(Frame::Json(replay)) = again.next(Duration::from_secs(5)).await else {
        panic!("no replay")
    };
    assert_eq!(replay, json!({"type": "executing", "data": {"node": "2"}}));
    let types = collect_for(&mut again, &pid, Duration::from_millis(200)).await;
    assert_eq!(count(&types, "execution_success"), 1, "{types:?}");
}
