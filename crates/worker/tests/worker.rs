//! The worker against a real Redis and real (simulated) ComfyUI backends.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use comfy_sim::{Faults, SimConfig, SimHandle};
use files::{FileKey, FileKind, FileStore};
use protocol::envelope::{Envelope, Payload, Target};
use protocol::frames::BinaryFrame;
use serde_json::{json, Value};
use store::test_redis::TestRedis;
use store::{EventStream, JobState, NewJob, Owner, Store, Submitted};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::{BackendConfig, WorkerConfig, WorkerError};

const WAIT: Duration = Duration::from_secs(15);

async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

async fn sim_with(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    comfy_sim::spawn(listener, config).await.expect("sim")
}

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/comfyui-traces")
}

fn load_trace(prefix: &str) -> Vec<Value> {
    let dir = traces_dir();
    let path = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("traces at {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix))
        })
        .expect("trace file");
    std::fs::read_to_string(path)
        .expect("read trace")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("trace line"))
        .collect()
}

/// The prompt the recorder POSTed in a trace.
fn trace_prompt(prefix: &str) -> Value {
    load_trace(prefix)
        .into_iter()
        .find(|e| e["kind"] == "http_request" && e["path"] == "/prompt")
        .map(|e| e["body_json"]["prompt"].clone())
        .expect("POST /prompt in trace")
}

fn basic_save(color: u64) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "test"}}
    })
}

fn slow_prompt() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    })
}

fn new_job(uid: &str, cid: Option<&str>, prompt: &Value, outputs: &[&str]) -> NewJob {
    let extra = match cid {
        Some(c) => json!({"client_id": c}),
        None => json!({}),
    };
    NewJob {
        pool: "default".into(),
        owner: Owner {
            user_id: uid.into(),
            username: format!("name-{uid}"),
        },
        prompt_id: protocol::ids::new_prompt_id(),
        client_id: cid.map(str::to_owned),
        front: false,
        number: None,
        prompt_json: prompt.to_string(),
        extra_data_json: extra.to_string(),
        outputs_to_execute: outputs.iter().map(|s| s.to_string()).collect(),
        sensitive_json: None,
        idempotency_key: None,
        body_hash: "h".into(),
        request_id: Some(format!("req-{uid}")),
        class: Default::default(),
        limits: Default::default(),
    }
}

struct Env {
    _redis: TestRedis,
    store: Store,
    files: FileStore,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let redis = TestRedis::start();
    let store = Store::connect(redis.store_config()).await.expect("store");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = FileStore::local(dir.path()).expect("files");
    Env {
        _redis: redis,
        store,
        files,
        _dir: dir,
    }
}

fn config(sims: &[&SimHandle]) -> WorkerConfig {
    WorkerConfig {
        id: "w-test".into(),
        backends: sims
            .iter()
            .enumerate()
            .map(|(i, s)| BackendConfig {
                id: Some(format!("b{i}")),
                labels: [("gpu".to_string(), format!("sim{i}"))].into(),
                ..BackendConfig::new(s.url())
            })
            .collect(),
        idle_poll: Duration::from_millis(200),
        health_interval: Duration::from_millis(300),
        heartbeat_interval: Duration::from_millis(200),
        reconnect_timeout: Duration::from_secs(2),
        // Stopping a test worker interrupts its job at once, unless a test says otherwise.
        drain_grace: Duration::ZERO,
        ..WorkerConfig::default()
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), WorkerError>>,
}

fn start(env: &Env, config: WorkerConfig) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(worker::run(
        env.store.clone(),
        env.files.clone(),
        config,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        stop: Some(tx),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops")
            .expect("worker task")
            .expect("worker result");
    }
}

/// One event as a socket of the owner would get it.
#[derive(Debug, Clone)]
enum Got {
    Text(Target, Value),
    Bin(Target, Payload),
}

impl Got {
    fn target(&self) -> &Target {
        match self {
            Got::Text(t, _) | Got::Bin(t, _) => t,
        }
    }
    fn json(&self) -> Option<&Value> {
        match self {
            Got::Text(_, v) => Some(v),
            Got::Bin(..) => None,
        }
    }
    fn kind(&self) -> String {
        match self {
            Got::Text(_, v) => v["type"].as_str().unwrap_or("?").to_owned(),
            Got::Bin(_, Payload::Preview { .. }) => "<preview>".into(),
            Got::Bin(_, Payload::Binary(b)) => {
                format!("<binary {}>", b.get(3).copied().unwrap_or(0))
            }
            Got::Bin(_, Payload::Text(_)) => "<text?>".into(),
        }
    }
}

