//! Node implementations. Model-free image nodes really compute pixels; every other catalogue class
//! runs as a stand-in that returns values of its declared output types.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use protocol::catalog::ClassInfo;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::img::{encode_png, Batch, Image};
use crate::pyjson;

/// A node output value (one element of a node's output tuple).
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Image(Batch),
    Mask(Batch),
    /// A latent, in pixel units (a 512×512 latent decodes to a 512×512 image).
    Latent {
        w: usize,
        h: usize,
        batch: usize,
        seed: i64,
    },
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// A widget value from the graph.
    Json(Value),
    /// MODEL, CLIP, CONDITIONING, ...: only the type matters.
    Opaque(String),
    /// An input whose link could not be resolved (Python passes None).
    None,
}

impl Val {
    fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Float(f) => Some(*f as i64),
            Val::Bool(b) => Some(*b as i64),
            Val::Json(v) => v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Json(v) => v.as_f64(),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<String> {
        match self {
            Val::Str(s) => Some(s.clone()),
            Val::Json(Value::String(s)) => Some(s.clone()),
            Val::Json(v) => Some(v.to_string()),
            Val::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// `format_value` of ComfyUI's error reports (`str()` of anything that is not a primitive).
    pub fn format(&self) -> Value {
        match self {
            Val::Int(i) => json!(i),
            Val::Float(f) => json!(f),
            Val::Str(s) => json!(s),
            Val::Bool(b) => json!(b),
            Val::None => Value::Null,
            Val::Json(v) => match v {
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => v.clone(),
                other => Value::String(py_repr(other)),
            },
            Val::Image(b) | Val::Mask(b) => Value::String(tensor_repr(b)),
            Val::Latent { w, h, batch, .. } => Value::String(format!(
                "{{'samples': tensor(shape=[{batch}, 4, {}, {}])}}",
                h / 8,
                w / 8
            )),
            Val::Opaque(t) => Value::String(format!("<{t} object>")),
        }
    }
}

fn py_repr(v: &Value) -> String {
    // Python's repr of a JSON value is close to its JSON with single quotes and True/None.
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A torch-like `repr` of an image batch (first and last values per row, as torch summarises).
fn tensor_repr(b: &Batch) -> String {
    let Some(img) = b.first() else {
        return "tensor([])".into();
    };
    let px = |x: usize, y: usize| {
        let vals: Vec<String> = (0..img.c)
            .map(|c| format!("{:.4}", img.at(x, y, c)))
            .collect();
        if img.c == 1 {
            vals.join(", ")
        } else {
            format!("[{}]", vals.join(", "))
        }
    };
    let row = |y: usize| {
        if img.w > 6 {
            format!(
                "[{}, {}, {}, ..., {}, {}, {}]",
                px(0, y),
                px(1, y),
                px(2, y),
                px(img.w - 3, y),
                px(img.w - 2, y),
                px(img.w - 1, y)
            )
        } else {
            format!(
                "[{}]",
                (0..img.w).map(|x| px(x, y)).collect::<Vec<_>>().join(", ")
            )
        }
    };
    let rows: Vec<String> = if img.h > 6 {
        vec![row(0), row(1), "...".into(), row(img.h - 1)]
    } else {
        (0..img.h).map(row).collect()
    };
    format!("tensor([[{}]])", rows.join(",\n         "))
}

/// A Python exception raised by a node.
#[derive(Debug, Clone)]
pub(crate) struct NodeFailure {
    pub exception_type: String,
    pub message: String,
    pub traceback: Vec<String>,
}

impl NodeFailure {
    pub fn new(exception_type: &str, message: impl Into<String>, function: &str) -> Self {
        NodeFailure {
            exception_type: exception_type.to_string(),
            message: message.into(),
            traceback: exec_frames(function),
        }
    }
}

/// The frames of ComfyUI's executor down to a node's FUNCTION (as in trace 11).
fn exec_frames(function: &str) -> Vec<String> {
    const E: &str = "/srv/ComfyUI/execution.py";
    vec![
        format!("  File \"{E}\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n"),
        format!("  File \"{E}\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n"),
        format!("  File \"{E}\", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n"),
        format!("  File \"{E}\", line 277, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n"),
        format!("  File \"/srv/ComfyUI/nodes.py\", line 1, in {function}\n"),
    ]
}

/// What a node produced.
#[derive(Debug, Default)]
pub(crate) struct NodeResult {
    pub outputs: Vec<Val>,
    pub ui: Option<Value>,
    /// Progress text (binary frame type 3), as GetImageSize sends it.
    pub text: Option<String>,
}

/// Everything a node may look at besides its inputs.
pub(crate) struct NodeEnv<'a> {
    #[allow(dead_code)]
    pub id: &'a str,
    pub class: &'a ClassInfo,
    pub prompt: &'a Map<String, Value>,
    pub extra_data: &'a Map<String, Value>,
    pub output_dir: &'a Path,
    pub input_dir: &'a Path,
    pub temp_dir: &'a Path,
    /// PreviewImage's `_temp_xxxxx` (kept per node instance, like ComfyUI's object cache).
    pub preview_prefix: &'a str,
}

/// True for nodes that sample (progress bar + previews per step).
pub(crate) fn is_sampler(class: &ClassInfo) -> bool {
    class.outputs.first().is_some_and(|o| o == "LATENT")
        && (class.input("steps").is_some() || class.category.starts_with("sampling"))
        && class
            .inputs
            .iter()
            .any(|i| i.type_name == "MODEL" || i.type_name == "GUIDER")
}

/// The number of steps of a sampler node.
pub(crate) fn sampler_steps(inputs: &HashMap<String, Val>) -> u64 {
    inputs
        .get("steps")
        .and_then(Val::as_i64)
        .map(|s| s.clamp(1, 10000) as u64)
        .unwrap_or(20)
}

/// The random PreviewImage prefix: 5 letters from ComfyUI's (typo'd) alphabet.
pub(crate) fn preview_prefix() -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstupvxyz";
    let mut rng = rand::rng();
    let s: String = (0..5)
        .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
        .collect();
    format!("_temp_{s}")
}

fn get<'a>(inputs: &'a HashMap<String, Val>, name: &str) -> &'a Val {
    inputs.get(name).unwrap_or(&Val::None)
}

