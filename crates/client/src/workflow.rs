//! Workflow files: parsing the API format, refusing the UI format with a useful message,
//! `--set NODE.INPUT=VALUE` overrides, and finding local files the graph references.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::ClientError;

/// Inputs that name a file in the user's input space (LoadImage, LoadImageMask, LoadVideo,
/// LoadAudio ...): when their value is a local file, it is uploaded first.
pub const FILE_INPUTS: [&str; 3] = ["image", "video", "audio"];

/// What a workflow file holds: the API-format graph, and `extra_data` if it was a full
/// `/prompt` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// `{node_id: {"class_type", "inputs", "_meta"?}}`.
    pub graph: Map<String, Value>,
    /// `extra_data` of a `{"prompt": ..., "extra_data": ...}` file.
    pub extra_data: Option<Map<String, Value>>,
}

const UI_FORMAT_HELP: &str = "this is a UI-format workflow (the editor's save format, with \
`nodes` and `links`), which a server cannot run. Export the API format instead: in ComfyUI, \
open the workflow and use Workflow → Export (API) (older menus: enable dev mode options in the \
settings, then \"Save (API Format)\"), and pass that file";

/// Parses a workflow file's text: an API-format graph, or a `/prompt` body `{"prompt": {...}}`.
pub fn parse(text: &str) -> Result<Workflow, ClientError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ClientError::Usage(format!("not valid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(ClientError::Usage(
            "a workflow must be a JSON object (the API format: {\"1\": {\"class_type\": ..., \"inputs\": {...}}})".into(),
        ));
    };
    if obj.get("nodes").is_some_and(Value::is_array)
        || obj.get("links").is_some_and(Value::is_array)
    {
        return Err(ClientError::Usage(UI_FORMAT_HELP.into()));
    }
    let mut extra_data = None;
    let graph = if let Some(p) = obj.remove("prompt") {
        let Value::Object(g) = p else {
            return Err(ClientError::Usage(
                "`prompt` must be an object (the API-format graph)".into(),
            ));
        };
        if let Some(Value::Object(e)) = obj.remove("extra_data") {
            extra_data = Some(e);
        }
        g
    } else {
        obj
    };
    if graph.get("nodes").is_some_and(Value::is_array) {
        return Err(ClientError::Usage(UI_FORMAT_HELP.into()));
    }
    if graph.is_empty() {
        return Err(ClientError::Usage("the workflow has no nodes".into()));
    }
    for (id, node) in &graph {
        let ok = node
            .get("class_type")
            .is_some_and(|c| c.as_str().is_some_and(|s| !s.is_empty()));
        if !ok {
            return Err(ClientError::Usage(format!(
                "node {id:?} has no class_type: expected the API format {{\"<id>\": {{\"class_type\": ..., \"inputs\": {{...}}}}}}"
            )));
        }
    }
    Ok(Workflow { graph, extra_data })
}

