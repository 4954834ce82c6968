//! Uploads, `/view` and the NSFW policy of one real gateway over a real Redis and a local file
//! store: ComfyUI's parameters and answers, path safety, owners only.

mod common;

use std::io::Cursor;

use auth::Role;
use bytes::Bytes;
use common::Env;
use files::{FileKey, FileKind};
use gateway::GatewayConfig;
use serde_json::{json, Value};

fn png(w: u32, h: u32, rgba: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba(rgba));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

/// A multipart body: `(name, filename, bytes)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----comfybrokertestboundary";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(
    env: &Env,
    token: &str,
    path: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> (u16, Value) {
    let (ct, body) = multipart(parts);
    let r = env
        .http
        .post(env.url(path))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn view(env: &Env, token: &str, query: &str) -> reqwest::Response {
    env.get(token, &format!("/view?{query}")).await
}

#[tokio::test]
async fn uploads_follow_comfyui_and_stay_private() {
    let env = Env::start_with(
        GatewayConfig {
            max_request_bytes: 200_000,
            ..GatewayConfig::default()
        },
        true,
    )
    .await;
    let t = env.token("u1");
    let red = png(40, 30, [255, 0, 0, 255]);
    let blue = png(40, 30, [0, 0, 255, 255]);

    let (s, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[
            ("image", Some("cat.png"), &red),
            ("subfolder", None, b"pets"),
        ],
    )
    .await;
    assert_eq!(
        (s, a.clone()),
        (
            200,
            json!({"name": "cat.png", "subfolder": "pets", "type": "input"})
        )
    );
    // Same content: reused. Different content: renamed as ComfyUI does. overwrite=true: replaced.
    let (_, a) = upload(
        &env,
        &t,
        "/api/upload/image",
        &[
            ("image", Some("cat.png"), &red),
            ("subfolder", None, b"pets"),
        ],
    )
    .await;
    assert_eq!(a["name"], "cat.png");
    let (_, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[
            ("image", Some("cat.png"), &blue),
            ("subfolder", None, b"pets"),
        ],
    )
    .await;
    assert_eq!(a["name"], "cat (1).png");
    let (_, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[
            ("image", Some("cat.png"), &blue),
            ("subfolder", None, b"pets"),
            ("overwrite", None, b"true"),
        ],
    )
    .await;
    assert_eq!(a["name"], "cat.png");
    let stored = env
        .files
        .read(&FileKey::new("u1", FileKind::Input, "pets", "cat.png").unwrap())
        .await
        .unwrap();
    assert_eq!(stored, Bytes::from(blue.clone()));
    let (s, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[("image", Some("t.png"), &red), ("type", None, b"temp")],
    )
    .await;
    assert_eq!(
        (s, a["type"].clone(), a["subfolder"].clone()),
        (200, json!("temp"), json!(""))
    );

    // Video and audio are accepted by content; anything else is refused whatever its name.
    let mp4 = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2";
    let (s, _) = upload(
        &env,
        &t,
        "/upload/image",
        &[("image", Some("clip.mp4"), mp4)],
    )
    .await;
    assert_eq!(s, 200);
    let (s, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[(
            "image",
            Some("evil.png"),
            b"<html><script>alert(1)</script>",
        )],
    )
    .await;
    assert_eq!(s, 400, "{a}");
    assert_eq!(a["error"]["type"], "unsupported_file_type");
    // Missing part, empty name, bad type, escaping subfolders.
    assert_eq!(
        upload(&env, &t, "/upload/image", &[("subfolder", None, b"x")])
            .await
            .0,
        400
    );
    assert_eq!(
        upload(&env, &t, "/upload/image", &[("image", Some(""), &red)])
            .await
            .0,
        400
    );
    assert_eq!(
        upload(
            &env,
            &t,
            "/upload/image",
            &[("image", Some("a.png"), &red), ("type", None, b"models")]
        )
        .await
        .0,
        400
    );
    for sub in ["../x", "/etc", "a/../../x", "a\\..\\..\\x"] {
        let (s, _) = upload(
            &env,
            &t,
            "/upload/image",
            &[
                ("image", Some("a.png"), &red),
                ("subfolder", None, sub.as_bytes()),
            ],
        )
        .await;
        assert_eq!(s, 400, "subfolder {sub:?}");
    }
    for name in ["../a.png", "a/../../b.png", "..\\a.png"] {
        let (s, _) = upload(&env, &t, "/upload/image", &[("image", Some(name), &red)]).await;
        assert_eq!(s, 400, "filename {name:?}");
    }
    // Over the body limit: 413.
    let big = vec![0u8; 300_000];
    let mut big_png = red.clone();
    big_png.extend_from_slice(&big);
    let (s, a) = upload(
        &env,
        &t,
        "/upload/image",
        &[("image", Some("big.png"), &big_png)],
    )
    .await;
    assert_eq!(s, 413, "{a}");
    // Guests may not upload.
    let guest = env.token_role("g1", Role::Guest);
    let (s, a) = upload(
        &env,
        &guest,
        "/upload/image",
        &[("image", Some("g.png"), &red)],
    )
    .await;
    assert_eq!(
        (s, a["error"]["extra_info"]["permission"].clone()),
        (403, json!("can_upload"))
    );

    // A mask: the original's colour with the mask's alpha, saved as PNG under the mask's name.
    let orig_key = FileKey::new("u1", FileKind::Output, "p0", "orig.png").unwrap();
    env.files
        .put(&orig_key, Bytes::from(png(8, 8, [10, 20, 30, 255])))
        .await
        .unwrap();
    let mask = png(8, 8, [0, 0, 0, 77]);
    let (s, a) = upload(
        &env,
        &t,
        "/upload/mask",
        &[
            ("image", Some("mask.png"), &mask),
            (
                "original_ref",
                None,
                br#"{"filename": "orig.png", "subfolder": "p0", "type": "output"}"#,
            ),
            ("subfolder", None, b"clipspace"),
        ],
    )
    .await;
    assert_eq!(
        (s, a),
        (
            200,
            json!({"name": "mask.png", "subfolder": "clipspace", "type": "input"})
        )
    );
    let m = env
        .files
        .read(&FileKey::new("u1", FileKind::Input, "clipspace", "mask.png").unwrap())
        .await
        .unwrap();
    let m = image::load_from_memory(&m).unwrap().to_rgba8();
    assert_eq!(m.get_pixel(3, 3).0, [10, 20, 30, 77]);
    // Another user's original is not found: nothing written, ComfyUI's 200 all the same.
    let t2 = env.token("u2");
    let (s, _) = upload(
        &env,
        &t2,
        "/upload/mask",
        &[
            ("image", Some("m2.png"), &mask),
            (
                "original_ref",
                None,
                br#"{"filename": "orig.png", "subfolder": "p0"}"#,
            ),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert!(!env
        .files
        .exists(&FileKey::new("u2", FileKind::Input, "", "m2.png").unwrap())
        .await
        .unwrap());

    // Uploads are the uploader's alone.
    assert_eq!(
        view(&env, &t, "filename=cat.png&subfolder=pets&type=input")
            .await
            .status(),
        200
    );
    assert_eq!(
        view(&env, &t2, "filename=cat.png&subfolder=pets&type=input")
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn graph_file_inputs_must_name_the_callers_files() {
    let env = Env::start().await;
    let t = env.token("u1");
    let red = png(4, 4, [255, 0, 0, 255]);
    let (s, _) = upload(
        &env,
        &t,
        "/upload/image",
        &[
            ("image", Some("cat.png"), &red),
            ("subfolder", None, b"pets"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    env.files
        .put(
            &FileKey::new("u1", FileKind::Output, "p9", "o.png").unwrap(),
            Bytes::from(red.clone()),
        )
        .await
        .unwrap();
    let graph = |image: &str| {
        json!({"prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}
        }})
    };
    for ok in ["pets/cat.png", "p9/o.png [output]"] {
        let r = env.post_json(&t, "/prompt", &graph(ok)).await;
        assert_eq!(
            r.status(),
            200,
            "{ok}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let t2 = env.token("u2");
    for (who, name) in [
        (&t, "pets/dog.png"),
        (&t, "example.png"),
        (&t2, "pets/cat.png"),
        (&t, "../pets/cat.png"),
    ] {
        let r = env.post_json(who, "/prompt", &graph(name)).await;
        assert_eq!(r.status(), 400, "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["type"], "prompt_outputs_failed_validation",
            "{v}"
        );
        assert!(v["node_errors"]["1"].is_object(), "{v}");
    }
}

#[tokio::test]
async fn view_serves_comfyui_shapes_to_the_owner_only() {
    let env = Env::start().await;
    let t = env.token("u1");
    let t2 = env.token("u2");
    let admin = env.token_role("boss", Role::Admin);
    let pid = "0b0e8f2e-6f0a-4c39-9a53-1d2f5d3b4a10";
    let img = png(64, 48, [200, 100, 50, 128]);
    let key = FileKey::new("u1", FileKind::Output, pid, "a.png").unwrap();
    env.files.put(&key, Bytes::from(img.clone())).await.unwrap();
    env.files
        .put(
            &FileKey::new("u1", FileKind::Temp, "", "t.png").unwrap(),
            Bytes::from(img.clone()),
        )
        .await
        .unwrap();
    env.files
        .put(
            &FileKey::new("u1", FileKind::Input, "", "i.png").unwrap(),
            Bytes::from(img.clone()),
        )
        .await
        .unwrap();
    env.files
        .put(
            &FileKey::new("u1", FileKind::Output, "", "page.html").unwrap(),
            Bytes::from_static(b"<html></html>"),
        )
        .await
        .unwrap();
    let video: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    env.files
        .put(
            &FileKey::new("u1", FileKind::Output, pid, "v.mp4").unwrap(),
            Bytes::from(video.clone()),
        )
        .await
        .unwrap();

    // Raw, each type.
    let r = view(
        &env,
        &t,
        &format!("filename=a.png&subfolder={pid}&type=output"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["content-disposition"], "filename=\"a.png\"");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap(), Bytes::from(img.clone()));
    assert_eq!(
        view(&env, &t, &format!("filename=a.png&subfolder={pid}"))
            .await
            .status(),
        200,
        "type defaults to output"
    );
    assert_eq!(
        view(&env, &t, "filename=t.png&type=temp").await.status(),
        200
    );
    assert_eq!(
        view(&env, &t, "filename=i.png&type=input").await.status(),
        200
    );
    assert_eq!(
        view(&env, &t, "filename=i.png [input]&type=output")
            .await
            .status(),
        200,
        "annotation wins"
    );
    assert_eq!(
        view(&env, &t, "filename=i.png&type=output").await.status(),
        404
    );
    // Active content is a download.
    let r = view(&env, &t, "filename=page.html").await;
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment;"));
    assert_eq!(r.headers()["cache-control"], "no-store");

    // preview: real JPEG / WebP of the right size; channel rgb / a: PNGs.
    for (q, fmt, ct) in [
        ("preview=jpeg;80", image::ImageFormat::Jpeg, "image/jpeg"),
        ("preview=webp;90", image::ImageFormat::WebP, "image/webp"),
        (
            "preview=jpeg;50&channel=rgba",
            image::ImageFormat::WebP,
            "image/webp",
        ),
        ("channel=rgb", image::ImageFormat::Png, "image/png"),
        ("channel=a", image::ImageFormat::Png, "image/png"),
    ] {
        let r = view(&env, &t, &format!("filename=a.png&subfolder={pid}&{q}")).await;
        assert_eq!(r.status(), 200, "{q}");
        assert_eq!(r.headers()["content-type"], ct, "{q}");
        let b = r.bytes().await.unwrap();
        assert_eq!(image::guess_format(&b).unwrap(), fmt, "{q}");
        let d = image::load_from_memory(&b).unwrap();
        assert_eq!((d.width(), d.height()), (64, 48), "{q}");
        match q {
            "channel=rgb" => assert!(!d.color().has_alpha()),
            "channel=a" => assert_eq!(d.to_rgba8().get_pixel(1, 1).0, [0, 0, 0, 128]),
            "preview=jpeg;80" => assert!(!d.color().has_alpha()),
            _ => {}
        }
    }

    // Range: 206 with the right bytes; past the end: 416.
    let q = format!("/view?filename=v.mp4&subfolder={pid}");
    let r = env
        .http
        .get(env.url(&q))
        .bearer_auth(&t)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &video[100..200]);
    let r = env
        .http
        .get(env.url(&q))
        .bearer_auth(&t)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &video[9990..]);
    let r = env
        .http
        .get(env.url(&q))
        .bearer_auth(&t)
        .header("range", "bytes=20000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    // Owners only: another user gets 404; an admin finds the owner through the prompt id.
    assert_eq!(
        view(&env, &t2, &format!("filename=a.png&subfolder={pid}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        view(&env, &admin, &format!("filename=a.png&subfolder={pid}"))
            .await
            .status(),
        404,
        "no job: no owner index"
    );
    let job = json!({"prompt": common::basic_prompt(), "prompt_id": pid});
    assert_eq!(env.post_json(&t, "/prompt", &job).await.status(), 200);
    assert_eq!(
        view(&env, &admin, &format!("filename=a.png&subfolder={pid}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        view(&env, &t2, &format!("filename=a.png&subfolder={pid}"))
            .await
            .status(),
        404
    );

    // Every traversal form: ComfyUI's answer, never a file outside the caller's space.
    let cases: &[(&str, u16)] = &[
        ("filename=", 400),
        ("type=output", 404),
        ("filename=a.png&type=models", 400),
        ("filename=/etc/passwd", 400),
        ("filename=..%2F..%2Fetc%2Fpasswd", 400),
        ("filename=a..b.png", 400),
        ("filename=..", 400),
        ("filename=%2E%2E/x.png", 400),
        ("filename=a.png&subfolder=..", 403),
        ("filename=a.png&subfolder=../u2", 403),
        ("filename=a.png&subfolder=..%2F..%2F..%2Fetc", 403),
        ("filename=a.png&subfolder=/etc", 403),
        ("filename=a.png&subfolder=%2Fetc", 403),
        ("filename=passwd&subfolder=x/../../../etc", 403),
        ("filename=a.png&subfolder=..\\..\\u2", 404),
        ("filename=..\\..\\a.png", 400),
        ("filename=a.png%00.txt", 404),
        ("filename=a.png&subfolder=p%00", 404),
        ("filename=a.png [output]&subfolder=../../u2", 403),
        ("filename=../a.png [output]", 400),
        ("filename=C:\\windows\\win.ini", 404),
    ];
    for (q, want) in cases {
        let r = view(&env, &t, q).await;
        assert_eq!(r.status().as_u16(), *want, "{q}");
    }
    // Directory parts of the filename are dropped (ComfyUI's basename rule), inside the space.
    let r = view(&env, &t, &format!("filename=x/y/a.png&subfolder={pid}")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn nsfw_flags_block_sfw_users_and_admins_set_them() {
    let env = Env::start().await;
    // A user with sfw_check off, in the accounts store.
    let created = env
        .store
        .create_user(&store::NewUser {
            username: "free".into(),
            password_hash: "x".into(),
            role: "user".into(),
        })
        .await
        .unwrap();
    let store::CreateUser::Created(free) = created else {
        panic!("user exists")
    };
    env.store
        .update_user("free", &[("sfw_check", "0".into())])
        .await
        .unwrap();
    let t_free = env.token(&free.id);
    let t_safe = env.token("safe");
    let admin = env.token_role("boss", Role::Admin);
    let img = Bytes::from(png(8, 8, [255, 0, 0, 255]));
    for uid in [free.id.as_str(), "safe"] {
        env.files
            .put(
                &FileKey::new(uid, FileKind::Output, "p1", "x.png").unwrap(),
                img.clone(),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        view(&env, &t_safe, "filename=x.png&subfolder=p1")
            .await
            .status(),
        200
    );

    // Only admins may flag.
    let body = |user: &str, nsfw: bool| json!({"filename": "x.png", "subfolder": "p1", "type": "output", "user": user, "nsfw": nsfw});
    assert_eq!(
        env.post_json(&t_safe, "/mss-login/api/outputs/nsfw", &body("safe", true))
            .await
            .status(),
        403
    );
    for user in ["safe", "free"] {
        let r = env
            .post_json(&admin, "/mss-login/api/outputs/nsfw", &body(user, true))
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        env.post_json(
            &admin,
            "/mss-login/api/outputs/nsfw",
            &json!({"filename": "nope.png", "user": "safe", "nsfw": true})
        )
        .await
        .status(),
        404
    );
    let r = view(&env, &t_safe, "filename=x.png&subfolder=p1").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        r.text().await.unwrap(),
        "NSFW content blocked for this user."
    );
    // Every form of the request is blocked, previews included.
    assert_eq!(
        view(&env, &t_safe, "filename=x.png&subfolder=p1&preview=jpeg;50")
            .await
            .status(),
        403
    );
    assert_eq!(
        view(&env, &t_free, "filename=x.png&subfolder=p1")
            .await
            .status(),
        200
    );

    let r = env
        .post_json(
            &admin,
            "/api/mss-login/api/outputs/nsfw",
            &body("safe", false),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        view(&env, &t_safe, "filename=x.png&subfolder=p1")
            .await
            .status(),
        200
    );
}