fn image_input(
    inputs: &HashMap<String, Val>,
    name: &str,
    function: &str,
) -> Result<Batch, NodeFailure> {
    match get(inputs, name) {
        Val::Image(b) | Val::Mask(b) => Ok(b.clone()),
        other => Err(NodeFailure::new(
            "AttributeError",
            format!("'{}' object has no attribute 'shape'", py_type_name(other)),
            function,
        )),
    }
}

fn py_type_name(v: &Val) -> &'static str {
    match v {
        Val::None => "NoneType",
        Val::Int(_) => "int",
        Val::Float(_) => "float",
        Val::Str(_) | Val::Json(Value::String(_)) => "str",
        Val::Json(Value::Number(_)) => "int",
        Val::Json(Value::Bool(_)) | Val::Bool(_) => "bool",
        Val::Json(Value::Array(_)) => "list",
        Val::Json(_) => "dict",
        _ => "object",
    }
}

fn int(inputs: &HashMap<String, Val>, name: &str, default: i64) -> i64 {
    get(inputs, name).as_i64().unwrap_or(default)
}

fn float(inputs: &HashMap<String, Val>, name: &str, default: f64) -> f64 {
    get(inputs, name).as_f64().unwrap_or(default)
}

fn string(inputs: &HashMap<String, Val>, name: &str, default: &str) -> String {
    get(inputs, name)
        .as_str()
        .unwrap_or_else(|| default.to_string())
}

/// Resolves ComfyUI's annotated file names (`"x.png [output]"`) to a path, refusing escapes.
pub(crate) fn annotated_path(
    name: &str,
    input: &Path,
    output: &Path,
    temp: &Path,
) -> Option<PathBuf> {
    let (name, base) = if let Some(n) = name.strip_suffix("[output]") {
        (n.trim_end(), output)
    } else if let Some(n) = name.strip_suffix("[input]") {
        (n.trim_end(), input)
    } else if let Some(n) = name.strip_suffix("[temp]") {
        (n.trim_end(), temp)
    } else {
        (name, input)
    };
    let rel = Path::new(name);
    if name.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(base.join(rel))
}

