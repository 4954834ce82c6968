//! `comfy-broker run`: upload local inputs, open `/ws`, submit, follow the job (surviving a
//! dropped socket), then download every output.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::api::{Api, WsStream};
use crate::display::{Display, Mode};
use crate::error::ClientError;
use crate::workflow::{self, node_title};

/// How often `/history/{id}` is polled while the socket is down.
const POLL_DOWN: Duration = Duration::from_millis(500);
/// How often it is polled while the socket is up (a safety net for a lost terminal event).
const POLL_UP: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Timeout of the requests sent on Ctrl-C.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Ctrl-C waits to tell how the job ended.
const CANCEL_CONFIRM: Duration = Duration::from_secs(3);

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The workflow file (API format, or a `/prompt` body).
    pub workflow: PathBuf,
    /// `NODE.INPUT=VALUE` overrides.
    pub set: Vec<String>,
    /// Where outputs are downloaded.
    pub out: PathBuf,
    /// Longest wait for the job to finish.
    pub timeout: Duration,
    /// Submit and print the prompt id without waiting.
    pub no_wait: bool,
    /// How to show progress.
    pub mode: Mode,
}

/// A finished, successful run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The job's prompt id.
    pub prompt_id: String,
    /// The files written into `--out`.
    pub files: Vec<PathBuf>,
}

/// Runs a workflow to completion (or submits it with `no_wait`). In JSON mode a final
/// `{"type": "result", ...}` line is printed whatever the outcome.
pub async fn run(api: &Api, opts: &RunOptions) -> Result<RunResult, ClientError> {
    // The id is ours before anything is sent, so Ctrl-C can cancel the job even while the
    // submit itself is in flight.
    let prompt_id = protocol::ids::new_prompt_id();
    let submitting = AtomicBool::new(false);
    let result = tokio::select! {
        r = run_inner(api, opts, &prompt_id, &submitting) => r,
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => Err(on_ctrl_c(api, &prompt_id, submitting.load(Ordering::SeqCst)).await),
            Err(e) => Err(ClientError::Transport(format!("cannot watch for Ctrl-C: {e}"))),
        },
    };
    // An id is worth printing only if a job may exist: the submit went out and the server did
    // not refuse the graph.
    let prompt_id = (submitting.load(Ordering::SeqCst)
        && !matches!(result, Err(ClientError::Rejected(_))))
    .then_some(prompt_id);
    if opts.mode == Mode::Json {
        let data = match &result {
            Ok(r) => json!({
                "status": if opts.no_wait { "submitted" } else { "success" },
                "prompt_id": r.prompt_id,
                "files": r.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            }),
            Err(e) => json!({
                "status": match e {
                    ClientError::Execution(_) => "error",
                    ClientError::Timeout(_) => "timeout",
                    ClientError::Interrupted(_) => "interrupted",
                    _ => "failed",
                },
                "prompt_id": prompt_id,
                "message": e.to_string(),
                "exit_code": e.exit_code(),
            }),
        };
        crate::display::json_line(&json!({"type": "result", "data": data}));
    }
    result
}

