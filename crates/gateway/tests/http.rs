//! REST behaviour of the gateway over real TCP and a real Redis.

mod common;

use std::time::Duration;

use auth::Role;
use bytes::Bytes;
use common::{basic_prompt, Env};
use files::{FileKey, FileKind};
use gateway::GatewayConfig;
use serde_json::{json, Value};
use store::{Finish, TerminalState};

async fn error_type(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{status} content-type {ct}"
    );
    (status, r.json().await.expect("json error body"))
}

async fn nothing_queued(env: &Env, uid: &str) {
    let q = env.store.queue("default", uid).await.unwrap();
    assert!(q.pending.is_empty() && q.running.is_empty(), "{q:?}");
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_are_401_json() {
    let env = Env::start().await;
    let r = env.http.get(env.url("/queue")).send().await.unwrap();
    let (s, body) = error_type(r).await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["type"], "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no token"));

    let forged = env.forged_token("u1");
    let r = env.get(&forged, "/api/queue").await;
    let (s, body) = error_type(r).await;
    assert_eq!(s, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Invalid"));
    assert!(!body.to_string().contains(&forged));

    let expired = env.expired_token("u1");
    let r = env
        .http
        .get(env.url(&format!("/queue?token={expired}")))
        .send()
        .await
        .unwrap();
    let (s, body) = error_type(r).await;
    assert_eq!(s, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // Not even POST /prompt reaches validation or the queue.
    let r = env
        .http
        .post(env.url("/prompt"))
        .body(json!({"prompt": basic_prompt()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    nothing_queued(&env, "u1").await;
}

#[tokio::test]
async fn every_token_carrier_works() {
    let env = Env::start().await;
    let t = env.token("u1");
    let ok =
        |r: reqwest::Response| async move { assert_eq!(r.status(), 200, "{:?}", r.text().await) };
    ok(env
        .http
        .get(env.url("/queue"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap())
    .await;
    ok(env
        .http
        .get(env.url("/queue"))
        .header("cookie", format!("theme=dark; jwt_token={t}"))
        .send()
        .await
        .unwrap())
    .await;
    ok(env
        .http
        .get(env.url(&format!("/queue?token={t}")))
        .send()
        .await
        .unwrap())
    .await;
    ok(env
        .http
        .get(env.url(&format!("/api/queue?access_token={t}")))
        .send()
        .await
        .unwrap())
    .await;
    // A client-sent comfy-user header changes nothing.
    let r = env
        .http
        .get(env.url("/queue"))
        .bearer_auth(&t)
        .header("comfy-user", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Probes need no token.
    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.http
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn browsers_are_redirected_to_login_but_api_paths_get_401() {
    let env = Env::start().await;
    let r = env
        .http
        .get(env.url("/queue"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/login");
    let r = env
        .http
        .get(env.url("/history"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let r = env
        .http
        .get(env.url("/api/queue"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_prompt_requests_are_json_errors_and_queue_nothing() {
    let cfg = GatewayConfig {
        max_prompt_bytes: 4096,
        ..GatewayConfig::default()
    };
    let env = Env::start_with(cfg, true).await;
    let t = env.token("u1");

    let (s, b) = error_type(env.post(&t, "/prompt", "this is not json").await).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("invalid_json"))
    );

    let (s, b) = error_type(env.post_json(&t, "/prompt", &json!({"prompt": "x"})).await).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["type"], "invalid_prompt");

    let (s, b) = error_type(
        env.post_json(&t, "/api/prompt", &json!({"client_id": "c"}))
            .await,
    )
    .await;
    assert_eq!((s, b["error"]["type"].as_str()), (400, Some("no_prompt")));

    let unknown = json!({"prompt": {"1": {"class_type": "NoSuchNodeType", "inputs": {}}}});
    let (s, b) = error_type(env.post_json(&t, "/prompt", &unknown).await).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["type"], "invalid_prompt");
    assert_eq!(b["node_errors"], json!({}));

    let mut missing = basic_prompt();
    missing["2"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("images");
    let (s, b) = error_type(
        env.post_json(&t, "/prompt", &json!({"prompt": missing}))
            .await,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        b["node_errors"]["2"]["errors"][0]["type"],
        "required_input_missing"
    );

    let no_outputs = json!({"prompt": {"1": basic_prompt()["1"].clone()}});
    let (s, b) = error_type(env.post_json(&t, "/prompt", &no_outputs).await).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("prompt_no_outputs"))
    );

    let bad_id =
        json!({"prompt": basic_prompt(), "prompt_id": "8D7994E5-5357-44EA-B604-91A54F408052"});
    let (s, b) = error_type(env.post_json(&t, "/prompt", &bad_id).await).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("invalid_prompt_id"))
    );

    let bad_client = json!({"prompt": basic_prompt(), "client_id": "has space"});
    let (s, _) = error_type(env.post_json(&t, "/prompt", &bad_client).await).await;
    assert_eq!(s, 400);

    let big = json!({"prompt": basic_prompt(), "extra_data": {"pad": "x".repeat(5000)}});
    let (s, b) = error_type(env.post_json(&t, "/prompt", &big).await).await;
    assert_eq!(s, 413);
    assert_eq!(b["error"]["type"], "request_too_large");

    // A guest may not run.
    let guest = env.token_role("g1", Role::Guest);
    let (s, b) = error_type(
        env.post_json(&guest, "/prompt", &json!({"prompt": basic_prompt()}))
            .await,
    )
    .await;
    assert_eq!(s, 403);
    assert!(b["error"]["message"].as_str().unwrap().contains("can_run"));

    nothing_queued(&env, "u1").await;
    nothing_queued(&env, "g1").await;
}

#[tokio::test]
async fn no_catalogue_yet_is_503_with_retry_after() {
    let env = Env::start_with(GatewayConfig::default(), false).await;
    let r = env
        .post_json(
            &env.token("u1"),
            "/prompt",
            &json!({"prompt": basic_prompt()}),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // As soon as a backend publishes, the next submit is accepted.
    env.store
        .publish_backend(&common::backend("b9"), Some(&common::object_info_bytes()))
        .await
        .unwrap();
    let r = env
        .post_json(
            &env.token("u1"),
            "/prompt",
            &json!({"prompt": basic_prompt()}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn submit_answers_like_comfyui_and_stores_the_job() {
    let env = Env::start().await;
    let t = env.token("u1");
    let body = json!({
        "prompt": basic_prompt(),
        "client_id": "c1",
        "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}, "api_key_comfy_org": "secret-key"}
    });
    let r = env.post_json(&t, "/prompt", &body).await;
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    let pid = v["prompt_id"].as_str().unwrap().to_owned();
    let rec = env.store.job("default", "u1", &pid).await.unwrap().unwrap();
    assert_eq!(rec.request_id.as_deref(), Some(request_id.as_str()));
    assert_eq!(rec.client_id.as_deref(), Some("c1"));
    assert!(protocol::ids::is_canonical_uuid(&pid));
    assert!(v["number"].is_number());
    assert_eq!(v["node_errors"], json!({}));

    let q = env.get_json(&t, "/queue").await;
    assert_eq!(q["queue_running"], json!([]));
    let item = &q["queue_pending"][0];
    assert_eq!(item[0], v["number"]);
    assert_eq!(item[1], pid.as_str());
    assert_eq!(item[3]["client_id"], "c1");
    assert!(item[3]["create_time"].is_i64());
    assert!(item[3].get("api_key_comfy_org").is_none());
    assert_eq!(item[4], json!(["2"]));
    assert!(!q.to_string().contains("secret-key"));

    let p = env.get_json(&t, "/prompt").await;
    assert_eq!(p, json!({"exec_info": {"queue_remaining": 1}}));

    let job = env.get_json(&t, &format!("/api/jobs/{pid}")).await;
    assert_eq!(job["status"], "pending");
    assert_eq!(job["workflow_id"], "wf-1");
    let list = env.get_json(&t, "/api/jobs?status=pending").await;
    assert_eq!(list["pagination"]["total"], 1);
    let r = env.get(&t, "/api/jobs?status=bogus").await;
    assert_eq!(r.status(), 400);

    // In Redis the secret is sealed: no field of the job record holds it in clear.
    let mut conn = redis::Client::open(env.store.config().url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(env.store.keys().job("default", "u1", &pid))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.iter().any(|(k, _)| k == "secret"));
    assert!(raw
        .iter()
        .all(|(_, v)| !v.contains("secret-key") && !v.contains("api_key_comfy_org")));

    // The secret went to the job record's hidden slot, not into any view.
    let lease = env.store.claim("default", "w", "b").await.unwrap().unwrap();
    assert!(lease.sensitive_json.unwrap().contains("secret-key"));
    assert!(!lease.item_json.contains("secret-key"));
}

#[tokio::test]
async fn duplicate_prompt_id_gives_the_first_answer_and_other_users_learn_nothing() {
    let env = Env::start().await;
    let (a, b) = (env.token("alice"), env.token("bob"));
    let pid = "8d7994e5-5357-44ea-b604-91a54f408052";
    let body = json!({"prompt": basic_prompt(), "prompt_id": pid});
    let first: Value = env
        .post_json(&a, "/prompt", &body)
        .await
        .json()
        .await
        .unwrap();
    let again: Value = env
        .post_json(&a, "/prompt", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        env.store
            .queue("default", "alice")
            .await
            .unwrap()
            .pending
            .len(),
        1
    );

    // Bob reusing the id gets his own job and sees nothing of Alice's.
    let bobs: Value = env
        .post_json(&b, "/prompt", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["prompt_id"], pid);
    let bq = env.get_json(&b, "/queue").await;
    assert_eq!(bq["queue_pending"].as_array().unwrap().len(), 1);
    assert_eq!(
        env.store
            .queue("default", "alice")
            .await
            .unwrap()
            .pending
            .len(),
        1
    );

    // Alice's job finishes; Bob's history and view stay empty.
    let lease = loop {
        let l = env.store.claim("default", "w", "b").await.unwrap().unwrap();
        if l.user_id == "alice" {
            break l;
        }
    };
    let history = json!({"prompt": [0, pid, {}, {}, ["2"]], "outputs": {"2": {"images": [{"filename": "a.png", "subfolder": pid, "type": "output"}]}},
                         "status": {"status_str": "success", "completed": true, "messages": []}, "meta": {}});
    assert!(env
        .store
        .finish(
            &lease,
            &Finish {
                state: TerminalState::Success,
                history_json: history.to_string(),
                terminal_message_json:
                    json!({"type": "execution_success", "data": {"prompt_id": pid}}).to_string(),
                dead_letter: None,
            }
        )
        .await
        .unwrap());
    env.files
        .put(
            &FileKey::new("alice", FileKind::Output, pid, "a.png").unwrap(),
            Bytes::from_static(b"\x89PNG alice"),
        )
        .await
        .unwrap();
    let ah = env.get_json(&a, &format!("/history/{pid}")).await;
    assert_eq!(ah[pid]["status"]["status_str"], "success");
    assert_eq!(
        env.get_json(&b, &format!("/history/{pid}")).await,
        json!({})
    );
    assert_eq!(env.get_json(&b, "/history").await, json!({}));
    assert_eq!(
        env.get_json(&a, "/history")
            .await
            .as_object()
            .unwrap()
            .len(),
        1
    );
    let view = format!("/view?filename=a.png&subfolder={pid}&type=output");
    let r = env.get(&a, &view).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["content-disposition"], "filename=\"a.png\"");
    assert_eq!(
        r.bytes().await.unwrap(),
        Bytes::from_static(b"\x89PNG alice")
    );
    let r = env.get(&b, &view).await;
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty());
    let bj = env.get_json(&b, &format!("/api/jobs/{pid}")).await;
    assert_eq!(bj["status"], "pending");
    let aj = env.get_json(&a, &format!("/api/jobs/{pid}")).await;
    assert_eq!(aj["status"], "completed");
    assert_eq!(aj["outputs_count"], 1);
}

#[tokio::test]
async fn queues_histories_and_mutations_are_per_user() {
    let env = Env::start().await;
    let (a, b) = (env.token("alice"), env.token("bob"));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let v: Value = env
            .post_json(&a, "/prompt", &json!({"prompt": basic_prompt()}))
            .await
            .json()
            .await
            .unwrap();
        ids.push(v["prompt_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        env.get_json(&b, "/queue").await,
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(
        env.get_json(&b, "/prompt").await["exec_info"]["queue_remaining"],
        0
    );
    // Bob's clear, delete, interrupt and history clear touch nothing of Alice's.
    for (path, body) in [
        ("/queue", json!({"clear": true})),
        ("/queue", json!({"delete": [ids[0]]})),
        ("/history", json!({"clear": true})),
        ("/api/interrupt", json!({"prompt_id": ids[0]})),
    ] {
        let r = env.post_json(&b, path, &body).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = env.post(&b, "/interrupt", "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        env.store
            .queue("default", "alice")
            .await
            .unwrap()
            .pending
            .len(),
        3
    );
    let r = env
        .post_json(&b, &format!("/api/jobs/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"cancelled": false})
    );

    let r = env
        .post_json(&b, "/api/jobs/cancel", &json!({"job_ids": [ids[2]]}))
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"cancelled": false})
    );
    let r = env
        .post_json(
            &a,
            "/api/jobs/cancel",
            &json!({"job_ids": [ids[2], "nope"]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "job_ids contains invalid id(s)", "invalid_ids": ["nope"]})
    );

    // Alice's own operations work.
    let r = env
        .post_json(&a, "/queue", &json!({"delete": [ids[0]]}))
        .await;
    assert_eq!(r.status(), 200);
    let r = env
        .post_json(&a, &format!("/api/jobs/{}/cancel", ids[1]), &json!({}))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"cancelled": true}));
    let j = env.get_json(&a, &format!("/api/jobs/{}", ids[1])).await;
    assert_eq!(j["status"], "cancelled");
    let q = env.get_json(&a, "/queue").await;
    assert_eq!(q["queue_pending"].as_array().unwrap().len(), 1);
    assert_eq!(q["queue_pending"][0][1], ids[2].as_str());
    let r = env.post_json(&a, "/queue", &json!({"clear": true})).await;
    assert_eq!(r.status(), 200);
    nothing_queued(&env, "alice").await;

    let r = env
        .get(&a, "/api/jobs/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Job not found"})
    );
    let r = env.get(&a, "/history?max_items=abc").await;
    assert_eq!(r.status(), 400);
    let r = env.post(&a, "/queue", "nope").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn idempotency_key_retries_and_conflicts() {
    let env = Env::start().await;
    let t = env.token("u1");
    let send = |body: Value| {
        env.http
            .post(env.url("/prompt"))
            .bearer_auth(&t)
            .header("idempotency-key", "key-1")
            .body(body.to_string())
            .send()
    };
    let body = json!({"prompt": basic_prompt()});
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first["prompt_id"], again["prompt_id"]);
    let r = send(json!({"prompt": basic_prompt(), "front": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        env.store
            .queue("default", "u1")
            .await
            .unwrap()
            .pending
            .len(),
        1
    );
}

#[tokio::test]
async fn view_path_rules() {
    let env = Env::start().await;
    let t = env.token("u1");
    env.files
        .put(
            &FileKey::new("u1", FileKind::Temp, "sub", "p.png").unwrap(),
            Bytes::from_static(b"png"),
        )
        .await
        .unwrap();
    for (q, want) in [
        ("filename=p.png&subfolder=sub&type=temp", 200),
        ("filename=x%2Fp.png&subfolder=sub&type=temp", 200),
        ("filename=p.png%20%5Btemp%5D&subfolder=sub", 200),
        ("filename=p.png&subfolder=sub", 404),
        ("filename=&type=temp", 400),
        ("filename=%2Fetc%2Fpasswd", 400),
        ("filename=a..b.png", 400),
        ("filename=p.png&subfolder=..%2F..&type=temp", 403),
        ("filename=p.png&type=bogus", 400),
        ("subfolder=sub", 404),
    ] {
        let r = env.get(&t, &format!("/view?{q}")).await;
        assert_eq!(r.status(), want, "{q}");
    }
}

#[tokio::test]
async fn a_backend_silent_past_retire_after_stops_counting_and_leaves_the_registry() {
    let env = Env::start().await;
    let mut gone = common::backend("gone");
    gone.updated_ms -= 2 * 3600 * 1000; // past the default gateway.backend_retire_after (1h)
    env.store.publish_backend(&gone, None).await.unwrap();
    let mut fresh = common::backend("b2");
    fresh.updated_ms -= 60 * 1000;
    env.store.publish_backend(&fresh, None).await.unwrap();
    let t = env.token("u1");
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids = env
            .store
            .backends("default")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect::<Vec<_>>();
        if !ids.contains(&"gone".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids.sort();
    assert_eq!(ids, ["b1", "b2"]);
    let mut models = Value::Null;
    for _ in 0..40 {
        models = env.get_json(&t, "/models/checkpoints").await;
        if models.to_string().contains("b2.safetensors") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!models.to_string().contains("gone.safetensors"), "{models}");
    assert!(models.to_string().contains("b2.safetensors"), "{models}");
}

#[tokio::test]
async fn pool_information_routes() {
    let env = Env::start().await;
    env.store
        .publish_backend(&common::backend("b2"), None)
        .await
        .unwrap();
    env.hub.stats();
    let t = env.token("u1");
    // Wait for the refresher to see b2 (every second by default).
    let mut models = Value::Null;
    for _ in 0..40 {
        models = env.get_json(&t, "/models/checkpoints").await;
        if models.as_array().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        models,
        json!(["b1.safetensors", "b2.safetensors", "shared.safetensors"])
    );
    assert_eq!(env.get_json(&t, "/models").await, json!(["checkpoints"]));
    assert_eq!(env.get(&t, "/models/nope").await.status(), 404);
    assert_eq!(
        env.get_json(&t, "/embeddings").await,
        json!(["emb-b1", "emb-b2"])
    );
    let stats = env.get_json(&t, "/system_stats").await;
    assert_eq!(stats["system"]["comfyui_version"], "0.3.64");
    assert_eq!(stats["devices"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.get_json(&t, "/api/features").await,
        json!({"supports_preview_metadata": true, "max_upload_size": 104857600})
    );
    let one = env.get_json(&t, "/object_info/EmptyImage").await;
    assert_eq!(one["EmptyImage"]["name"], "EmptyImage");
    assert_eq!(
        env.get_json(&t, "/api/object_info/NoSuchNodeType").await,
        json!({})
    );
    let all = env.get_json(&t, "/object_info").await;
    assert!(all.as_object().unwrap().len() > 400);
}

#[tokio::test]
async fn redis_outage_answers_503_quickly() {
    let cfg = GatewayConfig {
        redis_timeout: Duration::from_millis(1500),
        ..GatewayConfig::default()
    };
    let mut env = Env::start_on(store::test_redis::TestRedis::own(false), cfg, true).await;
    let t = env.token("u1");
    assert_eq!(env.get(&t, "/queue").await.status(), 200);
    env.redis.stop();
    let started = std::time::Instant::now();
    let r = env.get(&t, "/queue").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = env
        .post_json(&t, "/prompt", &json!({"prompt": basic_prompt()}))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        env.http
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    env.shutdown().await;
}

#[tokio::test]
async fn large_bodies_over_the_limit_get_a_readable_413() {
    let cfg = GatewayConfig {
        max_prompt_bytes: 256 * 1024,
        max_request_bytes: 1024 * 1024,
        ..GatewayConfig::default()
    };
    let env = Env::start_with(cfg, true).await;
    let t = env.token("u1");
    for (path, size) in [
        ("/prompt", 300 * 1024),
        ("/prompt", 2 << 20),
        ("/queue", 3 << 20),
    ] {
        for _ in 0..3 {
            let big = json!({"prompt": basic_prompt(), "extra_data": {"pad": "x".repeat(size)}});
            let r = env.post_json(&t, path, &big).await;
            let (s, b) = error_type(r).await;
            assert_eq!(s, 413, "{path} {size}");
            assert_eq!(b["error"]["type"], "request_too_large");
        }
    }
    // Without a Content-Length (chunked) the limit holds too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b' '; 8192])).collect();
    let r = env
        .http
        .post(env.url("/prompt"))
        .bearer_auth(&t)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    nothing_queued(&env, "u1").await;
}

#[tokio::test]
async fn cookie_requests_from_foreign_sites_are_refused() {
    let env = Env::start().await;
    let t = env.token("u1");
    let body = json!({"prompt": basic_prompt()}).to_string();
    let send = |headers: Vec<(&'static str, String)>| {
        let mut req = env.http.post(env.url("/prompt")).body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let cookie = format!("jwt_token={t}");
    let r = send(vec![
        ("cookie", cookie.clone()),
        ("origin", "https://evil.example".into()),
    ])
    .await
    .unwrap();
    let (s, b) = error_type(r).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (403, Some("forbidden_origin"))
    );
    let r = send(vec![
        ("cookie", cookie.clone()),
        ("sec-fetch-site", "cross-site".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    nothing_queued(&env, "u1").await;
    // Same-origin browsers and headless clients with a cookie are fine, and Bearer is never
    // origin-checked.
    let host = env.base.trim_start_matches("http://").to_owned();
    let r = send(vec![
        ("cookie", cookie.clone()),
        ("origin", format!("http://{host}")),
        ("sec-fetch-site", "same-origin".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = send(vec![("cookie", cookie)]).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = send(vec![
        ("authorization", format!("Bearer {t}")),
        ("origin", "https://evil.example".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}
