//! The prompt worker: takes one queue item at a time and executes it the way ComfyUI 0.3.64's
//! `PromptExecutor` does — same scheduling (`ExecutionList` with `ux_friendly_pick_node`), same
//! execution cache semantics (input signatures, classic cache), same message sequence.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use protocol::catalog::ClassInfo;
use serde_json::{json, Map, Value};

use crate::faults::matches;
use crate::img::encode_jpeg;
use crate::nodes::{self, NodeEnv, NodeFailure, Val};
use crate::state::{QueueItem, Shared};

/// Outcome of one node.
enum NodeOutcome {
    Success,
    Interrupted,
    Failed(NodeFailure, Map<String, Value>),
    /// The simulator crashed or shut down: abandon the prompt silently.
    Abandoned,
}

struct UiEntry {
    meta: Value,
    output: Value,
}

/// The executor's private state (the caches live as long as the worker).
pub(crate) struct Executor {
    shared: Arc<Shared>,
    outputs: HashMap<String, Arc<Vec<Val>>>,
    ui: HashMap<String, UiEntry>,
    /// Per (node id, class) objects: PreviewImage's random prefix.
    objects: HashMap<(String, String), String>,
}

/// ComfyUI's `ProgressRegistry`: node → (state, value, max), in first-touched order.
#[derive(Default)]
struct Progress {
    nodes: Vec<(String, &'static str, Value, Value)>,
}

impl Progress {
    fn entry(&mut self, id: &str) -> usize {
        if let Some(i) = self.nodes.iter().position(|n| n.0 == id) {
            return i;
        }
        // ensure_entry: Pending with *integer* 0/1 (what leaks into cached nodes' messages).
        self.nodes
            .push((id.to_string(), "pending", json!(0), json!(1)));
        self.nodes.len() - 1
    }

    fn to_json(&self, prompt_id: &str) -> Value {
        let mut m = Map::new();
        for (id, state, value, max) in &self.nodes {
            if *state == "pending" {
                continue;
            }
            m.insert(
                id.clone(),
                json!({
                    "value": value, "max": max, "state": state, "node_id": id, "prompt_id": prompt_id,
                    "display_node_id": id, "parent_node_id": null, "real_node_id": id
                }),
            );
        }
        json!({"prompt_id": prompt_id, "nodes": m})
    }
}

/// ComfyUI's `ExecutionList` (a topological dissolve with its UX-friendly pick order).
struct ExecList<'a> {
    prompt: &'a Map<String, Value>,
    shared: &'a Shared,
    pending: Vec<String>,
    block_count: HashMap<String, usize>,
    blocking: HashMap<String, Vec<String>>,
    cached: &'a HashSet<String>,
}

fn link_of(v: &Value) -> Option<(&str, i64)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_str()?, a[1].as_i64()?)),
        _ => None,
    }
}