/// Runs node `env.id` (blocking: may read and write files).
pub(crate) fn run(
    env: &NodeEnv<'_>,
    inputs: &HashMap<String, Val>,
) -> Result<NodeResult, NodeFailure> {
    let class = env.class;
    let one = |v: Val| {
        Ok(NodeResult {
            outputs: vec![v],
            ..Default::default()
        })
    };
    match class.name.as_str() {
        "EmptyImage" => {
            let w = int(inputs, "width", 512).max(1) as usize;
            let h = int(inputs, "height", 512).max(1) as usize;
            let b = int(inputs, "batch_size", 1).max(1) as usize;
            let color = int(inputs, "color", 0);
            let ch = |shift: i64| (((color >> shift) & 0xFF) as f32) / 255.0;
            let px = vec![ch(16), ch(8), ch(0)];
            one(Val::Image(Arc::new(vec![Image::solid(w, h, px); b])))
        }
        "LoadImage" | "LoadImageMask" | "LoadImageOutput" => {
            let name = string(inputs, "image", "");
            let default_dir = if class.name == "LoadImageOutput" {
                env.output_dir
            } else {
                env.input_dir
            };
            let path = annotated_path(&name, default_dir, env.output_dir, env.temp_dir)
                .ok_or_else(|| {
                    NodeFailure::new(
                        "FileNotFoundError",
                        format!("[Errno 2] No such file or directory: '{name}'"),
                        "load_image",
                    )
                })?;
            let bytes = std::fs::read(&path).map_err(|_| {
                NodeFailure::new(
                    "FileNotFoundError",
                    format!("[Errno 2] No such file or directory: '{}'", path.display()),
                    "load_image",
                )
            })?;
            let (image, mask) = Image::load(&bytes)
                .map_err(|e| NodeFailure::new("PIL.UnidentifiedImageError", e, "load_image"))?;
            if class.name == "LoadImageMask" {
                let channel = string(inputs, "channel", "alpha");
                let m = match channel.as_str() {
                    "red" | "green" | "blue" => {
                        let c = ["red", "green", "blue"]
                            .iter()
                            .position(|x| *x == channel)
                            .unwrap_or(0);
                        let d: Vec<f32> = (0..image.h)
                            .flat_map(|y| (0..image.w).map(move |x| (x, y)))
                            .map(|(x, y)| image.at(x, y, c))
                            .collect();
                        Image::dense(image.w, image.h, 1, d)
                    }
                    _ => mask,
                };
                return one(Val::Mask(Arc::new(vec![m])));
            }
            Ok(NodeResult {
                outputs: vec![
                    Val::Image(Arc::new(vec![image])),
                    Val::Mask(Arc::new(vec![mask])),
                ],
                ..Default::default()
            })
        }
        "ImageInvert" => {
            let b = image_input(inputs, "image", "invert")?;
            one(Val::Image(Arc::new(b.iter().map(Image::invert).collect())))
        }
        "ImageScale" | "ImageScaleBy" => {
            let b = image_input(inputs, "image", "upscale")?;
            let method = string(inputs, "upscale_method", "nearest-exact");
            let Some(first) = b.first() else {
                return one(Val::Image(b));
            };
            let (mut w, mut h) = if class.name == "ImageScaleBy" {
                let s = float(inputs, "scale_by", 1.0);
                (
                    (first.w as f64 * s).round() as usize,
                    (first.h as f64 * s).round() as usize,
                )
            } else {
                (
                    int(inputs, "width", 0).max(0) as usize,
                    int(inputs, "height", 0).max(0) as usize,
                )
            };
            let crop = string(inputs, "crop", "disabled");
            if w == 0 && h == 0 {
                return one(Val::Image(b));
            }
            if w == 0 {
                w = ((first.w as f64 * h as f64 / first.h as f64).round() as usize).max(1);
            } else if h == 0 {
                h = ((first.h as f64 * w as f64 / first.w as f64).round() as usize).max(1);
            }
            one(Val::Image(Arc::new(
                b.iter().map(|i| i.scale(w, h, &method, &crop)).collect(),
            )))
        }
        "ImageBlur" => {
            let b = image_input(inputs, "image", "execute")?;
            let r = int(inputs, "blur_radius", 1).max(0) as usize;
            let sigma = float(inputs, "sigma", 1.0) as f32;
            let out: Result<Vec<Image>, String> = b.iter().map(|i| i.blur(r, sigma)).collect();
            one(Val::Image(Arc::new(out.map_err(|e| {
                NodeFailure::new("RuntimeError", e, "execute")
            })?)))
        }
        "GetImageSize" => {
            let b = image_input(inputs, "image", "get_size")?;
            let (w, h) = b.first().map(|i| (i.w, i.h)).unwrap_or((0, 0));
            Ok(NodeResult {
                outputs: vec![
                    Val::Int(w as i64),
                    Val::Int(h as i64),
                    Val::Int(b.len() as i64),
                ],
                ui: None,
                text: Some(format!("width: {w}, height: {h}\n batch size: {}", b.len())),
            })
        }
        "ImageBatch" => {
            let a = image_input(inputs, "image1", "batch")?;
            let b = image_input(inputs, "image2", "batch")?;
            let (w, h) = a.first().map(|i| (i.w, i.h)).unwrap_or((0, 0));
            let mut out: Vec<Image> = a.iter().cloned().collect();
            for i in b.iter() {
                if (i.w, i.h) != (w, h) {
                    out.push(i.scale(w, h, "bilinear", "center"));
                } else {
                    out.push(i.clone());
                }
            }
            one(Val::Image(Arc::new(out)))
        }
        "SaveImage" => save_images(env, inputs, false),
        "PreviewImage" => save_images(env, inputs, true),
        "EmptyLatentImage" => one(Val::Latent {
            w: int(inputs, "width", 512).max(8) as usize,
            h: int(inputs, "height", 512).max(8) as usize,
            batch: int(inputs, "batch_size", 1).max(1) as usize,
            seed: 0,
        }),
        "LatentUpscale" | "LatentUpscaleBy" => match get(inputs, "samples") {
            Val::Latent { w, h, batch, seed } => {
                let (nw, nh) = if class.name == "LatentUpscaleBy" {
                    let s = float(inputs, "scale_by", 1.0);
                    (
                        (*w as f64 * s).round() as usize,
                        (*h as f64 * s).round() as usize,
                    )
                } else {
                    let (mut nw, mut nh) = (
                        int(inputs, "width", 0).max(0) as usize,
                        int(inputs, "height", 0).max(0) as usize,
                    );
                    if nw == 0 && nh == 0 {
                        (nw, nh) = (*w, *h);
                    } else if nw == 0 {
                        nw = (*w * nh / (*h).max(1)).max(8);
                    } else if nh == 0 {
                        nh = (*h * nw / (*w).max(1)).max(8);
                    }
                    (nw, nh)
                };
                one(Val::Latent {
                    w: (nw / 8 * 8).max(8),
                    h: (nh / 8 * 8).max(8),
                    batch: *batch,
                    seed: *seed,
                })
            }
            _ => stand_in(env, inputs),
        },
        "VAEDecode" | "VAEDecodeTiled" => match get(inputs, "samples") {
            Val::Latent { w, h, batch, seed } => one(Val::Image(Arc::new(
                (0..*batch)
                    .map(|i| decoded_image(*w, *h, *seed + i as i64))
                    .collect(),
            ))),
            _ => one(Val::Image(Arc::new(vec![decoded_image(512, 512, 0)]))),
        },
        "VAEEncode" | "VAEEncodeTiled" | "VAEEncodeForInpaint" => {
            let b = image_input(inputs, "pixels", "encode")?;
            let (w, h) = b.first().map(|i| (i.w, i.h)).unwrap_or((512, 512));
            one(Val::Latent {
                w: w / 8 * 8,
                h: h / 8 * 8,
                batch: b.len(),
                seed: 0,
            })
        }
        _ => stand_in(env, inputs),
    }
}

