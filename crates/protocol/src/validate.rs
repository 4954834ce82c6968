//! Graph validation exactly as ComfyUI 0.3.64's `validate_prompt` does it, against a pre-parsed
//! [`Catalog`].
//!
//! What it reproduces: unknown or missing `class_type` (`invalid_prompt`), no output node
//! (`prompt_no_outputs`), the recursive per-output input validation with every per-node error type
//! ComfyUI produces for a stock catalogue, in-place coercion of INT/FLOAT/STRING/BOOLEAN widget
//! values (`{"__value__": [...]}` unwrapped), the quirk that `dependent_outputs` of an erroneous node
//! lists every failing output processed after it, `node_errors` only for nodes with their own
//! reasons, and success with non-empty `node_errors` when at least one output validated.
//!
//! Python-isms that leak into the messages (`str()` of values, `repr()` of lists, float formatting,
//! `KeyError` texts and tracebacks) are reproduced by small private helpers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

pub use crate::error::ErrorObject;

use crate::catalog::{Catalog, ClassInfo, InputCategory, InputDef, InputKind, PyNum, UploadKind};

/// Where the server that recorded the traces kept its source; used in reproduced tracebacks.
const SRC: &str = "/srv/ComfyUI/execution.py";

/// Python's recursion limit is what stops ComfyUI on very deep or cyclic graphs.
const MAX_DEPTH: usize = 900;

/// The entry of one node in `node_errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeError {
    /// The node's own reasons.
    pub errors: Vec<ErrorObject>,
    /// The output nodes this node blocks (ComfyUI's quirk: every failing output processed after
    /// the node was first found invalid).
    pub dependent_outputs: Vec<String>,
    /// The node's `class_type`.
    pub class_type: String,
}

/// `node_errors`: node id → [`NodeError`], in ComfyUI's order (serialized as a JSON object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeErrors(pub Vec<(String, NodeError)>);

impl NodeErrors {
    /// True when no node has an error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entry of node `id`.
    pub fn get(&self, id: &str) -> Option<&NodeError> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Object(Map::new()))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut NodeError> {
        self.0.iter_mut().find(|(k, _)| k == id).map(|(_, v)| v)
    }
}

impl Serialize for NodeErrors {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for NodeErrors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: Map<String, Value> = Map::deserialize(d)?;
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in m {
            let ne: NodeError = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
            out.push((k, ne));
        }
        Ok(NodeErrors(out))
    }
}

/// ComfyUI's 400 body for `POST /prompt`: `{"error": {...}, "node_errors": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub struct PromptError {
    /// The top-level error (boxed to keep `Result<_, PromptError>` small).
    pub error: Box<ErrorObject>,
    /// Per-node errors (empty for `no_prompt`, `invalid_prompt`, `prompt_no_outputs`, ...).
    pub node_errors: NodeErrors,
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error.kind, self.error.message)?;
        if !self.error.details.is_empty() {
            write!(f, ": {}", self.error.details)?;
        }
        Ok(())
    }
}

impl PromptError {
    /// A top-level error without node errors.
    pub fn new(kind: &str, message: &str, details: &str) -> Self {
        PromptError {
            error: Box::new(ErrorObject::new(kind, message, details)),
            node_errors: NodeErrors::default(),
        }
    }

    /// The body has no `prompt`.
    pub fn no_prompt() -> Self {
        Self::new("no_prompt", "No prompt provided", "No prompt provided")
    }

    /// A client `prompt_id` that is not a canonical lowercase hyphenated UUID (newer ComfyUI).
    pub fn invalid_prompt_id() -> Self {
        Self::new(
            "invalid_prompt_id",
            "prompt_id must be a valid UUID",
            "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one",
        )
    }

    /// No output node (or none among `partial_execution_targets`).
    pub fn prompt_no_outputs() -> Self {
        Self::new("prompt_no_outputs", "Prompt has no outputs", "")
    }

    /// The HTTP status ComfyUI answers with (always 400).
    pub fn status_code(&self) -> u16 {
        400
    }

    /// The body as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"error": self.error, "node_errors": self.node_errors})
    }
}

/// An input that names a file, handed to a [`FileCheck::Custom`] callback.
#[derive(Debug, Clone, Copy)]
pub struct FileRef<'a> {
    /// The node's class, e.g. `LoadImage`.
    pub class_type: &'a str,
    /// The input, e.g. `image`.
    pub input_name: &'a str,
    /// The value as given (may carry an annotation such as `" [output]"` or a subfolder).
    pub filename: &'a str,
    /// The kind of upload the input takes, if the catalogue flags one.
    pub upload: Option<UploadKind>,
}

