//! The node catalogue of a ComfyUI server (`GET /object_info`), parsed once into structs so that
//! validating a graph never walks raw JSON.
//!
//! A [`Catalog`] maps a `class_type` to its [`ClassInfo`]: inputs (required, optional, hidden) with
//! their type spec, `input_order`, output types and whether it is an output node. Both spellings of
//! a dropdown are understood: the legacy `[[options...], {opts}]` form (which ComfyUI checks with
//! `value_not_in_list`) and the newer `["COMBO", {"options": [...]}]` form (which it does not check).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Why a catalogue could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The bytes were not JSON.
    #[error("object_info is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The top level was not a JSON object.
    #[error("object_info must be a JSON object of classes")]
    NotAnObject,
    /// One class entry had an unusable shape.
    #[error("class {class}: {reason}")]
    BadClass {
        /// The class whose entry is malformed.
        class: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A number as ComfyUI's Python sees it: an integer (arbitrary size, here up to i128) or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyNum {
    /// A Python `int`.
    Int(i128),
    /// A Python `float`.
    Float(f64),
}

impl PyNum {
    /// Reads a JSON number; `None` for anything else.
    pub fn from_json(v: &Value) -> Option<PyNum> {
        let n = v.as_number()?;
        if let Some(i) = n.as_i64() {
            Some(PyNum::Int(i as i128))
        } else if let Some(u) = n.as_u64() {
            Some(PyNum::Int(u as i128))
        } else {
            n.as_f64().map(PyNum::Float)
        }
    }

    /// The value as a float (for comparisons).
    pub fn as_f64(self) -> f64 {
        match self {
            PyNum::Int(i) => i as f64,
            PyNum::Float(f) => f,
        }
    }

    /// Python's `a < b` for two numbers.
    pub fn lt(self, other: PyNum) -> bool {
        match (self, other) {
            (PyNum::Int(a), PyNum::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }

    /// Back to JSON.
    pub fn to_json(self) -> Value {
        match self {
            PyNum::Int(i) => {
                if let Ok(v) = i64::try_from(i) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(i) {
                    Value::from(v)
                } else {
                    Value::from(i as f64)
                }
            }
            PyNum::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        }
    }
}

impl fmt::Display for PyNum {
    /// Formats like Python's `str()` (`1.0`, `1e-05`, `1e+16`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyNum::Int(i) => write!(f, "{i}"),
            PyNum::Float(x) => f.write_str(&crate::pyrepr::float_repr(*x)),
        }
    }
}

/// Which section of `input` an input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputCategory {
    /// `input.required`
    Required,
    /// `input.optional`
    Optional,
    /// `input.hidden`
    Hidden,
}

/// What kind of file an upload-capable input takes (from `image_upload`, `video_upload`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadKind {
    /// `image_upload: true` (LoadImage, LoadImageMask, LoadImageOutput).
    Image,
    /// `video_upload: true` (LoadVideo).
    Video,
    /// `audio_upload: true` (LoadAudio).
    Audio,
    /// `file_upload: true` (Load3D and friends).
    File,
}

/// The type spec of one input, pre-parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// `INT` with its limits.
    Int {
        /// `default`
        default: Option<PyNum>,
        /// `min`
        min: Option<PyNum>,
        /// `max`
        max: Option<PyNum>,
        /// `step`
        step: Option<PyNum>,
    },
    /// `FLOAT` with its limits.
    Float {
        /// `default`
        default: Option<PyNum>,
        /// `min`
        min: Option<PyNum>,
        /// `max`
        max: Option<PyNum>,
        /// `step`
        step: Option<PyNum>,
    },
    /// `STRING`
    String {
        /// `default`
        default: Option<String>,
        /// `multiline`
        multiline: bool,
    },
    /// `BOOLEAN`
    Boolean {
        /// `default`
        default: Option<bool>,
    },
    /// A dropdown.
    Combo {
        /// The allowed values.
        options: Vec<Value>,
        /// True for the legacy `[[options...], {...}]` form, the only one ComfyUI checks with
        /// `value_not_in_list`; false for `["COMBO", {"options": [...]}]`.
        legacy_list: bool,
    },
    /// Any other type: a socket fed by a link (`IMAGE`, `LATENT`, `MODEL`, `*`, ...), or a hidden
    /// input such as `PROMPT` or `UNIQUE_ID`.
    Other,
}