async fn subscribe(store: &Store, uid: &str) -> EventStream {
    let (subs, events) = store.event_subscriber().await.expect("sub").split(store);
    subs.subscribe(uid).await.expect("subscribe");
    // Keep the subscription handle alive with the stream.
    std::mem::forget(subs);
    events
}

async fn next_event(events: &mut EventStream) -> (String, Got) {
    let (uid, raw) = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("event stream open");
    let env = Envelope::decode(&raw).expect("envelope");
    let got = match env.payload {
        Payload::Text(t) => Got::Text(env.target, serde_json::from_slice(&t).expect("json")),
        p => Got::Bin(env.target, p),
    };
    (uid, got)
}

/// Events until the end marker `executing {node: null}` of `pid`.
async fn until_end_marker(events: &mut EventStream, pid: &str) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        let (_, got) = next_event(events).await;
        let end = got.json().is_some_and(|v| {
            v["type"] == "executing" && v["data"]["node"].is_null() && v["data"]["prompt_id"] == pid
        });
        out.push(got);
        if end {
            return out;
        }
    }
}

/// Events until the job is finished (for jobs without a client id: no end marker).
async fn until_finished(events: &mut EventStream, store: &Store, uid: &str, pid: &str) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        let (_, got) = next_event(events).await;
        let is_status = got.json().is_some_and(|v| v["type"] == "status");
        out.push(got);
        if is_status {
            let rec = store
                .job("default", uid, pid)
                .await
                .expect("job")
                .expect("record");
            if rec.state.is_terminal() {
                return out;
            }
        }
    }
}

async fn submit(store: &Store, job: &NewJob) {
    let s = store.submit(job).await.expect("submit");
    assert!(matches!(s, Submitted::Created { .. }), "{s:?}");
}