async fn run_inner(
    api: &Api,
    opts: &RunOptions,
    prompt_id: &str,
    submitting: &AtomicBool,
) -> Result<RunResult, ClientError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut wf = workflow::load(&opts.workflow)?;
    for s in &opts.set {
        workflow::apply_set(&mut wf.graph, s)?;
    }
    let mut display = Display::new(opts.mode, wf.graph.clone());

    // Local files the graph names are uploaded first, and the inputs rewritten.
    let base_dir = opts.workflow.parent().filter(|p| !p.as_os_str().is_empty());
    for f in workflow::local_files(&wf.graph, base_dir) {
        let name = upload(api, &f.path).await?;
        if let Some(inputs) = wf
            .graph
            .get_mut(&f.node)
            .and_then(|n| n.get_mut("inputs"))
            .and_then(Value::as_object_mut)
        {
            inputs.insert(f.input.clone(), Value::String(name.clone()));
        }
        display.client_event(
            "uploaded",
            json!({"node": f.node, "input": f.input, "path": f.path.display().to_string(), "name": name}),
            Some(&format!("uploaded {} as {name}", f.path.display())),
        );
    }

    let client_id = protocol::ids::new_sid();
    // The socket is open before the submit, so no event of the job can be missed. If it
    // cannot be opened (a proxy without WebSocket support ...), the history is polled instead.
    let ws = if opts.no_wait {
        None
    } else {
        match api.connect_ws(&client_id).await {
            Ok(ws) => Some(ws),
            Err(e @ (ClientError::Auth(_) | ClientError::Connect { .. })) => return Err(e),
            Err(e) => {
                display.note(&format!(
                    "no live events ({e}); polling the history instead"
                ));
                None
            }
        }
    };
    let mut body = json!({"prompt": Value::Object(wf.graph.clone()), "client_id": client_id, "prompt_id": prompt_id});
    if let Some(extra) = wf.extra_data.take() {
        body["extra_data"] = Value::Object(extra);
    }
    submitting.store(true, Ordering::SeqCst);
    let answer = submit(api, &body, &wf.graph, deadline, &display).await?;
    display.client_event(
        "submitted",
        json!({"prompt_id": prompt_id, "number": answer.get("number"), "client_id": client_id}),
        None,
    );
    if opts.no_wait {
        if opts.mode == Mode::Human {
            println!("{prompt_id}");
        }
        return Ok(RunResult {
            prompt_id: prompt_id.to_owned(),
            files: Vec::new(),
        });
    }
    display.start(prompt_id);

    let follower = Follower {
        api,
        prompt_id,
        client_id: &client_id,
    };
    let entry = follower.wait(ws, deadline, &mut display, started).await;
    display.finish();
    let entry = entry?;
    check_outcome(&entry, &wf.graph, prompt_id)?;

    let files = download_outputs(api, &entry, &opts.out, &mut display).await?;
    if opts.mode == Mode::Human {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "done in {secs:.1}s: {} file{} in {}",
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            opts.out.display()
        );
        for f in &files {
            println!("{}", f.display());
        }
    }
    Ok(RunResult {
        prompt_id: prompt_id.to_owned(),
        files,
    })
}

/// `POST /upload/image` of one local file; returns the name to put in the graph.
async fn upload(api: &Api, path: &Path) -> Result<String, ClientError> {
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| ClientError::io(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into());
    let part = reqwest::multipart::Part::bytes(data).file_name(name);
    let form = reqwest::multipart::Form::new()
        .part("image", part)
        .text("type", "input");
    let rb = api.request(Method::POST, "/upload/image").multipart(form);
    let resp = api.send(&Method::POST, "/upload/image", rb, true).await?;
    let v: Value = resp
        .json()
        .await
        .map_err(|e| ClientError::Transport(format!("/upload/image: {e}")))?;
    let stored = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Transport(format!("/upload/image: unexpected answer {v}")))?;
    let sub = v.get("subfolder").and_then(Value::as_str).unwrap_or("");
    Ok(if sub.is_empty() {
        stored.to_owned()
    } else {
        format!("{sub}/{stored}")
    })
}

/// How often a submit that did not get through is tried.
const SUBMIT_ATTEMPTS: u32 = 4;
/// Longest wait a `Retry-After` may impose on a submit.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// `POST /prompt`; a 400 is turned into a readable list of the graph's errors. Busy answers
/// (429, 503) are retried after their `Retry-After`, and a submit whose answer was lost is sent
/// again: the client-made `prompt_id` makes a repeat return the first answer, never a second job.
async fn submit(
    api: &Api,
    body: &Value,
    graph: &Map<String, Value>,
    deadline: Instant,
    display: &Display,
) -> Result<Value, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (err, wait) = match submit_once(api, body, graph).await {
            Ok(v) => return Ok(v),
            Err(Submit::Final(e)) => return Err(e),
            Err(Submit::Retry(e, wait)) => (e, wait),
        };
        let wait = wait.unwrap_or(Duration::from_millis(500 * u64::from(attempt)));
        if attempt >= SUBMIT_ATTEMPTS || Instant::now() + wait >= deadline {
            return Err(err);
        }
        display.note(&format!(
            "submit did not go through ({err}); retrying in {}",
            humantime::format_duration(wait)
        ));
        tokio::time::sleep(wait).await;
    }
}

enum Submit {
    Final(ClientError),
    Retry(ClientError, Option<Duration>),
}

