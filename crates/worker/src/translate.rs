//! Pure translation between a backend's view of a job and the broker's: prompt ids mapped back,
//! output references rewritten into the job's namespace, delivery targets, and the history
//! entry built exactly as ComfyUI writes it.

use std::collections::HashMap;

use protocol::envelope::Target;
use protocol::messages::{delivery_of, is_blocker_error, Delivery};
use serde_json::{json, Map, Value};

/// Current time in ms since the epoch (ComfyUI's `timestamp`).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Replaces every string value equal to `from` (the backend prompt id, a fresh uuid) with `to`,
/// wherever it appears: `data.prompt_id`, `progress_state.nodes.*.prompt_id`, custom fields.
pub(crate) fn rewrite_ids(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from => *s = to.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_ids(i, from, to)),
        Value::Object(map) => map.values_mut().for_each(|i| rewrite_ids(i, from, to)),
        _ => {}
    }
}

/// The `POST /prompt` body for one attempt: the stored graph, `extra_data` with the
/// sensitive keys put back and the worker's backend socket as `client_id`, the attempt's
/// backend prompt id, and the validated outputs as `partial_execution_targets`.
pub(crate) fn backend_request(
    item: &Value,
    sensitive_json: Option<&str>,
    sid: &str,
    backend_pid: &str,
) -> Value {
    let mut extra = item
        .get(3)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Ok(Value::Object(secret))) = sensitive_json.map(serde_json::from_str::<Value>) {
        extra.extend(secret);
    }
    extra.insert("client_id".into(), Value::String(sid.to_owned()));
    let mut body = Map::new();
    body.insert("prompt".into(), item.get(2).cloned().unwrap_or(Value::Null));
    body.insert("client_id".into(), Value::String(sid.to_owned()));
    body.insert("prompt_id".into(), Value::String(backend_pid.to_owned()));
    body.insert("extra_data".into(), Value::Object(extra));
    if let Some(outputs) = item
        .get(4)
        .and_then(Value::as_array)
        .filter(|o| !o.is_empty())
    {
        body.insert(
            "partial_execution_targets".into(),
            Value::Array(outputs.clone()),
        );
    }
    Value::Object(body)
}

/// Subfolder (under each type folder) of the files the worker ships to a backend:
/// `_broker/<user id>/...`, so users never see each other's inputs on a shared backend.
pub(crate) const SHIPPED_PREFIX: &str = "_broker";

/// An input of the graph that names a file (LoadImage's `image`, LoadVideo's `file` ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileInput {
    /// Node id.
    pub node: String,
    /// Input name.
    pub input: String,
    /// `input`, `output` or `temp` (from the `" [type]"` annotation; `input` without one).
    pub kind: &'static str,
    /// Subfolder part of the value (may be empty).
    pub subfolder: String,
    /// File name part of the value.
    pub filename: String,
    /// The annotation as written (`" [output]"`), to keep on the rewritten value.
    pub annotation: &'static str,
}

pub(crate) use files::parse_file_value;

/// Every input of `prompt` that the catalogue flags as taking an uploaded file and that holds a
/// file name (not a link).
pub(crate) fn file_inputs(prompt: &Value, catalog: &protocol::catalog::Catalog) -> Vec<FileInput> {
    let mut out = Vec::new();
    let Some(nodes) = prompt.as_object() else {
        return out;
    };
    for (node, n) in nodes {
        let Some(class) = n
            .get("class_type")
            .and_then(Value::as_str)
            .and_then(|c| catalog.class(c))
        else {
            continue;
        };
        let Some(inputs) = n.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for def in class.inputs.iter().filter(|d| d.upload.is_some()) {
            let Some(value) = inputs.get(&def.name).and_then(Value::as_str) else {
                continue;
            };
            let (kind, annotation, subfolder, filename) = parse_file_value(value);
            out.push(FileInput {
                node: node.clone(),
                input: def.name.clone(),
                kind,
                subfolder,
                filename,
                annotation,
            });
        }
    }
    out
}

/// Where a shipped file goes on the backend: `_broker/<user>[/<subfolder>]`.
pub(crate) fn shipped_subfolder(user_id: &str, subfolder: &str) -> String {
    if subfolder.is_empty() {
        format!("{SHIPPED_PREFIX}/{user_id}")
    } else {
        format!("{SHIPPED_PREFIX}/{user_id}/{subfolder}")
    }
}