async fn wait_state(store: &Store, uid: &str, pid: &str) -> store::JobRecord {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rec = store
            .job("default", uid, pid)
            .await
            .expect("job")
            .expect("record");
        if rec.state.is_terminal() {
            return rec;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not finish: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_png(
    files: &FileStore,
    uid: &str,
    kind: FileKind,
    sub: &str,
    name: &str,
) -> image::RgbaImage {
    let key = FileKey::new(uid, kind, sub, name).expect("key");
    let bytes = files.read(&key).await.expect("output in the file store");
    image::load_from_memory(&bytes).expect("png").to_rgba8()
}

#[tokio::test]
async fn trace_01_runs_through_the_broker_in_comfyui_order() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let job = new_job("u1", Some("c1"), &trace_prompt("01_"), &["2"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &pid).await;

    // The message types the real ComfyUI sent to the submitter (after its connect status).
    let trace = load_trace("01_");
    let expected: Vec<String> = trace
        .iter()
        .filter(|e| e["kind"] == "ws_recv")
        .skip(1)
        .map(|e| e["msg"]["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(kinds, expected);
    for g in &got {
        let v = g.json().expect("only JSON");
        if v["type"] == "status" {
            assert_eq!(g.target(), &Target::AllSockets);
        } else {
            assert_eq!(g.target(), &Target::Client("c1".into()), "{v}");
            assert_eq!(v["data"]["prompt_id"], pid.as_str(), "{v}");
        }
        if v["type"] == "progress_state" {
            for n in v["data"]["nodes"].as_object().expect("nodes").values() {
                assert_eq!(n["prompt_id"], pid.as_str());
            }
        }
    }
    let executed = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "executed")
        .expect("executed");
    assert_eq!(
        executed["data"]["output"],
        json!({"images": [{"filename": "test_00001_.png", "subfolder": pid, "type": "output"}]})
    );

    // History: ComfyUI's shape, ids translated, outputs rewritten.
    let h: Value = serde_json::from_str(
        &env.store
            .history_entry("default", "u1", &pid)
            .await
            .expect("history")
            .expect("entry"),
    )
    .expect("history json");
    let keys: Vec<&String> = h.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["prompt", "outputs", "status", "meta"]);
    assert_eq!(h["prompt"][1], pid.as_str());
    assert_eq!(h["prompt"][2], trace_prompt("01_"));
    assert_eq!(h["prompt"][3], json!({"client_id": "c1"}));
    assert_eq!(h["prompt"][4], json!(["2"]));
    assert_eq!(h["outputs"], json!({"2": executed["data"]["output"]}));
    assert_eq!(h["status"]["status_str"], "success");
    assert_eq!(h["status"]["completed"], true);
    let msgs: Vec<&str> = h["status"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m[0].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        msgs,
        ["execution_start", "execution_cached", "execution_success"]
    );
    for m in h["status"]["messages"].as_array().expect("messages") {
        assert_eq!(m[1]["prompt_id"], pid.as_str());
        assert!(m[1]["timestamp"].is_i64());
    }
    assert_eq!(
        h["meta"],
        json!({"2": {"node_id": "2", "display_node": "2", "parent_node": null, "real_node_id": "2"}})
    );

    // The output is in the user's space, under the rewritten subfolder.
    let img = read_png(&env.files, "u1", FileKind::Output, &pid, "test_00001_.png").await;
    assert_eq!(img.dimensions(), (64, 64));
    assert!(env
        .files
        .read(&FileKey::new("u2", FileKind::Output, &pid, "test_00001_.png").expect("key"))
        .await
        .is_err());
    let rec = env
        .store
        .job("default", "u1", &pid)
        .await
        .expect("job")
        .expect("rec");
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.backend.as_deref(), Some("b0"));
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn two_backends_writing_the_same_file_name_do_not_collide() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    for s in [&a, &b] {
        s.faults().set(Faults {
            work_ms: Some(300),
            ..Faults::default()
        });
    }
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&a, &b]));
    let white = new_job("u1", Some("c1"), &basic_save(0xffffff), &["2"]);
    let black = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
    submit(&env.store, &white).await;
    submit(&env.store, &black).await;
    let _ = until_end_marker(&mut events, &white.prompt_id).await;
    let r1 = wait_state(&env.store, "u1", &white.prompt_id).await;
    let r2 = wait_state(&env.store, "u1", &black.prompt_id).await;
    assert_eq!((r1.state, r2.state), (JobState::Success, JobState::Success));
    assert_ne!(r1.backend, r2.backend, "both backends ran one job");
    let w_img = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &white.prompt_id,
        "test_00001_.png",
    )
    .await;
    let b_img = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &black.prompt_id,
        "test_00001_.png",
    )
    .await;
    assert_eq!(w_img.get_pixel(0, 0).0[..3], [255, 255, 255]);
    assert_eq!(b_img.get_pixel(0, 0).0[..3], [0, 0, 0]);
    w.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_job_without_client_id_only_gets_broadcastable_messages() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let job = new_job("u1", None, &trace_prompt("03_"), &["8", "9"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_finished(&mut events, &env.store, "u1", &pid).await;
    let mut saw_text_frame = false;
    let mut saw_progress_state = false;
    for g in &got {
        assert_eq!(g.target(), &Target::AllSockets, "{g:?}");
        match g {
            Got::Text(_, v) => {
                let t = v["type"].as_str().unwrap_or("?");
                assert!(["status", "progress_state", "progress"].contains(&t), "{v}");
                saw_progress_state |= t == "progress_state";
            }
            Got::Bin(_, Payload::Binary(b)) => match BinaryFrame::decode(b).expect("frame") {
                BinaryFrame::Text { node_id, text } => {
                    assert_eq!(node_id, "5");
                    assert!(text.contains("width: 128, height: 96"), "{text}");
                    saw_text_frame = true;
                }
                other => panic!("unexpected frame {other:?}"),
            },
            Got::Bin(_, p) => panic!("unexpected payload {p:?}"),
        }
    }
    assert!(
        saw_text_frame && saw_progress_state,
        "{:?}",
        got.iter().map(Got::kind).collect::<Vec<_>>()
    );
    // The history has both outputs, rewritten; the files were copied.
    let h: Value = serde_json::from_str(
        &env.store
            .history_entry("default", "u1", &pid)
            .await
            .expect("h")
            .expect("entry"),
    )
    .expect("json");
    assert_eq!(h["status"]["status_str"], "success");
    let saved = h["outputs"]["8"]["images"].as_array().expect("images");
    assert_eq!(saved.len(), 2);
    for item in saved {
        assert_eq!(item["subfolder"], pid.as_str());
        let img = read_png(
            &env.files,
            "u1",
            FileKind::Output,
            &pid,
            item["filename"].as_str().expect("name"),
        )
        .await;
        assert_eq!(img.dimensions(), (128, 96));
    }
    let preview = &h["outputs"]["9"]["images"][0];
    assert_eq!(preview["type"], "temp");
    let img = read_png(
        &env.files,
        "u1",
        FileKind::Temp,
        &pid,
        preview["filename"].as_str().expect("name"),
    )
    .await;
    assert_eq!(img.dimensions(), (128, 96));
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn interrupt_lands_on_the_right_job() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    for s in [&a, &b] {
        s.faults().set(Faults {
            work_ms: Some(250),
            ..Faults::default()
        });
    }
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&a, &b]));
    let victim = new_job("u1", Some("c1"), &slow_prompt(), &["5"]);
    let other = new_job("u2", Some("c2"), &slow_prompt(), &["5"]);
    submit(&env.store, &victim).await;
    submit(&env.store, &other).await;
    // Wait until the victim runs its first node, then interrupt it.
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| {
            v["type"] == "executing" && v["data"]["prompt_id"] == victim.prompt_id.as_str()
        }) {
            break;
        }
    }
    let asked = env
        .store
        .request_interrupt("default", "u1", Some(&victim.prompt_id))
        .await
        .expect("interrupt");
    assert_eq!(asked, 1);
    let got = until_end_marker(&mut events, &victim.prompt_id).await;
    let terminal = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "execution_interrupted")
        .expect("execution_interrupted");
    assert_eq!(terminal["data"]["prompt_id"], victim.prompt_id.as_str());
    let rec = wait_state(&env.store, "u1", &victim.prompt_id).await;
    assert_eq!(rec.state, JobState::Interrupted);
    let h: Value = serde_json::from_str(&rec.history_json.expect("history")).expect("json");
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["completed"], false);
    assert_eq!(h["status"]["messages"][2][0], "execution_interrupted");
    // The other user's job on the other backend ran to the end.
    let rec2 = wait_state(&env.store, "u2", &other.prompt_id).await;
    assert_eq!(rec2.state, JobState::Success);
    w.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_graph_the_backend_refuses_ends_with_its_error() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    // SaveImage without images: the backend answers 400 (trace 06).
    let prompt = json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}});
    let job = new_job("u1", Some("c1"), &prompt, &["1"]);
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &job.prompt_id).await;
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(
        kinds,
        ["status", "status", "execution_error", "status", "executing"]
    );
    let err = got[2].json().expect("json");
    assert_eq!(err["data"]["prompt_id"], job.prompt_id.as_str());
    assert_eq!(
        err["data"]["exception_type"],
        "prompt_outputs_failed_validation"
    );
    assert!(
        err["data"]["exception_message"]
            .as_str()
            .expect("message")
            .contains("Required input is missing"),
        "{err}"
    );
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Error);
    assert_eq!(rec.attempts, 1);
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn backends_are_published_with_their_catalogue() {
    let env = env().await;
    let sim = sim().await;
    let w = start(&env, config(&[&sim]));
    let deadline = tokio::time::Instant::now() + WAIT;
    let info = loop {
        let list = env.store.backends("default").await.expect("backends");
        if let Some(b) = list
            .into_iter()
            .find(|b| b.state == store::BackendState::Healthy && b.object_info_sha256.is_some())
        {
            break b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info.id, "b0");
    assert_eq!(info.worker, "w-test");
    assert_eq!(info.labels.get("gpu").map(String::as_str), Some("sim0"));
    assert!(info.models.contains_key("checkpoints"), "{:?}", info.models);
    assert_eq!(
        info.system_stats.as_ref().expect("stats")["system"]["comfyui_version"],
        "0.3.64"
    );
    let direct = reqwest::get(format!("{}/object_info", sim.url()))
        .await
        .expect("object_info")
        .bytes()
        .await
        .expect("body");
    let sha = info.object_info_sha256.clone().expect("sha");
    assert_eq!(sha, store::sha256_hex(&direct));
    let doc = env
        .store
        .object_info_doc("default", &sha)
        .await
        .expect("doc")
        .expect("stored");
    assert_eq!(Bytes::from(doc), direct);
    w.stop().await;
    let after = env.store.backends("default").await.expect("backends");
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].state,
        store::BackendState::Unhealthy,
        "marked unhealthy on shutdown"
    );
    assert_eq!(
        after[0].object_info_sha256.as_deref(),
        Some(sha.as_str()),
        "catalogue kept"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_backend_is_published_unhealthy_and_gets_no_work() {
    let env = env().await;
    let sim = sim().await;
    let url = sim.url();
    sim.shutdown().await;
    let cfg = WorkerConfig {
        backends: vec![BackendConfig {
            id: Some("dead".into()),
            ..BackendConfig::new(url)
        }],
        ..config(&[])
    };
    let w = start(&env, cfg);
    let job = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
    submit(&env.store, &job).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = env.store.backends("default").await.expect("backends");
        if list
            .iter()
            .any(|b| b.id == "dead" && b.state == store::BackendState::Unhealthy)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unhealthy never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = env
        .store
        .job("default", "u1", &job.prompt_id)
        .await
        .expect("job")
        .expect("rec");
    assert_eq!(rec.state, JobState::Pending);
    w.stop().await;
}

fn txt2img(steps: u64) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
    })
}