impl<'a> ExecList<'a> {
    fn class(&self, id: &str) -> Option<&'a ClassInfo> {
        let ct = self.prompt.get(id)?.get("class_type")?.as_str()?;
        self.shared.config.catalog.class(ct)
    }

    fn add_node(&mut self, id: &str) {
        let mut stack = vec![id.to_string()];
        let mut links: Vec<(String, String)> = Vec::new();
        while let Some(u) = stack.pop() {
            if self.pending.contains(&u) {
                continue;
            }
            self.pending.push(u.clone());
            self.block_count.insert(u.clone(), 0);
            self.blocking.insert(u.clone(), Vec::new());
            let Some(inputs) = self
                .prompt
                .get(&u)
                .and_then(|n| n.get("inputs"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            let class = self.class(&u);
            for (name, v) in inputs {
                let Some((from, _)) = link_of(v) else {
                    continue;
                };
                let lazy = class.and_then(|c| c.input(name)).is_some_and(|i| i.lazy);
                if !lazy && !self.cached.contains(from) && self.prompt.contains_key(from) {
                    stack.push(from.to_string());
                    links.push((from.to_string(), u.clone()));
                }
            }
        }
        for (from, to) in links {
            if self.cached.contains(&from) {
                continue;
            }
            let list = self.blocking.entry(from).or_default();
            if !list.contains(&to) {
                list.push(to.clone());
                *self.block_count.entry(to).or_default() += 1;
            }
        }
    }

    fn is_output(&self, id: &str) -> bool {
        self.class(id).is_some_and(|c| c.output_node)
    }

    fn is_async(&self, id: &str) -> bool {
        // Partner ("API") nodes are coroutines in ComfyUI.
        self.class(id)
            .is_some_and(|c| c.python_module.starts_with("comfy_api_nodes"))
    }

    fn stage(&self) -> Option<String> {
        let ready: Vec<&String> = self
            .pending
            .iter()
            .filter(|n| self.block_count.get(*n).copied().unwrap_or(0) == 0)
            .collect();
        if ready.is_empty() {
            return None;
        }
        if let Some(n) = ready.iter().find(|n| self.is_output(n) || self.is_async(n)) {
            return Some((*n).clone());
        }
        let blocked = |n: &str| self.blocking.get(n).cloned().unwrap_or_default();
        if let Some(n) = ready
            .iter()
            .find(|n| blocked(n).iter().any(|b| self.is_output(b)))
        {
            return Some((*n).clone());
        }
        if let Some(n) = ready.iter().find(|n| {
            blocked(n)
                .iter()
                .any(|b| blocked(b).iter().any(|b1| self.is_output(b1)))
        }) {
            return Some((*n).clone());
        }
        Some(ready[0].clone())
    }

    fn complete(&mut self, id: &str) {
        self.pending.retain(|p| p != id);
        if let Some(bl) = self.blocking.remove(id) {
            for b in bl {
                if let Some(c) = self.block_count.get_mut(&b) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Per-prompt execution context.
struct Run<'a> {
    item: &'a QueueItem,
    client: Option<String>,
    messages: Vec<Value>,
    progress: Progress,
    executed: Vec<String>,
    sigs: HashMap<String, String>,
    previews: bool,
}

impl Executor {
    pub fn new(shared: Arc<Shared>) -> Self {
        Executor {
            shared,
            outputs: HashMap::new(),
            ui: HashMap::new(),
            objects: HashMap::new(),
        }
    }

    /// The worker loop: one prompt at a time until shutdown or crash.
    pub async fn run(mut self) {
        loop {
            let shared = self.shared.clone();
            let item = loop {
                let notified = shared.wake.notified();
                if shared.kill.is_cancelled() || shared.shutdown.is_cancelled() {
                    return;
                }
                {
                    let mut inner = shared.lock();
                    if inner.free_memory {
                        inner.free_memory = false;
                        drop(inner);
                        self.reset();
                        continue;
                    }
                    if let Some(it) = inner.queue.pop() {
                        inner.running = Some(it.clone());
                        inner.queue_updated();
                        break it;
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = shared.kill.cancelled() => return,
                    _ = shared.shutdown.cancelled() => return,
                }
            };
            let done = self.execute(&item).await;
            if done.is_none() {
                // Crashed or shutting down: nothing more is sent.
                return;
            }
        }
    }

    /// `PromptExecutor.reset` (what `/free` with `free_memory` does).
    fn reset(&mut self) {
        self.outputs.clear();
        self.ui.clear();
        self.objects.clear();
    }

    fn add_message(
        &self,
        run: &mut Run<'_>,
        event: &str,
        mut data: Map<String, Value>,
        broadcast: bool,
    ) {
        data.insert("timestamp".into(), json!(now_ms()));
        let data = Value::Object(data);
        run.messages.push(json!([event, data]));
        if run.client.is_some() || broadcast {
            self.shared
                .lock()
                .send_json(event, data, run.client.as_deref());
        }
    }

    fn send_progress_state(&self, run: &Run<'_>) {
        let data = run.progress.to_json(&run.item.prompt_id);
        self.shared
            .lock()
            .send_json("progress_state", data, run.client.as_deref());
    }

    /// Executes one prompt and writes its history. None when the sim died meanwhile.
    async fn execute(&mut self, item: &QueueItem) -> Option<()> {
        let shared = self.shared.clone();
        shared.interrupt.store(false, Ordering::SeqCst);
        let client = item.client_id();
        shared.lock().client_id = client.clone();
        let previews = shared.config.previews
            && item
                .extra_data
                .get("preview_method")
                .and_then(Value::as_str)
                != Some("none");
        let mut run = Run {
            item,
            client,
            messages: vec![],
            progress: Progress::default(),
            executed: vec![],
            sigs: HashMap::new(),
            previews,
        };
        let pid = item.prompt_id.clone();
        self.add_message(
            &mut run,
            "execution_start",
            obj(json!({"prompt_id": pid})),
            false,
        );

        // Cache keys of this prompt; the classic cache forgets everything else.
        let prompt = item.prompt.clone();
        for id in prompt.keys() {
            let sig = self.signature(&prompt, id);
            run.sigs.insert(id.clone(), sig);
        }
        let keep: HashSet<&String> = run.sigs.values().collect();
        self.outputs.retain(|k, _| keep.contains(k));
        self.ui.retain(|k, _| keep.contains(k));
        self.objects.retain(|(id, class), _| {
            prompt
                .get(id)
                .and_then(|n| n.get("class_type"))
                .and_then(Value::as_str)
                == Some(class.as_str())
        });
        let cached: Vec<String> = prompt
            .keys()
            .filter(|id| {
                run.sigs
                    .get(*id)
                    .is_some_and(|s| self.outputs.contains_key(s))
            })
            .cloned()
            .collect();
        self.add_message(
            &mut run,
            "execution_cached",
            obj(json!({"nodes": cached, "prompt_id": pid})),
            false,
        );

        let cached_set: HashSet<String> = cached.into_iter().collect();
        let mut list = ExecList {
            prompt: &prompt,
            shared: &shared,
            pending: vec![],
            block_count: HashMap::new(),
            blocking: HashMap::new(),
            cached: &cached_set,
        };
        for o in &item.outputs {
            list.add_node(o);
        }
        let current_outputs: Vec<String> = prompt.keys().cloned().collect();
        let mut success = true;
        let mut finished = true;
        while !list.pending.is_empty() {
            let Some(node) = list.stage() else {
                // A dependency cycle (validation normally catches these).
                let blamed = list.pending.first().cloned().unwrap_or_default();
                let failure = NodeFailure {
                    exception_type: "graph.DependencyCycleError".into(),
                    message: "Dependency cycle detected".into(),
                    traceback: vec![],
                };
                self.handle_error(
                    &mut run,
                    &blamed,
                    Some((failure, Map::new())),
                    &current_outputs,
                );
                success = false;
                finished = false;
                break;
            };
            match self.execute_node(&mut run, &node).await {
                NodeOutcome::Success => list.complete(&node),
                NodeOutcome::Interrupted => {
                    self.handle_error(&mut run, &node, None, &current_outputs);
                    success = false;
                    finished = false;
                    break;
                }
                NodeOutcome::Failed(f, inputs) => {
                    self.handle_error(&mut run, &node, Some((f, inputs)), &current_outputs);
                    success = false;
                    finished = false;
                    break;
                }
                NodeOutcome::Abandoned => return None,
            }
        }
        if finished {
            self.add_message(
                &mut run,
                "execution_success",
                obj(json!({"prompt_id": pid})),
                false,
            );
        }

        // History: UI outputs of this prompt's nodes, cached ones included.
        let mut outputs = Map::new();
        let mut meta = Map::new();
        for id in prompt.keys() {
            if let Some(e) = run.sigs.get(id).and_then(|s| self.ui.get(s)) {
                outputs.insert(id.clone(), e.output.clone());
                meta.insert(id.clone(), e.meta.clone());
            }
        }
        if shared.kill.is_cancelled() {
            return None;
        }
        // task_done: history first, then the status broadcast, then the end marker.
        shared.wait_while(|f| f.hang_ws).await;
        let mut inner = shared.lock();
        inner.last_node_id = None;
        inner.running = None;
        let entry = json!({
            "prompt": item.to_json(),
            "outputs": outputs,
            "status": {
                "status_str": if success { "success" } else { "error" },
                "completed": success,
                "messages": run.messages,
            },
            "meta": meta,
        });
        inner.insert_history(pid.clone(), entry);
        inner.queue_updated();
        if let Some(c) = &run.client {
            inner.send_json(
                "executing",
                json!({"node": null, "prompt_id": pid}),
                Some(c),
            );
        }
        Some(())
    }

    fn handle_error(
        &self,
        run: &mut Run<'_>,
        node: &str,
        failure: Option<(NodeFailure, Map<String, Value>)>,
        current_outputs: &[String],
    ) {
        let class_type = run
            .item
            .prompt
            .get(node)
            .and_then(|n| n.get("class_type"))
            .cloned()
            .unwrap_or(Value::Null);
        let pid = run.item.prompt_id.clone();
        let executed = run.executed.clone();
        match failure {
            None => {
                let data = obj(
                    json!({"prompt_id": pid, "node_id": node, "node_type": class_type, "executed": executed}),
                );
                self.add_message(run, "execution_interrupted", data, true);
            }
            Some((f, inputs)) => {
                let mut message = format!("{}\n", f.message);
                if f.exception_type.contains("OutOfMemory") {
                    message.push_str("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number.");
                }
                let data = obj(json!({
                    "prompt_id": pid, "node_id": node, "node_type": class_type, "executed": executed,
                    "exception_message": message, "exception_type": f.exception_type,
                    "traceback": f.traceback, "current_inputs": inputs, "current_outputs": current_outputs,
                }));
                self.add_message(run, "execution_error", data, false);
            }
        }
    }

    /// The cache key of a node: its class, inputs and (recursively) its ancestors' keys, plus the
    /// node id for nodes that see their UNIQUE_ID; NaN-like (never equal) for changed files.
    fn signature(&self, prompt: &Map<String, Value>, id: &str) -> String {
        let mut ancestors: Vec<String> = Vec::new();
        let mut order: HashMap<String, usize> = HashMap::new();
        ancestry(prompt, id, &mut ancestors, &mut order, 0);
        let mut sig = vec![self.immediate_signature(prompt, id, &order)];
        for a in &ancestors {
            sig.push(self.immediate_signature(prompt, a, &order));
        }
        Value::Array(sig).to_string()
    }

    fn immediate_signature(
        &self,
        prompt: &Map<String, Value>,
        id: &str,
        order: &HashMap<String, usize>,
    ) -> Value {
        let Some(node) = prompt.get(id) else {
            return json!(["<missing>", id]);
        };
        let class_type = node.get("class_type").and_then(Value::as_str).unwrap_or("");
        let class = self.shared.config.catalog.class(class_type);
        let mut sig = vec![json!(class_type), self.is_changed(class_type, node)];
        if class.is_some_and(|c| c.wants_unique_id) {
            sig.push(json!(id));
        }
        if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
            let mut keys: Vec<&String> = inputs.keys().collect();
            keys.sort();
            for k in keys {
                let v = &inputs[k];
                match link_of(v) {
                    Some((from, sock)) => sig.push(json!([
                        k,
                        [
                            "ANCESTOR",
                            order.get(from).copied().unwrap_or(usize::MAX),
                            sock
                        ]
                    ])),
                    None => sig.push(json!([k, v])),
                }
            }
        }
        Value::Array(sig)
    }

    /// IS_CHANGED of the file loaders: the file's contents (a hash of them).
    fn is_changed(&self, class_type: &str, node: &Value) -> Value {
        if !matches!(
            class_type,
            "LoadImage" | "LoadImageMask" | "LoadImageOutput"
        ) {
            return json!(false);
        }
        let name = node
            .get("inputs")
            .and_then(|i| i.get("image"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let s = &self.shared;
        let path = nodes::annotated_path(name, &s.input_dir, &s.output_dir, &s.temp_dir);
        match path.and_then(|p| std::fs::read(p).ok()) {
            Some(bytes) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                json!(format!("{:016x}", h.finish()))
            }
            None => json!(format!("missing-{}", now_ms())),
        }
    }

    fn work_time(&self, id: &str, class: &str) -> Duration {
        let f = self.shared.lock().faults.work_ms_for(id, class);
        f.map(Duration::from_millis)
            .unwrap_or(self.shared.config.work_time)
    }

    async fn execute_node(&mut self, run: &mut Run<'_>, id: &str) -> NodeOutcome {
        let shared = self.shared.clone();
        let prompt = run.item.prompt.clone();
        let pid = run.item.prompt_id.clone();
        let Some(node) = prompt.get(id) else {
            return NodeOutcome::Failed(
                NodeFailure::new("KeyError", format!("'{id}'"), "execute"),
                Map::new(),
            );
        };
        let class_type = node
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(class) = shared.config.catalog.class(&class_type) else {
            return NodeOutcome::Failed(
                NodeFailure::new("KeyError", format!("'{class_type}'"), "execute"),
                Map::new(),
            );
        };
        let sig = run.sigs.get(id).cloned().unwrap_or_default();

        // A cached node: replay its UI output, mark it finished.
        if self.outputs.contains_key(&sig) {
            shared.wait_while(|f| f.hang_ws).await;
            if let Some(c) = &run.client {
                let output = self
                    .ui
                    .get(&sig)
                    .map(|u| u.output.clone())
                    .unwrap_or(Value::Null);
                shared.lock().send_json(
                    "executed",
                    json!({"node": id, "display_node": id, "output": output, "prompt_id": pid}),
                    Some(c),
                );
            }
            let i = run.progress.entry(id);
            let max = run.progress.nodes[i].3.clone();
            run.progress.nodes[i].1 = "finished";
            run.progress.nodes[i].2 = max;
            self.send_progress_state(run);
            return NodeOutcome::Success;
        }

        // start_progress, inputs, executing.
        shared.wait_while(|f| f.hang_ws).await;
        let i = run.progress.entry(id);
        run.progress.nodes[i] = (id.to_string(), "running", json!(0.0), json!(1.0));
        self.send_progress_state(run);
        let (inputs, input_order) = self.resolve_inputs(run, id, node, class);
        if let Some(c) = &run.client {
            let mut inner = shared.lock();
            inner.last_node_id = Some(id.to_string());
            inner.send_json(
                "executing",
                json!({"node": id, "display_node": id, "prompt_id": pid}),
                Some(c),
            );
        }

        // Faults that fire when a node starts (after the client saw `executing`).
        let faults = shared.faults();
        let fires = [&faults.crash_at, &faults.drop_ws_at, &faults.hang_at]
            .iter()
            .any(|m| matches(m, id, &class_type));
        if fires {
            shared.flush().await;
        }
        if matches(&faults.crash_at, id, &class_type) {
            shared.crash();
            return NodeOutcome::Abandoned;
        }
        if matches(&faults.drop_ws_at, id, &class_type) {
            shared.drop_websockets();
            let mut inner = shared.lock();
            inner.faults.drop_ws_at = None;
        }
        if matches(&faults.hang_at, id, &class_type) {
            {
                let mut inner = shared.lock();
                inner.faults.hang_http = true;
                inner.faults.hang_ws = true;
            }
            shared.wait_while(|f| f.hang_ws || f.hang_http).await;
        }
        if shared.kill.is_cancelled() || shared.shutdown.is_cancelled() {
            return NodeOutcome::Abandoned;
        }

        // before_node_execution: the interrupt is honoured here.
        if shared.interrupt.load(Ordering::SeqCst) {
            return NodeOutcome::Interrupted;
        }

        let work = self.work_time(id, &class_type);
        let formatted = format_inputs(&inputs, &input_order);
        if nodes::is_sampler(class) {
            let steps = nodes::sampler_steps(&inputs);
            let per_step = work / steps.max(1) as u32;
            for step in 1..=steps {
                if !per_step.is_zero() {
                    tokio::time::sleep(per_step).await;
                }
                if shared.kill.is_cancelled() || shared.shutdown.is_cancelled() {
                    return NodeOutcome::Abandoned;
                }
                // The progress hook throws when an interrupt was requested.
                if shared.interrupt.load(Ordering::SeqCst) {
                    return NodeOutcome::Interrupted;
                }
                shared.wait_while(|f| f.hang_ws).await;
                self.sampler_progress(run, id, step, steps, &inputs);
            }
        } else if !work.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(work) => {}
                _ = shared.kill.cancelled() => return NodeOutcome::Abandoned,
                _ = shared.shutdown.cancelled() => return NodeOutcome::Abandoned,
            }
        }

        if matches(&faults.fail_at, id, &class_type) {
            let f = NodeFailure::new(
                faults
                    .fail_exception_type
                    .as_deref()
                    .unwrap_or("RuntimeError"),
                faults
                    .fail_message
                    .clone()
                    .unwrap_or_else(|| "Simulated failure".into()),
                "execute",
            );
            return NodeOutcome::Failed(f, formatted);
        }

        // The node itself (blocking work off the async threads).
        let preview_prefix = self
            .objects
            .entry((id.to_string(), class_type.clone()))
            .or_insert_with(nodes::preview_prefix)
            .clone();
        let shared2 = shared.clone();
        let id2 = id.to_string();
        let class_name = class_type.clone();
        let extra = run.item.extra_data.clone();
        let prompt2 = prompt.clone();
        let result = tokio::task::spawn_blocking(move || {
            let s = &shared2;
            let Some(class) = s.config.catalog.class(&class_name) else {
                return Err(NodeFailure::new("KeyError", class_name.clone(), "execute"));
            };
            let env = NodeEnv {
                id: &id2,
                class,
                prompt: &prompt2,
                extra_data: &extra,
                output_dir: &s.output_dir,
                input_dir: &s.input_dir,
                temp_dir: &s.temp_dir,
                preview_prefix: &preview_prefix,
            };
            nodes::run(&env, &inputs)
        })
        .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => Err(NodeFailure::new(
                "RuntimeError",
                format!("node panicked: {e}"),
                "execute",
            )),
        };
        if shared.kill.is_cancelled() || shared.shutdown.is_cancelled() {
            return NodeOutcome::Abandoned;
        }
        let result = match result {
            Ok(r) => r,
            Err(f) => return NodeOutcome::Failed(f, formatted),
        };
        shared.wait_while(|f| f.hang_ws).await;
        if let Some(text) = &result.text {
            // send_progress_text: broadcast, binary type 3.
            let mut frame = Vec::with_capacity(8 + id.len() + text.len());
            frame.extend_from_slice(&3u32.to_be_bytes());
            frame.extend_from_slice(&(id.len() as u32).to_be_bytes());
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(text.as_bytes());
            shared.lock().send_bytes(frame, None);
        }
        if let Some(ui) = result.ui {
            self.ui.insert(
                sig.clone(),
                UiEntry {
                    meta: json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
                    output: ui.clone(),
                },
            );
            if let Some(c) = &run.client {
                shared.lock().send_json(
                    "executed",
                    json!({"node": id, "display_node": id, "output": ui, "prompt_id": pid}),
                    Some(c),
                );
            }
        }
        self.outputs.insert(sig, Arc::new(result.outputs));
        let i = run.progress.entry(id);
        let max = run.progress.nodes[i].3.clone();
        run.progress.nodes[i].1 = "finished";
        run.progress.nodes[i].2 = max;
        self.send_progress_state(run);
        if !run.executed.iter().any(|e| e == id) {
            run.executed.push(id.to_string());
        }
        NodeOutcome::Success
    }

    /// One sampler step: progress_state, [type-4 preview], progress, [type-1 preview].
    fn sampler_progress(
        &self,
        run: &mut Run<'_>,
        id: &str,
        step: u64,
        steps: u64,
        inputs: &HashMap<String, Val>,
    ) {
        let i = run.progress.entry(id);
        run.progress.nodes[i] = (id.to_string(), "running", json!(step), json!(steps));
        let pid = run.item.prompt_id.clone();
        let preview = if run.previews {
            self.preview_jpeg(inputs, step, steps)
        } else {
            None
        };
        let state = run.progress.to_json(&pid);
        let inner = self.shared.lock();
        let client = run.client.as_deref();
        inner.send_json("progress_state", state, client);
        let meta = inner.supports_preview_metadata(client);
        if let (Some(jpeg), true) = (&preview, meta) {
            let md = crate::pyjson::to_string(&json!({
                "node_id": id, "prompt_id": pid, "display_node_id": id, "parent_node_id": null,
                "real_node_id": id, "image_type": "image/jpeg"
            }));
            let mut frame = Vec::with_capacity(8 + md.len() + jpeg.len());
            frame.extend_from_slice(&4u32.to_be_bytes());
            frame.extend_from_slice(&(md.len() as u32).to_be_bytes());
            frame.extend_from_slice(md.as_bytes());
            frame.extend_from_slice(jpeg);
            inner.send_bytes(frame, client);
        }
        inner.send_json(
            "progress",
            json!({"value": step, "max": steps, "prompt_id": pid, "node": id}),
            client,
        );
        if let (Some(jpeg), false) = (&preview, meta) {
            let mut frame = Vec::with_capacity(8 + jpeg.len());
            frame.extend_from_slice(&1u32.to_be_bytes());
            frame.extend_from_slice(&1u32.to_be_bytes());
            frame.extend_from_slice(jpeg);
            inner.send_bytes(frame, client);
        }
    }

    /// A latent-sized JPEG that converges from noise to the final colour.
    fn preview_jpeg(
        &self,
        inputs: &HashMap<String, Val>,
        step: u64,
        steps: u64,
    ) -> Option<Vec<u8>> {
        let (w, h) = inputs
            .values()
            .find_map(|v| match v {
                Val::Latent { w, h, .. } => Some((*w, *h)),
                _ => None,
            })
            .unwrap_or((512, 512));
        let max = self.shared.config.preview_size.max(8) as usize;
        let (mut pw, mut ph) = ((w / 8).max(8), (h / 8).max(8));
        if pw > max || ph > max {
            let s = max as f64 / pw.max(ph) as f64;
            pw = ((pw as f64 * s) as usize).max(1);
            ph = ((ph as f64 * s) as usize).max(1);
        }
        let t = step as f32 / steps.max(1) as f32;
        let mut rgb = Vec::with_capacity(pw * ph * 3);
        let mut x: u32 = 0x9e37_79b9 ^ step as u32;
        for _ in 0..pw * ph * 3 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let noise = (x & 0xff) as f32;
            rgb.push((noise * (1.0 - t) + 128.0 * t) as u8);
        }
        encode_jpeg(pw, ph, &rgb).ok()
    }

    /// `get_input_data`: links from the output cache, widgets as given, hidden inputs.
    fn resolve_inputs(
        &self,
        run: &Run<'_>,
        id: &str,
        node: &Value,
        class: &ClassInfo,
    ) -> (HashMap<String, Val>, Vec<String>) {
        let mut out = HashMap::new();
        let mut order = Vec::new();
        if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
            for (name, v) in inputs {
                match link_of(v) {
                    Some((from, sock)) => {
                        let val = run
                            .sigs
                            .get(from)
                            .and_then(|s| self.outputs.get(s))
                            .and_then(|o| {
                                usize::try_from(sock).ok().and_then(|i| o.get(i)).cloned()
                            })
                            .unwrap_or(Val::None);
                        out.insert(name.clone(), val);
                        order.push(name.clone());
                    }
                    None => {
                        if class.input(name).is_some() {
                            out.insert(name.clone(), Val::Json(v.clone()));
                            order.push(name.clone());
                        }
                    }
                }
            }
        }
        for h in class.hidden_inputs() {
            let v = match h.type_name.as_str() {
                "PROMPT" => Val::Json(Value::Object((*run.item.prompt).clone())),
                "EXTRA_PNGINFO" => run
                    .item
                    .extra_data
                    .get("extra_pnginfo")
                    .cloned()
                    .map(Val::Json)
                    .unwrap_or(Val::None),
                "UNIQUE_ID" => Val::Str(id.to_string()),
                "AUTH_TOKEN_COMFY_ORG" => run
                    .item
                    .extra_data
                    .get("auth_token_comfy_org")
                    .cloned()
                    .map(Val::Json)
                    .unwrap_or(Val::None),
                "API_KEY_COMFY_ORG" => run
                    .item
                    .extra_data
                    .get("api_key_comfy_org")
                    .cloned()
                    .map(Val::Json)
                    .unwrap_or(Val::None),
                _ => continue,
            };
            out.insert(h.name.clone(), v);
            order.push(h.name.clone());
        }
        (out, order)
    }
}

/// `current_inputs` of an execution_error: each input as a one-element list of formatted values,
/// in the node's input order, hidden inputs last.
fn format_inputs(inputs: &HashMap<String, Val>, order: &[String]) -> Map<String, Value> {
    order
        .iter()
        .filter_map(|n| {
            inputs
                .get(n)
                .map(|v| (n.clone(), Value::Array(vec![v.format()])))
        })
        .collect()
}

fn ancestry(
    prompt: &Map<String, Value>,
    id: &str,
    ancestors: &mut Vec<String>,
    order: &mut HashMap<String, usize>,
    depth: usize,
) {
    if depth > 1000 {
        return;
    }
    let Some(inputs) = prompt
        .get(id)
        .and_then(|n| n.get("inputs"))
        .and_then(Value::as_object)
    else {
        return;
    };
    let mut keys: Vec<&String> = inputs.keys().collect();
    keys.sort();
    for k in keys {
        if let Some((from, _)) = link_of(&inputs[k]) {
            if !order.contains_key(from) {
                ancestors.push(from.to_string());
                order.insert(from.to_string(), ancestors.len() - 1);
                ancestry(prompt, from, ancestors, order, depth + 1);
            }
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
