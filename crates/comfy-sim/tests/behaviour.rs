//! Behaviour of the simulator beyond the recorded traces: real pixels, uploads, previews, queue
//! ordering, history windows, the catalogue and system routes.

mod common;

use std::time::Duration;

use comfy_sim::{Faults, SimConfig};
use common::*;
use serde_json::{json, Value};

fn save_graph(w: u32, h: u32, color: u32, prefix: &str) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
    })
}

async fn submit(sim: &comfy_sim::SimHandle, body: Value) -> Value {
    let r = post_json(sim, "/prompt", &body)
        .await
        .expect("POST /prompt");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json().expect("json")
}

#[tokio::test]
async fn view_returns_a_png_of_the_requested_size_and_colour() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = Ws::connect(&sim, "/ws?clientId=viewer").await.expect("ws");
    ws.next().await.expect("status");
    let r = submit(
        &sim,
        json!({"prompt": save_graph(40, 30, 0xFF8000, "px"), "client_id": "viewer"}),
    )
    .await;
    let pid = r["prompt_id"].as_str().expect("id").to_string();
    let frames = ws.until_done(&pid).await.expect("done");
    let executed = frames
        .iter()
        .find_map(|f| match f {
            Frame::Text(v) if v["type"] == "executed" => Some(v.clone()),
            _ => None,
        })
        .expect("executed");
    assert_eq!(
        executed["data"]["output"]["images"][0],
        json!({"filename": "px_00001_.png", "subfolder": "", "type": "output"})
    );

    let v = http(
        &sim,
        "GET",
        "/view?filename=px_00001_.png&subfolder=&type=output",
        None,
    )
    .await
    .expect("view");
    assert_eq!(v.status, 200);
    assert_eq!(v.content_type.as_deref(), Some("image/png"));
    assert_eq!(v.disposition.as_deref(), Some("filename=\"px_00001_.png\""));
    let img = image::load_from_memory(&v.body).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (40, 30));
    assert_eq!(img.get_pixel(0, 0).0, [255, 128, 0]);
    assert_eq!(img.get_pixel(39, 29).0, [255, 128, 0]);

    // The PNG carries the prompt as ComfyUI's SaveImage does.
    let text = String::from_utf8_lossy(&v.body);
    assert!(text.contains("tEXtprompt"), "prompt text chunk");

    // A second run of a different graph counts on: px_00002_.png.
    let r = submit(
        &sim,
        json!({"prompt": save_graph(8, 8, 0, "px"), "client_id": "viewer"}),
    )
    .await;
    ws.until_done(r["prompt_id"].as_str().expect("id"))
        .await
        .expect("done");
    assert_eq!(
        http(&sim, "GET", "/view?filename=px_00002_.png", None)
            .await
            .expect("view")
            .status,
        200
    );

    // Path rules: missing → 404 empty, ".." → 400, escaping subfolder → 403, bad type → 400,
    // directory parts in filename are dropped, annotations pick the folder.
    let missing = http(&sim, "GET", "/view?filename=nope.png", None)
        .await
        .expect("view");
    assert_eq!((missing.status, missing.body.len()), (404, 0));
    assert_eq!(
        http(&sim, "GET", "/view?filename=a..b.png", None)
            .await
            .expect("view")
            .status,
        400
    );
    assert_eq!(
        http(
            &sim,
            "GET",
            "/view?filename=px_00001_.png&subfolder=../..",
            None
        )
        .await
        .expect("view")
        .status,
        403
    );
    assert_eq!(
        http(
            &sim,
            "GET",
            "/view?filename=px_00001_.png&type=models",
            None
        )
        .await
        .expect("view")
        .status,
        400
    );
    assert_eq!(
        http(&sim, "GET", "/view?filename=zz/px_00001_.png", None)
            .await
            .expect("view")
            .status,
        200
    );
    assert_eq!(
        http(
            &sim,
            "GET",
            "/view?filename=px_00001_.png%20[output]&type=input",
            None
        )
        .await
        .expect("view")
        .status,
        200
    );
    assert_eq!(
        http(&sim, "GET", "/api/view?filename=px_00001_.png", None)
            .await
            .expect("view")
            .status,
        200
    );
    let rgb = http(
        &sim,
        "GET",
        "/view?filename=px_00001_.png&channel=rgb",
        None,
    )
    .await
    .expect("view");
    assert_eq!(rgb.content_type.as_deref(), Some("image/png"));
    let jpeg = http(
        &sim,
        "GET",
        "/view?filename=px_00001_.png&preview=jpeg;80",
        None,
    )
    .await
    .expect("view");
    assert_eq!(jpeg.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(&jpeg.body[..2], &[0xFF, 0xD8]);
    ws.close();
    sim.shutdown().await;
}