async fn sim_with_checkpoint() -> SimHandle {
    let mut info: Value = serde_json::from_str(comfy_sim::OBJECT_INFO_JSON).expect("object_info");
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] =
        json!(["sd15.safetensors"]);
    let mut cfg = SimConfig::with_object_info(&info).expect("catalog");
    cfg.models
        .insert("checkpoints".into(), vec!["sd15.safetensors".into()]);
    sim_with(cfg).await
}

#[tokio::test]
async fn sampler_progress_and_previews_reach_the_submitter_with_our_prompt_id() {
    let env = env().await;
    let sim = sim_with_checkpoint().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let job = new_job("u1", Some("c1"), &txt2img(4), &["9"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &pid).await;
    let progress: Vec<&Value> = got
        .iter()
        .filter_map(Got::json)
        .filter(|v| v["type"] == "progress")
        .collect();
    assert_eq!(
        progress.len(),
        4,
        "{:?}",
        got.iter().map(Got::kind).collect::<Vec<_>>()
    );
    for p in &progress {
        assert_eq!(p["data"]["prompt_id"], pid.as_str());
        assert_eq!(p["data"]["node"], "3");
    }
    let previews: Vec<&Got> = got
        .iter()
        .filter(|g| matches!(g, Got::Bin(_, Payload::Preview { .. })))
        .collect();
    assert_eq!(previews.len(), 4);
    for p in previews {
        assert_eq!(p.target(), &Target::Client("c1".into()));
        let Got::Bin(
            _,
            Payload::Preview {
                format,
                metadata,
                image,
            },
        ) = p
        else {
            unreachable!()
        };
        assert_eq!(*format, protocol::frames::ImageFormat::Jpeg);
        let m: Value = serde_json::from_slice(metadata).expect("metadata");
        assert_eq!(m["prompt_id"], pid.as_str());
        assert_eq!(m["node_id"], "3");
        assert_eq!(&image[..2], &[0xff, 0xd8]);
    }
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Success);
    let img = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &pid,
        "ComfyUI_00001_.png",
    )
    .await;
    assert_eq!(img.dimensions(), (512, 512));
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_websocket_dropped_mid_job_is_recovered() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    // Let the worker connect first, then drop its socket when SaveImage starts.
    sim.faults().set(Faults {
        drop_ws_at: Some("2".into()),
        ..Faults::default()
    });
    let job = new_job("u1", Some("c1"), &basic_save(0x808080), &["2"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &pid).await;
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(
        rec.state,
        JobState::Success,
        "{:?}",
        got.iter().map(Got::kind).collect::<Vec<_>>()
    );
    assert_eq!(rec.attempts, 1);
    let executed = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "executed")
        .expect("executed (live or from the backend's history)");
    assert_eq!(
        executed["data"]["output"]["images"][0]["subfolder"],
        pid.as_str()
    );
    let h: Value = serde_json::from_str(&rec.history_json.expect("history")).expect("json");
    assert_eq!(h["outputs"]["2"]["images"][0]["subfolder"], pid.as_str());
    assert_eq!(h["status"]["messages"][0][1]["prompt_id"], pid.as_str());
    let img = read_png(&env.files, "u1", FileKind::Output, &pid, "test_00001_.png").await;
    assert_eq!(img.dimensions(), (64, 64));
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_backend_5xx_on_submit_retries_the_job() {
    let env = env().await;
    let sim = sim().await;
    sim.faults().set(Faults {
        prompt_status: Some(500),
        prompt_status_count: Some(1),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let job = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
    submit(&env.store, &job).await;
    let _ = until_end_marker(&mut events, &job.prompt_id).await;
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.attempts, 2);
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_crashed_backend_gives_the_job_to_another() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    a.faults().set(Faults {
        work_ms: Some(200),
        crash_at: Some("2".into()),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    // Only backend a at first, so the job starts there.
    let w1 = start(
        &env,
        WorkerConfig {
            id: "w1".into(),
            ..config(&[&a])
        },
    );
    let job = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| v["type"] == "execution_start") {
            break;
        }
    }
    let w2 = start(
        &env,
        WorkerConfig {
            id: "w2".into(),
            ..config(&[&b])
        },
    );
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.attempts, 2);
    assert_eq!(rec.worker.as_deref(), Some("w2"));
    let img = read_png(&env.files, "u1", FileKind::Output, &pid, "test_00001_.png").await;
    assert_eq!(img.dimensions(), (64, 64));
    w1.stop().await;
    w2.stop().await;
    b.shutdown().await;
    assert!(a.faults().crashed());
}

