//! Replays the real ComfyUI 0.3.64 recordings (`shared/comfyui-traces/*.jsonl`) against the
//! simulator: the same HTTP requests and WebSocket connects in the same order, and compares what
//! comes back — message types and order, field names (recursively), number kinds, status codes,
//! content types and body shapes, and exact values where they are deterministic. Ids, timestamps,
//! temp names and timings are not compared.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use comfy_sim::{Faults, SimConfig, SimHandle};
use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct Replay {
    sockets: HashMap<String, Ws>,
    ids: HashMap<String, String>,
    pending: VecDeque<(String, tokio::task::JoinHandle<Result<Resp>>)>,
}

fn label(ev: &Value) -> String {
    ev.get("ws")
        .and_then(Value::as_str)
        .unwrap_or("main")
        .to_string()
}

impl Replay {
    async fn run(&mut self, sim: &SimHandle, trace: &[Value]) -> Result<()> {
        for ev in trace {
            let seq = ev["seq"].as_i64().unwrap_or(-1);
            self.step(sim, ev)
                .await
                .with_context(|| format!("at trace seq {seq}: {ev}"))?;
        }
        for (_, ws) in self.sockets.drain() {
            ws.close();
        }
        Ok(())
    }

    async fn step(&mut self, sim: &SimHandle, ev: &Value) -> Result<()> {
        match ev["kind"].as_str().unwrap_or("") {
            "ws_connect" => {
                let path = ev["path"].as_str().unwrap_or("/ws");
                let ws = Ws::connect(sim, path).await?;
                self.sockets.insert(label(ev), ws);
            }
            "ws_close" => {
                if let Some(ws) = self.sockets.remove(&label(ev)) {
                    ws.close();
                }
            }
            "ws_send" => {
                let ws = self.sockets.get(&label(ev)).context("no socket")?;
                ws.send(&ev["msg"].to_string());
            }
            "ws_recv" => {
                let ws = self.sockets.get_mut(&label(ev)).context("no socket")?;
                let got = ws.next().await?;
                compare_frame(ev, &got, &mut self.ids)?;
            }
            "http_request" => {
                let method = ev["method"].as_str().unwrap_or("GET").to_string();
                let path = rewrite_str(ev["path"].as_str().unwrap_or("/"), &self.ids);
                let body = ev
                    .get("body_raw")
                    .and_then(Value::as_str)
                    .map(|b| rewrite_str(b, &self.ids));
                let url_sim = SimRef { addr: sim.url() };
                let p2 = path.clone();
                let h =
                    tokio::spawn(
                        async move { url_sim.request(&method, &p2, body.as_deref()).await },
                    );
                self.pending.push_back((path, h));
                // Let the request reach the server before we look at the sockets again.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "http_response" => {
                let (path, h) = self
                    .pending
                    .pop_front()
                    .context("response without request")?;
                let got = h.await??;
                compare_response(ev, &got, &path, &mut self.ids)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A request sender that does not borrow the handle (so requests run concurrently with reads).
struct SimRef {
    addr: String,
}

impl SimRef {
    async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Resp> {
        let client = reqwest::Client::new();
        let url = format!("{}{}", self.addr, path);
        let mut req = if method == "POST" {
            client.post(url)
        } else {
            client.get(url)
        };
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let r = tokio::time::timeout(TIMEOUT, req.send()).await??;
        let status = r.status().as_u16();
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = h("content-type");
        let disposition = h("content-disposition");
        let body = r.bytes().await?.to_vec();
        Ok(Resp {
            status,
            content_type,
            disposition,
            body,
        })
    }
}

fn compare_frame(ev: &Value, got: &Frame, ids: &mut HashMap<String, String>) -> Result<()> {
    if ev["frame"] == "binary" {
        let Frame::Binary(b) = got else {
            bail!("expected a binary frame, got {got:?}")
        };
        let et = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if json!(et) != ev["event_type"] {
            bail!("binary type {et}, expected {}", ev["event_type"]);
        }
        if et == 3 {
            let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
            let node = String::from_utf8_lossy(&b[8..8 + n]).to_string();
            let text = String::from_utf8_lossy(&b[8 + n..]).to_string();
            if json!({"node_id": node, "text": text}) != ev["decoded"] {
                bail!("text frame {node}/{text:?}, expected {}", ev["decoded"]);
            }
        }
        return Ok(());
    }
    let Frame::Text(msg) = got else {
        bail!("expected text, got binary {}", got.kind())
    };
    let exp = &ev["msg"];
    if msg["type"] != exp["type"] {
        bail!(
            "message type {} (data {}), expected {}",
            msg["type"],
            msg["data"],
            exp["type"]
        );
    }
    same_shape(&exp["data"], &msg["data"], "data")?;
    let t = exp["type"].as_str().unwrap_or("");
    let d = &msg["data"];
    let e = &exp["data"];
    match t {
        "status" => {
            if d["status"] != e["status"] {
                bail!("status {} expected {}", d["status"], e["status"]);
            }
            if let Some(sid) = e.get("sid").and_then(Value::as_str) {
                let got_sid = d["sid"].as_str().unwrap_or("");
                // A server-made sid is 32 hex digits; a given one is echoed.
                if ev
                    .get("ws")
                    .and_then(Value::as_str)
                    .is_some_and(|w| w.contains("no-clientId"))
                {
                    if got_sid.len() != 32 || !got_sid.bytes().all(|c| c.is_ascii_hexdigit()) {
                        bail!("server-made sid {got_sid}");
                    }
                } else if got_sid != sid {
                    bail!("sid {got_sid}, expected {sid}");
                }
            }
        }
        "executing" | "executed" => {
            if d["node"] != e["node"] {
                bail!("{t} node {} expected {}", d["node"], e["node"]);
            }
            if t == "executed" {
                let names = |v: &Value| -> Vec<String> {
                    v["output"]["images"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|i| {
                                    format!(
                                        "{}|{}|{}",
                                        temp_name(i["filename"].as_str().unwrap_or("")),
                                        i["subfolder"],
                                        i["type"]
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                if names(d) != names(e) {
                    bail!("executed outputs {:?}, expected {:?}", names(d), names(e));
                }
                map_files(&e["output"], &d["output"], ids);
            }
        }
        "execution_cached" if d["nodes"] != e["nodes"] => {
            bail!("cached {} expected {}", d["nodes"], e["nodes"]);
        }
        "progress_state" => {
            let states = |v: &Value| -> Vec<(String, Value, Value, Value)> {
                v["nodes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, n)| {
                                (
                                    k.clone(),
                                    n["state"].clone(),
                                    n["value"].clone(),
                                    n["max"].clone(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (a, b) = (states(d), states(e));
            let mut sa = a.clone();
            let mut sb = b.clone();
            sa.sort_by(|x, y| x.0.cmp(&y.0));
            sb.sort_by(|x, y| x.0.cmp(&y.0));
            if sa != sb {
                bail!("progress_state {a:?}, expected {b:?}");
            }
        }
        "execution_error" | "execution_interrupted" => {
            for k in ["node_id", "node_type", "exception_type"] {
                if d.get(k) != e.get(k) {
                    bail!("{t}.{k} = {:?}, expected {:?}", d.get(k), e.get(k));
                }
            }
            let set = |v: &Value| {
                let mut x: Vec<String> = v
                    .as_array()
                    .map(|a| a.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default();
                x.sort();
                x
            };
            if set(&d["executed"]) != set(&e["executed"]) {
                bail!("executed {} expected {}", d["executed"], e["executed"]);
            }
            if t == "execution_error" {
                let em = e["exception_message"].as_str().unwrap_or("");
                let first = |s: &str| s.lines().next().unwrap_or("").to_string();
                if first(d["exception_message"].as_str().unwrap_or("")) != first(em) {
                    bail!("exception_message {} expected {em}", d["exception_message"]);
                }
                if set(&d["current_outputs"]) != set(&e["current_outputs"]) {
                    bail!(
                        "current_outputs {} expected {}",
                        d["current_outputs"],
                        e["current_outputs"]
                    );
                }
            }
        }
        "feature_flags" if d != e => {
            bail!("feature_flags {d} expected {e}");
        }
        _ => {}
    }
    let _ = ids;
    Ok(())
}

/// `ComfyUI_temp_abcde_00001_.png` → `ComfyUI_temp_*.png`: the random part, and the counter
/// (which depends on what the recorded server had written before), are not compared.
fn temp_name(n: &str) -> String {
    match n.strip_prefix("ComfyUI_temp_") {
        Some(rest) if rest.len() > 6 => "ComfyUI_temp_*.png".to_string(),
        _ => n.to_string(),
    }
}

/// Remembers which of our file names stands for which recorded one (to rewrite later /view paths).
fn map_files(expected: &Value, got: &Value, ids: &mut HashMap<String, String>) {
    let files = |v: &Value| -> Vec<String> {
        v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["filename"].as_str().map(str::to_string))
            .collect()
    };
    for (e, g) in files(expected).into_iter().zip(files(got)) {
        if e != g {
            ids.insert(e, g);
        }
    }
}

fn compare_response(
    ev: &Value,
    got: &Resp,
    path: &str,
    ids: &mut HashMap<String, String>,
) -> Result<()> {
    let status = ev["status"].as_u64().unwrap_or(0) as u16;
    if got.status != status {
        bail!(
            "{path}: status {} (body {}), expected {status}",
            got.status,
            String::from_utf8_lossy(&got.body)
        );
    }
    let exp_ct = ev["headers"]["Content-Type"].as_str();
    if exp_ct != got.content_type.as_deref() {
        bail!(
            "{path}: content-type {:?}, expected {exp_ct:?}",
            got.content_type
        );
    }
    if let Some(cd) = ev["headers"]["Content-Disposition"].as_str() {
        let got_cd = got.disposition.as_deref().unwrap_or("");
        if temp_name(got_cd.trim_start_matches("filename=\""))
            != temp_name(cd.trim_start_matches("filename=\""))
        {
            bail!("{path}: content-disposition {got_cd}, expected {cd}");
        }
    }
    if let Some(text) = ev.get("body_text").and_then(Value::as_str) {
        if got.body != text.as_bytes() {
            bail!(
                "{path}: body {:?}, expected {text:?}",
                String::from_utf8_lossy(&got.body)
            );
        }
        return Ok(());
    }
    if let Some(sum) = ev.get("body_summary") {
        if let Some(first) = sum.get("first_8_bytes_hex").and_then(Value::as_str) {
            let hex: String = got
                .body
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            if hex != first {
                bail!("{path}: body starts {hex}, expected {first}");
            }
        }
        if let Some(n) = sum.get("top_level_key_count") {
            let v = got.json()?;
            if json!(v.as_object().map(|o| o.len()).unwrap_or(0)) != *n {
                bail!(
                    "{path}: {} classes, expected {n}",
                    v.as_object().map(|o| o.len()).unwrap_or(0)
                );
            }
        }
        return Ok(());
    }
    let Some(exp) = ev.get("body_json") else {
        return Ok(());
    };
    let body = got.json()?;
    let method = ev["method"].as_str().unwrap_or("");
    if method == "POST" && path.starts_with("/prompt") && status == 200 {
        if let (Some(e), Some(a)) = (exp["prompt_id"].as_str(), body["prompt_id"].as_str()) {
            ids.insert(e.to_string(), a.to_string());
        }
        same_shape(exp, &body, "body")?;
        if body["node_errors"] != exp["node_errors"] {
            bail!(
                "node_errors {} expected {}",
                body["node_errors"],
                exp["node_errors"]
            );
        }
        return Ok(());
    }
    if status == 400 {
        let e = scrub(&rewrite(exp, ids));
        let a = scrub(&body);
        if e != a {
            bail!("{path}: 400 body\n  got      {a}\n  expected {e}");
        }
        same_shape(exp, &body, "body")?;
        return Ok(());
    }
    if path.contains("queue") && method == "GET" {
        // Whether a job still runs "immediately after" depends on timing: compare what is there.
        for k in ["queue_running", "queue_pending"] {
            let (e, a) = (&exp[k], &body[k]);
            let (Some(ea), Some(aa)) = (e.as_array(), a.as_array()) else {
                bail!("{k} missing")
            };
            if !ea.is_empty() {
                if ea.len() != aa.len() {
                    bail!("{path}: {k} has {} items, expected {}", aa.len(), ea.len());
                }
                same_shape(e, a, k)?;
                let strip = |v: &Value| scrub(&rewrite(&json!([v[1], v[2], v[4]]), ids));
                for (x, y) in ea.iter().zip(aa) {
                    if strip(x) != strip(y) {
                        bail!("{path}: item {y} expected {x}");
                    }
                }
            }
        }
        return Ok(());
    }
    if path.starts_with("/history") {
        let exp = rewrite(exp, ids);
        same_shape(&exp, &body, "body")?;
        // Same graph, outputs-to-execute, outputs (modulo temp names), status and message kinds.
        for (id, e) in exp.as_object().into_iter().flatten() {
            let a = &body[id];
            let pe = scrub(&json!([
                e["prompt"][2],
                e["prompt"][4],
                e["status"]["status_str"],
                e["status"]["completed"],
                e["meta"]
            ]));
            let pa = scrub(&json!([
                a["prompt"][2],
                a["prompt"][4],
                a["status"]["status_str"],
                a["status"]["completed"],
                a["meta"]
            ]));
            if pe != pa {
                bail!("history entry {pa} expected {pe}");
            }
            let kinds = |v: &Value| -> Vec<Value> {
                v["status"]["messages"]
                    .as_array()
                    .map(|m| m.iter().map(|x| x[0].clone()).collect())
                    .unwrap_or_default()
            };
            if kinds(a) != kinds(e) {
                bail!("history messages {:?} expected {:?}", kinds(a), kinds(e));
            }
            let outs = |v: &Value| -> Vec<String> {
                v["outputs"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .flat_map(|(k, o)| {
                        o["images"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(move |i| {
                                format!("{k}:{}", temp_name(i["filename"].as_str().unwrap_or("")))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            for (k, o) in e["outputs"].as_object().into_iter().flatten() {
                map_files(o, &a["outputs"][k], ids);
            }
            let (mut oa, mut oe) = (outs(a), outs(e));
            oa.sort();
            oe.sort();
            if oa != oe {
                bail!("history outputs {oa:?} expected {oe:?}");
            }
        }
        return Ok(());
    }
    same_shape(exp, &body, "body")
}

async fn replay(sim: &SimHandle, name: &str) {
    let trace = load_trace(name);
    let mut r = Replay::default();
    if let Err(e) = r.run(sim, &trace).await {
        panic!("trace {name}: {e:#}");
    }
}

fn slow(default_ms: u64) -> Faults {
    Faults {
        work_ms: Some(default_ms),
        ..Faults::default()
    }
}

#[tokio::test]
async fn trace_01_basic_save() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(slow(30));
    replay(&sim, "01_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_02_cached_rerun() {
    let sim = sim(SimConfig::default()).await;
    // Trace 01 checks that its job still runs right after the POST: give its nodes work time,
    // as trace_01_basic_save does (without it, a loaded machine finished the job first).
    sim.faults().set(slow(30));
    replay(&sim, "01_").await;
    sim.faults().clear();
    replay(&sim, "02_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_03_multi_node() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(slow(20));
    replay(&sim, "03_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_04_client_prompt_id() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(slow(20));
    replay(&sim, "04_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_05_no_client_id() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(slow(20));
    replay(&sim, "05_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_06_validation_missing_input() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "06_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_07_validation_unknown_class() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "07_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_08_validation_bad_values() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "08_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_09_validation_no_outputs() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "09_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_10_bad_requests() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "10_").await;
    // The counter advanced on every parseable body, rejected ones included (3 of the 4).
    let r = http(&sim, "POST", "/prompt", Some(&json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}).to_string())).await.expect("post");
    assert_eq!(r.json().expect("json")["number"], json!(3));
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_11_execution_error() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(slow(20));
    replay(&sim, "11_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_12_slow_interrupt() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 1000)].into(),
        ..Faults::default()
    });
    replay(&sim, "12_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_13_queue_delete_pending() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 1000)].into(),
        ..Faults::default()
    });
    replay(&sim, "13_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_14_queue_clear() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 1000)].into(),
        ..Faults::default()
    });
    replay(&sim, "14_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_15_ws_reconnect_and_observer() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 400)].into(),
        ..Faults::default()
    });
    replay(&sim, "15_").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn trace_16_ws_feature_flags() {
    let sim = sim(SimConfig::default()).await;
    replay(&sim, "16_").await;
    sim.shutdown().await;
}