/// One input of a class.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDef {
    /// The input's name (the key in a node's `inputs`).
    pub name: String,
    /// required / optional / hidden.
    pub category: InputCategory,
    /// The type name: `INT`, `FLOAT`, `STRING`, `BOOLEAN`, `COMBO` (for both combo forms), `IMAGE`, ...
    pub type_name: String,
    /// The pre-parsed type spec.
    pub kind: InputKind,
    /// The options dict (second element of the spec), `{}` when absent.
    pub options: Map<String, Value>,
    /// What ComfyUI echoes as `input_config` in validation errors: `[type or [options...], opts]`.
    pub input_config: Value,
    /// Set when the input takes an uploaded file.
    pub upload: Option<UploadKind>,
    /// `lazy: true` inputs are not scheduled before the node asks for them.
    pub lazy: bool,
}

impl InputDef {
    /// True for types that ComfyUI coerces in place (`INT`, `FLOAT`, `STRING`, `BOOLEAN`).
    pub fn is_widget_scalar(&self) -> bool {
        matches!(
            self.kind,
            InputKind::Int { .. }
                | InputKind::Float { .. }
                | InputKind::String { .. }
                | InputKind::Boolean { .. }
        )
    }
}

/// `input_order` of a class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputOrder {
    /// Order of required inputs.
    pub required: Vec<String>,
    /// Order of optional inputs.
    pub optional: Vec<String>,
    /// Order of hidden inputs.
    pub hidden: Vec<String>,
}

/// One node class of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    /// The class name (`class_type`).
    pub name: String,
    /// `display_name` (may be absent or null).
    pub display_name: Option<String>,
    /// `category`
    pub category: String,
    /// `python_module`
    pub python_module: String,
    /// Inputs in `input_order` (required, then optional, then hidden).
    pub inputs: Vec<InputDef>,
    /// `input_order`
    pub input_order: InputOrder,
    /// Output types (`RETURN_TYPES`).
    pub outputs: Vec<String>,
    /// `output_is_list`
    pub output_is_list: Vec<bool>,
    /// `output_name`
    pub output_names: Vec<String>,
    /// True for output nodes (SaveImage, PreviewImage, ...): the roots of execution.
    pub output_node: bool,
    /// True when a hidden input asks for `UNIQUE_ID` (such nodes are cached per node id).
    pub wants_unique_id: bool,
    /// The class's entry exactly as read, for serving `/object_info`.
    pub raw: Value,
}

impl ClassInfo {
    /// The input named `name`, in any category.
    pub fn input(&self, name: &str) -> Option<&InputDef> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Required and optional inputs (what validation looks at), in `input_order`.
    pub fn visible_inputs(&self) -> impl Iterator<Item = &InputDef> {
        self.inputs
            .iter()
            .filter(|i| i.category != InputCategory::Hidden)
    }

    /// Hidden inputs as `(name, kind)`, e.g. `("unique_id", "UNIQUE_ID")`.
    pub fn hidden_inputs(&self) -> impl Iterator<Item = &InputDef> {
        self.inputs
            .iter()
            .filter(|i| i.category == InputCategory::Hidden)
    }