async fn submit_once(api: &Api, body: &Value, graph: &Map<String, Value>) -> Result<Value, Submit> {
    let rb = api.request(Method::POST, "/prompt").json(body);
    let resp = match rb.timeout(Duration::from_secs(60)).send().await {
        Ok(r) => r,
        Err(e) => return Err(Submit::Retry(api.transport_error(e), None)),
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Err(Submit::Retry(api.transport_error(e), None)),
    };
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| {
            Submit::Final(ClientError::Transport(format!(
                "/prompt: the answer is not JSON: {e}"
            )))
        });
    }
    if status == StatusCode::BAD_REQUEST {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return Err(Submit::Final(ClientError::Rejected(format_rejection(
                &v, graph,
            ))));
        }
    }
    let err = api.status_error(&Method::POST, "/prompt", status, &text);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(Submit::Retry(
            err,
            Some(retry_after.unwrap_or(Duration::from_secs(1))),
        ));
    }
    Err(Submit::Final(err))
}

/// "the server refused the workflow: ..." with one line per node error.
pub fn format_rejection(v: &Value, graph: &Map<String, Value>) -> String {
    let mut s = format!(
        "the server refused the workflow: {}",
        crate::api::error_message(&v.to_string())
    );
    if let Some(nodes) = v.get("node_errors").and_then(Value::as_object) {
        for (id, ne) in nodes {
            let class = ne.get("class_type").and_then(Value::as_str).unwrap_or("?");
            for e in ne
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                let det = e.get("details").and_then(Value::as_str).unwrap_or("");
                let title = node_title(graph, id);
                let who = if title == class {
                    format!("node {id} ({class})")
                } else {
                    format!("node {id} ({class}, \"{title}\")")
                };
                s.push_str(&format!("\n  {who}: {msg}"));
                if !det.is_empty() {
                    s.push_str(&format!(": {det}"));
                }
            }
        }
    }
    s
}

/// Follows one job until its history entry exists.
struct Follower<'a> {
    api: &'a Api,
    prompt_id: &'a str,
    client_id: &'a str,
}

