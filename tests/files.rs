//! Files end to end, real processes: uploads shipped to whichever backend runs the job, outputs
//! of several backends that never collide, `/view` from a gateway that never saw the job, and
//! the NSFW policy with a real (reference) HTTP classifier.

mod common;

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Frame, Stack, StackOptions, Ws, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

/// `POST /upload/image` with a hand-built multipart body.
async fn upload(
    stack: &Stack,
    gw: usize,
    token: &str,
    name: &str,
    sub: &str,
    data: &[u8],
) -> Value {
    let b = "----e2eboundary";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n{sub}\r\n--{b}--\r\n").as_bytes());
    let r = stack
        .http
        .post(format!("{}/upload/image", stack.gateways[gw]))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn view(stack: &Stack, gw: usize, token: &str, item: &Value) -> reqwest::Response {
    stack
        .http
        .get(format!("{}/view", stack.gateways[gw]))
        .query(&[
            ("filename", item["filename"].as_str().unwrap_or("")),
            ("subfolder", item["subfolder"].as_str().unwrap_or("")),
            ("type", item["type"].as_str().unwrap_or("")),
        ])
        .bearer_auth(token)
        .send()
        .await
        .expect("view")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_run_anywhere_and_outputs_never_collide() {
    let stack = Stack::start(2, 2).await;
    let t = stack.token("alice");
    let a = upload(&stack, 0, &t, "cat.png", "pets", &png(40, 30, [255, 0, 0])).await;
    assert_eq!(
        a,
        json!({"name": "cat.png", "subfolder": "pets", "type": "input"})
    );

    // Inverting jobs and plain jobs of different sizes with one file name prefix, submitted
    // together so both backends take some: each job's /view (on the other gateway) serves its
    // own file.
    let invert = json!({"prompt": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "pets/cat.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "same"}}
    }});
    let mut jobs = Vec::new();
    for i in 0..6u32 {
        let body = if i % 2 == 0 {
            invert.clone()
        } else {
            json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8 + i, "height": 8, "batch_size": 1, "color": 0}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "same"}}
            }})
        };
        jobs.push((i, stack.submit(0, &t, &body).await));
    }
    let mut names = Vec::new();
    for (i, pid) in &jobs {
        let h = stack.wait_history(1, &t, pid).await;
        assert_eq!(h["status"]["status_str"], "success", "{h}");
        let item = &h["outputs"]["3"]["images"][0];
        assert_eq!(
            item["subfolder"],
            pid.as_str(),
            "outputs live in the job's namespace"
        );
        names.push(item["filename"].as_str().unwrap_or("").to_owned());
        let r = view(&stack, 1, &t, item).await;
        assert_eq!(r.status(), 200);
        let img = image::load_from_memory(&r.bytes().await.unwrap())
            .unwrap()
            .to_rgb8();
        if i % 2 == 0 {
            assert_eq!(img.dimensions(), (40, 30));
            assert_eq!(img.get_pixel(0, 0).0, [0, 255, 255], "inverted red");
        } else {
            assert_eq!(img.dimensions(), (8 + i, 8));
        }
        // Someone else never gets it.
        let other = stack.token("mallory");
        assert_eq!(view(&stack, 0, &other, item).await.status(), 404);
    }
    names.sort();
    names.dedup();
    assert!(
        names.len() < jobs.len(),
        "backends reused names ({names:?}), and nothing collided"
    );
}

