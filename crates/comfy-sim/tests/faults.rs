//! Every fault of `comfy_sim::Faults`, through the handle and over HTTP.

mod common;

use std::time::{Duration, Instant};

use comfy_sim::{Faults, SimConfig};
use common::*;
use serde_json::{json, Value};

fn graph() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}}
    })
}

async fn submit(sim: &comfy_sim::SimHandle, client: &str) -> String {
    let r = post_json(
        sim,
        "/prompt",
        &json!({"prompt": graph(), "client_id": client}),
    )
    .await
    .expect("post");
    assert_eq!(r.status, 200);
    r.json().expect("json")["prompt_id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn connect(sim: &comfy_sim::SimHandle, client: &str) -> Ws {
    let mut ws = Ws::connect(sim, &format!("/ws?clientId={client}"))
        .await
        .expect("ws");
    let first = ws.next_json().await.expect("status");
    assert_eq!(first["data"]["sid"], client);
    ws
}

fn find<'a>(frames: &'a [Frame], t: &str) -> Option<&'a Value> {
    frames.iter().find_map(|f| match f {
        Frame::Text(v) if v["type"] == t => Some(v),
        _ => None,
    })
}

#[tokio::test]
async fn work_time_per_class_and_node() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageInvert".to_string(), 150)].into(),
        node_work_ms: [("3".to_string(), 100)].into(),
        ..Faults::default()
    });
    let mut ws = connect(&sim, "w").await;
    let start = Instant::now();
    let pid = submit(&sim, "w").await;
    let frames = ws.until_done(&pid).await.expect("done");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(find(&frames, "execution_success").is_some());
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_at_a_node_gives_an_execution_error() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        fail_at: Some("ImageInvert".into()),
        fail_message: Some("CUDA out of memory".into()),
        fail_exception_type: Some("torch.OutOfMemoryError".into()),
        ..Faults::default()
    });
    let mut ws = connect(&sim, "e").await;
    let pid = submit(&sim, "e").await;
    let frames = ws.until_done(&pid).await.expect("done");
    let err = find(&frames, "execution_error").expect("execution_error");
    assert_eq!(err["data"]["node_id"], "2");
    assert_eq!(err["data"]["node_type"], "ImageInvert");
    assert_eq!(err["data"]["exception_type"], "torch.OutOfMemoryError");
    assert_eq!(err["data"]["executed"], json!(["1"]));
    let msg = err["data"]["exception_message"].as_str().expect("message");
    assert!(
        msg.starts_with("CUDA out of memory\n") && msg.contains("TIPS"),
        "{msg}"
    );
    assert!(err["data"]["current_inputs"]["image"][0]
        .as_str()
        .is_some_and(|s| s.starts_with("tensor(")));
    // The terminal sequence: error, status, executing null; history status error.
    let kinds: Vec<String> = frames.iter().rev().take(3).map(Frame::kind).collect();
    assert_eq!(kinds, ["executing", "status", "execution_error"]);
    let h = http(&sim, "GET", &format!("/history/{pid}"), None)
        .await
        .expect("h")
        .json()
        .expect("json");
    assert_eq!(h[&pid]["status"]["status_str"], "error");
    assert_eq!(h[&pid]["status"]["completed"], false);
    // Clearing the fault makes the same graph run.
    sim.faults().clear();
    let pid = submit(&sim, "e").await;
    assert!(find(
        &ws.until_done(&pid).await.expect("done"),
        "execution_success"
    )
    .is_some());
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_websockets_now_and_reconnect() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = connect(&sim, "d").await;
    let r = http(&sim, "POST", "/sim/drop_ws", None)
        .await
        .expect("drop");
    assert_eq!(r.status, 200);
    assert!(
        ws.closed_within(Duration::from_secs(2)).await,
        "socket was not dropped"
    );
    let mut again = connect(&sim, "d").await;
    let pid = submit(&sim, "d").await;
    assert!(find(
        &again.until_done(&pid).await.expect("done"),
        "execution_success"
    )
    .is_some());
    sim.faults().drop_websockets();
    assert!(again.closed_within(Duration::from_secs(2)).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_websockets_when_a_node_starts() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        drop_ws_at: Some("2".into()),
        work_ms: Some(50),
        ..Faults::default()
    });
    let mut ws = connect(&sim, "n").await;
    let pid = submit(&sim, "n").await;
    let mut saw_executing_2 = false;
    let mut closed = false;
    for _ in 0..50 {
        match ws.next().await {
            Ok(Frame::Text(v)) if v["type"] == "executing" && v["data"]["node"] == "2" => {
                saw_executing_2 = true
            }
            Ok(_) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        saw_executing_2 && closed,
        "executing 2: {saw_executing_2}, closed: {closed}"
    );
    // One-shot: cleared; the prompt itself still completes.
    assert_eq!(sim.faults().get().drop_ws_at, None);
    let mut ws = connect(&sim, "n").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = http(&sim, "GET", &format!("/history/{pid}"), None)
            .await
            .expect("h")
            .json()
            .expect("json");
        if h.get(&pid).is_some() {
            assert_eq!(h[&pid]["status"]["status_str"], "success");
            break;
        }
        assert!(Instant::now() < deadline, "prompt never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = ws.next().await;
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_http_over_the_http_fault_api() {
    let sim = sim(SimConfig::default()).await;
    let r = post_json(&sim, "/sim/faults", &json!({"hang_http": true}))
        .await
        .expect("faults");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().expect("json")["hang_http"], true);
    let url = sim.url();
    let pending = tokio::spawn(async move {
        reqwest::get(format!("{url}/queue"))
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a hung node answered");
    // /sim stays reachable; clearing the fault releases the held request.
    let g = http(&sim, "GET", "/sim/faults", None)
        .await
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(g["hang_http"], true);
    post_json(&sim, "/sim/faults", &json!({}))
        .await
        .expect("clear");
    let status = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("released")
        .expect("join")
        .expect("http");
    assert_eq!(status, 200);
    // Unknown fields are refused.
    assert_eq!(
        post_json(&sim, "/sim/faults", &json!({"no_such": 1}))
            .await
            .expect("faults")
            .status,
        400
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_ws_holds_frames_until_cleared() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = connect(&sim, "h").await;
    sim.faults().set(Faults {
        hang_ws: true,
        ..Faults::default()
    });
    let pid = submit(&sim, "h").await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "a frame arrived while hung: {quiet:?}");
    sim.faults().clear();
    let frames = ws.until_done(&pid).await.expect("done");
    assert_eq!(frames.first().map(Frame::kind).as_deref(), Some("status"));
    assert!(find(&frames, "execution_success").is_some());
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_at_a_node_freezes_the_node() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        hang_at: Some("ImageInvert".into()),
        ..Faults::default()
    });
    let mut ws = connect(&sim, "z").await;
    let pid = submit(&sim, "z").await;
    loop {
        let f = ws.next().await.expect("frame");
        if matches!(&f, Frame::Text(v) if v["type"] == "executing" && v["data"]["node"] == "2") {
            break;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "still sending"
    );
    let f = sim.faults().get();
    assert!(f.hang_http && f.hang_ws);
    sim.faults().clear();
    assert!(find(
        &ws.until_done(&pid).await.expect("done"),
        "execution_success"
    )
    .is_some());
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn prompt_5xx_for_a_number_of_requests() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        prompt_status: Some(503),
        prompt_status_count: Some(2),
        ..Faults::default()
    });
    for _ in 0..2 {
        let r = post_json(&sim, "/prompt", &json!({"prompt": graph()}))
            .await
            .expect("post");
        assert_eq!(r.status, 503);
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(
            r.body,
            b"500 Internal Server Error\n\nServer got itself in trouble"
        );
    }
    let r = post_json(&sim, "/prompt", &json!({"prompt": graph()}))
        .await
        .expect("post");
    assert_eq!(r.status, 200);
    // Nothing was queued by the refused ones: this is number 0.
    assert_eq!(r.json().expect("json")["number"], 0);
    assert_eq!(sim.faults().get().prompt_status, None);
    sim.shutdown().await;
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn crash_cuts_everything_and_a_restart_comes_back_empty() {
    let sim = sim(SimConfig::default()).await;
    let addr = sim.addr();
    let mut ws = connect(&sim, "c").await;
    let r = http(&sim, "POST", "/sim/crash", None).await.expect("crash");
    assert_eq!(r.status, 200);
    assert!(
        ws.closed_within(Duration::from_secs(2)).await,
        "socket survived the crash"
    );
    assert!(refused(addr).await, "still accepting after a crash");
    assert!(sim.faults().crashed());
    sim.wait().await;
    // "Restart": a new node on the same port, with nothing of the old one's state.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let sim2 = comfy_sim::spawn(listener, SimConfig::default())
        .await
        .expect("spawn");
    assert_eq!(
        http(&sim2, "GET", "/history", None)
            .await
            .expect("h")
            .json()
            .expect("json"),
        json!({})
    );
    sim2.shutdown().await;
}

#[tokio::test]
async fn crash_when_a_node_starts() {
    let sim = sim(SimConfig::default()).await;
    let addr = sim.addr();
    sim.faults().set(Faults {
        crash_at: Some("2".into()),
        ..Faults::default()
    });
    let mut ws = connect(&sim, "k").await;
    let _pid = submit(&sim, "k").await;
    let mut last = String::new();
    while let Ok(f) = ws.next().await {
        last = match &f {
            Frame::Text(v) => format!("{}:{}", v["type"], v["data"]["node"]),
            Frame::Binary(_) => "binary".into(),
        };
    }
    assert_eq!(
        last, "\"executing\":\"2\"",
        "the last message before the crash"
    );
    assert!(refused(addr).await);
    sim.wait().await;
}

#[tokio::test]
async fn shutdown_closes_sockets() {
    let sim = sim(SimConfig::default()).await;
    let addr = sim.addr();
    let mut ws = connect(&sim, "s").await;
    sim.shutdown().await;
    assert!(ws.closed_within(Duration::from_secs(2)).await);
    assert!(refused(addr).await);
}
