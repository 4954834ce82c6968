//! Running one leased job on the backend: submit under a fresh backend prompt id, follow the
//! backend's WebSocket, translate and publish its events, copy outputs, and finish.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use files::{FileKey, FileKind};
use futures::StreamExt;
use protocol::envelope::{Envelope, Payload, Target};
use protocol::frames::{BinaryFrame, ImageFormat};
use protocol::messages::is_terminal;
use serde_json::{json, Value};
use store::{Finish, Heartbeat, Lease, TerminalState};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use crate::backend::BackendRunner;
use crate::client::SubmitAnswer;
use crate::error::BackendError;
use crate::translate::{
    backend_request, binary_target, error_data, file_inputs, refused_error_data, rewrite_ids,
    rewrite_output_files, rewritten_subfolder, shipped_subfolder, target_for, FileRef, JobTrace,
};
use crate::{JobKey, JobSignal, Shared};

/// How a job run ended, as far as the backend is concerned.
pub(crate) enum JobEnd {
    /// The job is settled (finished, given back, or lost); the backend is usable.
    Done,
    /// The backend failed; reconnect and health-check it before more work.
    BackendDown,
    /// The worker is shutting down (the job was interrupted and given back).
    Shutdown,
}

/// Adds `"nsfw": true` to the output items of flagged files (`(type, subfolder, filename)`).
fn mark_flagged(output: &mut Value, flagged: &[(String, String, String)]) {
    if flagged.is_empty() {
        return;
    }
    let Some(map) = output.as_object_mut() else {
        return;
    };
    for item in map
        .values_mut()
        .filter_map(Value::as_array_mut)
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let id = (field("type"), field("subfolder"), field("filename"));
        if flagged.contains(&id) {
            item.insert("nsfw".into(), Value::Bool(true));
        }
    }
}

struct Run {
    lease: Arc<Lease>,
    /// When this attempt started (for `job_run_seconds`).
    started: Instant,
    backend_pid: String,
    trace: JobTrace,
    interrupt_wanted: bool,
    /// Previews cannot be classified in time: with a classifier configured, an owner with
    /// `sfw_check` on gets none.
    withhold_previews: bool,
}

/// Unregisters the job and stops its heartbeat when the run ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    key: JobKey,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.shared.unregister(&self.key);
    }
}

async fn heartbeat(
    shared: Arc<Shared>,
    lease: Arc<Lease>,
    tx: mpsc::UnboundedSender<JobSignal>,
    every: Duration,
) {
    let mut asked = false;
    loop {
        tokio::time::sleep(every).await;
        match shared.store.heartbeat(&lease).await {
            Ok(Heartbeat::Lost) => {
                let _ = tx.send(JobSignal::LeaseLost);
                return;
            }
            Ok(Heartbeat::InterruptRequested) if !asked => {
                asked = true;
                let _ = tx.send(JobSignal::Interrupt);
            }
            Ok(_) => {}
            Err(e) => {
                crate::metrics::redis_error();
                tracing::warn!(error = %e, "heartbeat failed")
            }
        }
    }
}

/// Why the graph's input files could not be shipped.
enum Ship {
    /// The owner does not have the file (or its name is unusable): the job's fault.
    Invalid(String),
    /// The backend failed to take it.
    Backend(BackendError),
}

enum Recovery {
    Continue,
    End(JobEnd),
}

impl BackendRunner {
    /// Runs one leased job to its end.
    pub(crate) async fn run_job(&mut self, lease: Lease) -> JobEnd {
        self.metrics.started.increment(1);
        let span = tracing::info_span!(
            "job",
            worker = %self.shared.config.id,
            backend = %self.id,
            prompt_id = %lease.prompt_id,
            request_id = %lease.request_id.as_deref().unwrap_or(""),
            attempt = lease.attempt,
        );
        // Every HTTP call to the backend for this job carries its request id.
        let plain = self.client.clone();
        self.client = plain.with_request_id(lease.request_id.as_deref());
        let end = self.run_job_inner(lease).instrument(span).await;
        self.client = plain;
        end
    }