    /// Parses one class entry of `/object_info`.
    pub fn from_json(name: &str, v: &Value) -> Result<ClassInfo, CatalogError> {
        let bad = |reason: &str| CatalogError::BadClass {
            class: name.to_string(),
            reason: reason.to_string(),
        };
        let obj = v.as_object().ok_or_else(|| bad("entry is not an object"))?;
        let input = obj.get("input").and_then(Value::as_object);
        let order_obj = obj.get("input_order").and_then(Value::as_object);

        let mut input_order = InputOrder::default();
        let mut inputs = Vec::new();
        for (cat, key) in [
            (InputCategory::Required, "required"),
            (InputCategory::Optional, "optional"),
            (InputCategory::Hidden, "hidden"),
        ] {
            let section = input.and_then(|i| i.get(key)).and_then(Value::as_object);
            let Some(section) = section else { continue };
            // Follow input_order when given; inputs missing from it keep the section's order.
            let mut names: Vec<String> = order_obj
                .and_then(|o| o.get(key))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .filter(|s| section.contains_key(s))
                        .collect()
                })
                .unwrap_or_default();
            for k in section.keys() {
                if !names.iter().any(|n| n == k) {
                    names.push(k.clone());
                }
            }
            for n in &names {
                if let Some(spec) = section.get(n) {
                    inputs.push(parse_input(n, cat, spec));
                }
            }
            match cat {
                InputCategory::Required => input_order.required = names,
                InputCategory::Optional => input_order.optional = names,
                InputCategory::Hidden => input_order.hidden = names,
            }
        }

        let strings = |key: &str| -> Vec<String> {
            obj.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| match x {
                            Value::String(s) => s.clone(),
                            // A combo output is spelled as its option list.
                            Value::Array(_) => "COMBO".to_string(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let outputs = strings("output");
        let output_names = {
            let n = strings("output_name");
            if n.is_empty() {
                outputs.clone()
            } else {
                n
            }
        };
        let output_is_list = obj
            .get("output_is_list")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|b| b.as_bool().unwrap_or(false)).collect())
            .unwrap_or_else(|| vec![false; outputs.len()]);
        let wants_unique_id = inputs
            .iter()
            .any(|i| i.category == InputCategory::Hidden && i.type_name == "UNIQUE_ID");

        Ok(ClassInfo {
            name: name.to_string(),
            display_name: obj
                .get("display_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            category: obj
                .get("category")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            python_module: obj
                .get("python_module")
                .and_then(Value::as_str)
                .unwrap_or("nodes")
                .to_string(),
            inputs,
            input_order,
            outputs,
            output_is_list,
            output_names,
            output_node: obj
                .get("output_node")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            wants_unique_id,
            raw: v.clone(),
        })
    }
}

fn parse_input(name: &str, category: InputCategory, spec: &Value) -> InputDef {
    // Hidden inputs are bare strings ("PROMPT"); everything else is [type, opts?].
    let (ty, opts): (&Value, Map<String, Value>) = match spec {
        Value::Array(a) if !a.is_empty() => (
            &a[0],
            a.get(1)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        ),
        other => (other, Map::new()),
    };
    let num = |k: &str| opts.get(k).and_then(PyNum::from_json);
    let (type_name, kind) = match ty {
        Value::Array(options) => (
            "COMBO".to_string(),
            InputKind::Combo {
                options: options.clone(),
                legacy_list: true,
            },
        ),
        Value::String(t) => {
            let kind = match t.as_str() {
                "INT" => InputKind::Int {
                    default: num("default"),
                    min: num("min"),
                    max: num("max"),
                    step: num("step"),
                },
                "FLOAT" => InputKind::Float {
                    default: num("default"),
                    min: num("min"),
                    max: num("max"),
                    step: num("step"),
                },
                "STRING" => InputKind::String {
                    default: opts
                        .get("default")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    multiline: opts
                        .get("multiline")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
                "BOOLEAN" => InputKind::Boolean {
                    default: opts.get("default").and_then(Value::as_bool),
                },
                "COMBO" => InputKind::Combo {
                    options: opts
                        .get("options")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    legacy_list: false,
                },
                _ => InputKind::Other,
            };
            (t.clone(), kind)
        }
        other => (other.to_string(), InputKind::Other),
    };
    let upload = if opts.get("image_upload").and_then(Value::as_bool) == Some(true) {
        Some(UploadKind::Image)
    } else if opts.get("video_upload").and_then(Value::as_bool) == Some(true) {
        Some(UploadKind::Video)
    } else if opts.get("audio_upload").and_then(Value::as_bool) == Some(true) {
        Some(UploadKind::Audio)
    } else if opts.get("file_upload").and_then(Value::as_bool) == Some(true) {
        Some(UploadKind::File)
    } else {
        None
    };
    let lazy = opts.get("lazy").and_then(Value::as_bool).unwrap_or(false);
    let input_config = Value::Array(vec![ty.clone(), Value::Object(opts.clone())]);
    InputDef {
        name: name.to_string(),
        category,
        type_name,
        kind,
        options: opts,
        input_config,
        upload,
        lazy,
    }
}

/// A parsed node catalogue. Cheap to clone (classes are shared).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    classes: HashMap<String, Arc<ClassInfo>>,
    order: Vec<String>,
}