fn png_bytes(pixels: &[[u8; 4]], w: u32, h: u32) -> Vec<u8> {
    let mut img = image::RgbaImage::new(w, h);
    for (i, p) in img.pixels_mut().enumerate() {
        *p = image::Rgba(pixels[i % pixels.len()]);
    }
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

async fn upload(
    sim: &comfy_sim::SimHandle,
    name: &str,
    bytes: Vec<u8>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/upload/image", sim.url()))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Resp {
        status,
        content_type,
        disposition: None,
        body: r.bytes().await.expect("body").to_vec(),
    }
}

#[tokio::test]
async fn upload_then_load_invert_save_gives_inverted_pixels() {
    let sim = sim(SimConfig::default()).await;
    let pixels = [
        [10, 20, 30, 255],
        [200, 100, 0, 255],
        [0, 0, 0, 255],
        [255, 255, 255, 128],
    ];
    let original = png_bytes(&pixels, 4, 3);

    let r = upload(&sim, "in.png", original.clone(), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().expect("json"),
        json!({"name": "in.png", "subfolder": "", "type": "input"})
    );
    // Same content again: reused, same name. Different content: "in (1).png".
    assert_eq!(
        upload(&sim, "in.png", original.clone(), &[])
            .await
            .json()
            .expect("json")["name"],
        "in.png"
    );
    let other = png_bytes(&[[1, 2, 3, 255]], 2, 2);
    assert_eq!(
        upload(&sim, "in.png", other.clone(), &[])
            .await
            .json()
            .expect("json")["name"],
        "in (1).png"
    );
    assert_eq!(
        upload(&sim, "in.png", other.clone(), &[])
            .await
            .json()
            .expect("json")["name"],
        "in (1).png"
    );
    // overwrite=true replaces in place; a subfolder is created; escaping it is refused.
    assert_eq!(
        upload(&sim, "o.png", other.clone(), &[("overwrite", "true")])
            .await
            .json()
            .expect("json")["name"],
        "o.png"
    );
    let sub = upload(
        &sim,
        "s.png",
        other.clone(),
        &[("subfolder", "a/b"), ("type", "input")],
    )
    .await;
    assert_eq!(
        sub.json().expect("json"),
        json!({"name": "s.png", "subfolder": "a/b", "type": "input"})
    );
    assert_eq!(
        upload(&sim, "x.png", other.clone(), &[("subfolder", "../../x")])
            .await
            .status,
        400
    );
    // The catalogue now lists the uploads for LoadImage.
    let oi = http(&sim, "GET", "/object_info/LoadImage", None)
        .await
        .expect("oi")
        .json()
        .expect("json");
    let list = &oi["LoadImage"]["input"]["required"]["image"][0];
    assert!(
        list.as_array()
            .is_some_and(|l| l.contains(&json!("in.png"))),
        "{list}"
    );

    let mut ws = Ws::connect(&sim, "/ws?clientId=inv").await.expect("ws");
    ws.next().await.expect("status");
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv/out"}}
    });
    let r = submit(&sim, json!({"prompt": graph, "client_id": "inv"})).await;
    ws.until_done(r["prompt_id"].as_str().expect("id"))
        .await
        .expect("done");
    let hist = http(
        &sim,
        "GET",
        &format!("/history/{}", r["prompt_id"].as_str().expect("id")),
        None,
    )
    .await
    .expect("h")
    .json()
    .expect("json");
    let out = &hist[r["prompt_id"].as_str().expect("id")]["outputs"]["3"]["images"][0];
    assert_eq!(
        out,
        &json!({"filename": "out_00001_.png", "subfolder": "inv", "type": "output"})
    );
    let v = http(
        &sim,
        "GET",
        "/view?filename=out_00001_.png&subfolder=inv&type=output",
        None,
    )
    .await
    .expect("view");
    let img = image::load_from_memory(&v.body).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (4, 3));
    for (i, p) in img.pixels().enumerate() {
        let src = pixels[i % pixels.len()];
        let want = [255 - src[0], 255 - src[1], 255 - src[2]];
        // float32 1 - x may truncate one step below, as in ComfyUI.
        for c in 0..3 {
            assert!(
                (p.0[c] as i32 - want[c] as i32).abs() <= 1,
                "pixel {i}: {:?} vs {want:?}",
                p.0
            );
        }
    }

    // A graph naming a file that is not in the input folder fails validation like ComfyUI's.
    let bad = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}});
    let r = post_json(&sim, "/prompt", &json!({"prompt": bad}))
        .await
        .expect("post");
    assert_eq!(r.status, 400);
    let e = r.json().expect("json");
    assert_eq!(
        e["node_errors"]["1"]["errors"][0]["type"],
        "custom_validation_failed"
    );
    assert_eq!(
        e["node_errors"]["1"]["errors"][0]["details"],
        "image - Invalid image file: missing.png"
    );
    ws.close();
    sim.shutdown().await;
}

