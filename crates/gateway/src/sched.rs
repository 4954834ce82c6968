//! Scheduling at submit time: the caller's limits and weight (role defaults from the config,
//! per-user overrides from the account), the job's capability class, and the check that one
//! registered backend of the pool can run the whole graph.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::Identity;
use protocol::catalog::{Catalog, MODEL_INPUTS};
use protocol::validate::{ErrorObject, NodeError, NodeErrors, PromptError};
use serde_json::{Map, Value};
use store::{Capabilities, Limits, Requirement};

use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// What one registered backend can run (healthy or not).
#[derive(Debug, Clone, Default)]
pub struct BackendCaps {
    /// Its node catalogue, when it published a parseable one.
    pub catalog: Option<Arc<Catalog>>,
    /// Its model files by folder.
    pub models: HashMap<String, HashSet<String>>,
    /// Its operator labels.
    pub labels: BTreeMap<String, String>,
}

impl Capabilities for BackendCaps {
    fn has_node(&self, class_type: &str) -> bool {
        self.catalog
            .as_ref()
            .is_some_and(|c| c.has_class(class_type))
    }
    fn has_model(&self, folder: &str, file: &str) -> bool {
        self.models.get(folder).is_some_and(|f| f.contains(file))
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Per-user limit overrides read from the accounts, cached like authentication answers.
pub(crate) struct UserLimitsCache {
    ttl: Duration,
    map: Mutex<HashMap<String, CachedLimits>>,
}

/// When the overrides were read, and the user's `max_queued` and `max_running`.
type CachedLimits = (Instant, Option<u32>, Option<u32>);

/// Entries kept before the cache is emptied (entries are tiny).
const CACHE_MAX: usize = 100_000;

impl UserLimitsCache {
    /// Answers are reused for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        UserLimitsCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    async fn overrides(
        &self,
        st: &AppState,
        uid: &str,
    ) -> Result<(Option<u32>, Option<u32>), ApiError> {
        if let Ok(m) = self.map.lock() {
            if let Some((at, q, r)) = m.get(uid) {
                if at.elapsed() < self.ttl {
                    return Ok((*q, *r));
                }
            }
        }
        let user = st.redis(st.store.user_by_id(uid)).await?;
        let (q, r) = user
            .map(|u| (u.max_queued, u.max_running))
            .unwrap_or((None, None));
        if !self.ttl.is_zero() {
            if let Ok(mut m) = self.map.lock() {
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
                m.insert(uid.to_owned(), (Instant::now(), q, r));
            }
        }
        Ok((q, r))
    }
}

/// The caller's limits and the labels its jobs are restricted to: the user's own limits, else
/// its role's (`gateway.roles`), else the gateway-wide defaults.
pub(crate) async fn caller_limits(
    st: &AppState,
    identity: &Identity,
) -> Result<(Limits, BTreeMap<String, String>), ApiError> {
    let (user_q, user_r) = st.limits.overrides(st, &identity.user_id).await?;
    Ok(resolve(&st.config, identity.role.as_str(), user_q, user_r))
}

fn resolve(
    config: &GatewayConfig,
    role: &str,
    user_q: Option<u32>,
    user_r: Option<u32>,
) -> (Limits, BTreeMap<String, String>) {
    let r = config.roles.get(role).cloned().unwrap_or_default();
    let limits = Limits {
        max_queued: user_q.or(r.max_queued).unwrap_or(config.max_queued),
        max_running: user_r.or(r.max_running).unwrap_or(config.max_running),
        weight: r.weight.unwrap_or(1.0),
    };
    (limits, r.require_labels)
}

/// What a graph needs from a backend: every node type it names (ComfyUI refuses a graph with an
/// unknown class anywhere), the model files of the loaders that will execute (those the outputs
/// depend on: ComfyUI neither validates nor runs the inputs of a node no output reaches), and
/// the labels its owner is restricted to.
pub(crate) fn requirement(
    prompt: &Map<String, Value>,
    outputs: &[String],
    labels: BTreeMap<String, String>,
) -> Requirement {
    let mut req = Requirement {
        labels,
        ..Requirement::default()
    };
    for node in prompt.values() {
        if let Some(ct) = node.get("class_type").and_then(Value::as_str) {
            req.nodes.insert(ct.to_owned());
        }
    }
    for node in executed_nodes(prompt, outputs) {
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for (input, folder) in MODEL_INPUTS {
            if let Some(Value::String(file)) = inputs.get(*input) {
                req.models
                    .entry((*folder).to_owned())
                    .or_default()
                    .insert(file.clone());
            }
        }
    }
    req
}

/// The nodes `outputs` depend on, outputs included (links are `[node id, output index]`).
fn executed_nodes<'a>(prompt: &'a Map<String, Value>, outputs: &[String]) -> Vec<&'a Value> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    while let Some(id) = todo.pop() {
        let Some((key, node)) = prompt.get_key_value(id) else {
            continue;
        };
        if !seen.insert(key.as_str()) {
            continue;
        }
        nodes.push(node);
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for v in inputs.values() {
            if let Some([Value::String(src), _]) = v.as_array().map(Vec::as_slice) {
                todo.push(src);
            }
        }
    }
    nodes
}

