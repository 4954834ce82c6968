//! The main job end to end, with real processes: gateways, a worker and simulated ComfyUI
//! backends over a real Redis.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{basic_prompt, Frame, Stack, Ws};
use serde_json::{json, Value};

/// The WebSocket message types real ComfyUI sent in trace 01 after the socket's first status.
fn trace_ws_types(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/comfyui-traces")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "ws_recv" && v["frame"] == "text")
        .map(|v| v["msg"]["type"].as_str().unwrap_or("").to_owned())
        .skip(1)
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap();
    (img.width(), img.height())
}

#[tokio::test]
async fn socket_on_one_gateway_sees_a_job_submitted_on_another() {
    let stack = Stack::start(2, 1).await;
    let token = stack.token("alice");
    let cid = "c3bdcd477faf453bbb864204fa3bd83f";
    let mut ws = Ws::connect(&stack.ws_url(0, cid, &token)).await;
    let Some(Frame::Json(first)) = ws.next(Duration::from_secs(5)).await else {
        panic!("no first message")
    };
    assert_eq!(first["type"], "status");
    assert_eq!(first["data"]["sid"], cid);
    assert_eq!(first["data"]["status"]["exec_info"]["queue_remaining"], 0);

    let (status, answer) = stack
        .post_prompt(
            1,
            &token,
            &json!({"prompt": basic_prompt(96, 80), "client_id": cid}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["prompt_id"].as_str().unwrap().to_owned();
    assert!(protocol::ids::is_canonical_uuid(&pid));
    assert!(answer["number"].is_number());
    assert_eq!(answer["node_errors"], json!({}));

    let msgs = ws.until_done(&pid).await;
    let types: Vec<String> = msgs
        .iter()
        .map(|m| m["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, trace_ws_types("01_basic_save.jsonl"), "{msgs:#?}");
    for m in &msgs {
        if let Some(p) = m["data"].get("prompt_id") {
            assert_eq!(p, &json!(pid), "{m}");
        }
    }
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(image["subfolder"], json!(pid));
    assert_eq!(image["type"], "output");

    let entry = stack.wait_history(1, &token, &pid).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(entry["prompt"][1], json!(pid));
    assert_eq!(entry["outputs"]["2"]["images"][0], *image);

    let filename = image["filename"].as_str().unwrap();
    let r = stack
        .http
        .get(format!("{}/view", stack.gateways[0]))
        .query(&[
            ("filename", filename),
            ("subfolder", &pid),
            ("type", "output"),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(png_size(&bytes), (96, 80));
}

#[tokio::test]
async fn two_users_five_jobs_two_backends_stay_apart() {
    let stack = Stack::start(2, 2).await;
    let users = ["ann", "bob"];
    let tokens: Vec<String> = users.iter().map(|u| stack.token(u)).collect();
    let mut sockets = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let mut ws = Ws::connect(&stack.ws_url(i % 2, &format!("client-{i}"), t)).await;
        assert!(matches!(
            ws.next(Duration::from_secs(5)).await,
            Some(Frame::Json(_))
        ));
        sockets.push(ws);
    }
    let mut mine: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for j in 0..5 {
        let u = j % 2;
        let (status, a) = stack
            .post_prompt(
                j % 2,
                &tokens[u],
                &json!({"prompt": basic_prompt(32 + j as u32, 32), "client_id": format!("client-{u}")}),
            )
            .await;
        assert_eq!(status, 200, "{a}");
        mine[u].push(a["prompt_id"].as_str().unwrap().to_owned());
        // Each user's queue holds only their own jobs.
        for (v, t) in tokens.iter().enumerate() {
            let (_, q) = stack.get_json(1, t, "/queue").await;
            for item in q["queue_running"]
                .as_array()
                .unwrap()
                .iter()
                .chain(q["queue_pending"].as_array().unwrap())
            {
                assert!(
                    mine[v].contains(&item[1].as_str().unwrap().to_owned()),
                    "{q}"
                );
            }
        }
    }
    for u in 0..2 {
        for pid in &mine[u] {
            let e = stack.wait_history(u, &tokens[u], pid).await;
            assert_eq!(e["status"]["status_str"], "success");
        }
    }
    // Every socket saw its own jobs finish and nothing of the other user's.
    for (u, ws) in sockets.iter_mut().enumerate() {
        let mut seen = BTreeSet::new();
        let mut done = BTreeSet::new();
        while done.len() < mine[u].len() {
            match ws.next(Duration::from_secs(20)).await {
                Some(Frame::Json(v)) => {
                    if let Some(p) = v["data"].get("prompt_id").and_then(Value::as_str) {
                        assert!(mine[u].contains(&p.to_owned()), "user {u} saw {v}");
                        seen.insert(p.to_owned());
                        if v["type"] == "executing" && v["data"]["node"].is_null() {
                            done.insert(p.to_owned());
                        }
                    }
                }
                Some(Frame::Binary(_)) => {}
                None => panic!("socket of user {u} closed"),
            }
        }
        assert_eq!(seen.len(), mine[u].len());
    }
    for u in 0..2 {
        let other = 1 - u;
        let (_, h) = stack.get_json(0, &tokens[u], "/history").await;
        let ids: BTreeSet<String> = h.as_object().unwrap().keys().cloned().collect();
        assert_eq!(ids, mine[u].iter().cloned().collect::<BTreeSet<_>>());
        // The other user's history entry and files are invisible.
        let pid = &mine[other][0];
        let (_, e) = stack
            .get_json(0, &tokens[u], &format!("/history/{pid}"))
            .await;
        assert_eq!(e, json!({}));
        let (_, theirs) = stack
            .get_json(0, &tokens[other], &format!("/history/{pid}"))
            .await;
        let img = &theirs[pid]["outputs"]["2"]["images"][0];
        let url = format!("{}/view", stack.gateways[1]);
        let q = [
            ("filename", img["filename"].as_str().unwrap()),
            ("subfolder", img["subfolder"].as_str().unwrap()),
            ("type", "output"),
        ];
        let owner = stack
            .http
            .get(&url)
            .query(&q)
            .bearer_auth(&tokens[other])
            .send()
            .await
            .unwrap();
        assert_eq!(owner.status(), 200);
        let guess = stack
            .http
            .get(&url)
            .query(&q)
            .bearer_auth(&tokens[u])
            .send()
            .await
            .unwrap();
        assert_eq!(guess.status(), 404);
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_queued() {
    let stack = Stack::start(1, 1).await;
    let token = stack.token("carol");
    let url = format!("{}/prompt", stack.gateways[0]);
    let good = json!({"prompt": basic_prompt(8, 8)});

    // No token, a bad signature, an expired token.
    let r = stack.http.post(&url).json(&good).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["type"].is_string(), "{body}");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let r = stack
        .http
        .post(&url)
        .bearer_auth(&forged)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let keys = auth::JwtKeys::new(auth::JwtConfig {
        secret: common::SECRET.into(),
        ..auth::JwtConfig::default()
    })
    .unwrap();
    let (_, mut claims) = keys
        .mint(
            "id-carol",
            "carol",
            auth::Role::User,
            Duration::from_secs(60),
        )
        .unwrap();
    claims.exp -= 7200;
    let expired = keys.sign(&claims).unwrap();
    let r = stack
        .http
        .post(&url)
        .bearer_auth(&expired)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Not JSON → 400 JSON (ComfyUI would answer 500 text).
    let r = stack
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["type"].is_string());

    // Unknown node type.
    let (s, body) = stack
        .post_prompt(
            0,
            &token,
            &json!({"prompt": {"1": {"class_type": "NoSuchNodeType", "inputs": {}},
                               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["type"], "invalid_prompt");
    assert_eq!(body["node_errors"], json!({}));

    // Missing input.
    let (s, body) = stack
        .post_prompt(
            0,
            &token,
            &json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                               "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t"}}}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        body["node_errors"]["2"]["errors"][0]["type"],
        "required_input_missing"
    );

    // Over the configured body limit.
    let huge = json!({"prompt": basic_prompt(8, 8), "extra_data": {"pad": "x".repeat(common::PROMPT_LIMIT + 1)}});
    let r = stack
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Nothing was queued or run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, q) = stack.get_json(0, &token, "/queue").await;
    assert_eq!(q, json!({"queue_running": [], "queue_pending": []}));
    let (_, h) = stack.get_json(0, &token, "/history").await;
    assert_eq!(h, json!({}));
}

#[tokio::test]
async fn reused_prompt_id_returns_the_first_answer_and_leaks_nothing() {
    let stack = Stack::start(1, 1).await;
    let alice = stack.token("alice");
    let mallory = stack.token("mallory");
    let pid = "0b0e3e6e-7d5a-4f4e-9a52-3a0f6d2f1c11";
    let body =
        json!({"prompt": basic_prompt(16, 16), "prompt_id": pid, "client_id": "alice-phone"});
    let (s1, a1) = stack.post_prompt(0, &alice, &body).await;
    let (s2, a2) = stack.post_prompt(0, &alice, &body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a1, a2);
    assert_eq!(a1["prompt_id"], pid);
    let first = stack.wait_history(0, &alice, pid).await;
    let (_, jobs) = stack.get_json(0, &alice, "/api/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");

    // Mallory reusing the id gets her own job and learns nothing of alice's.
    let (s3, a3) = stack
        .post_prompt(
            0,
            &mallory,
            &json!({"prompt": basic_prompt(24, 24), "prompt_id": pid}),
        )
        .await;
    assert_eq!(s3, 200, "{a3}");
    let hers = stack.wait_history(0, &mallory, pid).await;
    assert_ne!(hers["prompt"][3], first["prompt"][3]);
    assert_eq!(hers["prompt"][2]["1"]["inputs"]["width"], 24);
    let (_, again) = stack.get_json(0, &alice, &format!("/history/{pid}")).await;
    assert_eq!(again[pid]["prompt"][2]["1"]["inputs"]["width"], 16);

    // Not a canonical UUID.
    for bad in [
        "not-a-uuid",
        "0B0E3E6E-7D5A-4F4E-9A52-3A0F6D2F1C11",
        "0b0e3e6e7d5a4f4e9a523a0f6d2f1c11",
    ] {
        let (s, b) = stack
            .post_prompt(
                0,
                &alice,
                &json!({"prompt": basic_prompt(8, 8), "prompt_id": bad}),
            )
            .await;
        assert_eq!(s, 400, "{bad}: {b}");
        assert_eq!(b["error"]["type"], "invalid_prompt_id");
    }
}