/// The reference classifier: flags images whose mean colour is pure red.
async fn classifier(calls: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/classify", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                calls.fetch_add(1, Ordering::SeqCst);
                let score = match image::load_from_memory(&buf[head_end..head_end + len]) {
                    Ok(img) => {
                        let img = img.to_rgb8();
                        let n = (img.width() * img.height()).max(1) as u64;
                        let sum = img.pixels().fold([0u64; 3], |mut s, p| {
                            for (acc, v) in s.iter_mut().zip(p.0) {
                                *acc += v as u64;
                            }
                            s
                        });
                        let mean = sum.map(|v| v / n);
                        if mean == [255, 0, 0] {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    Err(_) => 0.0,
                };
                let body = json!({"score": score}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

fn mint(id: &str, name: &str) -> String {
    let keys = auth::JwtKeys::new(auth::JwtConfig {
        secret: SECRET.into(),
        ..auth::JwtConfig::default()
    })
    .unwrap();
    keys.mint(id, name, auth::Role::User, Duration::from_secs(3600))
        .unwrap()
        .0
}

/// Runs the red-plus-sampler graph for `token` on a socket; returns (history entry, number of
/// binary preview frames received). Each run needs its own `seed`: a fully cached graph samples
/// nothing and sends no previews.
async fn run_graph(stack: &Stack, token: &str, client: &str, seed: u64) -> (Value, usize) {
    let mut ws = Ws::connect(&stack.ws_url(0, client, token)).await;
    let graph = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 4, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ks"}},
        "10": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 16711680}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "red"}}
    });
    let pid = stack
        .submit(0, token, &json!({"prompt": graph, "client_id": client}))
        .await;
    let mut previews = 0;
    loop {
        match ws.next(Duration::from_secs(20)).await {
            Some(Frame::Binary(_)) => previews += 1,
            Some(Frame::Json(v)) => {
                if v["type"] == "executing"
                    && v["data"]["node"].is_null()
                    && v["data"]["prompt_id"] == pid.as_str()
                {
                    break;
                }
            }
            None => panic!("socket ended early"),
        }
    }
    (stack.wait_history(0, token, &pid).await, previews)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsfw_outputs_are_blocked_for_sfw_users_and_their_previews_withheld() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = classifier(calls.clone()).await;
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 1,
        worker_env: vec![
            (
                "COMFY_BROKER__WORKER__NSFW_CLASSIFIER".into(),
                "http".into(),
            ),
            ("COMFY_BROKER__WORKER__NSFW_URL".into(), url),
            ("COMFY_BROKER__WORKER__NSFW_THRESHOLD".into(), "0.5".into()),
        ],
        sim_args: vec!["--model".into(), "checkpoints/sd15.safetensors".into()],
        ..StackOptions::default()
    })
    .await;
    // "safe" has no account record: sfw_check defaults to on. "free" turned it off.
    let store = store::Store::connect(stack.redis.store_config())
        .await
        .unwrap();
    let store::CreateUser::Created(free) = store
        .create_user(&store::NewUser {
            username: "free".into(),
            password_hash: "x".into(),
            role: "user".into(),
        })
        .await
        .unwrap()
    else {
        panic!("user exists")
    };
    store
        .update_user("free", &[("sfw_check", "0".into())])
        .await
        .unwrap();
    let t_free = mint(&free.id, "free");
    let t_safe = stack.token("safe");

    let (h_safe, previews_safe) = run_graph(&stack, &t_safe, "c-safe", 1).await;
    let (h_free, previews_free) = run_graph(&stack, &t_free, "c-free", 2).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 4,
        "every output image was classified"
    );
    assert_eq!(previews_safe, 0, "previews withheld for a sfw_check user");
    assert!(
        previews_free > 0,
        "previews sent to a user without sfw_check"
    );

    let red_safe = &h_safe["outputs"]["11"]["images"][0];
    let ks_safe = &h_safe["outputs"]["9"]["images"][0];
    assert_eq!(red_safe["nsfw"], true, "{h_safe}");
    assert_eq!(red_safe["blocked"], true);
    assert!(ks_safe.get("nsfw").is_none(), "{ks_safe}");
    let r = view(&stack, 0, &t_safe, red_safe).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.text().await.unwrap(),
        "NSFW content blocked for this user."
    );
    assert_eq!(view(&stack, 0, &t_safe, ks_safe).await.status(), 200);

    let red_free = &h_free["outputs"]["11"]["images"][0];
    assert_eq!(red_free["nsfw"], true);
    assert!(red_free.get("blocked").is_none());
    let r = view(&stack, 0, &t_free, red_free).await;
    assert_eq!(r.status(), 200);
    let img = image::load_from_memory(&r.bytes().await.unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_outputs_are_gone_and_history_says_so() {
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 1,
        env: vec![
            ("COMFY_BROKER__FILES__OUTPUT_TTL".into(), "2s".into()),
            ("COMFY_BROKER__FILES__SWEEP_INTERVAL".into(), "200ms".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let t = stack.token("alice");
    let pid = stack
        .submit(0, &t, &json!({"prompt": common::basic_prompt(16, 16)}))
        .await;
    let h = stack.wait_history(0, &t, &pid).await;
    let item = h["outputs"]["2"]["images"][0].clone();
    assert!(item.get("expired").is_none(), "{item}");
    assert_eq!(view(&stack, 0, &t, &item).await.status(), 200);
    let path = stack.files_dir.path().join(format!(
        "users/id-alice/output/{pid}/{}",
        item["filename"].as_str().unwrap_or("")
    ));
    assert!(path.is_file());
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(view(&stack, 0, &t, &item).await.status(), 404);
    let h = stack.wait_history(0, &t, &pid).await;
    assert_eq!(h["outputs"]["2"]["images"][0]["expired"], true, "{h}");
    // The workers' sweeper deleted the file itself.
    assert!(!path.exists(), "swept");
}