impl Follower<'_> {
    /// Waits for the job to end; returns its history entry (or one made from the events when
    /// the history cannot be read).
    async fn wait(
        &self,
        mut ws: Option<WsStream>,
        deadline: Instant,
        display: &mut Display,
        started: Instant,
    ) -> Result<Value, ClientError> {
        let mut outputs = Map::new();
        let mut backoff = Duration::from_millis(200);
        let mut reconnect_at = Instant::now();
        let mut next_poll = Instant::now() + POLL_UP;
        loop {
            let ws_down = ws.is_none();
            let ws_next = async {
                match ws.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClientError::Timeout(format!(
                        "timed out after {} waiting for job {id}; it is still queued or running on the server (stop it with `comfy-broker cancel {id}`)",
                        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                        id = self.prompt_id,
                    )));
                }
                msg = ws_next => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                        if let Some(done) = self.on_message(&v, display, &mut outputs) {
                            return self.final_entry(done, &outputs).await;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        ws = None;
                        display.client_event(
                            "reconnecting",
                            json!({"prompt_id": self.prompt_id}),
                            Some("connection lost; reconnecting (and polling the history meanwhile)"),
                        );
                        reconnect_at = Instant::now() + backoff;
                        next_poll = Instant::now();
                    }
                },
                _ = tokio::time::sleep_until(reconnect_at), if ws_down => {
                    match self.api.connect_ws(self.client_id).await {
                        Ok(w) => {
                            ws = Some(w);
                            backoff = Duration::from_millis(200);
                            display.client_event("reconnected", json!({"prompt_id": self.prompt_id}), Some("reconnected"));
                            // Anything that ended while we were away is in the history.
                            next_poll = Instant::now();
                        }
                        Err(e @ ClientError::Auth(_)) => return Err(e),
                        Err(_) => {
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            reconnect_at = Instant::now() + backoff;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    match self.poll().await {
                        Ok(Some(entry)) => return Ok(entry),
                        Ok(None) => {}
                        Err(e @ (ClientError::Auth(_) | ClientError::Interrupted(_))) => return Err(e),
                        Err(_) => {} // a blip: try again at the next poll
                    }
                    next_poll = Instant::now() + if ws.is_some() { POLL_UP } else { POLL_DOWN };
                }
            }
        }
    }

    /// Handles one JSON message; returns the terminal message once the job ended.
    fn on_message(
        &self,
        v: &Value,
        display: &mut Display,
        outputs: &mut Map<String, Value>,
    ) -> Option<Value> {
        let t = v.get("type").and_then(Value::as_str)?;
        if matches!(t, "status" | "feature_flags") {
            return None;
        }
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        match data.get("prompt_id").and_then(Value::as_str) {
            Some(p) if p != self.prompt_id => return None,
            // Only the reconnect replay `executing {node}` comes without a prompt id; this
            // socket id is used for this one job, so it is ours.
            None if t != "executing" => return None,
            _ => {}
        }
        display.server_message(v);
        if t == "executed" {
            if let (Some(n), Some(o)) =
                (data.get("node").and_then(Value::as_str), data.get("output"))
            {
                if o.is_object() {
                    outputs.insert(n.to_owned(), o.clone());
                }
            }
        }
        let ended = protocol::messages::is_terminal(t, &data)
            || (t == "executing"
                && data.get("node").is_some_and(Value::is_null)
                && data.get("prompt_id").is_some());
        ended.then(|| v.clone())
    }

    /// The history entry after a terminal message (written before it was published), or one
    /// built from the events if it cannot be read.
    async fn final_entry(
        &self,
        terminal: Value,
        outputs: &Map<String, Value>,
    ) -> Result<Value, ClientError> {
        for _ in 0..20 {
            if let Ok(Some(e)) = self.history().await {
                return Ok(e);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = terminal.get("type").and_then(Value::as_str).unwrap_or("");
        if t == "executing" {
            // The end marker alone says nothing about the outcome: ask the jobs API.
            if let Err(e @ ClientError::Interrupted(_)) = self.poll().await {
                return Err(e);
            }
        }
        let data = terminal.get("data").cloned().unwrap_or(Value::Null);
        let (status_str, messages) = if t == "executing" {
            (
                "success",
                json!([["execution_success", {"prompt_id": self.prompt_id}]]),
            )
        } else {
            (
                if t == "execution_success" {
                    "success"
                } else {
                    "error"
                },
                json!([[t, data]]),
            )
        };
        Ok(json!({
            "outputs": Value::Object(outputs.clone()),
            "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
        }))
    }

    /// `GET /history/{id}` → the entry once it exists.
    async fn history(&self) -> Result<Option<Value>, ClientError> {
        let v = self
            .api
            .get_json(&format!("/history/{}", self.prompt_id))
            .await?;
        Ok(v.get(self.prompt_id).cloned())
    }

    /// One poll: the history entry, or `Interrupted` when the job was cancelled before it ran
    /// (such jobs get no history entry).
    async fn poll(&self) -> Result<Option<Value>, ClientError> {
        if let Some(e) = self.history().await? {
            return Ok(Some(e));
        }
        if let Ok(job) = self
            .api
            .get_json(&format!("/api/jobs/{}", self.prompt_id))
            .await
        {
            if job.get("status").and_then(Value::as_str) == Some("cancelled") {
                // Interrupted while running leaves history; re-check it before deciding.
                if let Some(e) = self.history().await? {
                    return Ok(Some(e));
                }
                return Err(ClientError::Interrupted(format!(
                    "job {} was cancelled before it ran",
                    self.prompt_id
                )));
            }
        }
        Ok(None)
    }
}

/// Ctrl-C: cancel the job on the server (if it may have been submitted), whether pending or
/// running. The jobs API does both atomically; `/interrupt {prompt_id}` and `/queue {delete}`
/// back it up (servers without it). Returns the error to exit with.
async fn on_ctrl_c(api: &Api, id: &str, submitted: bool) -> ClientError {
    if !submitted {
        return ClientError::Interrupted("interrupted before the job was submitted".into());
    }
    let send = |path: String, body: Value| {
        api.request(Method::POST, &path)
            .json(&body)
            .timeout(CANCEL_TIMEOUT)
            .send()
    };
    let cancelled = match send(format!("/api/jobs/{id}/cancel"), json!({})).await {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("cancelled").and_then(Value::as_bool))
            .unwrap_or(false),
        _ => false,
    };
    if !cancelled {
        let _ = send("/interrupt".into(), json!({"prompt_id": id})).await;
        let _ = send("/queue".into(), json!({"delete": [id]})).await;
    }
    // Say how it ended if that is known within a moment (a second Ctrl-C stops waiting).
    let outcome = async {
        let deadline = Instant::now() + CANCEL_CONFIRM;
        while Instant::now() < deadline {
            if let Ok(v) = api.get_json(&format!("/history/{id}")).await {
                if let Some(entry) = v.get(id) {
                    let graph = entry
                        .pointer("/prompt/2")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    return Some(check_outcome(entry, &graph, id));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    };
    let outcome = tokio::select! {
        o = outcome => o,
        _ = tokio::signal::ctrl_c() => None,
    };
    ClientError::Interrupted(match outcome {
        Some(Err(ClientError::Interrupted(m))) => format!("interrupted: {m}"),
        Some(Ok(())) => format!(
            "interrupted, but job {id} finished before the interrupt took effect; its outputs were not downloaded (`comfy-broker history {id} --out DIR` does)"
        ),
        Some(Err(e)) => format!("interrupted; job {id} ended with: {e}"),
        None => format!(
            "interrupted: asked the server to stop job {id} (see `comfy-broker history {id}`)"
        ),
    })
}

/// Success, or the error the entry records (exit 1 for a node failure, 3 for an interrupt).
pub fn check_outcome(
    entry: &Value,
    graph: &Map<String, Value>,
    prompt_id: &str,
) -> Result<(), ClientError> {
    let status = entry.get("status");
    let last = status
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter().rev().find(|e| {
                matches!(
                    e.get(0).and_then(Value::as_str),
                    Some("execution_success" | "execution_error" | "execution_interrupted")
                )
            })
        });
    let kind = last.and_then(|e| e.get(0)).and_then(Value::as_str);
    let data = last.and_then(|e| e.get(1)).cloned().unwrap_or(Value::Null);
    match kind {
        Some("execution_error") => {
            Err(ClientError::Execution(format_execution_error(&data, graph)))
        }
        Some("execution_interrupted") => {
            let at = data
                .get("node_id")
                .and_then(Value::as_str)
                .map(|n| format!(" at node {n} ({})", node_title(graph, n)))
                .unwrap_or_default();
            Err(ClientError::Interrupted(format!(
                "job {prompt_id} was interrupted{at}"
            )))
        }
        Some(_) => Ok(()),
        None => match status
            .and_then(|s| s.get("status_str"))
            .and_then(Value::as_str)
        {
            Some("error") => Err(ClientError::Execution(format!("job {prompt_id} failed"))),
            _ => Ok(()),
        },
    }
}

/// "node 2 (SaveImage) failed: RuntimeError: boom".
pub fn format_execution_error(data: &Value, graph: &Map<String, Value>) -> String {
    let node = data.get("node_id").and_then(Value::as_str).unwrap_or("?");
    let node_type = data
        .get("node_type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| node_title(graph, node));
    let title = node_title(graph, node);
    let who = if title == node_type || !graph.contains_key(node) {
        format!("node {node} ({node_type})")
    } else {
        format!("node {node} ({node_type}, \"{title}\")")
    };
    let etype = data
        .get("exception_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let msg = data
        .get("exception_message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    let mut s = format!("execution failed at {who}");
    match (etype.is_empty(), msg.is_empty()) {
        (false, false) => s.push_str(&format!(": {etype}: {msg}")),
        (true, false) => s.push_str(&format!(": {msg}")),
        (false, true) => s.push_str(&format!(": {etype}")),
        (true, true) => {}
    }
    s
}

/// Every output item (`{filename, subfolder, type}`) of a history entry, in node order, once.
pub fn output_items(entry: &Value) -> Vec<(String, Value)> {
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    let Some(outputs) = entry.get("outputs").and_then(Value::as_object) else {
        return items;
    };
    for (node, ui) in outputs {
        let Some(ui) = ui.as_object() else { continue };
        for list in ui.values() {
            for item in list.as_array().into_iter().flatten() {
                let Some(f) = item.get("filename").and_then(Value::as_str) else {
                    continue;
                };
                let sub = item.get("subfolder").and_then(Value::as_str).unwrap_or("");
                let ty = item.get("type").and_then(Value::as_str).unwrap_or("output");
                if seen.insert((f.to_owned(), sub.to_owned(), ty.to_owned())) {
                    items.push((node.clone(), item.clone()));
                }
            }
        }
    }
    items
}

/// A safe local name for a server-given file name: its last path component, never `..`, a
/// hidden name or empty.
pub fn safe_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    if base.is_empty() || base.starts_with('.') || base.contains('\0') {
        return None;
    }
    Some(base.to_owned())
}

/// Creates `dir/name`, or `dir/stem (1).ext`, `(2)` ... when it exists: never overwrites.
async fn create_unique(dir: &Path, name: &str) -> Result<(PathBuf, tokio::fs::File), ClientError> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
            .await
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::io(candidate, e)),
        }
    }
    Err(ClientError::Usage(format!(
        "{}: too many files named {name}",
        dir.display()
    )))
}