#[tokio::test]
async fn a_silent_backend_is_not_waited_on_forever() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(
        &env,
        WorkerConfig {
            silence_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            max_attempts: 1,
            ..config(&[&sim])
        },
    );
    sim.faults().set(Faults {
        hang_at: Some("2".into()),
        ..Faults::default()
    });
    let job = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &job.prompt_id).await;
    let err = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "execution_error")
        .expect("execution_error");
    assert_eq!(err["data"]["exception_type"], "backend_failure");
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Error);
    sim.faults().clear();
    w.stop().await;
    sim.shutdown().await;
}

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Bytes {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    Bytes::from(out.into_inner())
}

fn load_and_save(image: &str) -> Value {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}
    })
}

#[tokio::test]
async fn uploaded_inputs_are_shipped_to_the_backend_and_stay_private() {
    let env = env().await;
    let sim = sim().await;
    let key = FileKey::new("u1", FileKind::Input, "pets", "cat.png").expect("key");
    env.files
        .put(&key, png(40, 30, [255, 0, 0]))
        .await
        .expect("upload");
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));

    let job = new_job("u1", Some("c1"), &load_and_save("pets/cat.png"), &["3"]);
    submit(&env.store, &job).await;
    let _ = until_end_marker(&mut events, &job.prompt_id).await;
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Success, "{:?}", rec.history_json);
    let out = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &job.prompt_id,
        "inv_00001_.png",
    )
    .await;
    assert_eq!(out.dimensions(), (40, 30));
    assert_eq!(out.get_pixel(0, 0).0[..3], [0, 255, 255]);
    // The history echoes the graph as submitted, not the backend's path.
    let h: Value = serde_json::from_str(&rec.history_json.expect("history")).expect("json");
    assert_eq!(h["prompt"][2]["1"]["inputs"]["image"], "pets/cat.png");
    assert!(sim.input_dir().join("_broker/u1/pets/cat.png").is_file());

    // Another user can reach neither u1's upload nor the file shipped to the backend.
    let mut events2 = subscribe(&env.store, "u2").await;
    for name in ["pets/cat.png", "_broker/u1/pets/cat.png"] {
        let job = new_job("u2", Some("c2"), &load_and_save(name), &["3"]);
        submit(&env.store, &job).await;
        let got = until_end_marker(&mut events2, &job.prompt_id).await;
        let err = got
            .iter()
            .filter_map(Got::json)
            .find(|v| v["type"] == "execution_error")
            .expect("execution_error");
        assert_eq!(err["data"]["exception_type"], "invalid_input_file", "{err}");
    }
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_gives_a_running_job_back_without_using_an_attempt() {
    let env = env().await;
    let sim = sim().await;
    sim.faults().set(Faults {
        work_ms: Some(500),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let job = new_job("u1", Some("c1"), &slow_prompt(), &["5"]);
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| v["type"] == "executing") {
            break;
        }
    }
    w.stop().await;
    let rec = env
        .store
        .job("default", "u1", &job.prompt_id)
        .await
        .expect("job")
        .expect("rec");
    assert_eq!(rec.state, JobState::Pending);
    assert_eq!(rec.attempts, 0);
    assert!(env
        .store
        .backends("default")
        .await
        .expect("backends")
        .iter()
        .all(|b| b.state == store::BackendState::Unhealthy));
    // A new worker picks it up and runs it to the end.
    sim.faults().clear();
    let w2 = start(&env, config(&[&sim]));
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.attempts, 1);
    w2.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_running_job_finish_within_the_grace_period() {
    let env = env().await;
    let sim = sim().await;
    sim.faults().set(Faults {
        work_ms: Some(150),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(
        &env,
        WorkerConfig {
            drain_grace: Duration::from_secs(20),
            ..config(&[&sim])
        },
    );
    let job = new_job("u1", Some("c1"), &slow_prompt(), &["5"]);
    let queued = new_job("u1", Some("c1"), &basic_save(7), &["2"]);
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| v["type"] == "executing") {
            break;
        }
    }
    submit(&env.store, &queued).await;
    // SIGTERM: the running job completes; the queued one is not taken.
    w.stop().await;
    let rec = env
        .store
        .job("default", "u1", &job.prompt_id)
        .await
        .expect("job")
        .expect("rec");
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.attempts, 1);
    let waiting = env
        .store
        .job("default", "u1", &queued.prompt_id)
        .await
        .expect("job")
        .expect("rec");
    assert_eq!(waiting.state, JobState::Pending);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_runtime_error_ends_the_job_like_comfyui() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    // Trace 11: SaveImage refuses to write outside the output folder.
    let job = new_job("u1", Some("c1"), &trace_prompt("11_"), &["3"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &pid).await;
    let expected: Vec<String> = load_trace("11_")
        .iter()
        .filter(|e| e["kind"] == "ws_recv")
        .skip(1)
        .map(|e| e["msg"]["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(got.iter().map(Got::kind).collect::<Vec<_>>(), expected);
    let err = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "execution_error")
        .expect("execution_error");
    assert_eq!(err["data"]["prompt_id"], pid.as_str());
    assert_eq!(err["data"]["node_id"], "3");
    assert_eq!(err["data"]["node_type"], "SaveImage");
    assert!(err["data"]["traceback"].is_array());
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Error);
    assert_eq!(rec.attempts, 1);
    let h: Value = serde_json::from_str(&rec.history_json.expect("history")).expect("json");
    assert_eq!(h["outputs"], json!({}));
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["completed"], false);
    assert_eq!(
        h["status"]["messages"][2],
        json!(["execution_error", err["data"]])
    );
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn cached_reruns_copy_the_earlier_file_into_the_new_job() {
    let env = env().await;
    let sim = sim().await;
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&sim]));
    let first = new_job("u1", Some("c1"), &basic_save(0x00ff00), &["2"]);
    submit(&env.store, &first).await;
    let _ = until_end_marker(&mut events, &first.prompt_id).await;
    // Same graph again: the backend answers from its cache (trace 02), naming the old file.
    let again = new_job("u1", Some("c1"), &basic_save(0x00ff00), &["2"]);
    submit(&env.store, &again).await;
    let got = until_end_marker(&mut events, &again.prompt_id).await;
    let cached = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "execution_cached")
        .expect("execution_cached");
    assert_eq!(cached["data"]["nodes"], json!(["1", "2"]));
    let executed = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "executed")
        .expect("executed replayed for the cached output");
    assert_eq!(
        executed["data"]["output"]["images"][0],
        json!({"filename": "test_00001_.png", "subfolder": again.prompt_id, "type": "output"})
    );
    let img = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &again.prompt_id,
        "test_00001_.png",
    )
    .await;
    assert_eq!(img.get_pixel(0, 0).0[..3], [0, 255, 0]);
    let h: Value = serde_json::from_str(
        &env.store
            .history_entry("default", "u1", &again.prompt_id)
            .await
            .expect("h")
            .expect("entry"),
    )
    .expect("json");
    assert_eq!(h["outputs"]["2"], executed["data"]["output"]);
    w.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dead_workers_job_is_reclaimed_and_run_elsewhere() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    a.faults().set(Faults {
        work_ms: Some(300),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    let timing = |id: &str, s: &SimHandle| WorkerConfig {
        id: id.into(),
        lease_timeout: Duration::from_millis(600),
        reclaim_interval: Duration::from_millis(100),
        ..config(&[s])
    };
    let w1 = start(&env, timing("w1", &a));
    let job = new_job("u1", Some("c1"), &slow_prompt(), &["5"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| v["type"] == "executing") {
            break;
        }
    }
    // w1 dies without a word: no release, no more heartbeats.
    w1.task.abort();
    let _ = w1.task.await;
    let w2 = start(&env, timing("w2", &b));
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.attempts, 2);
    assert_eq!(rec.worker.as_deref(), Some("w2"));
    w2.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Against a real ComfyUI: `COMFYUI_URL=http://127.0.0.1:8188 cargo test -p worker --test worker
/// -- --ignored real_comfyui`. Runs trace 01's workflow (with a fresh colour, so nothing is
/// cached) and a refused graph through the worker.
#[tokio::test]
#[ignore = "needs a real ComfyUI at COMFYUI_URL"]
async fn real_comfyui_runs_trace_01_through_the_worker() {
    let Ok(url) = std::env::var("COMFYUI_URL") else {
        panic!("set COMFYUI_URL");
    };
    let env = env().await;
    let mut events = subscribe(&env.store, "u1").await;
    let cfg = WorkerConfig {
        id: "w-real".into(),
        backends: vec![BackendConfig {
            id: Some("real".into()),
            ..BackendConfig::new(url)
        }],
        ..config(&[])
    };
    let w = start(&env, cfg);
    let color = u64::from(uuid_color());
    let mut prompt = basic_save(color);
    prompt["2"]["inputs"]["filename_prefix"] = json!("broker_check");
    let job = new_job("u1", Some("c1"), &prompt, &["2"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    let got = until_end_marker(&mut events, &pid).await;
    let expected: Vec<String> = load_trace("01_")
        .iter()
        .filter(|e| e["kind"] == "ws_recv")
        .skip(1)
        .map(|e| e["msg"]["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(got.iter().map(Got::kind).collect::<Vec<_>>(), expected);
    let executed = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "executed")
        .expect("executed");
    let item = &executed["data"]["output"]["images"][0];
    assert_eq!(item["subfolder"], pid.as_str());
    let img = read_png(
        &env.files,
        "u1",
        FileKind::Output,
        &pid,
        item["filename"].as_str().expect("filename"),
    )
    .await;
    assert_eq!(img.dimensions(), (64, 64));
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Success);
    let h: Value = serde_json::from_str(&rec.history_json.expect("history")).expect("json");
    assert_eq!(
        h["meta"]["2"],
        json!({"node_id": "2", "display_node": "2", "parent_node": null, "real_node_id": "2"})
    );

    let bad = new_job(
        "u1",
        Some("c1"),
        &json!({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}),
        &["1"],
    );
    submit(&env.store, &bad).await;
    let got = until_end_marker(&mut events, &bad.prompt_id).await;
    let err = got
        .iter()
        .filter_map(Got::json)
        .find(|v| v["type"] == "execution_error")
        .expect("execution_error");
    assert_eq!(
        err["data"]["exception_type"],
        "prompt_outputs_failed_validation"
    );

    // A slow job, interrupted through the store (trace 12).
    let c = uuid_color();
    let slow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": c}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 15, "sigma": 3.0}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 15, "sigma": 3.0}},
        "4": {"class_type": "ImageBlur", "inputs": {"image": ["3", 0], "blur_radius": 15, "sigma": 3.0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    });
    let job = new_job("u1", Some("c1"), &slow, &["5"]);
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| {
            v["type"] == "executing"
                && v["data"]["node"] == "2"
                && v["data"]["prompt_id"] == job.prompt_id.as_str()
        }) {
            break;
        }
    }
    env.store
        .request_interrupt("default", "u1", Some(&job.prompt_id))
        .await
        .expect("interrupt");
    let got = until_end_marker(&mut events, &job.prompt_id).await;
    assert!(got
        .iter()
        .filter_map(Got::json)
        .any(|v| v["type"] == "execution_interrupted"));
    let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
    assert_eq!(rec.state, JobState::Interrupted);
    w.stop().await;
}

fn uuid_color() -> u32 {
    let id = protocol::ids::new_prompt_id();
    u32::from_str_radix(&id[..6], 16).unwrap_or(0x123456)
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_stops_publishing() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    a.faults().set(Faults {
        work_ms: Some(800),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    // w1 renews its lease too rarely for w2's lease timeout: w2 takes the job over.
    let w1 = start(
        &env,
        WorkerConfig {
            id: "w1".into(),
            heartbeat_interval: Duration::from_millis(1000),
            reclaim_interval: Duration::from_secs(3600),
            ..config(&[&a])
        },
    );
    let job = new_job("u1", Some("c1"), &slow_prompt(), &["5"]);
    let pid = job.prompt_id.clone();
    submit(&env.store, &job).await;
    loop {
        let (_, g) = next_event(&mut events).await;
        if g.json().is_some_and(|v| v["type"] == "executing") {
            break;
        }
    }
    let w2 = start(
        &env,
        WorkerConfig {
            id: "w2".into(),
            heartbeat_interval: Duration::from_millis(100),
            lease_timeout: Duration::from_millis(400),
            reclaim_interval: Duration::from_millis(50),
            ..config(&[&b])
        },
    );
    let mut got = until_end_marker(&mut events, &pid).await;
    // Nothing more arrives from the first attempt.
    while let Ok(Some((_, raw))) =
        tokio::time::timeout(Duration::from_millis(1500), events.next()).await
    {
        let env = Envelope::decode(&raw).expect("envelope");
        if let Payload::Text(t) = env.payload {
            got.push(Got::Text(
                env.target,
                serde_json::from_slice(&t).expect("json"),
            ));
        }
    }
    let terminals = got
        .iter()
        .filter_map(Got::json)
        .filter(|v| {
            let t = v["type"].as_str().unwrap_or("");
            t.starts_with("execution_") && t != "execution_start" && t != "execution_cached"
                || (t == "executing" && v["data"]["node"].is_null())
        })
        .count();
    assert_eq!(terminals, 2, "one terminal message and one end marker");
    let rec = wait_state(&env.store, "u1", &pid).await;
    assert_eq!(rec.state, JobState::Success);
    assert_eq!(rec.worker.as_deref(), Some("w2"));
    assert!(rec.attempts >= 2);
    w1.stop().await;
    w2.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_backend_failing_every_prompt_does_not_eat_the_jobs() {
    let env = env().await;
    let (a, b) = (sim().await, sim().await);
    a.faults().set(Faults {
        prompt_status: Some(500),
        ..Faults::default()
    });
    let mut events = subscribe(&env.store, "u1").await;
    let w = start(&env, config(&[&a, &b]));
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = new_job("u1", Some("c1"), &basic_save(0), &["2"]);
        submit(&env.store, &job).await;
        jobs.push(job);
    }
    let mut ended = std::collections::HashSet::new();
    while ended.len() < jobs.len() {
        let (_, g) = next_event(&mut events).await;
        if let Some(v) = g.json() {
            if v["type"] == "executing" && v["data"]["node"].is_null() {
                ended.insert(v["data"]["prompt_id"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    for job in &jobs {
        let rec = wait_state(&env.store, "u1", &job.prompt_id).await;
        assert_eq!(rec.state, JobState::Success);
        assert_eq!(rec.backend.as_deref(), Some("b1"));
    }
    w.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}