/// A deterministic, smooth "decoded" image for a latent (a gradient whose hue depends on the seed).
fn decoded_image(w: usize, h: usize, seed: i64) -> Image {
    let s = (seed.unsigned_abs() % 997) as f32 / 997.0;
    let mut d = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 / w.max(1) as f32;
            let fy = y as f32 / h.max(1) as f32;
            d.extend_from_slice(&[
                (fx + s).fract(),
                (fy + s * 0.5).fract(),
                (1.0 - fx * fy + s * 0.25).fract(),
            ]);
        }
    }
    Image::dense(w, h, 3, d)
}

/// Stand-in for a class we do not really implement: outputs of the declared types.
fn stand_in(env: &NodeEnv<'_>, inputs: &HashMap<String, Val>) -> Result<NodeResult, NodeFailure> {
    let class = env.class;
    let first_image = class.inputs.iter().find_map(|i| match inputs.get(&i.name) {
        Some(Val::Image(b)) => Some(b.clone()),
        _ => None,
    });
    let first_latent = class.inputs.iter().find_map(|i| match inputs.get(&i.name) {
        Some(l @ Val::Latent { .. }) => Some(l.clone()),
        _ => None,
    });
    if class.output_node {
        if let Some(Val::Image(_)) = inputs.get("images") {
            let preview = !class.name.starts_with("Save");
            return save_images(env, inputs, preview);
        }
    }
    let seed = int(inputs, "seed", int(inputs, "noise_seed", 0));
    let outputs =
        class
            .outputs
            .iter()
            .map(|t| match t.as_str() {
                "IMAGE" => Val::Image(first_image.clone().unwrap_or_else(|| {
                    Arc::new(vec![Image::solid(512, 512, vec![0.5, 0.5, 0.5])])
                })),
                "MASK" => {
                    let (w, h) = first_image
                        .as_ref()
                        .and_then(|b| b.first().map(|i| (i.w, i.h)))
                        .unwrap_or((64, 64));
                    Val::Mask(Arc::new(vec![Image::solid(w, h, vec![0.0])]))
                }
                "LATENT" => match &first_latent {
                    Some(Val::Latent { w, h, batch, .. }) => Val::Latent {
                        w: *w,
                        h: *h,
                        batch: *batch,
                        seed,
                    },
                    _ => Val::Latent {
                        w: 512,
                        h: 512,
                        batch: 1,
                        seed,
                    },
                },
                "INT" => Val::Int(0),
                "FLOAT" => Val::Float(0.0),
                "STRING" => Val::Str(String::new()),
                "BOOLEAN" => Val::Bool(false),
                other => Val::Opaque(other.to_string()),
            })
            .collect();
    Ok(NodeResult {
        outputs,
        ui: None,
        text: None,
    })
}