/// Reads and parses a workflow file.
pub fn load(path: &Path) -> Result<Workflow, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClientError::Usage(format!("{}: no such file", path.display()))
        } else {
            ClientError::io(path, e)
        }
    })?;
    parse(&text).map_err(|e| match e {
        ClientError::Usage(m) => ClientError::Usage(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Applies one `NODE.INPUT=VALUE` override. VALUE is parsed as JSON (`128`, `true`, `"x"`,
/// `["4", 0]`), and taken as a plain string when it is not JSON.
pub fn apply_set(graph: &mut Map<String, Value>, spec: &str) -> Result<(), ClientError> {
    let usage = || {
        ClientError::Usage(format!(
            "--set {spec:?}: expected NODE.INPUT=VALUE, e.g. --set 1.width=128"
        ))
    };
    let (key, raw) = spec.split_once('=').ok_or_else(usage)?;
    let (node, input) = key.split_once('.').ok_or_else(usage)?;
    if node.is_empty() || input.is_empty() {
        return Err(usage());
    }
    let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let Some(n) = graph.get_mut(node) else {
        let mut ids: Vec<&String> = graph.keys().collect();
        ids.sort();
        let ids: Vec<&str> = ids.into_iter().map(String::as_str).collect();
        return Err(ClientError::Usage(format!(
            "--set {spec:?}: the workflow has no node {node:?} (its nodes: {})",
            ids.join(", ")
        )));
    };
    let Some(obj) = n.as_object_mut() else {
        return Err(usage());
    };
    let inputs = obj
        .entry("inputs")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(inputs) = inputs.as_object_mut() else {
        return Err(ClientError::Usage(format!(
            "--set {spec:?}: node {node:?} has an `inputs` that is not an object"
        )));
    };
    inputs.insert(input.to_owned(), value);
    Ok(())
}

/// A graph input that names a local file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Node id.
    pub node: String,
    /// Input name.
    pub input: String,
    /// The file on disk.
    pub path: PathBuf,
}

/// File inputs ([`FILE_INPUTS`]) whose string value is an existing local file, looked up as
/// given (relative to the current directory) and then relative to `base_dir` (the workflow
/// file's directory). Values that are not local files are server-side names and left alone.
pub fn local_files(graph: &Map<String, Value>, base_dir: Option<&Path>) -> Vec<LocalFile> {
    let mut found = Vec::new();
    for (id, node) in graph {
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for name in FILE_INPUTS {
            let Some(v) = inputs.get(name).and_then(Value::as_str) else {
                continue;
            };
            let direct = PathBuf::from(v);
            let candidate = if direct.is_file() {
                Some(direct)
            } else {
                base_dir
                    .map(|d| d.join(v))
                    .filter(|p| direct.is_relative() && p.is_file())
            };
            if let Some(path) = candidate {
                found.push(LocalFile {
                    node: id.clone(),
                    input: name.to_owned(),
                    path,
                });
            }
        }
    }
    found
}

/// The display name of a node: its `_meta.title`, else its class_type, else the id.
pub fn node_title(graph: &Map<String, Value>, id: &str) -> String {
    let node = graph.get(id);
    node.and_then(|n| n.pointer("/_meta/title"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            node.and_then(|n| n.get("class_type"))
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("node {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn basic() -> String {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "test"}, "_meta": {"title": "Save it"}}
        })
        .to_string()
    }

    #[test]
    fn api_format_and_prompt_body_are_accepted() {
        let w = parse(&basic()).unwrap();
        assert_eq!(w.graph.len(), 2);
        assert_eq!(w.extra_data, None);
        let body = format!(r#"{{"prompt": {}, "extra_data": {{"k": 1}}}}"#, basic());
        let w2 = parse(&body).unwrap();
        assert_eq!(w2.graph, w.graph);
        assert_eq!(
            w2.extra_data,
            Some(json!({"k": 1}).as_object().unwrap().clone())
        );
    }

    #[test]
    fn ui_format_gets_export_instructions() {
        let ui = json!({"last_node_id": 9, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4});
        let e = parse(&ui.to_string()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(m.contains("UI-format") && m.contains("Export (API)"), "{m}");
    }

    #[test]
    fn other_shapes_are_usage_errors() {
        for bad in [
            "[1,2]",
            "{}",
            "{\"1\": {\"inputs\": {}}}",
            "nope",
            "{\"prompt\": 3}",
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn set_parses_json_then_falls_back_to_string() {
        let mut g = parse(&basic()).unwrap().graph;
        apply_set(&mut g, "1.width=128").unwrap();
        apply_set(&mut g, "2.filename_prefix=out/x").unwrap();
        apply_set(&mut g, "2.images=[\"1\", 0]").unwrap();
        apply_set(&mut g, "1.extra=a=b").unwrap();
        assert_eq!(g["1"]["inputs"]["width"], json!(128));
        assert_eq!(g["2"]["inputs"]["filename_prefix"], json!("out/x"));
        assert_eq!(g["2"]["inputs"]["images"], json!(["1", 0]));
        assert_eq!(g["1"]["inputs"]["extra"], json!("a=b"));
        for bad in ["1width=3", "1.width", ".x=1", "1.=1"] {
            assert_eq!(apply_set(&mut g, bad).unwrap_err().exit_code(), 2, "{bad}");
        }
        let e = apply_set(&mut g, "9.width=1").unwrap_err().to_string();
        assert!(e.contains("no node \"9\"") && e.contains("1, 2"), "{e}");
    }

    #[test]
    fn local_files_are_found_by_path_or_next_to_the_workflow() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.png"), b"x").unwrap();
        let abs = dir.path().join("in.png");
        let g = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": abs.to_str().unwrap()}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
            "3": {"class_type": "LoadImage", "inputs": {"image": "server-side.png"}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
        });
        let g = g.as_object().unwrap().clone();
        let found = local_files(&g, Some(dir.path()));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].node, "1");
        assert_eq!(found[1].node, "2");
        assert_eq!(found[1].path, dir.path().join("in.png"));
        assert!(local_files(&g, None).iter().all(|f| f.node == "1"));
    }

    #[test]
    fn titles() {
        let g = parse(&basic()).unwrap().graph;
        assert_eq!(node_title(&g, "1"), "EmptyImage");
        assert_eq!(node_title(&g, "2"), "Save it");
        assert_eq!(node_title(&g, "7"), "node 7");
    }
}