    async fn run_job_inner(&mut self, lease: Lease) -> JobEnd {
        let lease = Arc::new(lease);
        let key = (
            lease.pool.clone(),
            lease.user_id.clone(),
            lease.prompt_id.clone(),
        );
        let (tx, mut signals) = mpsc::unbounded_channel();
        self.shared.register(key.clone(), tx.clone());
        let _registration = Registration {
            shared: self.shared.clone(),
            key,
            heartbeat: tokio::spawn(
                heartbeat(
                    self.shared.clone(),
                    lease.clone(),
                    tx,
                    self.shared.config.heartbeat_interval,
                )
                .in_current_span(),
            ),
        };
        let withhold_previews = self.shared.nsfw.enabled() && {
            match self.shared.store.user_by_id(&lease.user_id).await {
                Ok(u) => u.is_none_or(|u| u.sfw_check),
                // When in doubt, the safe answer.
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the owner's sfw_check");
                    true
                }
            }
        };
        let mut run = Run {
            started: Instant::now(),
            lease,
            backend_pid: protocol::ids::new_prompt_id(),
            trace: JobTrace::default(),
            interrupt_wanted: false,
            withhold_previews,
        };
        if let Some(end) = self.submit(&mut run).await {
            return end;
        }
        self.follow(&mut run, &mut signals).await
    }

    /// Submits the job; `Some` when the job is already settled.
    async fn submit(&mut self, run: &mut Run) -> Option<JobEnd> {
        let lease = run.lease.clone();
        let item: Value = match serde_json::from_str(&lease.item_json) {
            Ok(v @ Value::Array(_)) => v,
            _ => {
                tracing::error!("stored queue item is not a JSON array");
                self.finish_error(run, "invalid_job", "The stored job could not be read.")
                    .await;
                return Some(JobEnd::Done);
            }
        };
        if lease.attempt <= 1 {
            if let Some(wait) = crate::metrics::wait_secs(&item, crate::translate::now_ms()) {
                self.metrics.wait.record(wait);
            }
        }
        let mut item = item;
        if let Some(prompt) = item.get_mut(2) {
            match self.ship_inputs(&lease, prompt).await {
                Ok(()) => {}
                Err(Ship::Backend(e)) => {
                    tracing::warn!(error = %e, "shipping an input to the backend failed");
                    self.give_back(run, &e.to_string(), false).await;
                    return Some(JobEnd::BackendDown);
                }
                Err(Ship::Invalid(message)) => {
                    tracing::info!("job names an input file it cannot use");
                    let data = error_data(
                        &lease.prompt_id,
                        None,
                        Vec::new(),
                        "invalid_input_file",
                        &message,
                    );
                    self.finish(run, "execution_error", data).await;
                    return Some(JobEnd::Done);
                }
            }
        }
        let body = backend_request(
            &item,
            lease.sensitive_json.as_deref(),
            &self.sid,
            &run.backend_pid,
        );
        tracing::debug!(backend_prompt_id = %run.backend_pid, "submitting");
        match self.client.submit(&body).await {
            Ok(SubmitAnswer::Queued) => None,
            Ok(SubmitAnswer::Refused(err)) => {
                tracing::info!("backend refused the graph");
                let data = refused_error_data(&lease.prompt_id, &err);
                self.finish(run, "execution_error", data).await;
                Some(JobEnd::Done)
            }
            Err(e) => {
                tracing::warn!(error = %e, "submit failed");
                // It may have been queued anyway (a timeout): make sure it does not run.
                let client = self.client.clone();
                let pid = run.backend_pid.clone();
                tokio::spawn(async move {
                    let _ = client.delete_pending(&pid).await;
                    let _ = client.interrupt(&pid).await;
                });
                match &e {
                    BackendError::Unreachable(_) => {
                        self.give_back(run, &e.to_string(), false).await;
                        Some(JobEnd::BackendDown)
                    }
                    BackendError::Status { status, .. } if !e.is_backend_fault() => {
                        let data = error_data(
                            &lease.prompt_id,
                            None,
                            Vec::new(),
                            "prompt_refused",
                            &format!("The backend refused the prompt with status {status}."),
                        );
                        self.finish(run, "execution_error", data).await;
                        Some(JobEnd::Done)
                    }
                    _ => {
                        self.give_back(run, &e.to_string(), true).await;
                        Some(JobEnd::BackendDown)
                    }
                }
            }
        }
    }

    /// Uploads the owner's files that the graph's file inputs name (LoadImage's `image` ...) to
    /// the backend under `_broker/<user>/...` and points the inputs there. A file the owner
    /// does not have ends the job: a backend's own files (other users' outputs, its input
    /// folder) are never reachable through the broker.
    async fn ship_inputs(&self, lease: &Lease, prompt: &mut Value) -> Result<(), Ship> {
        let Some(catalog) = self.catalog.clone() else {
            return Ok(());
        };
        for f in file_inputs(prompt, &catalog) {
            let shown = if f.subfolder.is_empty() {
                f.filename.clone()
            } else {
                format!("{}/{}", f.subfolder, f.filename)
            };
            let invalid = || format!("{} - Invalid file: {shown}{}", f.input, f.annotation);
            let kind = FileKind::parse(f.kind).ok_or_else(|| Ship::Invalid(invalid()))?;
            let key = FileKey::new(&lease.user_id, kind, &f.subfolder, &f.filename)
                .map_err(|_| Ship::Invalid(invalid()))?;
            let data = match self.shared.files.read(&key).await {
                Ok(d) => d,
                Err(files::FilesError::NotFound) => return Err(Ship::Invalid(invalid())),
                Err(e) => {
                    return Err(Ship::Invalid(format!(
                        "{} - could not read {shown}: {e}",
                        f.input
                    )))
                }
            };
            let sub = shipped_subfolder(&lease.user_id, &f.subfolder);
            self.client
                .upload(f.kind, &sub, &f.filename, data)
                .await
                .map_err(Ship::Backend)?;
            let value = format!("{sub}/{}{}", f.filename, f.annotation);
            if let Some(slot) = prompt
                .get_mut(&f.node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(|i| i.get_mut(&f.input))
            {
                *slot = Value::String(value);
            }
        }
        Ok(())
    }

    async fn follow(
        &mut self,
        run: &mut Run,
        signals: &mut mpsc::UnboundedReceiver<JobSignal>,
    ) -> JobEnd {
        let silence = self.shared.config.silence_timeout;
        let mut deadline = Instant::now() + silence;
        enum Ev {
            Signal(Option<JobSignal>),
            Stop,
            Msg(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
            Silent,
        }
        loop {
            let Some(ws) = self.ws.as_mut() else {
                match self.recover(run).await {
                    Recovery::Continue => continue,
                    Recovery::End(end) => return end,
                }
            };
            let ev = tokio::select! {
                biased;
                s = signals.recv() => Ev::Signal(s),
                _ = self.drain.cancelled() => Ev::Stop,
                m = ws.next() => Ev::Msg(m),
                _ = tokio::time::sleep_until(deadline) => Ev::Silent,
            };
            match ev {
                Ev::Signal(Some(JobSignal::Interrupt)) => {
                    tracing::info!("interrupting on the backend");
                    run.interrupt_wanted = true;
                    self.spawn_interrupt(run);
                }
                Ev::Signal(Some(JobSignal::LeaseLost)) => {
                    tracing::warn!("lease lost; abandoning the job");
                    self.spawn_interrupt(run);
                    return JobEnd::Done;
                }
                Ev::Signal(None) => {}
                Ev::Stop => {
                    tracing::info!("shutting down: interrupting the job and giving it back");
                    let _ = self.client.delete_pending(&run.backend_pid).await;
                    let _ = self.client.interrupt(&run.backend_pid).await;
                    self.publisher.flush().await;
                    match self.shared.store.release(&run.lease, false).await {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "release failed"),
                    }
                    return JobEnd::Shutdown;
                }
                Ev::Msg(Some(Ok(Message::Text(text)))) => {
                    deadline = Instant::now() + silence;
                    if let Some((ty, data)) = self.on_text(run, text.as_str()).await {
                        self.finish(run, &ty, data).await;
                        return JobEnd::Done;
                    }
                }
                Ev::Msg(Some(Ok(Message::Binary(b)))) => {
                    deadline = Instant::now() + silence;
                    self.on_binary(run, b).await;
                }
                Ev::Msg(Some(Ok(Message::Close(_)))) | Ev::Msg(Some(Err(_))) | Ev::Msg(None) => {
                    tracing::warn!("backend websocket lost during the job");
                    self.ws = None;
                }
                Ev::Msg(Some(Ok(Message::Pong(_)))) => self.awaiting_pong = false,
                Ev::Msg(Some(Ok(_))) => {}
                Ev::Silent => {
                    tracing::warn!(after = ?silence, "backend silent; checking the job");
                    match self.check_backend(run).await {
                        Recovery::Continue => deadline = Instant::now() + silence,
                        Recovery::End(end) => return end,
                    }
                }
            }
        }
    }

    /// The WebSocket dropped mid-job: reconnect, then find out what became of the job.
    async fn recover(&mut self, run: &mut Run) -> Recovery {
        let until = Instant::now() + self.shared.config.reconnect_timeout;
        loop {
            match self.client.connect_ws(&self.sid).await {
                Ok(ws) => {
                    self.ws = Some(ws);
                    self.awaiting_pong = false;
                    break;
                }
                Err(e) => {
                    if Instant::now() >= until {
                        tracing::warn!(error = %e, "backend websocket did not come back");
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = self.drain.cancelled() => break,
                    }
                }
            }
        }
        self.check_backend(run).await
    }

    /// Asks the backend's `/history` and `/queue` what became of the job.
    async fn check_backend(&mut self, run: &mut Run) -> Recovery {
        match self.client.history(&run.backend_pid).await {
            Ok(Some(entry)) => {
                self.finish_from_history(run, entry).await;
                return Recovery::End(JobEnd::Done);
            }
            Ok(None) => {}
            Err(e) => {
                self.give_back(run, &format!("backend failed: {e}"), true)
                    .await;
                return Recovery::End(JobEnd::BackendDown);
            }
        }
        match self.client.in_queue(&run.backend_pid).await {
            Ok(true) if self.ws.is_some() => Recovery::Continue,
            Ok(true) => {
                let _ = self.client.interrupt(&run.backend_pid).await;
                self.give_back(run, "lost the backend's websocket", true)
                    .await;
                Recovery::End(JobEnd::BackendDown)
            }
            Ok(false) => {
                if let Ok(Some(entry)) = self.client.history(&run.backend_pid).await {
                    self.finish_from_history(run, entry).await;
                    return Recovery::End(JobEnd::Done);
                }
                self.give_back(run, "the backend lost the job", true).await;
                Recovery::End(JobEnd::Done)
            }
            Err(e) => {
                self.give_back(run, &format!("backend failed: {e}"), true)
                    .await;
                Recovery::End(JobEnd::BackendDown)
            }
        }
    }

    /// Ends the job from the backend's history entry (events were missed).
    async fn finish_from_history(&mut self, run: &mut Run, mut entry: Value) {
        rewrite_ids(&mut entry, &run.backend_pid, &run.lease.prompt_id);
        let meta = entry.get("meta").cloned().unwrap_or(Value::Null);
        if let Some(outputs) = entry.get("outputs").and_then(Value::as_object) {
            for (node, out) in outputs {
                if run.trace.has_output(node) {
                    continue;
                }
                let mut out = out.clone();
                let files = rewrite_output_files(&mut out, &run.lease.prompt_id);
                let flagged = self.copy_files(run, files).await;
                mark_flagged(&mut out, &flagged);
                let display = meta
                    .get(node)
                    .and_then(|m| m.get("display_node"))
                    .cloned()
                    .unwrap_or_else(|| Value::String(node.clone()));
                let data = json!({"node": node, "display_node": display, "output": out, "prompt_id": run.lease.prompt_id});
                run.trace.executed(&data);
                self.publish_json(run, "executed", data).await;
            }
        }
        let messages = entry
            .pointer("/status/messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut terminal = None;
        for m in messages {
            let (Some(ty), Some(data)) = (m.get(0).and_then(Value::as_str), m.get(1)) else {
                continue;
            };
            match ty {
                "execution_start" if !run.trace.started() => run.trace.start(data),
                "execution_cached" => run.trace.cached(data),
                t if is_terminal(t, data) => terminal = Some((t.to_owned(), data.clone())),
                _ => {}
            }
        }
        let success =
            entry.pointer("/status/status_str").and_then(Value::as_str) == Some("success");
        let (ty, data) = terminal.unwrap_or_else(|| {
            if success {
                (
                    "execution_success".to_owned(),
                    json!({"prompt_id": run.lease.prompt_id, "timestamp": crate::translate::now_ms()}),
                )
            } else {
                (
                    "execution_error".to_owned(),
                    error_data(
                        &run.lease.prompt_id,
                        None,
                        run.trace.executed_nodes(),
                        "backend_error",
                        "The backend ended the job with an error but recorded no details.",
                    ),
                )
            }
        });
        self.finish(run, &ty, data).await;
    }

    fn spawn_interrupt(&self, run: &Run) {
        let client = self.client.clone();
        let pid = run.backend_pid.clone();
        tokio::spawn(
            async move {
                if let Err(e) = client.interrupt(&pid).await {
                    tracing::warn!(error = %e, "backend interrupt failed");
                }
            }
            .in_current_span(),
        );
    }

    async fn publish_json(&self, run: &Run, ty: &str, data: Value) {
        let Some(target) = target_for(ty, &data, run.lease.client_id.as_deref()) else {
            return;
        };
        let msg = json!({"type": ty, "data": data});
        match serde_json::to_vec(&msg) {
            Ok(bytes) => {
                self.publisher
                    .event(&run.lease, Envelope::text(target, bytes))
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "could not serialise a message"),
        }
    }

    /// Handles a JSON message; returns the terminal message when the job ended.
    async fn on_text(&mut self, run: &mut Run, text: &str) -> Option<(String, Value)> {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            tracing::debug!("backend sent a text frame that is not JSON");
            return None;
        };
        let ty = msg.get("type").and_then(Value::as_str)?.to_owned();
        if ty == "status" || ty == "feature_flags" {
            return None;
        }
        let mut data = msg.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        match data.get("prompt_id").and_then(Value::as_str) {
            Some(p) if p != run.backend_pid => return None,
            // A reconnect replay (`executing` without prompt id) or the end marker.
            None if ty == "executing" => return None,
            _ => {}
        }
        if ty == "executing" && data.get("node").is_none_or(Value::is_null) {
            return None;
        }
        rewrite_ids(&mut data, &run.backend_pid, &run.lease.prompt_id);
        match ty.as_str() {
            "execution_start" => {
                run.trace.start(&data);
                if run.interrupt_wanted {
                    self.spawn_interrupt(run);
                }
            }
            "execution_cached" => run.trace.cached(&data),
            "progress_state" => run.trace.progress_state(&data),
            "executing" => {
                run.trace.executing(&data);
                let node = data.get("node").and_then(Value::as_str).map(str::to_owned);
                self.publisher.node(&run.lease, node).await;
                if run.interrupt_wanted {
                    self.spawn_interrupt(run);
                }
            }
            "executed" => {
                if let Some(out) = data.get_mut("output") {
                    let files = rewrite_output_files(out, &run.lease.prompt_id);
                    let flagged = self.copy_files(run, files).await;
                    mark_flagged(out, &flagged);
                }
                run.trace.executed(&data);
            }
            _ => {}
        }
        if is_terminal(&ty, &data) {
            return Some((ty, data));
        }
        self.publish_json(run, &ty, data).await;
        None
    }

    async fn on_binary(&mut self, run: &mut Run, frame: Bytes) {
        let cid = run.lease.client_id.as_deref();
        let decoded = BinaryFrame::decode(&frame);
        if run.withhold_previews
            && matches!(
                decoded,
                Ok(BinaryFrame::Preview { .. } | BinaryFrame::PreviewWithMetadata { .. })
            )
        {
            return;
        }
        let env = match decoded {
            Ok(BinaryFrame::Text { .. }) => Envelope {
                target: Target::AllSockets,
                payload: Payload::Binary(frame),
            },
            Ok(BinaryFrame::PreviewWithMetadata { metadata, image }) => {
                let Ok(mut meta) = serde_json::from_slice::<Value>(&metadata) else {
                    return;
                };
                match meta.get("prompt_id").and_then(Value::as_str) {
                    Some(p) if p != run.backend_pid => return,
                    _ => {}
                }
                rewrite_ids(&mut meta, &run.backend_pid, &run.lease.prompt_id);
                if let Some(m) = meta.as_object_mut() {
                    m.entry("prompt_id")
                        .or_insert_with(|| Value::String(run.lease.prompt_id.clone()));
                }
                let format = meta
                    .get("image_type")
                    .and_then(Value::as_str)
                    .and_then(ImageFormat::from_mime);
                let Ok(metadata) = serde_json::to_vec(&meta) else {
                    return;
                };
                match (format, cid) {
                    (Some(format), _) => Envelope {
                        target: binary_target(cid),
                        payload: Payload::Preview {
                            format,
                            metadata: metadata.into(),
                            image,
                        },
                    },
                    // A format type 1 cannot carry: only sockets of the submitter, as type 4.
                    (None, Some(c)) => Envelope {
                        target: Target::Client(c.to_owned()),
                        payload: Payload::Binary(
                            BinaryFrame::PreviewWithMetadata {
                                metadata: metadata.into(),
                                image,
                            }
                            .encode(),
                        ),
                    },
                    (None, None) => return,
                }
            }
            Ok(BinaryFrame::Preview { format, image }) => {
                let meta = run
                    .trace
                    .preview_metadata(&run.lease.prompt_id, format.mime());
                let Ok(metadata) = serde_json::to_vec(&meta) else {
                    return;
                };
                Envelope {
                    target: binary_target(cid),
                    payload: Payload::Preview {
                        format,
                        metadata: metadata.into(),
                        image,
                    },
                }
            }
            Ok(BinaryFrame::Other { .. }) => Envelope {
                target: binary_target(cid),
                payload: Payload::Binary(frame),
            },
            Err(e) => {
                tracing::debug!(error = %e, "undecodable binary frame from the backend");
                return;
            }
        };
        self.publisher.event(&run.lease, env).await;
    }

    /// Copies output files from the backend into the owner's space in the file store (streamed;
    /// images are classified when a classifier is configured, and flagged ones recorded).
    /// Returns the `(type, rewritten subfolder, filename)` of the flagged files.
    async fn copy_files(&self, run: &Run, files: Vec<FileRef>) -> Vec<(String, String, String)> {
        let lease = &run.lease;
        let copies = files.into_iter().map(|f| async move {
            let Some(kind) = FileKind::parse(&f.kind) else {
                tracing::debug!(kind = %f.kind, "output of unknown type not copied");
                return None;
            };
            let sub = rewritten_subfolder(&lease.prompt_id, &f.subfolder);
            let key = match FileKey::new(&lease.user_id, kind, &sub, &f.filename) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(filename = %f.filename, error = %e, "output name not storable");
                    return None;
                }
            };
            let resp = match self.client.view_stream(&f.filename, &f.subfolder, &f.kind).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(filename = %f.filename, error = %e, "fetching output failed");
                    return None;
                }
            };
            let ct = files::content_type(&f.filename);
            if !(self.shared.nsfw.enabled() && ct.starts_with("image/")) {
                if let Err(e) = self.shared.files.put_stream(&key, resp.bytes_stream()).await {
                    tracing::warn!(filename = %f.filename, error = %e, "storing output failed");
                }
                return None;
            }
            // An image to classify: held in memory once (images are small), stored, judged.
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(filename = %f.filename, error = %e.without_url(), "fetching output failed");
                    return None;
                }
            };
            if let Err(e) = self.shared.files.put(&key, bytes.clone()).await {
                tracing::warn!(filename = %f.filename, error = %e, "storing output failed");
            }
            let verdict = self.shared.nsfw.classify(ct, bytes).await?;
            if !verdict.nsfw {
                return None;
            }
            let record = store::NsfwVerdict {
                score: verdict.score,
                source: if verdict.score.is_some() { "classifier" } else { "outage" }.into(),
                at_ms: crate::translate::now_ms(),
            };
            if let Err(e) = self
                .shared
                .store
                .flag_nsfw(&lease.user_id, &key.name_in_space(), &record)
                .await
            {
                tracing::warn!(error = %e, "recording an nsfw verdict failed");
            }
            tracing::info!(filename = %f.filename, score = ?verdict.score, "output flagged nsfw");
            Some((f.kind.clone(), sub, f.filename.clone()))
        });
        futures::future::join_all(copies)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Gives the job back to the queue, or ends it with an error once it used up its
    /// attempts.
    async fn give_back(&mut self, run: &mut Run, reason: &str, counts: bool) {
        self.publisher.flush().await;
        let max = self.shared.config.max_attempts.max(1);
        if counts && run.lease.attempt >= max {
            tracing::warn!(reason, "job failed on its last attempt");
            let msg = format!(
                "The job failed on {} attempt(s) for backend reasons; last: {reason}",
                run.lease.attempt
            );
            let data = error_data(
                &run.lease.prompt_id,
                None,
                run.trace.executed_nodes(),
                "backend_failure",
                &msg,
            );
            self.finish_with(run, "execution_error", data, Some(msg.clone()))
                .await;
            return;
        }
        match self.shared.store.release(&run.lease, counts).await {
            Ok(true) => tracing::info!(reason, "job given back to the queue"),
            Ok(false) => tracing::info!("lease already lost"),
            Err(e) => {
                crate::metrics::redis_error();
                tracing::warn!(error = %e, "release failed; the lease will expire")
            }
        }
    }

    async fn finish_error(&mut self, run: &mut Run, kind: &str, message: &str) {
        let data = error_data(
            &run.lease.prompt_id,
            None,
            run.trace.executed_nodes(),
            kind,
            message,
        );
        self.finish(run, "execution_error", data).await;
    }

    /// Writes the history entry and ends the job (the store publishes the terminal message,
    /// `status` and the end marker).
    async fn finish(&mut self, run: &mut Run, ty: &str, data: Value) {
        self.finish_with(run, ty, data, None).await;
    }

    /// [`Self::finish`], also copying the job to the dead letters when `dead_letter` is set.
    async fn finish_with(
        &mut self,
        run: &mut Run,
        ty: &str,
        data: Value,
        dead_letter: Option<String>,
    ) {
        self.publisher.flush().await;
        let dead = dead_letter.is_some();
        let state = match ty {
            "execution_success" => TerminalState::Success,
            "execution_interrupted" => TerminalState::Interrupted,
            _ => TerminalState::Error,
        };
        let history_json =
            run.trace
                .history_json(&run.lease.item_json, &run.lease.prompt_id, ty, &data);
        let terminal_message_json = json!({"type": ty, "data": data}).to_string();
        let fin = Finish {
            state,
            history_json,
            terminal_message_json,
            dead_letter,
        };
        // Keep trying through a Redis outage while the lease can still be ours: the result is
        // already computed, and giving up would make another worker run the job again.
        let give_up = Instant::now() + self.shared.config.lease_timeout;
        let mut pause = Duration::from_millis(25);
        loop {
            match self.shared.store.finish(&run.lease, &fin).await {
                Ok(true) => {
                    self.metrics.finished(state);
                    self.metrics.run.record(run.started.elapsed().as_secs_f64());
                    if dead {
                        self.metrics.dead_lettered.increment(1);
                    }
                    tracing::info!(state = ?state, "job finished");
                    return;
                }
                Ok(false) => {
                    tracing::warn!("lease lost before the job could finish");
                    return;
                }
                Err(e) if Instant::now() + pause < give_up => {
                    crate::metrics::redis_error();
                    tracing::warn!(error = %e, "finish failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    crate::metrics::redis_error();
                    tracing::error!(error = %e, "could not record the end of the job; its lease will expire");
                    return;
                }
            }
        }
    }
}
