//! `protocol::validate` against the 400 answers recorded from a real ComfyUI 0.3.64
//! (`shared/comfyui-traces/06..10`), field by field.

use std::path::PathBuf;

use protocol::catalog::Catalog;
use protocol::validate::{validate, PromptError, ValidateOptions};
use serde_json::{json, Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn catalog() -> Catalog {
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../comfy-sim/data/object_info.json"),
    )
    .expect("crates/comfy-sim/data/object_info.json");
    Catalog::from_slice(&bytes).expect("catalogue")
}

/// (request body, response status, response body) of every POST /prompt in a trace.
fn prompts(name: &str) -> Vec<(Value, u64, Value)> {
    let dir = root().join("../shared/comfyui-traces");
    let path = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(name))
        })
        .unwrap_or_else(|| panic!("trace {name}"));
    let lines: Vec<Value> = std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let mut out = Vec::new();
    let mut req: Option<Value> = None;
    for l in lines {
        if l["kind"] == "http_request" && l["path"] == "/prompt" && l["method"] == "POST" {
            req = Some(l.get("body_json").cloned().unwrap_or(Value::Null));
        }
        if l["kind"] == "http_response" && l["path"] == "/prompt" && l["method"] == "POST" {
            if let Some(r) = req.take() {
                out.push((
                    r,
                    l["status"].as_u64().unwrap_or(0),
                    l.get("body_json").cloned().unwrap_or(Value::Null),
                ));
            }
        }
    }
    out
}

fn run(body: &Value) -> Result<Value, PromptError> {
    let prompt: &Map<String, Value> = body["prompt"].as_object().expect("prompt object");
    validate(prompt, &catalog(), &ValidateOptions::default()).map(|v| json!(v.outputs_to_execute))
}

/// Compares everything but tracebacks (paths and carets of the recording machine).
fn without_tracebacks(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        if k == "traceback" {
                            json!("*")
                        } else {
                            without_tracebacks(x)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_tracebacks).collect()),
        other => other.clone(),
    }
}

fn check_400(name: &str) {
    let cases = prompts(name);
    assert!(!cases.is_empty(), "{name}: no POST /prompt");
    for (body, status, expected) in cases {
        if status != 400 || body.get("prompt").and_then(Value::as_object).is_none() {
            continue;
        }
        let err = run(&body).expect_err("the recorded server refused this prompt");
        let got = err.to_json();
        assert_eq!(
            without_tracebacks(&got),
            without_tracebacks(&expected),
            "{name}"
        );
        // Same field order as the server's body.
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(&got), keys(&expected));
        assert_eq!(keys(&got["error"]), keys(&expected["error"]));
    }
}

#[test]
fn trace_06_required_input_missing() {
    check_400("06_");
}

#[test]
fn trace_07_unknown_class() {
    check_400("07_");
    let (body, _, expected) = prompts("07_").remove(0);
    let e = run(&body).expect_err("invalid");
    assert_eq!(e.error.kind, "invalid_prompt");
    assert_eq!(e.error.message, expected["error"]["message"]);
    assert_eq!(e.error.details, "Node ID '#1'");
    assert!(e.node_errors.is_empty());
}

#[test]
fn trace_08_bad_values() {
    check_400("08_");
    let (body, _, expected) = prompts("08_").remove(0);
    let e = run(&body).expect_err("invalid");
    // Field by field on the interesting parts.
    let n1 = e.node_errors.get("1").expect("1");
    assert_eq!(n1.errors[0].kind, "value_smaller_than_min");
    assert_eq!(n1.errors[0].message, "Value 0 smaller than min of 1");
    assert_eq!(n1.dependent_outputs, ["3", "4"]);
    let n2 = e.node_errors.get("2").expect("2");
    assert_eq!(
        n2.errors[0].details,
        expected["node_errors"]["2"]["errors"][0]["details"]
    );
    assert_eq!(
        n2.errors[0].extra_info["input_config"],
        expected["node_errors"]["2"]["errors"][0]["extra_info"]["input_config"]
    );
    let n4 = e.node_errors.get("4").expect("4");
    assert_eq!(n4.errors[0].kind, "exception_during_validation");
    assert_eq!(n4.errors[0].details, "'99'");
    assert_eq!(n4.errors[0].extra_info["exception_type"], "KeyError");
    let tb = n4.errors[0].extra_info["traceback"]
        .as_array()
        .expect("traceback");
    let etb = expected["node_errors"]["4"]["errors"][0]["extra_info"]["traceback"]
        .as_array()
        .expect("traceback");
    assert_eq!(tb.len(), etb.len());
    assert!(tb[1]
        .as_str()
        .is_some_and(|s| s.contains("o_class_type = prompt[o_id]['class_type']")));
    assert!(
        e.node_errors.get("3").is_none(),
        "nodes invalid only through upstream errors are omitted"
    );
    assert_eq!(e.error.details, "Exception when validating node: '99'");
}

#[test]
fn trace_09_no_outputs() {
    check_400("09_");
}

#[test]
fn trace_10_bad_requests() {
    let cases = prompts("10_");
    // Missing prompt → no_prompt (the constructor), empty prompt → prompt_no_outputs.
    let no_prompt = cases
        .iter()
        .find(|c| c.0.get("prompt").is_none())
        .expect("no_prompt case");
    assert_eq!(PromptError::no_prompt().to_json(), no_prompt.2);
    check_400("10_");
}

/// Rough speed check (run with `--ignored --nocapture`, ideally in release).
#[test]
#[ignore]
fn validation_throughput() {
    let mut c = catalog();
    c.set_model_files("checkpoints", &["sd15.safetensors".to_string()]);
    let g = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ks"}}
    });
    let p = g.as_object().expect("object");
    let n = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        validate(p, &c, &ValidateOptions::default()).expect("valid");
    }
    let dt = t.elapsed();
    println!(
        "{n} validations in {dt:?}: {:.0}/s",
        n as f64 / dt.as_secs_f64()
    );
}