/// Callback type of [`FileCheck::Custom`].
pub type FileExistsFn = dyn Fn(&FileRef<'_>) -> bool + Send + Sync;

/// How inputs that take a file (LoadImage's `image` and friends) are checked.
#[derive(Clone, Default)]
pub enum FileCheck {
    /// As ComfyUI would on the server the catalogue came from: the file must be in the input's
    /// option list (the server's input folder when the catalogue was fetched).
    #[default]
    Catalog,
    /// Every file name is accepted.
    AcceptAll,
    /// The callback decides whether the named file exists.
    Custom(Arc<FileExistsFn>),
}

impl fmt::Debug for FileCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileCheck::Catalog => f.write_str("Catalog"),
            FileCheck::AcceptAll => f.write_str("AcceptAll"),
            FileCheck::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Options of [`validate`].
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// `partial_execution_targets`: only these output nodes are validated and executed.
    pub partial_execution_targets: Option<Vec<String>>,
    /// How inputs naming a file are checked.
    pub files: FileCheck,
}

/// A graph that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The graph, coerced in place as ComfyUI does (what `/queue` and `/history` echo).
    pub prompt: Map<String, Value>,
    /// The output nodes that validated, to be executed.
    pub outputs_to_execute: Vec<String>,
    /// Errors of the outputs that were dropped (may be non-empty on success).
    pub node_errors: NodeErrors,
}

/// Classes whose stock implementation has `VALIDATE_INPUTS` for one input: that input skips the
/// min/max/list checks and is instead checked for file existence, failing with
/// `custom_validation_failed` and this message prefix.
const FILE_VALIDATORS: &[(&str, &str, &str)] = &[
    ("LoadImage", "image", "Invalid image file: "),
    ("LoadImageMask", "image", "Invalid image file: "),
    ("LoadAudio", "audio", "Invalid audio file: "),
    ("LoadVideo", "file", "Invalid video file: "),
    ("LoadLatent", "latent", "Invalid latent file: "),
];

fn file_validator(class: &str, input: &str) -> Option<&'static str> {
    FILE_VALIDATORS
        .iter()
        .find(|(c, i, _)| *c == class && *i == input)
        .map(|(_, _, m)| *m)
}

fn has_file_validator(class: &str) -> bool {
    FILE_VALIDATORS.iter().any(|(c, _, _)| *c == class)
}

/// A Python exception raised during validation (caught as `exception_during_[inner_]validation`).
#[derive(Debug, Clone)]
struct PyExc {
    type_name: &'static str,
    message: String,
    traceback: Vec<String>,
}

type NodeResult = (bool, Vec<ErrorObject>);

/// A valid link whose source node is validated next.
struct PendingLink {
    o_id: String,
    val: Value,
}

struct Ctx<'a> {
    prompt: Map<String, Value>,
    catalog: &'a Catalog,
    opts: &'a ValidateOptions,
    /// `validated`, in insertion order (ComfyUI iterates it to build node_errors).
    validated: Vec<(String, NodeResult)>,
    index: HashMap<String, usize>,
}

impl<'a> Ctx<'a> {
    fn set_validated(&mut self, id: &str, r: NodeResult) {
        match self.index.get(id) {
            Some(&i) => self.validated[i].1 = r,
            None => {
                self.index.insert(id.to_string(), self.validated.len());
                self.validated.push((id.to_string(), r));
            }
        }
    }