/// Who among the owner's sockets gets a JSON message of this type, `None` when nobody does
/// (submitter-only messages of a job without a client id).
pub(crate) fn target_for(msg_type: &str, data: &Value, client_id: Option<&str>) -> Option<Target> {
    let delivery = if msg_type == "execution_error" && is_blocker_error(data) {
        Delivery::SubmitterOrBroadcast
    } else {
        delivery_of(msg_type)
    };
    match (delivery, client_id) {
        (Delivery::Broadcast, _) => Some(Target::AllSockets),
        (_, Some(cid)) => Some(Target::Client(cid.to_owned())),
        (Delivery::SubmitterOrBroadcast, None) => Some(Target::AllSockets),
        (Delivery::SubmitterOnly, None) => None,
    }
}

/// Target of previews and other per-job binary frames: the submitter, or every socket of the
/// owner when the job has no client id (ComfyUI then broadcasts type-1 previews).
pub(crate) fn binary_target(client_id: Option<&str>) -> Target {
    match client_id {
        Some(cid) => Target::Client(cid.to_owned()),
        None => Target::AllSockets,
    }
}

/// The subfolder an output gets in the broker: `<prompt_id>` or `<prompt_id>/<original>`.
pub(crate) fn rewritten_subfolder(prompt_id: &str, original: &str) -> String {
    let original = original.trim_matches('/');
    if original.is_empty() {
        prompt_id.to_owned()
    } else {
        format!("{prompt_id}/{original}")
    }
}

/// A file named in an `executed` output: where it is on the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRef {
    /// `filename`.
    pub filename: String,
    /// The backend's `subfolder`.
    pub subfolder: String,
    /// `type` (`output`, `temp`, `input`).
    pub kind: String,
}

fn is_file_item(item: &Map<String, Value>) -> bool {
    item.get("filename").is_some_and(Value::is_string)
        && item.get("type").is_some_and(Value::is_string)
        && item
            .get("subfolder")
            .is_none_or(|s| s.is_string() || s.is_null())
}

/// Finds every file item (`{filename, subfolder, type}`) in any list of a node's UI output
/// (`images`, `gifs`, `video`, `audio`, `3d` ...), rewrites its subfolder into the job's
/// namespace in place, and returns where each file is on the backend.
pub(crate) fn rewrite_output_files(output: &mut Value, prompt_id: &str) -> Vec<FileRef> {
    let mut found = Vec::new();
    let Some(map) = output.as_object_mut() else {
        return found;
    };
    for list in map.values_mut() {
        let Some(items) = list.as_array_mut() else {
            continue;
        };
        for item in items.iter_mut() {
            let Some(obj) = item.as_object_mut() else {
                continue;
            };
            if !is_file_item(obj) {
                continue;
            }
            let filename = obj
                .get("filename")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let kind = obj
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let subfolder = obj
                .get("subfolder")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            obj.insert(
                "subfolder".into(),
                Value::String(rewritten_subfolder(prompt_id, &subfolder)),
            );
            found.push(FileRef {
                filename,
                subfolder,
                kind,
            });
        }
    }
    found
}

/// Where a node sits in the graph (from `progress_state`), for the history `meta`.
#[derive(Debug, Clone, Default)]
struct NodeInfo {
    display: Option<Value>,
    parent: Option<Value>,
    real: Option<Value>,
}

/// What a job's run produced so far: the pieces of its history entry.
#[derive(Debug, Default)]
pub(crate) struct JobTrace {
    start: Option<Value>,
    cached: Option<Value>,
    outputs: Map<String, Value>,
    meta: Map<String, Value>,
    nodes: HashMap<String, NodeInfo>,
    /// Node currently executing and its display id.
    pub current: Option<(String, Value)>,
}

impl JobTrace {
    /// Records `execution_start` data (ids translated).
    pub(crate) fn start(&mut self, data: &Value) {
        self.start = Some(data.clone());
    }

    /// Records `execution_cached` data (ids translated).
    pub(crate) fn cached(&mut self, data: &Value) {
        self.cached = Some(data.clone());
    }