/// SaveImage / PreviewImage: `<prefix>_<counter:05>_.png`, counters continuing ComfyUI's way.
fn save_images(
    env: &NodeEnv<'_>,
    inputs: &HashMap<String, Val>,
    preview: bool,
) -> Result<NodeResult, NodeFailure> {
    let images = image_input(inputs, "images", "save_images")?;
    let (base_dir, kind, prefix) = if preview {
        (
            env.temp_dir,
            "temp",
            format!("ComfyUI{}", env.preview_prefix),
        )
    } else {
        (
            env.output_dir,
            "output",
            string(inputs, "filename_prefix", "ComfyUI"),
        )
    };
    let (w, h) = images.first().map(|i| (i.w, i.h)).unwrap_or((0, 0));
    let (folder, filename, mut counter, subfolder) = save_image_path(&prefix, base_dir, w, h)?;
    let mut texts = vec![(
        "prompt".to_string(),
        pyjson::to_string(&Value::Object(env.prompt.clone())),
    )];
    if let Some(Value::Object(pnginfo)) = env.extra_data.get("extra_pnginfo") {
        for (k, v) in pnginfo {
            texts.push((k.clone(), pyjson::to_string(v)));
        }
    }
    let mut results = Vec::new();
    for (n, img) in images.iter().enumerate() {
        let name = format!(
            "{}_{counter:05}_.png",
            filename.replace("%batch_num%", &n.to_string())
        );
        let bytes = encode_png(img.w, img.h, img.c, &img.to_u8(), &texts, preview)
            .map_err(|e| NodeFailure::new("OSError", e, "save_images"))?;
        std::fs::write(folder.join(&name), bytes)
            .map_err(|e| NodeFailure::new("OSError", e.to_string(), "save_images"))?;
        results.push(json!({"filename": name, "subfolder": subfolder, "type": kind}));
        counter += 1;
    }
    Ok(NodeResult {
        outputs: vec![],
        ui: Some(json!({"images": results})),
        text: None,
    })
}