    fn class_of(&self, id: &str) -> Option<&'a ClassInfo> {
        let ct = self.prompt.get(id)?.get("class_type")?.as_str()?;
        self.catalog.class(ct)
    }

    // Recursion goes through this function only: it is kept small (the heavy per-input work is
    // in non-inlined helpers) so that deep graphs fit on a normal thread stack.
    fn validate_inputs(&mut self, id: &str, depth: usize) -> Result<NodeResult, Box<PyExc>> {
        if let Some(&i) = self.index.get(id) {
            return Ok(self.validated[i].1.clone());
        }
        if depth > MAX_DEPTH {
            return Err(Box::new(PyExc {
                type_name: "RecursionError",
                message: "maximum recursion depth exceeded".into(),
                traceback: vec![frame(
                    808,
                    "validate_inputs",
                    "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
                )],
            }));
        }
        let inputs_ok = self
            .prompt
            .get(id)
            .and_then(|n| n.get("inputs"))
            .is_some_and(Value::is_object);
        if !inputs_ok {
            return Err(Box::new(PyExc {
                type_name: "KeyError",
                message: "'inputs'".into(),
                traceback: vec![frame(
                    730,
                    "validate_inputs",
                    "inputs = prompt[unique_id]['inputs']",
                )],
            }));
        }
        let Some(class) = self.class_of(id) else {
            // Cannot happen: every class was checked before.
            return Ok((false, vec![]));
        };
        let mut errors: Vec<ErrorObject> = Vec::new();
        let mut valid = true;
        for def in class.visible_inputs() {
            if let Some(link) = self.check_input(id, class, def, &mut errors)? {
                let r = self.validate_inputs(&link.o_id, depth + 1);
                if !self.after_link(r, &link, def) {
                    valid = false;
                }
            }
        }
        self.check_files(id, class, &mut errors);
        let r = (valid && errors.is_empty(), errors);
        self.set_validated(id, r.clone());
        Ok(r)
    }

    /// After validating a linked node: false when this node is invalid because of it.
    #[inline(never)]
    fn after_link(
        &mut self,
        r: Result<NodeResult, Box<PyExc>>,
        link: &PendingLink,
        def: &InputDef,
    ) -> bool {
        match r {
            Ok((v, _)) => v,
            Err(ex) => {
                let mut tb = vec![frame(
                    808,
                    "validate_inputs",
                    "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
                )];
                // The inner frames, minus the outer validate_prompt frame.
                tb.extend(ex.traceback.iter().skip(1).cloned());
                let reasons = vec![ErrorObject::new(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    ex.message.clone(),
                )
                .with("input_name", Value::from(def.name.as_str()))
                .with("input_config", def.input_config.clone())
                .with("exception_message", Value::from(ex.message.clone()))
                .with("exception_type", Value::from(ex.type_name))
                .with("traceback", Value::from(tb))
                .with("linked_node", link.val.clone())];
                self.set_validated(&link.o_id, (false, reasons));
                false
            }
        }
    }

    /// Checks one input; returns the link to validate next when the input is a valid link.
    #[inline(never)]
    fn check_input(
        &mut self,
        id: &str,
        class: &ClassInfo,
        def: &InputDef,
        errors: &mut Vec<ErrorObject>,
    ) -> Result<Option<PendingLink>, Box<PyExc>> {
        let class_name = class.name.as_str();
        let x = def.name.as_str();
        let Some(val) = self.input_value(id, x) else {
            if def.category == InputCategory::Required {
                errors.push(
                    ErrorObject::new("required_input_missing", "Required input is missing", x)
                        .with("input_name", Value::from(x)),
                );
            }
            return Ok(None);
        };
        // Cloned only when an error echoes it (combo lists can be long).
        let input_config = || def.input_config.clone();

        if let Value::Array(link) = &val {
            if link.len() != 2 {
                errors.push(
                    ErrorObject::new(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        x,
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", input_config())
                    .with("received_value", val.clone()),
                );
                return Ok(None);
            }
            let o_id = match link[0].as_str() {
                Some(s) if self.prompt.contains_key(s) => s.to_string(),
                _ => {
                    return Err(Box::new(PyExc {
                        type_name: "KeyError",
                        message: py_repr(&link[0]),
                        traceback: vec![
                            frame(
                                1010,
                                "validate_prompt",
                                "m = await validate_inputs(prompt_id, prompt, o, validated)",
                            ),
                            frame_sub(
                                788,
                                "validate_inputs",
                                "o_class_type = prompt[o_id]['class_type']",
                                19,
                                6,
                                6,
                            ),
                        ],
                    }))
                }
            };
            let Some(o_class) = self.class_of(&o_id) else {
                return Ok(None);
            };
            let received_type = match py_index(&link[1], o_class.outputs.len()) {
                Ok(i) => o_class.outputs[i].clone(),
                Err((type_name, message)) => {
                    return Err(Box::new(PyExc {
                        type_name,
                        message,
                        traceback: vec![
                            frame(
                                1010,
                                "validate_prompt",
                                "m = await validate_inputs(prompt_id, prompt, o, validated)",
                            ),
                            frame_sub(
                                790,
                                "validate_inputs",
                                "received_type = r[val[1]]",
                                28,
                                1,
                                8,
                            ),
                        ],
                    }))
                }
            };
            if !types_compatible(&received_type, &def.type_name) {
                let details = format!(
                    "{x}, received_type({received_type}) mismatch input_type({})",
                    def.type_name
                );
                errors.push(
                    ErrorObject::new(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        details,
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", input_config())
                    .with("received_type", Value::from(received_type))
                    .with("linked_node", val.clone()),
                );
                return Ok(None);
            }
            return Ok(Some(PendingLink { o_id, val }));
        }

        // A literal value.
        let mut val = val;
        if let Value::Object(o) = &val {
            if let Some(inner) = o.get("__value__") {
                val = inner.clone();
                self.set_input(id, x, val.clone());
            }
        }
        let coerced = match &def.kind {
            InputKind::Int { .. } => py_int(&val).map(|n| n.to_json()),
            InputKind::Float { .. } => py_float(&val).and_then(|f| {
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("could not convert string to float: {}", py_repr(&val)))
            }),
            InputKind::String { .. } => Ok(Value::String(py_str(&val))),
            InputKind::Boolean { .. } => Ok(Value::Bool(crate::pyrepr::truthy(&val))),
            _ => Ok(val.clone()),
        };
        let val = match coerced {
            Ok(v) => {
                if def.is_widget_scalar() {
                    self.set_input(id, x, v.clone());
                }
                v
            }
            Err(msg) => {
                errors.push(
                    ErrorObject::new(
                        "invalid_input_type",
                        format!(
                            "Failed to convert an input value to a {} value",
                            def.type_name
                        ),
                        format!("{x}, {}, {msg}", py_str(&val)),
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", input_config())
                    .with("received_value", val.clone())
                    .with("exception_message", Value::from(msg)),
                );
                return Ok(None);
            }
        };

        if file_validator(class_name, x).is_some() {
            // Checked by the class's VALIDATE_INPUTS (check_files), not by min/max/list.
            return Ok(None);
        }
        let (min, max) = match &def.kind {
            InputKind::Int { min, max, .. } | InputKind::Float { min, max, .. } => (*min, *max),
            _ => (
                def.options.get("min").and_then(PyNum::from_json),
                def.options.get("max").and_then(PyNum::from_json),
            ),
        };
        let num = PyNum::from_json(&val);
        if let (Some(min), Some(v)) = (min, num) {
            if v.lt(min) {
                errors.push(
                    ErrorObject::new(
                        "value_smaller_than_min",
                        format!("Value {v} smaller than min of {min}"),
                        x,
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", input_config())
                    .with("received_value", val.clone()),
                );
                return Ok(None);
            }
        }
        if let (Some(max), Some(v)) = (max, num) {
            if max.lt(v) {
                errors.push(
                    ErrorObject::new(
                        "value_bigger_than_max",
                        format!("Value {v} bigger than max of {max}"),
                        x,
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", input_config())
                    .with("received_value", val.clone()),
                );
                return Ok(None);
            }
        }
        if let InputKind::Combo {
            options,
            legacy_list: true,
        } = &def.kind
        {
            let present = match (&self.opts.files, def.upload, val.as_str()) {
                (FileCheck::AcceptAll, Some(_), _) => true,
                (FileCheck::Custom(f), Some(kind), Some(name)) => f(&FileRef {
                    class_type: class_name,
                    input_name: x,
                    filename: name,
                    upload: Some(kind),
                }),
                _ => options.iter().any(|o| py_eq(o, &val)),
            };
            if !present {
                let (list_info, cfg) = if options.len() > 20 {
                    (format!("(list of length {})", options.len()), Value::Null)
                } else {
                    (py_repr(&Value::Array(options.clone())), input_config())
                };
                errors.push(
                    ErrorObject::new(
                        "value_not_in_list",
                        "Value not in list",
                        format!("{x}: '{}' not in {list_info}", py_str(&val)),
                    )
                    .with("input_name", Value::from(x))
                    .with("input_config", cfg)
                    .with("received_value", val.clone()),
                );
            }
        }
        Ok(None)
    }

    /// The stock `VALIDATE_INPUTS` of the file-loading classes.
    #[inline(never)]
    fn check_files(&mut self, id: &str, class: &ClassInfo, errors: &mut Vec<ErrorObject>) {
        let class_name = class.name.as_str();
        if !has_file_validator(class_name) {
            return;
        }
        for (c, input, prefix) in FILE_VALIDATORS {
            if *c != class_name {
                continue;
            }
            let Some(v) = self.input_value(id, input) else {
                continue;
            };
            if v.is_array() {
                continue;
            }
            let name = py_str(&v);
            let def = class.input(input);
            let exists = match &self.opts.files {
                FileCheck::AcceptAll => true,
                FileCheck::Custom(f) => f(&FileRef {
                    class_type: class_name,
                    input_name: input,
                    filename: &name,
                    upload: def.and_then(|d| d.upload),
                }),
                FileCheck::Catalog => catalog_has_file(def.map(|d| &d.kind), &name),
            };
            if !exists {
                errors.push(
                    ErrorObject::new(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        format!("{input} - {prefix}{name}"),
                    )
                    .with("input_name", Value::from(*input)),
                );
            }
        }
    }

    fn input_value(&self, id: &str, x: &str) -> Option<Value> {
        self.prompt.get(id)?.get("inputs")?.get(x).cloned()
    }

    fn set_input(&mut self, id: &str, x: &str, v: Value) {
        if let Some(Value::Object(inputs)) =
            self.prompt.get_mut(id).and_then(|n| n.get_mut("inputs"))
        {
            if let Some(slot) = inputs.get_mut(x) {
                *slot = v;
            }
        }
    }
}

/// With the stock check, a file "exists" when the input's option list has it. Annotated names that
/// point at the output or temp folder cannot be checked from a catalogue and are accepted.
fn catalog_has_file(kind: Option<&InputKind>, name: &str) -> bool {
    if name.ends_with("[output]") || name.ends_with("[temp]") {
        return true;
    }
    let plain = name.strip_suffix(" [input]").unwrap_or(name);
    match kind {
        Some(InputKind::Combo { options, .. }) => options.iter().any(|o| o.as_str() == Some(plain)),
        _ => false,
    }
}

/// ComfyUI's `validate_node_input` (non-strict): equal, `*` on either side, or an overlap of the
/// comma-separated type lists.
fn types_compatible(received: &str, input: &str) -> bool {
    if received == input || received == "*" || input == "*" {
        return true;
    }
    let r: Vec<&str> = received.split(',').map(str::trim).collect();
    input.split(',').map(str::trim).any(|t| r.contains(&t))
}

/// Python's `tuple[idx]` on a tuple of length `len`: the index or the exception it raises.
fn py_index(idx: &Value, len: usize) -> Result<usize, (&'static str, String)> {
    let i: i128 = match idx {
        Value::Bool(b) => *b as i128,
        Value::Number(n) if n.is_i64() || n.is_u64() => match PyNum::from_json(idx) {
            Some(PyNum::Int(i)) => i,
            _ => 0,
        },
        other => {
            return Err((
                "TypeError",
                format!(
                    "tuple indices must be integers or slices, not {}",
                    py_type(other)
                ),
            ))
        }
    };
    let len_i = len as i128;
    let real = if i < 0 { i + len_i } else { i };
    if real < 0 || real >= len_i {
        return Err(("IndexError", "tuple index out of range".into()));
    }
    Ok(real as usize)
}

fn frame(line: u32, func: &str, code: &str) -> String {
    let carets = "^".repeat(code.len().saturating_sub(code.find("await").unwrap_or(0)));
    let pad = " ".repeat(4 + code.find("await").unwrap_or(0));
    format!("  File \"{SRC}\", line {line}, in {func}\n    {code}\n{pad}{carets}\n")
}

fn frame_sub(
    line: u32,
    func: &str,
    code: &str,
    col: usize,
    tildes: usize,
    carets: usize,
) -> String {
    format!(
        "  File \"{SRC}\", line {line}, in {func}\n    {code}\n{}{}{}\n",
        " ".repeat(4 + col),
        "~".repeat(tildes),
        "^".repeat(carets)
    )
}

/// Validates `prompt` against `catalog` the way ComfyUI 0.3.64 does on `POST /prompt`.
pub fn validate(
    prompt: &Map<String, Value>,
    catalog: &Catalog,
    opts: &ValidateOptions,
) -> Result<Validated, PromptError> {
    let mut outputs: Vec<String> = Vec::new();
    for (x, node) in prompt {
        let Some(ct) = node.as_object().and_then(|n| n.get("class_type")) else {
            return Err(PromptError::new(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &format!("Node ID '#{x}'"),
            ));
        };
        let class = ct.as_str().and_then(|c| catalog.class(c));
        let Some(class) = class else {
            return Err(PromptError::new(
                "invalid_prompt",
                &format!("Cannot execute because node {} does not exist.", py_str(ct)),
                &format!("Node ID '#{x}'"),
            ));
        };
        if class.output_node
            && opts
                .partial_execution_targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == x))
        {
            outputs.push(x.clone());
        }
    }
    if outputs.is_empty() {
        return Err(PromptError::prompt_no_outputs());
    }

    let mut ctx = Ctx {
        prompt: prompt.clone(),
        catalog,
        opts,
        validated: Vec::new(),
        index: HashMap::new(),
    };
    let mut good_outputs: Vec<String> = Vec::new();
    let mut failed: Vec<(String, Vec<ErrorObject>)> = Vec::new();
    let mut node_errors = NodeErrors::default();

    for o in &outputs {
        let (valid, reasons) = match ctx.validate_inputs(o, 0) {
            Ok(r) => r,
            Err(ex) => {
                let reasons = vec![ErrorObject::new(
                    "exception_during_validation",
                    "Exception when validating node",
                    ex.message.clone(),
                )
                .with("exception_type", Value::from(ex.type_name))
                .with("traceback", Value::from(ex.traceback.clone()))];
                ctx.set_validated(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good_outputs.push(o.clone());
            continue;
        }
        failed.push((o.clone(), reasons));
        for (node_id, (v, reasons)) in &ctx.validated {
            if *v || reasons.is_empty() {
                continue;
            }
            if node_errors.get(node_id).is_none() {
                let class_type = ctx
                    .prompt
                    .get(node_id)
                    .and_then(|n| n.get("class_type"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                node_errors.0.push((
                    node_id.clone(),
                    NodeError {
                        errors: reasons.clone(),
                        dependent_outputs: vec![],
                        class_type,
                    },
                ));
            }
            if let Some(ne) = node_errors.get_mut(node_id) {
                ne.dependent_outputs.push(o.clone());
            }
        }
    }

    if good_outputs.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flat_map(|(_, errs)| errs.iter().map(|e| format!("{}: {}", e.message, e.details)))
            .collect();
        return Err(PromptError {
            error: Box::new(ErrorObject::new(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                details.join("\n"),
            )),
            node_errors,
        });
    }
    Ok(Validated {
        prompt: ctx.prompt,
        outputs_to_execute: good_outputs,
        node_errors,
    })
}

// ---- Python semantics helpers ----------------------------------------------------------------

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python's `==` between JSON values (1 == 1.0 == True).
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Bool(b) => Some(PyNum::Int(*b as i128)),
        Value::Number(_) => PyNum::from_json(v),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => match (x, y) {
            (PyNum::Int(p), PyNum::Int(q)) => p == q,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// Python's `int(v)`; the error is the exception's message.
fn py_int(v: &Value) -> Result<PyNum, String> {
    match v {
        Value::Bool(b) => Ok(PyNum::Int(*b as i128)),
        Value::Number(_) => match PyNum::from_json(v) {
            Some(PyNum::Float(f)) => Ok(PyNum::Int(f.trunc() as i128)),
            Some(n) => Ok(n),
            None => Err("cannot convert".into()),
        },
        Value::String(s) => parse_py_int(s)
            .map(PyNum::Int)
            .ok_or_else(|| format!("invalid literal for int() with base 10: {}", py_repr(v))),
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            py_type(other)
        )),
    }
}

fn strip_underscores(s: &str) -> Option<String> {
    // Python allows single underscores between digits.
    if s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    Some(s.replace('_', ""))
}

fn parse_py_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let digits = strip_underscores(digits)?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Python's `float(v)`; non-finite results are refused (JSON cannot carry them).
fn py_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Bool(b) => Ok(*b as u8 as f64),
        Value::Number(n) => n.as_f64().ok_or_else(|| "cannot convert".into()),
        Value::String(s) => {
            let t = s.trim();
            let parsed = strip_underscores(t).and_then(|c| {
                let ok = !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')
                    });
                if ok {
                    c.parse::<f64>().ok()
                } else {
                    None
                }
            });
            match parsed {
                Some(f) if f.is_finite() => Ok(f),
                _ => Err(format!("could not convert string to float: {}", py_repr(v))),
            }
        }
        other => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            py_type(other)
        )),
    }
}

