//! Fair share, quotas and capability routing with real processes: gateways, workers, simulated
//! backends with different node types and model lists, and a real Redis.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Stack, StackOptions};
use serde_json::{json, Value};

fn basic(tag: &str) -> Value {
    json!({"prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": tag}}
    }})
}

fn invert(tag: &str) -> Value {
    json!({"prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": tag}}
    }})
}

/// A graph loading checkpoint `ckpt` (optionally inverting the decoded image).
fn checkpoint(ckpt: &str, tag: &str, with_invert: bool) -> Value {
    let mut p = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": tag}}
    });
    if with_invert {
        p["5"] = json!({"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}});
        p["4"]["inputs"]["images"] = json!(["5", 0]);
    }
    json!({ "prompt": p })
}

async fn store_of(stack: &Stack) -> store::Store {
    store::Store::connect(stack.redis.store_config())
        .await
        .unwrap()
}

/// The pool-wide start order of a job (its latest lease id).
async fn claimed(s: &store::Store, uid: &str, pid: &str) -> (u64, u64) {
    let rec = s
        .job("default", uid, pid)
        .await
        .unwrap()
        .expect("job record");
    let id = rec.claimed.expect("job started");
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// How many times each backend ran the job saved under `tag` (from the sims' own histories).
async fn runs_of(stack: &Stack, tags: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> =
        tags.iter().map(|t| (t.clone(), Vec::new())).collect();
    for (i, b) in stack.backends.iter().enumerate() {
        let h: Value = stack
            .http
            .get(format!("{b}/history"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for entry in h.as_object().unwrap().values() {
            let prefix = entry["prompt"][2]
                .as_object()
                .and_then(|g| {
                    g.values()
                        .find(|n| n["class_type"] == "SaveImage")
                        .and_then(|n| n["inputs"]["filename_prefix"].as_str())
                })
                .unwrap_or("")
                .to_owned();
            if let Some(v) = out.get_mut(&prefix) {
                v.push(i);
            }
        }
    }
    out
}

async fn wait_idle(stack: &Stack, token: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, q) = stack.get_json(0, token, "/queue").await;
        let busy = q["queue_running"].as_array().map_or(0, Vec::len)
            + q["queue_pending"].as_array().map_or(0, Vec::len);
        if busy == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue never drained: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queue_counts(stack: &Stack, token: &str) -> (usize, usize) {
    let (_, q) = stack.get_json(0, token, "/queue").await;
    (
        q["queue_running"].as_array().map_or(0, Vec::len),
        q["queue_pending"].as_array().map_or(0, Vec::len),
    )
}

#[tokio::test]
async fn a_newcomer_gets_the_next_free_backends_and_weights_share_two_to_one() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        env: vec![(
            "COMFY_BROKER__GATEWAY__ROLES__POWER__WEIGHT".into(),
            "2".into(),
        )],
        ..StackOptions::default()
    })
    .await;
    // Slow enough that no job of a's ends between seeing two running and b's submits.
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 150})).await;
    }
    let s = store_of(&stack).await;
    let a = stack.token("ann");
    let b = stack.token("bob");
    let mut a_ids = Vec::new();
    for i in 0..20 {
        a_ids.push(stack.submit(0, &a, &basic(&format!("a{i}"))).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_counts(&stack, &a).await.0 < 2 {
        assert!(Instant::now() < deadline, "a's jobs never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b0 = stack.submit(0, &b, &basic("b0")).await;
    let b1 = stack.submit(0, &b, &basic("b1")).await;
    wait_idle(&stack, &a, 30).await;
    wait_idle(&stack, &b, 30).await;
    let mut order = Vec::new();
    for id in &a_ids {
        order.push((claimed(&s, "id-ann", id).await, "a"));
    }
    order.push((claimed(&s, "id-bob", &b0).await, "b"));
    order.push((claimed(&s, "id-bob", &b1).await, "b"));
    order.sort();
    let who: Vec<&str> = order.iter().map(|(_, w)| *w).collect();
    assert_eq!(&who[..4], ["a", "a", "b", "b"], "start order {who:?}");

    // Weights 2:1 (role power has weight 2): both queue 30 jobs, interleaved.
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 40})).await;
    }
    let p = stack.token_with_role("pat", auth::Role::Power);
    let u = stack.token("uma");
    let mut jobs = Vec::new();
    for i in 0..30 {
        jobs.push((
            "id-pat",
            stack.submit(0, &p, &basic(&format!("p{i}"))).await,
        ));
        jobs.push((
            "id-uma",
            stack.submit(0, &u, &basic(&format!("u{i}"))).await,
        ));
    }
    wait_idle(&stack, &p, 60).await;
    wait_idle(&stack, &u, 60).await;
    let mut starts = Vec::new();
    for (uid, pid) in &jobs {
        starts.push((claimed(&s, uid, pid).await, *uid));
    }
    starts.sort();
    let pat = starts[..30].iter().filter(|(_, u)| *u == "id-pat").count();
    assert!(
        (19..=21).contains(&pat),
        "weight 2 user got {pat} of the first 30 starts"
    );
}