/// `folder_paths.get_save_image_path`: (folder, file name prefix, next counter, subfolder).
fn save_image_path(
    prefix: &str,
    output_dir: &Path,
    w: usize,
    h: usize,
) -> Result<(PathBuf, String, u64, String), NodeFailure> {
    let prefix = prefix
        .replace("%width%", &w.to_string())
        .replace("%height%", &h.to_string());
    let norm = normpath(&prefix);
    let (subfolder, filename) = match norm.rfind('/') {
        Some(i) => (norm[..i].to_string(), norm[i + 1..].to_string()),
        None => (String::new(), norm.clone()),
    };
    if subfolder.starts_with('/') || subfolder == ".." || subfolder.starts_with("../") {
        let full = lexical_join(output_dir, &subfolder);
        let common = common_path(output_dir, &full);
        let err = format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}\n         commonpath: {}",
            full.display(),
            output_dir.display(),
            common.display()
        );
        return Err(NodeFailure {
            exception_type: "Exception".into(),
            message: err,
            traceback: {
                let mut tb = exec_frames("save_images");
                tb.pop();
                tb.push("  File \"/srv/ComfyUI/nodes.py\", line 1590, in save_images\n    full_output_folder, filename, counter, subfolder, filename_prefix = folder_paths.get_save_image_path(filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])\n".into());
                tb.push("  File \"/srv/ComfyUI/folder_paths.py\", line 397, in get_save_image_path\n    raise Exception(err)\n".into());
                tb
            },
        });
    }
    let folder = if subfolder.is_empty() {
        output_dir.to_path_buf()
    } else {
        output_dir.join(&subfolder)
    };
    std::fs::create_dir_all(&folder)
        .map_err(|e| NodeFailure::new("OSError", e.to_string(), "save_images"))?;
    let mut counter = 0u64;
    if let Ok(rd) = std::fs::read_dir(&folder) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // map_filename: the prefix (plus one char) and the digits after it.
            let plen = filename.chars().count();
            let head: String = name.chars().take(plen + 1).collect();
            let rest: String = name.chars().skip(plen + 1).collect();
            if head.chars().count() == plen + 1
                && head.ends_with('_')
                && head[..head.len() - 1] == filename
            {
                let digits = rest
                    .split('_')
                    .next()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
                counter = counter.max(digits);
            }
        }
    }
    Ok((folder, filename, counter + 1, subfolder))
}

/// `os.path.normpath` for '/'-separated paths.
fn normpath(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let s = parts.join("/");
    if abs {
        format!("/{s}")
    } else if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

fn lexical_join(base: &Path, rel: &str) -> PathBuf {
    if rel.starts_with('/') {
        return PathBuf::from(normpath(rel));
    }
    PathBuf::from(normpath(&format!("{}/{rel}", base.display())))
}

fn common_path(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normpath_like_python() {
        assert_eq!(normpath("../escape"), "../escape");
        assert_eq!(normpath("a/./b/../c"), "a/c");
        assert_eq!(normpath("test"), "test");
        assert_eq!(normpath("/x/../y"), "/y");
    }

    #[test]
    fn annotated_paths_refuse_escapes() {
        let (i, o, t) = (Path::new("/in"), Path::new("/out"), Path::new("/tmp"));
        assert_eq!(
            annotated_path("a.png", i, o, t),
            Some(PathBuf::from("/in/a.png"))
        );
        assert_eq!(
            annotated_path("sub/a.png [output]", i, o, t),
            Some(PathBuf::from("/out/sub/a.png"))
        );
        assert_eq!(annotated_path("../a.png", i, o, t), None);
        assert_eq!(annotated_path("/etc/passwd", i, o, t), None);
    }
}