/// Python's `str(v)` of the value json.loads would give.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr(v)` of the value json.loads would give.
pub(crate) fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(v, &mut out);
    out
}

fn write_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match PyNum::from_json(v) {
            Some(PyNum::Float(f)) => out.push_str(&crate::pyrepr::float_repr(f)),
            Some(PyNum::Int(i)) => out.push_str(&i.to_string()),
            None => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str_repr(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str_repr(k, out);
                out.push_str(": ");
                write_repr(x, out);
            }
            out.push('}');
        }
    }
}

fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../comfy-sim/data/object_info.json");
        let bytes = std::fs::read(p).expect("crates/comfy-sim/data/object_info.json");
        Catalog::from_slice(&bytes).expect("catalogue")
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn reprs_are_pythons() {
        assert_eq!(
            py_repr(&json!(["a", 1, 2.5, null, true])),
            "['a', 1, 2.5, None, True]"
        );
        assert_eq!(py_repr(&json!({"a": {"b": [1]}})), "{'a': {'b': [1]}}");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_str(&json!(3.0)), "3.0");
    }

    #[test]
    fn python_int_and_float() {
        assert_eq!(py_int(&json!("12")), Ok(PyNum::Int(12)));
        assert_eq!(py_int(&json!(" -1_000 ")), Ok(PyNum::Int(-1000)));
        assert_eq!(py_int(&json!(3.9)), Ok(PyNum::Int(3)));
        assert_eq!(py_int(&json!(-3.9)), Ok(PyNum::Int(-3)));
        assert_eq!(
            py_int(&json!("3.5")),
            Err("invalid literal for int() with base 10: '3.5'".to_string())
        );
        assert_eq!(
            py_int(&json!(null)),
            Err("int() argument must be a string, a bytes-like object or a real number, not 'NoneType'".to_string())
        );
        assert_eq!(py_float(&json!("1e3")), Ok(1000.0));
        assert_eq!(
            py_float(&json!("abc")),
            Err("could not convert string to float: 'abc'".to_string())
        );
    }

    #[test]
    fn coercion_and_value_unwrap() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": "64", "height": 64.7, "batch_size": true, "color": {"__value__": 5}}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 12}}
        }));
        let v = validate(&p, &c, &ValidateOptions::default()).expect("valid");
        assert_eq!(
            v.prompt["1"]["inputs"],
            json!({"width": 64, "height": 64, "batch_size": 1, "color": 5})
        );
        assert_eq!(v.prompt["2"]["inputs"]["sigma"], json!(1.0));
        assert!(v.prompt["2"]["inputs"]["sigma"].is_f64());
        assert_eq!(v.prompt["3"]["inputs"]["filename_prefix"], json!("12"));
        assert_eq!(v.outputs_to_execute, ["3"]);
        assert!(v.node_errors.is_empty());
    }

    #[test]
    fn invalid_input_type() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 64, "batch_size": 1, "color": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("invalid");
        let ne = e.node_errors.get("1").expect("node 1");
        assert_eq!(ne.errors[0].kind, "invalid_input_type");
        assert_eq!(
            ne.errors[0].message,
            "Failed to convert an input value to a INT value"
        );
        assert_eq!(
            ne.errors[0].details,
            "width, wide, invalid literal for int() with base 10: 'wide'"
        );
        assert_eq!(ne.errors[0].extra_info["received_value"], json!("wide"));
        assert_eq!(e.error.details, "");
    }

    #[test]
    fn bigger_than_max_and_float_format() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 0.01}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("invalid");
        let ne = e.node_errors.get("2").expect("node 2");
        let kinds: Vec<_> = ne
            .errors
            .iter()
            .map(|e| (e.kind.as_str(), e.message.as_str()))
            .collect();
        assert!(kinds.contains(&("value_bigger_than_max", "Value 99 bigger than max of 31")));
        assert!(kinds.contains(&(
            "value_smaller_than_min",
            "Value 0.01 smaller than min of 0.1"
        )));
        assert_eq!(ne.dependent_outputs, ["3"]);
    }

    #[test]
    fn bad_link_and_type_mismatch() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0, 1]}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("invalid");
        assert_eq!(e.error.kind, "prompt_outputs_failed_validation");
        let n3 = e.node_errors.get("3").expect("3");
        assert_eq!(n3.errors[0].kind, "return_type_mismatch");
        assert_eq!(
            n3.errors[0].details,
            "images, received_type(INT) mismatch input_type(IMAGE)"
        );
        assert_eq!(n3.errors[0].extra_info["linked_node"], json!(["2", 0]));
        let n4 = e.node_errors.get("4").expect("4");
        assert_eq!(n4.errors[0].kind, "bad_linked_input");
        assert_eq!(
            e.error.details,
            "Return type mismatch between linked nodes: images, received_type(INT) mismatch input_type(IMAGE)\nBad linked input, must be a length-2 list of [node_id, slot_index]: images"
        );
    }

    #[test]
    fn inner_missing_link_is_inner_exception() {
        let c = catalog();
        let p = obj(json!({
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("invalid");
        let n2 = e.node_errors.get("2").expect("2");
        assert_eq!(n2.errors[0].kind, "exception_during_inner_validation");
        assert_eq!(n2.errors[0].details, "'99'");
        assert_eq!(n2.errors[0].extra_info["exception_type"], json!("KeyError"));
        assert_eq!(n2.errors[0].extra_info["linked_node"], json!(["2", 0]));
        assert!(e.node_errors.get("3").is_none());
    }

    #[test]
    fn success_with_node_errors() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ok"}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bad"}}
        }));
        let v = validate(&p, &c, &ValidateOptions::default()).expect("one output is fine");
        assert_eq!(v.outputs_to_execute, ["2"]);
        let n3 = v.node_errors.get("3").expect("3");
        assert_eq!(n3.errors[0].kind, "required_input_missing");
        assert_eq!(n3.dependent_outputs, ["3"]);
    }

    #[test]
    fn partial_targets() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        }));
        let opts = ValidateOptions {
            partial_execution_targets: Some(vec!["3".into()]),
            ..Default::default()
        };
        assert_eq!(
            validate(&p, &c, &opts).expect("valid").outputs_to_execute,
            ["3"]
        );
        let opts = ValidateOptions {
            partial_execution_targets: Some(vec!["1".into()]),
            ..Default::default()
        };
        assert_eq!(
            validate(&p, &c, &opts).expect_err("none").error.kind,
            "prompt_no_outputs"
        );
    }

    #[test]
    fn load_image_file_check() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        }));
        let e =
            validate(&p, &c, &ValidateOptions::default()).expect_err("not in the catalogue's list");
        let n1 = e.node_errors.get("1").expect("1");
        assert_eq!(n1.errors.len(), 1);
        assert_eq!(n1.errors[0].kind, "custom_validation_failed");
        assert_eq!(n1.errors[0].details, "image - Invalid image file: mine.png");
        assert_eq!(n1.errors[0].extra_info, obj(json!({"input_name": "image"})));

        let opts = ValidateOptions {
            files: FileCheck::Custom(Arc::new(|f: &FileRef<'_>| {
                f.filename == "mine.png" && f.upload == Some(UploadKind::Image)
            })),
            ..Default::default()
        };
        assert!(validate(&p, &c, &opts).is_ok());
        let p2 = obj(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        }));
        assert!(validate(&p2, &c, &ValidateOptions::default()).is_ok());
        assert!(validate(&p2, &c, &opts).is_err());
    }

    #[test]
    fn cycles_do_not_overflow() {
        let c = catalog();
        let p = obj(json!({
            "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("cycle");
        assert_eq!(e.error.kind, "prompt_outputs_failed_validation");
    }

    #[test]
    fn missing_class_type_and_long_lists() {
        let c = catalog();
        let p = obj(json!({"1": {"inputs": {}}}));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("no class_type");
        assert_eq!(e.error.kind, "invalid_prompt");
        assert_eq!(
            e.error.message,
            "Cannot execute because a node is missing the class_type property."
        );
        assert_eq!(e.error.details, "Node ID '#1'");

        // KSampler's sampler_name has more than 20 options: not echoed, input_config null.
        let p = obj(json!({
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 7, "sampler_name": "nope", "scheduler": "normal", "denoise": 1, "model": ["5", 0], "positive": ["5", 0], "negative": ["5", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["5", 0]}},
            "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
        }));
        let e = validate(&p, &c, &ValidateOptions::default()).expect_err("invalid");
        let n3 = e.node_errors.get("3").expect("3");
        let list = n3
            .errors
            .iter()
            .find(|e| e.kind == "value_not_in_list")
            .expect("value_not_in_list");
        assert!(
            list.details
                .starts_with("sampler_name: 'nope' not in (list of length "),
            "{}",
            list.details
        );
        assert_eq!(list.extra_info["input_config"], Value::Null);
        // The LATENT fed into MODEL/CONDITIONING/VAE inputs is a return_type_mismatch each.
        assert_eq!(
            n3.errors
                .iter()
                .filter(|e| e.kind == "return_type_mismatch")
                .count(),
            3
        );
        assert!(e
            .node_errors
            .get("8")
            .is_some_and(|n| n.errors[0].kind == "return_type_mismatch"));
        assert_eq!(n3.dependent_outputs, ["9"]);
    }

    #[test]
    fn constructors() {
        let e = PromptError::invalid_prompt_id();
        assert_eq!(e.error.kind, "invalid_prompt_id");
        assert_eq!(e.error.message, "prompt_id must be a valid UUID");
        assert_eq!(e.status_code(), 400);
        assert_eq!(
            PromptError::prompt_no_outputs().to_json()["error"]["details"],
            ""
        );
    }

    #[test]
    fn deep_chains_validate_on_a_normal_stack() {
        let c = catalog();
        let mut p = Map::new();
        p.insert("0".into(), json!({"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}));
        for i in 1..800 {
            p.insert(
                i.to_string(),
                json!({"class_type": "ImageInvert", "inputs": {"image": [(i - 1).to_string(), 0]}}),
            );
        }
        p.insert(
            "out".into(),
            json!({"class_type": "PreviewImage", "inputs": {"images": ["799", 0]}}),
        );
        let v = validate(&p, &c, &ValidateOptions::default()).expect("valid");
        assert_eq!(v.outputs_to_execute, ["out"]);
    }

    #[test]
    fn serializes_in_comfyui_field_order() {
        let e = PromptError::no_prompt();
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"error":{"type":"no_prompt","message":"No prompt provided","details":"No prompt provided","extra_info":{}},"node_errors":{}}"#
        );
        let back: PromptError =
            serde_json::from_str(&serde_json::to_string(&e).expect("json")).expect("parse");
        assert_eq!(back, e);
    }
}