    /// True when the node's output is recorded.
    pub(crate) fn has_output(&self, node: &str) -> bool {
        self.outputs.contains_key(node)
    }

    /// True once `execution_start` was seen.
    pub(crate) fn started(&self) -> bool {
        self.start.is_some()
    }

    /// Records node positions from a `progress_state`.
    pub(crate) fn progress_state(&mut self, data: &Value) {
        let Some(nodes) = data.get("nodes").and_then(Value::as_object) else {
            return;
        };
        for (id, n) in nodes {
            let info = self.nodes.entry(id.clone()).or_default();
            if let Some(v) = n.get("display_node_id") {
                info.display = Some(v.clone());
            }
            if let Some(v) = n.get("parent_node_id") {
                info.parent = Some(v.clone());
            }
            if let Some(v) = n.get("real_node_id") {
                info.real = Some(v.clone());
            }
        }
    }

    /// Records an `executing {node}`.
    pub(crate) fn executing(&mut self, data: &Value) {
        self.current = data.get("node").and_then(Value::as_str).map(|n| {
            let display = data
                .get("display_node")
                .cloned()
                .unwrap_or_else(|| Value::String(n.to_owned()));
            (n.to_owned(), display)
        });
    }

    /// Records an `executed` (output already rewritten) for the history's outputs and meta.
    pub(crate) fn executed(&mut self, data: &Value) {
        let Some(node) = data.get("node").and_then(Value::as_str) else {
            return;
        };
        let Some(output) = data.get("output").filter(|o| !o.is_null()) else {
            return;
        };
        let info = self.nodes.get(node).cloned().unwrap_or_default();
        let display = data
            .get("display_node")
            .cloned()
            .or(info.display)
            .unwrap_or_else(|| Value::String(node.to_owned()));
        self.outputs.insert(node.to_owned(), output.clone());
        self.meta.insert(
            node.to_owned(),
            json!({
                "node_id": node,
                "display_node": display,
                "parent_node": info.parent.unwrap_or(Value::Null),
                "real_node_id": info.real.unwrap_or_else(|| Value::String(node.to_owned())),
            }),
        );
    }

    /// Metadata for a type-1 preview (which names no node): the node executing now.
    pub(crate) fn preview_metadata(&self, prompt_id: &str, mime: &str) -> Value {
        let (node, display) = match &self.current {
            Some((n, d)) => (Value::String(n.clone()), d.clone()),
            None => (Value::Null, Value::Null),
        };
        let info = self
            .current
            .as_ref()
            .and_then(|(n, _)| self.nodes.get(n))
            .cloned()
            .unwrap_or_default();
        json!({
            "node_id": node,
            "prompt_id": prompt_id,
            "display_node_id": display,
            "parent_node_id": info.parent.unwrap_or(Value::Null),
            "real_node_id": info.real.unwrap_or(node),
            "image_type": mime,
        })
    }

    /// Node ids that ran (for synthesised errors): the ones with a known position.
    pub(crate) fn executed_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.outputs.keys().cloned().collect();
        v.sort();
        v
    }

    /// The history entry `{prompt, outputs, status, meta}` as ComfyUI writes it. `item_json`
    /// is the stored queue item, embedded verbatim.
    pub(crate) fn history_json(
        &self,
        item_json: &str,
        prompt_id: &str,
        terminal_type: &str,
        terminal_data: &Value,
    ) -> String {
        let ts = terminal_data
            .get("timestamp")
            .cloned()
            .unwrap_or_else(|| json!(now_ms()));
        let start = self
            .start
            .clone()
            .unwrap_or_else(|| json!({"prompt_id": prompt_id, "timestamp": ts}));
        let cached = self
            .cached
            .clone()
            .unwrap_or_else(|| json!({"nodes": [], "prompt_id": prompt_id, "timestamp": ts}));
        let success = terminal_type == "execution_success";
        let status = json!({
            "status_str": if success { "success" } else { "error" },
            "completed": success,
            "messages": [
                ["execution_start", start],
                ["execution_cached", cached],
                [terminal_type, terminal_data],
            ],
        });
        let item = if serde_json::from_str::<Value>(item_json).is_ok() {
            item_json.to_owned()
        } else {
            "null".to_owned()
        };
        format!(
            "{{\"prompt\": {item}, \"outputs\": {}, \"status\": {}, \"meta\": {}}}",
            Value::Object(self.outputs.clone()),
            status,
            Value::Object(self.meta.clone())
        )
    }
}