fn sampler_graph(steps: u32) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": steps, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ks"}}
    })
}

fn model_config() -> SimConfig {
    let mut c = SimConfig::default();
    c.models
        .insert("checkpoints".into(), vec!["sd15.safetensors".into()]);
    c
}

#[tokio::test]
async fn sampler_previews_are_type_1_or_type_4_after_negotiation() {
    let sim = sim(model_config()).await;
    // Models configured for this backend are listed and validate.
    let m = http(&sim, "GET", "/models/checkpoints", None)
        .await
        .expect("models")
        .json()
        .expect("json");
    assert_eq!(m, json!(["sd15.safetensors"]));
    let bad = post_json(&sim, "/prompt", &json!({"prompt": {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other.ckpt"}}, "9": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}})).await.expect("post");
    assert_eq!(bad.status, 400);

    for negotiate in [false, true] {
        let cid = if negotiate { "meta" } else { "legacy" };
        let mut ws = Ws::connect(&sim, &format!("/ws?clientId={cid}"))
            .await
            .expect("ws");
        ws.next().await.expect("status");
        if negotiate {
            ws.send(
                &json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}})
                    .to_string(),
            );
            let ff = ws.next_json().await.expect("flags");
            assert_eq!(
                ff,
                json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}})
            );
        }
        let r = submit(&sim, json!({"prompt": sampler_graph(3), "client_id": cid})).await;
        let pid = r["prompt_id"].as_str().expect("id").to_string();
        let frames = ws.until_done(&pid).await.expect("done");
        // Only the sampler's section: from executing "3" to the next executed/executing.
        let start = frames.iter().position(|f| matches!(f, Frame::Text(v) if v["type"] == "executing" && v["data"]["node"] == "3")).expect("sampler runs");
        let kinds: Vec<String> = frames[start + 1..start + 1 + 9]
            .iter()
            .map(Frame::kind)
            .collect();
        let step = if negotiate {
            ["progress_state", "binary:4", "progress"]
        } else {
            ["progress_state", "progress", "binary:1"]
        };
        let want: Vec<String> = step.iter().cycle().take(9).map(|s| s.to_string()).collect();
        assert_eq!(kinds, want, "negotiate={negotiate}");
        for f in &frames[start + 1..start + 10] {
            match f {
                Frame::Binary(b) if negotiate => {
                    let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
                    let meta: Value = serde_json::from_slice(&b[8..8 + n]).expect("metadata");
                    assert_eq!(meta["node_id"], "3");
                    assert_eq!(meta["prompt_id"], pid.as_str());
                    assert_eq!(meta["image_type"], "image/jpeg");
                    for k in ["display_node_id", "parent_node_id", "real_node_id"] {
                        assert!(meta.get(k).is_some(), "{k}");
                    }
                    assert_eq!(&b[8 + n..8 + n + 2], &[0xFF, 0xD8]);
                }
                Frame::Binary(b) => {
                    assert_eq!(&b[..8], &[0, 0, 0, 1, 0, 0, 0, 1]);
                    assert_eq!(&b[8..10], &[0xFF, 0xD8]);
                }
                Frame::Text(v) if v["type"] == "progress" => {
                    assert_eq!(v["data"]["max"], 3);
                    assert_eq!(v["data"]["node"], "3");
                }
                _ => {}
            }
        }
        // The decoded image has the latent's size.
        let h = http(&sim, "GET", &format!("/history/{pid}"), None)
            .await
            .expect("h")
            .json()
            .expect("json");
        let f = h[&pid]["outputs"]["9"]["images"][0]["filename"]
            .as_str()
            .expect("file")
            .to_string();
        let v = http(&sim, "GET", &format!("/view?filename={f}"), None)
            .await
            .expect("view");
        assert_eq!(
            image::load_from_memory(&v.body)
                .expect("png")
                .to_rgb8()
                .dimensions(),
            (128, 96)
        );
        ws.close();
        // A different seed so the next round is not served from the cache.
        let _ = http(&sim, "POST", "/free", Some(r#"{"free_memory": true}"#)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // preview_method "none" turns previews off for one prompt.
    let mut ws = Ws::connect(&sim, "/ws?clientId=quiet").await.expect("ws");
    ws.next().await.expect("status");
    let mut g = sampler_graph(2);
    g["3"]["inputs"]["seed"] = json!(99);
    let r = submit(
        &sim,
        json!({"prompt": g, "client_id": "quiet", "extra_data": {"preview_method": "none"}}),
    )
    .await;
    let frames = ws
        .until_done(r["prompt_id"].as_str().expect("id"))
        .await
        .expect("done");
    assert!(!frames.iter().any(|f| matches!(f, Frame::Binary(_))));
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn queue_order_front_and_number() {
    let sim = sim(SimConfig::default()).await;
    // Hold the worker on a slow first job so the rest stay pending.
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 1000)].into(),
        ..Faults::default()
    });
    let slow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    });
    let a = submit(&sim, json!({"prompt": slow})).await;
    assert_eq!(a["number"], json!(0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = submit(&sim, json!({"prompt": save_graph(8, 8, 1, "b")})).await;
    let c = submit(
        &sim,
        json!({"prompt": save_graph(8, 8, 2, "c"), "front": true}),
    )
    .await;
    assert_eq!(c["number"], json!(-2));
    let raw = http(
        &sim,
        "POST",
        "/prompt",
        Some(&json!({"prompt": save_graph(8, 8, 3, "d"), "number": 7}).to_string()),
    )
    .await
    .expect("post");
    assert!(
        String::from_utf8_lossy(&raw.body).contains("\"number\": 7.0"),
        "{}",
        String::from_utf8_lossy(&raw.body)
    );
    let q = http(&sim, "GET", "/queue", None)
        .await
        .expect("q")
        .json()
        .expect("json");
    assert_eq!(q["queue_running"][0][1], a["prompt_id"]);
    let pending: Vec<Value> = q["queue_pending"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|i| i[0].clone())
        .collect();
    // heapq layout of pushes 1, -2, 7.0: [-2, 1, 7.0].
    assert_eq!(pending, [json!(-2), json!(1), json!(7.0)]);
    assert_eq!(
        http(&sim, "GET", "/prompt", None)
            .await
            .expect("p")
            .json()
            .expect("json"),
        json!({"exec_info": {"queue_remaining": 4}})
    );
    // Delete b: gone from the queue, never in history.
    let d = post_json(&sim, "/queue", &json!({"delete": [b["prompt_id"]]}))
        .await
        .expect("delete");
    assert_eq!((d.status, d.body.len()), (200, 0));
    let q = http(&sim, "GET", "/queue", None)
        .await
        .expect("q")
        .json()
        .expect("json");
    assert_eq!(q["queue_pending"].as_array().map(Vec::len), Some(2));
    // Execution order: c (front) before d.
    let mut ws = Ws::connect(&sim, "/ws").await.expect("ws");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let Frame::Text(v) = ws.next().await.expect("frame") {
            if v["type"] == "status" && v["data"]["status"]["exec_info"]["queue_remaining"] == 0 {
                break;
            }
            if v["type"] == "progress_state" {
                let id = v["data"]["prompt_id"].clone();
                if !seen.contains(&id) {
                    seen.push(id);
                }
            }
        }
    }
    let c_pos = seen.iter().position(|x| *x == c["prompt_id"]);
    let d_pos = seen
        .iter()
        .position(|x| *x == raw.json().expect("json")["prompt_id"]);
    assert!(
        c_pos.is_some() && d_pos.is_some() && c_pos < d_pos,
        "{seen:?}"
    );
    let hb = http(
        &sim,
        "GET",
        &format!("/history/{}", b["prompt_id"].as_str().expect("id")),
        None,
    )
    .await
    .expect("h");
    assert_eq!(hb.json().expect("json"), json!({}));
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn history_windows_delete_and_clear() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = Ws::connect(&sim, "/ws?clientId=h").await.expect("ws");
    ws.next().await.expect("status");
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = submit(
            &sim,
            json!({"prompt": save_graph(4, 4, i, "h"), "client_id": "h"}),
        )
        .await;
        let pid = r["prompt_id"].as_str().expect("id").to_string();
        ws.until_done(&pid).await.expect("done");
        ids.push(pid);
    }
    let keys = |v: Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    async fn get_json(sim: &comfy_sim::SimHandle, q: &str) -> Value {
        http(sim, "GET", q, None)
            .await
            .expect("h")
            .json()
            .expect("json")
    }
    let get = |q: &'static str| get_json(&sim, q);
    assert_eq!(keys(get("/history").await), ids);
    assert_eq!(keys(get("/history?max_items=2").await), ids[2..]);
    assert_eq!(keys(get("/history?offset=1").await), ids[1..]);
    assert_eq!(keys(get("/history?offset=1&max_items=2").await), ids[1..3]);
    assert_eq!(keys(get("/history?offset=-5&max_items=1").await), ids[3..]);
    assert_eq!(
        http(&sim, "GET", "/history?max_items=x", None)
            .await
            .expect("h")
            .status,
        500
    );
    let r = post_json(&sim, "/history", &json!({"delete": [ids[1]]}))
        .await
        .expect("del");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(
        keys(get("/history").await),
        [ids[0].clone(), ids[2].clone(), ids[3].clone()]
    );
    post_json(&sim, "/history", &json!({"clear": true}))
        .await
        .expect("clear");
    assert_eq!(get("/history").await, json!({}));
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn free_memory_drops_the_execution_cache() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = Ws::connect(&sim, "/ws?clientId=f").await.expect("ws");
    ws.next().await.expect("status");
    let cached = |frames: &[Frame]| -> Value {
        frames
            .iter()
            .find_map(|f| match f {
                Frame::Text(v) if v["type"] == "execution_cached" => {
                    Some(v["data"]["nodes"].clone())
                }
                _ => None,
            })
            .unwrap_or(Value::Null)
    };
    async fn run(sim: &comfy_sim::SimHandle, ws: &mut Ws) -> Vec<Frame> {
        let r = submit(
            sim,
            json!({"prompt": save_graph(4, 4, 9, "f"), "client_id": "f"}),
        )
        .await;
        ws.until_done(r["prompt_id"].as_str().expect("id"))
            .await
            .expect("done")
    }
    assert_eq!(cached(&run(&sim, &mut ws).await), json!([]));
    assert_eq!(cached(&run(&sim, &mut ws).await), json!(["1", "2"]));
    let r = post_json(
        &sim,
        "/free",
        &json!({"unload_models": true, "free_memory": true}),
    )
    .await
    .expect("free");
    assert_eq!((r.status, r.body.len()), (200, 0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(cached(&run(&sim, &mut ws).await), json!([]));
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn catalogue_and_system_routes_match_the_recording() {
    let sim = sim(SimConfig::default()).await;
    let trace = load_trace("17_");
    let body_of = |path: &str| -> Value {
        trace
            .iter()
            .find(|l| l["kind"] == "http_response" && l["path"] == path)
            .and_then(|l| l.get("body_json").cloned())
            .unwrap_or_else(|| panic!("{path} in trace 17"))
    };
    for path in [
        "/object_info/EmptyImage",
        "/api/object_info/SaveImage",
        "/object_info/NoSuchNodeType",
        "/system_stats",
        "/features",
        "/prompt",
        "/api/queue",
        "/embeddings",
    ] {
        let r = http(&sim, "GET", path, None).await.expect("get");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json; charset=utf-8"),
            "{path}"
        );
        let got = r.json().expect("json");
        let exp = body_of(path);
        if path.starts_with("/object_info")
            || path.starts_with("/api/object_info")
            || path == "/features"
            || path == "/embeddings"
        {
            assert_eq!(got, exp, "{path}");
        } else {
            same_shape(&exp, &got, path).expect("shape");
        }
    }
    assert_eq!(
        http(&sim, "GET", "/models", None)
            .await
            .expect("m")
            .json()
            .expect("json"),
        body_of("/models")
    );
    assert_eq!(
        http(&sim, "GET", "/models/nope", None)
            .await
            .expect("m")
            .status,
        404
    );
    let all = http(&sim, "GET", "/object_info", None).await.expect("oi");
    assert_eq!(
        all.json().expect("json").as_object().map(|o| o.len()),
        Some(495)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn interrupt_while_idle_is_discarded() {
    let sim = sim(SimConfig::default()).await;
    let mut ws = Ws::connect(&sim, "/ws?clientId=i").await.expect("ws");
    ws.next().await.expect("status");
    let r = http(&sim, "POST", "/interrupt", None)
        .await
        .expect("interrupt");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(
        http(&sim, "POST", "/interrupt", Some("[1]"))
            .await
            .expect("i")
            .status,
        500
    );
    let r = submit(
        &sim,
        json!({"prompt": save_graph(4, 4, 1, "i"), "client_id": "i"}),
    )
    .await;
    let frames = ws
        .until_done(r["prompt_id"].as_str().expect("id"))
        .await
        .expect("done");
    assert!(frames.iter().any(|f| f.kind() == "execution_success"));
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_api_only_under_api() {
    let sim = sim(SimConfig::default()).await;
    sim.faults().set(Faults {
        class_work_ms: [("ImageBlur".to_string(), 1000)].into(),
        ..Faults::default()
    });
    let slow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    });
    let mut ws = Ws::connect(&sim, "/ws?clientId=j").await.expect("ws");
    ws.next().await.expect("status");
    let done = submit(
        &sim,
        json!({"prompt": save_graph(4, 4, 7, "job"), "client_id": "j"}),
    )
    .await;
    let done_id = done["prompt_id"].as_str().expect("id").to_string();
    ws.until_done(&done_id).await.expect("done");
    let a = submit(&sim, json!({"prompt": slow, "client_id": "j"})).await;
    let a_id = a["prompt_id"].as_str().expect("id").to_string();
    let b = submit(&sim, json!({"prompt": save_graph(4, 4, 8, "job")})).await;
    let b_id = b["prompt_id"].as_str().expect("id").to_string();
    loop {
        if let Frame::Text(v) = ws.next().await.expect("frame") {
            if v["type"] == "executing" && v["data"]["node"] == "2" {
                break;
            }
        }
    }
    assert_eq!(
        http(&sim, "GET", "/jobs", None).await.expect("jobs").status,
        404
    );
    let list = http(&sim, "GET", "/api/jobs", None)
        .await
        .expect("jobs")
        .json()
        .expect("json");
    let status_of = |id: &str| {
        list["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|x| x["id"] == id))
            .map(|x| x["status"].clone())
    };
    assert_eq!(status_of(&a_id), Some(json!("in_progress")));
    assert_eq!(status_of(&b_id), Some(json!("pending")));
    assert_eq!(status_of(&done_id), Some(json!("completed")));
    assert_eq!(list["pagination"]["total"], 3);
    let filtered = http(&sim, "GET", "/api/jobs?status=pending&limit=5", None)
        .await
        .expect("jobs")
        .json()
        .expect("json");
    assert_eq!(filtered["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        http(&sim, "GET", "/api/jobs?status=bogus", None)
            .await
            .expect("jobs")
            .status,
        400
    );
    let one = http(&sim, "GET", &format!("/api/jobs/{done_id}"), None)
        .await
        .expect("job")
        .json()
        .expect("json");
    assert_eq!(one["outputs_count"], 1);
    assert_eq!(one["preview_output"]["nodeId"], "2");
    assert_eq!(one["preview_output"]["mediaType"], "images");
    assert!(one["execution_status"]["messages"].is_array());
    let missing = http(
        &sim,
        "GET",
        "/api/jobs/00000000-0000-0000-0000-000000000000",
        None,
    )
    .await
    .expect("job");
    assert_eq!(
        (missing.status, missing.json().expect("json")),
        (404, json!({"error": "Job not found"}))
    );
    // Cancel the pending one (dequeued) and the running one (interrupted).
    let c = http(&sim, "POST", &format!("/api/jobs/{b_id}/cancel"), None)
        .await
        .expect("cancel")
        .json()
        .expect("json");
    assert_eq!(c, json!({"cancelled": true}));
    let c = post_json(&sim, "/api/jobs/cancel", &json!({"job_ids": [a_id]}))
        .await
        .expect("cancel")
        .json()
        .expect("json");
    assert_eq!(c, json!({"cancelled": true}));
    let frames = ws.until_done(&a_id).await.expect("done");
    assert!(frames.iter().any(|f| f.kind() == "execution_interrupted"));
    let a_job = http(&sim, "GET", &format!("/api/jobs/{a_id}"), None)
        .await
        .expect("job")
        .json()
        .expect("json");
    assert_eq!(a_job["status"], "cancelled");
    assert_eq!(
        http(&sim, "GET", &format!("/api/jobs/{b_id}"), None)
            .await
            .expect("job")
            .status,
        404
    );
    let bad = post_json(&sim, "/api/jobs/cancel", &json!({"job_ids": ["nope"]}))
        .await
        .expect("cancel");
    assert_eq!(bad.status, 400);
    assert_eq!(
        http(&sim, "GET", "/api/api/jobs", None)
            .await
            .expect("jobs")
            .status,
        200
    );
    ws.close();
    sim.shutdown().await;
}

#[tokio::test]
async fn a_real_users_graph_runs_on_stand_ins() {
    let mut config = model_config();
    config
        .models
        .insert("loras".into(), vec!["detail.safetensors".into()]);
    let sim = sim(config).await;
    let g = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "detail.safetensors", "strength_model": 0.8, "strength_clip": 0.8}},
        "11": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 1], "stop_at_clip_layer": -2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["11", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 7, "sampler_name": "euler", "scheduler": "karras", "denoise": 1, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "12": {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "width": 128, "height": 96, "crop": "disabled"}},
        "13": {"class_type": "KSampler", "inputs": {"seed": 2, "steps": 2, "cfg": 7, "sampler_name": "euler", "scheduler": "karras", "denoise": 0.5, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["12", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}},
        "14": {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "bilinear", "scale_by": 0.5}},
        "15": {"class_type": "ImageToMask", "inputs": {"image": ["14", 0], "channel": "red"}},
        "16": {"class_type": "MaskToImage", "inputs": {"mask": ["15", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "user/castle"}},
        "17": {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    });
    let mut ws = Ws::connect(&sim, "/ws?clientId=u").await.expect("ws");
    ws.next().await.expect("status");
    let r = submit(&sim, json!({"prompt": g, "client_id": "u"})).await;
    let pid = r["prompt_id"].as_str().expect("id").to_string();
    let frames = ws.until_done(&pid).await.expect("done");
    assert!(
        frames.iter().any(|f| f.kind() == "execution_success"),
        "{:?}",
        frames.iter().map(Frame::kind).collect::<Vec<_>>()
    );
    let executing: Vec<Value> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Text(v) if v["type"] == "executing" && !v["data"]["node"].is_null() => {
                Some(v["data"]["node"].clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(executing.len(), 15, "every node ran once: {executing:?}");
    let h = http(&sim, "GET", &format!("/history/{pid}"), None)
        .await
        .expect("h")
        .json()
        .expect("json");
    let saved = &h[&pid]["outputs"]["9"]["images"];
    assert_eq!(saved.as_array().map(Vec::len), Some(2), "batch of 2");
    assert_eq!(
        saved[0],
        json!({"filename": "castle_00001_.png", "subfolder": "user", "type": "output"})
    );
    let v = http(
        &sim,
        "GET",
        "/view?filename=castle_00002_.png&subfolder=user",
        None,
    )
    .await
    .expect("view");
    assert_eq!(
        image::load_from_memory(&v.body)
            .expect("png")
            .to_rgb8()
            .dimensions(),
        (64, 48)
    );
    ws.close();
    sim.shutdown().await;
}