impl Catalog {
    /// Parses an `/object_info` object. Classes with an unusable entry are an error.
    pub fn from_json(v: &Value) -> Result<Catalog, CatalogError> {
        let obj = v.as_object().ok_or(CatalogError::NotAnObject)?;
        let mut cat = Catalog::default();
        for (name, entry) in obj {
            let info = ClassInfo::from_json(name, entry)?;
            cat.insert(info);
        }
        Ok(cat)
    }

    /// Parses `/object_info` bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Catalog, CatalogError> {
        let v: Value = serde_json::from_slice(bytes)?;
        Catalog::from_json(&v)
    }

    /// Adds (or replaces) one class.
    pub fn insert(&mut self, info: ClassInfo) {
        if !self.classes.contains_key(&info.name) {
            self.order.push(info.name.clone());
        }
        self.classes.insert(info.name.clone(), Arc::new(info));
    }

    /// Removes one class (a node without some custom node pack); false when it was absent.
    pub fn remove(&mut self, name: &str) -> bool {
        self.order.retain(|n| n != name);
        self.classes.remove(name).is_some()
    }

    /// The class named `name`.
    pub fn class(&self, name: &str) -> Option<&ClassInfo> {
        self.classes.get(name).map(|a| a.as_ref())
    }

    /// True if the catalogue has `name`.
    pub fn has_class(&self, name: &str) -> bool {
        self.classes.contains_key(name)
    }

    /// Class names in catalogue order.
    pub fn classes(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when there is no class at all.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A class is present if any catalogue has it; on conflicts the first catalogue wins.
    pub fn union(catalogs: &[Catalog]) -> Catalog {
        let mut out = Catalog::default();
        for c in catalogs {
            for name in &c.order {
                if !out.classes.contains_key(name) {
                    if let Some(info) = c.classes.get(name) {
                        out.order.push(name.clone());
                        out.classes.insert(name.clone(), info.clone());
                    }
                }
            }
        }
        out
    }

    /// The whole catalogue as `/object_info` JSON (classes in catalogue order).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for name in &self.order {
            if let Some(c) = self.classes.get(name) {
                m.insert(name.clone(), c.raw.clone());
            }
        }
        Value::Object(m)
    }

    /// Model files by folder, read from the combo inputs of the loader nodes
    /// (`ckpt_name` → `checkpoints`, `lora_name` → `loras`, ... see [`MODEL_INPUTS`]).
    pub fn model_files(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &self.order {
            let Some(c) = self.classes.get(name) else {
                continue;
            };
            for i in &c.inputs {
                let Some(folder) = model_folder(&i.name) else {
                    continue;
                };
                if let InputKind::Combo { options, .. } = &i.kind {
                    let list = out.entry(folder.to_string()).or_default();
                    for o in options.iter().filter_map(Value::as_str) {
                        if !list.iter().any(|x| x == o) {
                            list.push(o.to_string());
                        }
                    }
                }
            }
        }
        out
    }

    /// Replaces the options of a dropdown input (parsed spec and raw JSON alike). False when the
    /// class or input does not exist or is not a dropdown.
    pub fn set_combo_options(&mut self, class: &str, input: &str, new_options: Vec<Value>) -> bool {
        let Some(arc) = self.classes.get_mut(class) else {
            return false;
        };
        let info = Arc::make_mut(arc);
        let Some(def) = info.inputs.iter_mut().find(|i| i.name == input) else {
            return false;
        };
        let section = match def.category {
            InputCategory::Required => "required",
            InputCategory::Optional => "optional",
            InputCategory::Hidden => return false,
        };
        let legacy = match &mut def.kind {
            InputKind::Combo {
                options,
                legacy_list,
            } => {
                *options = new_options.clone();
                *legacy_list
            }
            _ => return false,
        };
        if legacy {
            if let Some(Value::Array(cfg)) = Some(&mut def.input_config) {
                if let Some(first) = cfg.first_mut() {
                    *first = Value::Array(new_options.clone());
                }
            }
            if let Some(spec) = info.raw.pointer_mut(&format!(
                "/input/{section}/{}/0",
                json_pointer_escape(input)
            )) {
                *spec = Value::Array(new_options);
            }
        } else {
            def.options
                .insert("options".into(), Value::Array(new_options.clone()));
            if let Value::Array(cfg) = &mut def.input_config {
                if let Some(Value::Object(o)) = cfg.get_mut(1) {
                    o.insert("options".into(), Value::Array(new_options.clone()));
                }
            }
            if let Some(Value::Object(o)) = info.raw.pointer_mut(&format!(
                "/input/{section}/{}/1",
                json_pointer_escape(input)
            )) {
                o.insert("options".into(), Value::Array(new_options));
            }
        }
        true
    }

    /// Sets the file list of model folder `folder` on every loader input that takes it (see
    /// [`MODEL_INPUTS`]). Returns how many inputs changed.
    pub fn set_model_files(&mut self, folder: &str, files: &[String]) -> usize {
        let targets: Vec<(String, String)> = self
            .order
            .iter()
            .filter_map(|c| self.classes.get(c))
            .flat_map(|c| {
                c.inputs
                    .iter()
                    .filter(|i| model_folder(&i.name) == Some(folder))
                    .filter(|i| matches!(i.kind, InputKind::Combo { .. }))
                    .map(|i| (c.name.clone(), i.name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let opts: Vec<Value> = files.iter().map(|f| Value::String(f.clone())).collect();
        targets
            .iter()
            .filter(|(c, i)| self.set_combo_options(c, i, opts.clone()))
            .count()
    }
}

/// Loader inputs that list the files of a model folder: `(input name, folder)`.
pub const MODEL_INPUTS: &[(&str, &str)] = &[
    ("ckpt_name", "checkpoints"),
    ("lora_name", "loras"),
    ("vae_name", "vae"),
    ("control_net_name", "controlnet"),
    ("unet_name", "diffusion_models"),
    ("clip_name", "text_encoders"),
    ("clip_name1", "text_encoders"),
    ("clip_name2", "text_encoders"),
    ("clip_name3", "text_encoders"),
    ("upscale_model_name", "upscale_models"),
    ("style_model_name", "style_models"),
    ("gligen_name", "gligen"),
    ("hypernetwork_name", "hypernetworks"),
    ("config_name", "configs"),
];

fn model_folder(input: &str) -> Option<&'static str> {
    MODEL_INPUTS
        .iter()
        .find(|(n, _)| *n == input)
        .map(|(_, f)| *f)
}

fn json_pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real() -> Option<Catalog> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../comfy-sim/data/object_info.json");
        let bytes = std::fs::read(p).ok()?;
        Some(Catalog::from_slice(&bytes).expect("the real catalogue parses"))
    }

    #[test]
    fn parses_the_real_catalogue() {
        let Some(c) = real() else {
            panic!("crates/comfy-sim/data/object_info.json is missing");
        };
        assert_eq!(c.len(), 495);
        let e = c.class("EmptyImage").expect("EmptyImage");
        assert_eq!(
            e.input_order.required,
            ["width", "height", "batch_size", "color"]
        );
        assert_eq!(e.outputs, ["IMAGE"]);
        assert!(!e.output_node);
        let w = e.input("width").expect("width");
        assert_eq!(
            w.kind,
            InputKind::Int {
                default: Some(PyNum::Int(512)),
                min: Some(PyNum::Int(1)),
                max: Some(PyNum::Int(16384)),
                step: Some(PyNum::Int(1))
            }
        );
        let s = c.class("SaveImage").expect("SaveImage");
        assert!(s.output_node);
        assert_eq!(s.hidden_inputs().count(), 2);
        let li = c.class("LoadImage").expect("LoadImage");
        assert_eq!(
            li.input("image").and_then(|i| i.upload),
            Some(UploadKind::Image)
        );
        assert_eq!(li.outputs, ["IMAGE", "MASK"]);
        let lv = c.class("LoadVideo").expect("LoadVideo");
        let f = lv.input("file").expect("file");
        assert!(matches!(
            f.kind,
            InputKind::Combo {
                legacy_list: false,
                ..
            }
        ));
        assert_eq!(f.upload, Some(UploadKind::Video));
        let sc = c.class("ImageScale").expect("ImageScale");
        let um = sc.input("upscale_method").expect("upscale_method");
        assert!(
            matches!(&um.kind, InputKind::Combo { options, legacy_list: true } if options.len() == 5)
        );
        assert_eq!(
            um.input_config,
            serde_json::json!([
                ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
                {}
            ])
        );
        assert!(c.class("GetImageSize").is_some_and(|g| g.wants_unique_id));
        // KSampler's seed max is u64::MAX.
        let seed = c
            .class("KSampler")
            .and_then(|k| k.input("seed"))
            .expect("seed");
        assert!(
            matches!(seed.kind, InputKind::Int { max: Some(PyNum::Int(m)), .. } if m == u64::MAX as i128)
        );
    }

    #[test]
    fn union_prefers_the_first() {
        let a = Catalog::from_json(&serde_json::json!({
            "A": {"input": {"required": {"x": ["INT", {"min": 0}]}}, "output": ["INT"], "output_node": false},
            "B": {"input": {}, "output": [], "output_node": true}
        }))
        .expect("a");
        let b = Catalog::from_json(&serde_json::json!({
            "A": {"input": {}, "output": ["FLOAT"], "output_node": false},
            "C": {"input": {}, "output": [], "output_node": false}
        }))
        .expect("b");
        let u = Catalog::union(&[a, b]);
        assert_eq!(u.classes().collect::<Vec<_>>(), ["A", "B", "C"]);
        assert_eq!(
            u.class("A").map(|c| c.outputs.clone()),
            Some(vec!["INT".to_string()])
        );
    }

    #[test]
    fn float_repr_is_pythons() {
        assert_eq!(crate::pyrepr::float_repr(1.0), "1.0");
        assert_eq!(crate::pyrepr::float_repr(0.1), "0.1");
        assert_eq!(crate::pyrepr::float_repr(1e-5), "1e-05");
        assert_eq!(crate::pyrepr::float_repr(1e16), "1e+16");
        assert_eq!(crate::pyrepr::float_repr(-2.5), "-2.5");
        assert_eq!(crate::pyrepr::float_repr(123456789.0), "123456789.0");
    }

    #[test]
    fn model_lists_can_be_set() {
        let Some(mut c) = real() else {
            panic!("catalogue missing");
        };
        assert!(c
            .model_files()
            .get("checkpoints")
            .is_some_and(|l| l.is_empty()));
        let n = c.set_model_files("checkpoints", &["sd15.safetensors".to_string()]);
        assert!(n >= 2, "CheckpointLoaderSimple and friends: {n}");
        assert_eq!(c.model_files()["checkpoints"], ["sd15.safetensors"]);
        let cls = c.class("CheckpointLoaderSimple").expect("class");
        assert_eq!(
            cls.raw["input"]["required"]["ckpt_name"][0],
            serde_json::json!(["sd15.safetensors"])
        );
        assert_eq!(
            cls.input("ckpt_name").map(|i| i.input_config[0].clone()),
            Some(serde_json::json!(["sd15.safetensors"]))
        );
    }

    #[test]
    fn rejects_non_objects() {
        assert!(matches!(
            Catalog::from_json(&serde_json::json!([])),
            Err(CatalogError::NotAnObject)
        ));
    }
}