/// Downloads every output of `entry` into `out` via `/view`; returns the paths written.
pub async fn download_outputs(
    api: &Api,
    entry: &Value,
    out: &Path,
    display: &mut Display,
) -> Result<Vec<PathBuf>, ClientError> {
    let items = output_items(entry);
    if items.is_empty() {
        return Ok(Vec::new());
    }
    tokio::fs::create_dir_all(out)
        .await
        .map_err(|e| ClientError::io(out, e))?;
    let mut files = Vec::new();
    for (node, item) in items {
        let filename = item.get("filename").and_then(Value::as_str).unwrap_or("");
        let sub = item.get("subfolder").and_then(Value::as_str).unwrap_or("");
        let ty = item.get("type").and_then(Value::as_str).unwrap_or("output");
        let Some(local) = safe_file_name(filename) else {
            display.note(&format!("skipping output with an unsafe name {filename:?}"));
            continue;
        };
        let rb = api.request(Method::GET, "/view").query(&[
            ("filename", filename),
            ("subfolder", sub),
            ("type", ty),
        ]);
        let mut resp = api.send(&Method::GET, "/view", rb, true).await?;
        let (path, mut file) = create_unique(out, &local).await?;
        let written: Result<(), ClientError> = async {
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| ClientError::Transport(format!("/view {filename}: {e}")))?
            {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| ClientError::io(&path, e))?;
            }
            file.flush().await.map_err(|e| ClientError::io(&path, e))
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        display.client_event(
            "output",
            json!({"node": node, "path": path.display().to_string(), "filename": filename, "subfolder": sub, "type": ty}),
            None,
        );
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Map<String, Value> {
        json!({"1": {"class_type": "EmptyImage"}, "2": {"class_type": "SaveImage", "_meta": {"title": "Out"}}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn execution_errors_name_the_node_and_message() {
        let entry = json!({"status": {"status_str": "error", "completed": false, "messages": [
            ["execution_start", {}],
            ["execution_error", {"node_id": "2", "node_type": "SaveImage", "exception_type": "RuntimeError", "exception_message": "boom\n"}]
        ]}});
        let e = check_outcome(&entry, &graph(), "p").unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "execution failed at node 2 (SaveImage, \"Out\"): RuntimeError: boom"
        );
        let int = json!({"status": {"status_str": "error", "messages": [["execution_interrupted", {"node_id": "1"}]]}});
        let e = check_outcome(&int, &graph(), "p").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("node 1 (EmptyImage)"));
        let ok =
            json!({"status": {"status_str": "success", "messages": [["execution_success", {}]]}});
        assert!(check_outcome(&ok, &graph(), "p").is_ok());
    }

    #[test]
    fn rejections_list_node_errors() {
        let v = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"class_type": "EmptyImage", "errors": [{"type": "value_bigger_than_max", "message": "Value bigger than max", "details": "width: 99999 > 16384"}]}}});
        let s = format_rejection(&v, &graph());
        assert!(s.contains("Prompt outputs failed validation"), "{s}");
        assert!(
            s.contains("node 1 (EmptyImage): Value bigger than max: width: 99999 > 16384"),
            "{s}"
        );
    }

    #[test]
    fn output_items_are_every_file_once() {
        let e = json!({"outputs": {
            "2": {"images": [{"filename": "a.png", "subfolder": "p", "type": "output"}, {"filename": "b.png", "subfolder": "p", "type": "output"}], "text": ["hi"]},
            "3": {"images": [{"filename": "a.png", "subfolder": "p", "type": "output"}], "gifs": [{"filename": "c.webp", "subfolder": "p", "type": "temp"}]}
        }});
        let names: Vec<_> = output_items(&e)
            .into_iter()
            .map(|(_, i)| i["filename"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.webp"]);
    }

    #[test]
    fn server_names_cannot_escape_the_output_dir() {
        assert_eq!(safe_file_name("a.png").as_deref(), Some("a.png"));
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(safe_file_name("..\\x.png").as_deref(), Some("x.png"));
        assert_eq!(safe_file_name(".."), None);
        assert_eq!(safe_file_name("sub/"), None);
        assert_eq!(safe_file_name(".bashrc"), None);
    }

    #[tokio::test]
    async fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.png"), b"old").unwrap();
        let (p, _) = create_unique(dir.path(), "x.png").await.unwrap();
        assert_eq!(p, dir.path().join("x (1).png"));
        assert_eq!(std::fs::read(dir.path().join("x.png")).unwrap(), b"old");
    }
}