/// `execution_error` data for a job the broker ends itself (backend refused the graph, the
/// job kept failing on backends ...), in ComfyUI's field order.
pub(crate) fn error_data(
    prompt_id: &str,
    node: Option<(&str, &str)>,
    executed: Vec<String>,
    exception_type: &str,
    exception_message: &str,
) -> Value {
    let (node_id, node_type) = match node {
        Some((id, ty)) => (Value::String(id.into()), Value::String(ty.into())),
        None => (Value::Null, Value::Null),
    };
    json!({
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": executed,
        "exception_message": exception_message,
        "exception_type": exception_type,
        "traceback": [],
        "current_inputs": {},
        "current_outputs": {},
        "timestamp": now_ms(),
    })
}

/// `execution_error` data for a graph the backend refused with 400: the backend's error type
/// and message, with its node errors, and the first failing node when there is one.
pub(crate) fn refused_error_data(prompt_id: &str, body: &Value) -> Value {
    let err = body.get("error");
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (kind, message, details) = match err {
        Some(Value::String(s)) => ("prompt_refused".to_owned(), s.clone(), String::new()),
        Some(_) => (field("type"), field("message"), field("details")),
        None => match body {
            Value::String(s) => ("prompt_refused".to_owned(), s.clone(), String::new()),
            other => (
                "prompt_refused".to_owned(),
                other.to_string(),
                String::new(),
            ),
        },
    };
    let kind = if kind.is_empty() {
        "prompt_refused".to_owned()
    } else {
        kind
    };
    let mut text = if details.is_empty() {
        message
    } else if message.is_empty() {
        details
    } else {
        format!("{message}: {details}")
    };
    let node_errors = body.get("node_errors").and_then(Value::as_object);
    let first = node_errors.and_then(|m| m.iter().next()).map(|(id, e)| {
        (
            id.clone(),
            e.get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        )
    });
    if let Some(errs) = node_errors.filter(|m| !m.is_empty()) {
        text.push('\n');
        text.push_str(&Value::Object(errs.clone()).to_string());
    }
    error_data(
        prompt_id,
        first.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        Vec::new(),
        &kind,
        &text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_mapped_back_everywhere() {
        let mut v = json!({"prompt_id": "b", "nodes": {"1": {"prompt_id": "b", "node_id": "1"}}, "x": ["b", "c"]});
        rewrite_ids(&mut v, "b", "p");
        assert_eq!(
            v,
            json!({"prompt_id": "p", "nodes": {"1": {"prompt_id": "p", "node_id": "1"}}, "x": ["p", "c"]})
        );
    }

    #[test]
    fn backend_requests_carry_secrets_and_our_socket() {
        let item = json!([3, "p", {"1": {"class_type": "X", "inputs": {}}},
                          {"client_id": "user-socket", "extra_pnginfo": {"workflow": {}}}, ["9"]]);
        let body = backend_request(&item, Some(r#"{"api_key_comfy_org": "k"}"#), "sid", "bp");
        assert_eq!(body["prompt"], item[2]);
        assert_eq!(body["client_id"], "sid");
        assert_eq!(body["prompt_id"], "bp");
        assert_eq!(body["extra_data"]["client_id"], "sid");
        assert_eq!(body["extra_data"]["api_key_comfy_org"], "k");
        assert_eq!(body["extra_data"]["extra_pnginfo"], json!({"workflow": {}}));
        assert_eq!(body["partial_execution_targets"], json!(["9"]));
        let plain = backend_request(&json!([0, "p", {}, {}, []]), None, "s", "b");
        assert!(plain.get("partial_execution_targets").is_none());
    }

    #[test]
    fn file_inputs_are_found_and_parsed() {
        assert_eq!(
            parse_file_value("a/b/c.png [output]"),
            ("output", " [output]", "a/b".to_owned(), "c.png".to_owned())
        );
        assert_eq!(
            parse_file_value("x.png"),
            ("input", "", String::new(), "x.png".to_owned())
        );
        let catalog = protocol::catalog::Catalog::from_json(&json!({
            "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": true}]}},
                          "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"],
                          "output_is_list": [false, false], "output_name": ["IMAGE", "MASK"],
                          "name": "LoadImage", "display_name": "Load Image", "description": "",
                          "python_module": "nodes", "category": "image", "output_node": false}
        }))
        .unwrap();
        let prompt = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "up/cat.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": ["9", 0]}},
            "3": {"class_type": "Unknown", "inputs": {"image": "x.png"}}
        });
        let found = file_inputs(&prompt, &catalog);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].node, "1");
        assert_eq!(found[0].subfolder, "up");
        assert_eq!(found[0].filename, "cat.png");
        assert_eq!(shipped_subfolder("u1", "up"), "_broker/u1/up");
    }

    #[test]
    fn targets_follow_comfyui_delivery() {
        let d = json!({});
        assert_eq!(
            target_for("executing", &d, Some("c")),
            Some(Target::Client("c".into()))
        );
        assert_eq!(target_for("executing", &d, None), None);
        assert_eq!(target_for("executed", &d, None), None);
        assert_eq!(
            target_for("progress_state", &d, None),
            Some(Target::AllSockets)
        );
        assert_eq!(
            target_for("progress", &d, Some("c")),
            Some(Target::Client("c".into()))
        );
        assert_eq!(target_for("execution_error", &d, None), None);
        assert_eq!(
            target_for(
                "execution_error",
                &json!({"exception_type": "ExecutionBlocked"}),
                None
            ),
            Some(Target::AllSockets)
        );
    }

    #[test]
    fn outputs_are_rewritten_into_the_job_namespace() {
        let mut out = json!({
            "images": [{"filename": "a.png", "subfolder": "", "type": "output"},
                       {"filename": "b.png", "subfolder": "x/y", "type": "temp"}],
            "gifs": [{"filename": "c.webp", "subfolder": "", "type": "output", "format": "image/webp"}],
            "animated": [true],
            "text": ["hello"],
        });
        let files = rewrite_output_files(&mut out, "p1");
        assert_eq!(files.len(), 3);
        assert_eq!(files[1].subfolder, "x/y");
        assert_eq!(files[1].kind, "temp");
        assert_eq!(out["images"][0]["subfolder"], "p1");
        assert_eq!(out["images"][0]["filename"], "a.png");
        assert_eq!(out["images"][1]["subfolder"], "p1/x/y");
        assert_eq!(out["gifs"][0]["format"], "image/webp");
        assert_eq!(out["text"], json!(["hello"]));
    }

    #[test]
    fn history_matches_trace_01_shape() {
        let mut t = JobTrace::default();
        t.start(&json!({"prompt_id": "p", "timestamp": 1}));
        t.cached(&json!({"nodes": [], "prompt_id": "p", "timestamp": 1}));
        t.progress_state(&json!({"nodes": {"2": {"display_node_id": "2", "parent_node_id": null, "real_node_id": "2"}}}));
        t.executed(
            &json!({"node": "2", "display_node": "2", "output": {"images": []}, "prompt_id": "p"}),
        );
        let h = t.history_json(
            r#"[0, "p", {}, {"client_id": "c"}, ["2"]]"#,
            "p",
            "execution_success",
            &json!({"prompt_id": "p", "timestamp": 2}),
        );
        let v: Value = serde_json::from_str(&h).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["prompt", "outputs", "status", "meta"]);
        assert_eq!(v["status"]["status_str"], "success");
        assert_eq!(v["status"]["completed"], true);
        assert_eq!(v["status"]["messages"][2][0], "execution_success");
        assert_eq!(
            v["meta"]["2"],
            json!({"node_id": "2", "display_node": "2", "parent_node": null, "real_node_id": "2"})
        );
        assert_eq!(v["prompt"][3], json!({"client_id": "c"}));
    }

    #[test]
    fn refusals_carry_the_backend_error() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "d", "extra_info": {}},
                          "node_errors": {"2": {"class_type": "SaveImage", "errors": []}}});
        let d = refused_error_data("p", &body);
        assert_eq!(d["exception_type"], "prompt_outputs_failed_validation");
        assert!(d["exception_message"]
            .as_str()
            .unwrap()
            .starts_with("Prompt outputs failed validation: d"));
        assert_eq!(d["node_id"], "2");
        assert_eq!(d["node_type"], "SaveImage");
    }
}