/// `Ok` when some registered backend (healthy or not) can run every job of `req`; otherwise
/// ComfyUI's 400: `invalid_prompt` when no backend has every node type (or the labels), a
/// `value_not_in_list` node error on the loader naming a model file no such backend has.
pub(crate) fn check_capable(
    req: &Requirement,
    prompt: &Map<String, Value>,
    outputs: &[String],
    backends: &[BackendCaps],
) -> Result<(), PromptError> {
    if backends.is_empty() || backends.iter().any(|b| req.satisfied_by(b)) {
        return Ok(());
    }
    let with_nodes: Vec<&BackendCaps> = backends
        .iter()
        .filter(|b| req.missing_node(*b).is_none())
        .collect();
    if with_nodes.is_empty() {
        let mut missing: Vec<&str> = backends
            .iter()
            .filter_map(|b| req.missing_node(b))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        return Err(PromptError::new(
            "invalid_prompt",
            "Cannot execute because no backend of this pool has every node type of this graph.",
            &format!("each backend lacks at least one of: {}", missing.join(", ")),
        ));
    }
    let labelled: Vec<&BackendCaps> = with_nodes
        .into_iter()
        .filter(|b| req.missing_label(*b).is_none())
        .collect();
    if labelled.is_empty() {
        let wanted: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(PromptError::new(
            "invalid_prompt",
            "Cannot execute because no backend of this pool carries the labels this account is restricted to.",
            &format!("required labels: {}", wanted.join(", ")),
        ));
    }
    let Some((folder, file)) = labelled.iter().find_map(|b| req.missing_model(*b)) else {
        return Ok(());
    };
    let mut errors = NodeErrors::default();
    for (id, node) in prompt {
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for (input, f) in MODEL_INPUTS {
            if *f == folder && inputs.get(*input).and_then(Value::as_str) == Some(file) {
                let e = ErrorObject::new(
                    "value_not_in_list",
                    "Value not in list",
                    format!(
                        "{input}: '{file}' not in the {folder} of any backend of this pool that has every other node and model of this graph"
                    ),
                )
                .with("input_name", Value::from(*input))
                .with("input_config", Value::Null)
                .with("received_value", Value::from(file));
                errors.0.push((
                    id.clone(),
                    NodeError {
                        errors: vec![e],
                        dependent_outputs: outputs.to_vec(),
                        class_type: node
                            .get("class_type")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    },
                ));
            }
        }
    }
    let mut err = PromptError::new(
        "prompt_outputs_failed_validation",
        "Prompt outputs failed validation",
        "",
    );
    err.node_errors = errors;
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps(nodes: &[&str], ckpts: &[&str]) -> BackendCaps {
        let mut doc = Map::new();
        let full: Value =
            serde_json::from_str(include_str!("../../comfy-sim/data/object_info.json")).unwrap();
        for n in nodes {
            doc.insert((*n).to_owned(), full[*n].clone());
        }
        BackendCaps {
            catalog: Some(Arc::new(Catalog::from_json(&Value::Object(doc)).unwrap())),
            models: HashMap::from([(
                "checkpoints".to_owned(),
                ckpts.iter().map(|s| s.to_string()).collect(),
            )]),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn one_backend_must_have_everything() {
        let prompt = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
            "2": {"class_type": "ImageInvert", "inputs": {"model": ["1", 0]}}
        });
        let prompt = prompt.as_object().unwrap();
        let outs = vec!["2".to_owned()];
        let req = requirement(prompt, &outs, BTreeMap::new());
        assert_eq!(req.nodes.len(), 2);
        assert_eq!(req.checkpoint(), Some("x.safetensors"));
        let a = caps(&["CheckpointLoaderSimple"], &["x.safetensors"]);
        let b = caps(
            &["CheckpointLoaderSimple", "ImageInvert"],
            &["y.safetensors"],
        );
        let e = check_capable(&req, prompt, &outs, &[a.clone(), b.clone()]).unwrap_err();
        assert_eq!(e.error.kind, "prompt_outputs_failed_validation");
        assert_eq!(
            e.node_errors.get("1").unwrap().errors[0].kind,
            "value_not_in_list"
        );
        let e = check_capable(&req, prompt, &outs, std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(e.error.kind, "invalid_prompt");
        let c = caps(
            &["CheckpointLoaderSimple", "ImageInvert"],
            &["x.safetensors"],
        );
        assert!(check_capable(&req, prompt, &outs, &[a, b, c]).is_ok());
    }

    #[test]
    fn loaders_no_output_reaches_need_no_model() {
        // ComfyUI neither validates nor runs a loader that no output depends on.
        let prompt = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 8}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}
        });
        let prompt = prompt.as_object().unwrap();
        let req = requirement(prompt, &["3".to_owned()], BTreeMap::new());
        assert_eq!(req.nodes.len(), 3);
        assert_eq!(req.checkpoint(), None);
        assert!(req.models.is_empty());
    }

    #[test]
    fn user_limits_win_over_role_limits_over_defaults() {
        let mut config = GatewayConfig::default();
        config.roles.insert(
            "power".into(),
            crate::config::RoleSchedule {
                max_running: Some(4),
                weight: Some(2.0),
                ..Default::default()
            },
        );
        let (l, _) = resolve(&config, "power", Some(7), None);
        assert_eq!((l.max_queued, l.max_running, l.weight), (7, 4, 2.0));
        let (l, _) = resolve(&config, "user", None, None);
        assert_eq!((l.max_queued, l.max_running, l.weight), (10_000, 0, 1.0));
    }
}