#[tokio::test]
async fn over_the_queued_limit_is_429_and_the_running_limit_holds_with_idle_backends() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        env: vec![
            (
                "COMFY_BROKER__GATEWAY__ROLES__USER__MAX_QUEUED".into(),
                "3".into(),
            ),
            (
                "COMFY_BROKER__GATEWAY__ROLES__USER__MAX_RUNNING".into(),
                "1".into(),
            ),
        ],
        ..StackOptions::default()
    })
    .await;
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 150})).await;
    }
    let s = store_of(&stack).await;
    let a = stack.token("ada");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(stack.submit(0, &a, &basic(&format!("q{i}"))).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_counts(&stack, &a).await != (1, 2) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            queue_counts(&stack, &a).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ids.push(stack.submit(0, &a, &basic("q3")).await);
    let r = stack
        .http
        .post(format!("{}/prompt", stack.gateways[0]))
        .bearer_auth(&a)
        .json(&basic("q4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "queue_full", "{body}");
    assert_eq!(body["error"]["extra_info"]["limit"], "max_queued", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_queued"));
    assert_eq!(body["node_errors"], json!({}));
    let (running, pending) = queue_counts(&stack, &a).await;
    assert!(
        running <= 1 && running + pending == 4,
        "{running} {pending}"
    );

    // Another user runs on the idle backend meanwhile, while ada stays at one running job.
    let c = stack.token("cy");
    let cid = stack.submit(0, &c, &basic("c0")).await;
    stack.wait_history(0, &c, &cid).await;
    let (running, pending) = queue_counts(&stack, &a).await;
    assert!(running == 1 && pending >= 1, "{running} {pending}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (running, pending) = queue_counts(&stack, &a).await;
        assert!(running <= 1, "running limit broken: {running}");
        if running + pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never two of ada's jobs at once: their run intervals do not overlap.
    let mut spans = Vec::new();
    for id in &ids {
        let rec = s.job("default", "id-ada", id).await.unwrap().unwrap();
        spans.push((rec.started_ms.unwrap(), rec.ended_ms.unwrap()));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping runs {spans:?}");
    }
}

#[tokio::test]
async fn jobs_go_only_to_backends_with_their_checkpoint_and_node_types() {
    let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 3,
        backend_sim_args: vec![
            arg(&["--model", "checkpoints/x.safetensors"]),
            arg(&[
                "--model",
                "checkpoints/y.safetensors",
                "--hide-node",
                "ImageInvert",
            ]),
            arg(&[
                "--model",
                "checkpoints/y.safetensors",
                "--hide-node",
                "ImageInvert",
            ]),
        ],
        ..StackOptions::default()
    })
    .await;
    let t = stack.token("rio");
    // Every backend's catalogue is in before graphs are judged.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = stack.get_json(0, &t, "/models/checkpoints").await;
        if m.as_array().is_some_and(|l| l.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "models never published: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A checkpoint no backend has: 400 at submit, nothing queued.
    let (status, body) = stack
        .post_prompt(0, &t, &checkpoint("z.safetensors", "z", false))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["type"], "value_not_in_list",
        "{body}"
    );
    // y and ImageInvert exist in the pool, but never on the same backend.
    let (status, body) = stack
        .post_prompt(0, &t, &checkpoint("y.safetensors", "yi", true))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["type"], "value_not_in_list",
        "{body}"
    );
    assert_eq!(queue_counts(&stack, &t).await, (0, 0));

    // Backend 0 is slow; x jobs and the ImageInvert job wait for it while 1 and 2 sit idle.
    stack.sim_faults(0, json!({"work_ms": 200})).await;
    let mut x = Vec::new();
    for i in 0..3 {
        x.push(
            stack
                .submit(0, &t, &checkpoint("x.safetensors", &format!("x{i}"), false))
                .await,
        );
    }
    let inv = stack.submit(0, &t, &invert("inv")).await;
    let y = stack
        .submit(0, &t, &checkpoint("y.safetensors", "y0", false))
        .await;
    stack.wait_history(0, &t, &y).await;
    // y ran at once on an idle backend; the ImageInvert job is still waiting for backend 0.
    let (_, q) = stack.get_json(0, &t, "/queue").await;
    let pending: Vec<&str> = q["queue_pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i[1].as_str())
        .collect();
    assert!(pending.contains(&inv.as_str()), "{q}");
    wait_idle(&stack, &t, 30).await;
    let tags: Vec<String> = ["x0", "x1", "x2", "inv", "y0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let runs = runs_of(&stack, &tags).await;
    for tag in ["x0", "x1", "x2", "inv"] {
        assert_eq!(runs[tag], vec![0], "{tag} ran on {:?}", runs[tag]);
    }
    assert_eq!(runs["y0"].len(), 1);
    assert_ne!(runs["y0"][0], 0);
    let s = store_of(&stack).await;
    let inv_start = claimed(&s, "id-rio", &inv).await;
    for id in &x {
        let h = stack.wait_history(0, &t, id).await;
        assert_eq!(h["status"]["status_str"], "success", "{h}");
        assert!(claimed(&s, "id-rio", id).await < inv_start);
    }
}

#[tokio::test]
async fn two_workers_two_gateways_200_jobs_from_5_users_run_once_in_order() {
    let stack = Stack::with(StackOptions {
        gateways: 2,
        backends: 4,
        workers: vec![vec![0, 1], vec![2, 3]],
        ..StackOptions::default()
    })
    .await;
    let s = store_of(&stack).await;
    let users: Vec<(String, String)> = (0..5)
        .map(|u| (format!("id-u{u}"), stack.token(&format!("u{u}"))))
        .collect();
    let per_user = futures::future::join_all(users.iter().enumerate().map(|(u, (_, tok))| {
        let stack = &stack;
        async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                let front = i % 8 == 7;
                let mut body = basic(&format!("u{u}j{i}"));
                if front {
                    body["front"] = json!(true);
                }
                ids.push((stack.submit(i % 2, tok, &body).await, front));
            }
            ids
        }
    }))
    .await;
    for (_, tok) in &users {
        wait_idle(&stack, tok, 120).await;
    }
    let tags: Vec<String> = (0..5)
        .flat_map(|u| (0..40).map(move |i| format!("u{u}j{i}")))
        .collect();
    let runs = runs_of(&stack, &tags).await;
    for (tag, on) in &runs {
        assert_eq!(on.len(), 1, "{tag} ran {} times", on.len());
    }
    for ((uid, tok), ids) in users.iter().zip(&per_user) {
        let mut last = (0, 0);
        for (pid, front) in ids {
            let h = stack.wait_history(0, tok, pid).await;
            assert_eq!(h["status"]["status_str"], "success");
            if *front {
                continue;
            }
            let c = claimed(&s, uid, pid).await;
            assert!(c > last, "{uid}: {pid} started out of order");
            last = c;
        }
    }
}

#[tokio::test]
async fn a_users_own_limit_set_from_the_command_line_wins_over_the_default() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 1,
        ..StackOptions::default()
    })
    .await;
    stack.sim_faults(0, json!({"work_ms": 300})).await;
    let out = stack.cli(&["user", "add", "lim", "--role", "user"], "s3cret-pass!\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = stack.cli(&["user", "set-limits", "lim", "--max-queued", "1"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = stack.cli(&["user", "list"], "");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("lim ") && l.contains(" 1 ")),
        "{listed}"
    );
    let r = stack
        .http
        .post(format!("{}/login", stack.gateways[0]))
        .json(&json!({"username": "lim", "password": "s3cret-pass!"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let t = v["jwt_token"].as_str().expect("jwt_token").to_owned();
    stack.submit(0, &t, &basic("l0")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_counts(&stack, &t).await != (1, 0) {
        assert!(Instant::now() < deadline, "first job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.submit(0, &t, &basic("l1")).await;
    let (status, body) = stack.post_prompt(0, &t, &basic("l2")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["extra_info"]["max_queued"], 1, "{body}");
    wait_idle(&stack, &t, 20).await;
}

#[tokio::test]
async fn a_role_restricted_to_labels_runs_only_on_labelled_backends() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 2,
        workers: vec![vec![0], vec![1]],
        worker_args: vec![vec!["--label".into(), "tier=premium".into()]],
        env: vec![(
            "COMFY_BROKER__GATEWAY__ROLES__POWER__REQUIRE_LABELS__TIER".into(),
            "premium".into(),
        )],
        ..StackOptions::default()
    })
    .await;
    for b in 0..2 {
        stack.sim_faults(b, json!({"work_ms": 30})).await;
    }
    let p = stack.token_with_role("pia", auth::Role::Power);
    let u = stack.token("ulf");
    let mut tags = Vec::new();
    for i in 0..6 {
        stack.submit(0, &p, &basic(&format!("prem{i}"))).await;
        stack.submit(0, &u, &basic(&format!("std{i}"))).await;
        tags.push(format!("prem{i}"));
        tags.push(format!("std{i}"));
    }
    wait_idle(&stack, &p, 30).await;
    wait_idle(&stack, &u, 30).await;
    let runs = runs_of(&stack, &tags).await;
    for (tag, on) in &runs {
        assert_eq!(on.len(), 1, "{tag} ran {on:?}");
        if tag.starts_with("prem") {
            assert_eq!(on, &vec![0], "{tag} ran on an unlabelled backend");
        }
    }
    // The unrestricted user used the other backend too.
    assert!(runs
        .iter()
        .any(|(t, on)| t.starts_with("std") && on == &vec![1]));
}
