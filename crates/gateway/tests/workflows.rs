//! Workflows over real Redis and two gateways: ComfyUI's userdata API (as trace 17 recorded a
//! real ComfyUI 0.3.64 answering it), MSS-Login's forms and the Comfy Portal endpoints.

mod common;

use auth::Role;
use common::Env;
use gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// The body trace 17 saves (154 bytes).
const DEMO: &str = "{\"last_node_id\": 2, \"last_link_id\": 1, \"nodes\": [], \"links\": [], \"groups\": [], \"config\": {}, \"extra\": {\"recorder\": \"record_comfy_traces\"}, \"version\": 0.4}";

/// A second gateway on the same Redis as `env`; dropped with the returned sender.
async fn second(env: &Env, config: GatewayConfig) -> (String, oneshot::Sender<()>) {
    let gw = Gateway::new(
        env.store.clone(),
        env.files.clone(),
        env.keys.clone(),
        config,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(gw.serve(listener, async move {
        let _ = rx.await;
    }));
    (format!("http://{addr}"), tx)
}

struct Two {
    env: Env,
    b: String,
    _stop: oneshot::Sender<()>,
}

impl Two {
    async fn start() -> Two {
        Self::with(GatewayConfig::default()).await
    }

    async fn with(config: GatewayConfig) -> Two {
        let env = Env::start_with(config.clone(), false).await;
        let (b, stop) = second(&env, config).await;
        Two {
            env,
            b,
            _stop: stop,
        }
    }

    /// Base URL of gateway 0 or 1.
    fn gw(&self, i: usize) -> &str {
        if i == 0 {
            &self.env.base
        } else {
            &self.b
        }
    }

    async fn send(
        &self,
        gw: usize,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String, Vec<u8>) {
        let mut req = self
            .env
            .http
            .request(method, format!("{}{}", self.gw(gw), path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, gw: usize, token: &str, path: &str) -> (u16, String, Vec<u8>) {
        self.send(gw, reqwest::Method::GET, token, path, None).await
    }

    async fn post(
        &self,
        gw: usize,
        token: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        self.send(gw, reqwest::Method::POST, token, path, Some(body.to_vec()))
            .await
    }

    async fn delete(&self, gw: usize, token: &str, path: &str) -> (u16, String, Vec<u8>) {
        self.send(gw, reqwest::Method::DELETE, token, path, None)
            .await
    }

    async fn json(&self, gw: usize, token: &str, path: &str) -> Value {
        let (s, _, b) = self.get(gw, token, path).await;
        assert_eq!(s, 200, "GET {path}: {}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("json: {}", String::from_utf8_lossy(b)))
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[tokio::test]
async fn a_stock_client_gets_the_answers_of_trace_17() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    assert_eq!(DEMO.len(), 154);
    let file = "/api/userdata/workflows%2Fdemo.json";

    let (s, ct, b) = t.post(0, &tok, file, DEMO.as_bytes()).await;
    assert_eq!((s, ct.as_str()), (200, "application/json; charset=utf-8"));
    assert_eq!(parse(&b), json!("workflows/demo.json"));

    let (s, ct, b) = t
        .post(1, &tok, &format!("{file}?overwrite=false"), DEMO.as_bytes())
        .await;
    assert_eq!(
        (s, ct.as_str(), text(&b)),
        (409, "text/plain; charset=utf-8", "File already exists")
    );

    let (s, _, b) = t
        .post(0, &tok, &format!("{file}?full_info=true"), DEMO.as_bytes())
        .await;
    assert_eq!(s, 200);
    let info = parse(&b);
    assert_eq!(info["path"], "workflows/demo.json");
    assert_eq!(info["size"], 154);
    let keys: Vec<&str> = info
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["path", "size", "modified", "created"]);
    // 0.3.64: float seconds since the epoch.
    let modified = info["modified"].as_f64().unwrap();
    assert!(
        info["modified"].is_f64() && info["created"].is_f64(),
        "{info}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((modified - now).abs() < 60.0, "{modified} vs {now}");

    assert_eq!(
        t.json(1, &tok, "/api/userdata?dir=workflows").await,
        json!(["demo.json"])
    );
    let full = t
        .json(1, &tok, "/api/userdata?dir=workflows&full_info=true")
        .await;
    assert_eq!(full.as_array().unwrap().len(), 1);
    assert_eq!(full[0]["path"], "demo.json");
    assert_eq!(full[0]["size"], 154);
    assert_eq!(full[0]["modified"], info["modified"]);
    assert_eq!(full[0].as_object().unwrap().len(), 4, "{full}");
    assert_eq!(
        t.json(1, &tok, "/api/userdata?dir=workflows&split=true")
            .await,
        json!([["demo.json", "demo.json"]])
    );
    let (s, ct, b) = t.get(1, &tok, "/api/userdata?dir=no-such-dir").await;
    assert_eq!(
        (s, ct.as_str(), text(&b)),
        (404, "text/plain; charset=utf-8", "Directory not found")
    );

    let (s, ct, b) = t.get(1, &tok, file).await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert_eq!(b, DEMO.as_bytes());

    let (s, ct, b) = t
        .get(1, &tok, "/api/userdata/workflows%2Fmissing.json")
        .await;
    assert_eq!((s, ct.as_str(), b.len()), (404, "", 0));

    // Without the /api prefix too.
    assert_eq!(
        t.json(0, &tok, "/userdata?dir=workflows").await,
        json!(["demo.json"])
    );
    let (s, _, b) = t.get(0, &tok, "/userdata/workflows%2Fdemo.json").await;
    assert_eq!((s, b.as_slice()), (200, DEMO.as_bytes()));
    // Unauthenticated: refused.
    let r = t
        .env
        .http
        .get(format!("{}/api/userdata?dir=workflows", t.env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn saved_on_one_gateway_loads_byte_identical_on_another() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    // Odd formatting that a re-serialiser would change.
    let body = "{\n  \"b\" : 1.50,\n\t\"a\": \"\\u00e9t\u{e9}\"  }\n".as_bytes();
    let names = [
        ("workflows%2Fmy%20flow.json", "my flow.json"),
        // été ✓.json
        ("workflows%2F%C3%A9t%C3%A9%20%E2%9C%93.json", "été ✓.json"),
        ("workflows%2Fsub%2Fdeep%2Fx.json", "sub/deep/x.json"),
        // Double-encoded, as ComfyUI tolerates.
        ("workflows%252Fdouble.json", "double.json"),
    ];
    for (enc, _) in names {
        let (s, _, b) = t.post(0, &tok, &format!("/api/userdata/{enc}"), body).await;
        assert_eq!(s, 200, "{enc}: {}", text(&b));
    }
    for (enc, _) in names {
        let (s, _, b) = t.get(1, &tok, &format!("/api/userdata/{enc}")).await;
        assert_eq!(s, 200, "{enc}");
        assert_eq!(b, body, "{enc}");
    }
    let mut flat = t.json(1, &tok, "/api/userdata?dir=workflows").await;
    flat.as_array_mut()
        .unwrap()
        .sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(flat, json!(["double.json", "my flow.json", "été ✓.json"]));
    let all = t
        .json(1, &tok, "/api/userdata?dir=workflows&recurse=true")
        .await;
    let mut all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    all.sort();
    let mut expected: Vec<String> = names.iter().map(|(_, n)| n.to_string()).collect();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(
        t.json(
            0,
            &tok,
            "/api/userdata?dir=workflows%2Fsub&recurse=true&split=true"
        )
        .await,
        json!([["deep/x.json", "deep", "x.json"]])
    );
    assert_eq!(
        t.json(0, &tok, "/api/userdata?dir=workflows/sub/deep")
            .await,
        json!(["x.json"])
    );
    // The same file through the MSS-Login form and the Comfy Portal.
    let (s, _, b) = t
        .get(1, &tok, "/api/userdata/workflows/my%20flow.json")
        .await;
    assert_eq!((s, b.as_slice()), (200, body));
    let v = t
        .json(0, &tok, "/api/cpe/workflow/get?filename=sub/deep/x")
        .await;
    assert_eq!(v["workflow"].as_str().unwrap().as_bytes(), body);
}

#[tokio::test]
async fn overwrite_move_and_delete_behave_like_comfyui() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    let a = "/api/userdata/workflows%2Fa.json";
    let b = "/api/userdata/workflows%2Fb.json";
    assert_eq!(t.post(0, &tok, a, b"{\"v\":\"a\"}").await.0, 200);
    assert_eq!(t.post(0, &tok, b, b"{\"v\":\"b\"}").await.0, 200);
    // overwrite=false on an existing file.
    let (s, _, body) = t
        .post(1, &tok, &format!("{a}?overwrite=false"), b"{}")
        .await;
    assert_eq!((s, text(&body)), (409, "File already exists"));
    // Any other value still overwrites (only the literal "false" disables it).
    assert_eq!(
        t.post(1, &tok, &format!("{a}?overwrite=no"), b"{\"v\":\"a2\"}")
            .await
            .0,
        200
    );

    // Move onto an existing file without overwrite → 409, nothing changes.
    let (s, _, body) = t
        .post(
            0,
            &tok,
            &format!("{a}/move/workflows%2Fb.json?overwrite=false"),
            b"",
        )
        .await;
    assert_eq!((s, text(&body)), (409, "File already exists"));
    assert_eq!(t.get(1, &tok, b).await.2, b"{\"v\":\"b\"}");
    // With overwrite (the default) → b has a's bytes, a is gone.
    let (s, _, body) = t
        .post(0, &tok, &format!("{a}/move/workflows%2Fb.json"), b"")
        .await;
    assert_eq!((s, parse(&body)), (200, json!("workflows/b.json")));
    assert_eq!(t.get(1, &tok, b).await.2, b"{\"v\":\"a2\"}");
    assert_eq!(t.get(1, &tok, a).await.0, 404);
    // Move to a new name, full_info.
    let (s, _, body) = t
        .post(
            1,
            &tok,
            &format!("{b}/move/workflows%2Fnew%20name.json?full_info=true"),
            b"",
        )
        .await;
    assert_eq!(s, 200);
    let info = parse(&body);
    assert_eq!(
        (info["path"].as_str(), info["size"].as_u64()),
        (Some("workflows/new name.json"), Some(10))
    );
    // Missing source → 404.
    assert_eq!(
        t.post(0, &tok, &format!("{a}/move/workflows%2Fz.json"), b"")
            .await
            .0,
        404
    );

    // Delete, then load → 404; delete again → 404.
    let c = "/api/userdata/workflows%2Fnew%20name.json";
    let (s, _, body) = t.delete(0, &tok, c).await;
    assert_eq!((s, body.len()), (204, 0));
    let (s, _, body) = t.get(1, &tok, c).await;
    assert_eq!((s, body.len()), (404, 0));
    assert_eq!(t.delete(1, &tok, c).await.0, 404);
    assert_eq!(
        t.json(1, &tok, "/api/userdata?dir=workflows").await,
        json!([])
    );
}

#[tokio::test]
async fn users_never_see_or_touch_each_others_workflows() {
    let t = Two::start().await;
    let (alice, bob) = (t.env.token("alice"), t.env.token("bob"));
    let f = "/api/userdata/workflows%2Fsecret.json";
    assert_eq!(t.post(0, &alice, f, b"{\"owner\":\"alice\"}").await.0, 200);

    // Bob lists nothing, loads nothing.
    assert_eq!(
        t.json(1, &bob, "/api/userdata?dir=workflows").await,
        json!([])
    );
    assert_eq!(
        t.json(
            1,
            &bob,
            "/api/userdata?dir=workflows&recurse=true&full_info=true"
        )
        .await,
        json!([])
    );
    assert_eq!(t.get(1, &bob, f).await.0, 404);
    assert_eq!(
        t.get(1, &bob, "/api/userdata/workflows/secret.json")
            .await
            .0,
        404
    );
    assert_eq!(t.json(1, &bob, "/api/userdata/workflows").await, json!([]));
    assert_eq!(
        t.json(1, &bob, "/api/cpe/workflow/list").await["workflows"],
        json!([])
    );
    assert_eq!(
        t.get(1, &bob, "/api/cpe/workflow/get?filename=secret.json")
            .await
            .0,
        404
    );
    assert_eq!(
        t.get(1, &bob, "/api/v2/userdata?path=workflows").await.2,
        b"[]"
    );
    // Bob cannot delete or move it.
    assert_eq!(t.delete(1, &bob, f).await.0, 404);
    assert_eq!(
        t.delete(1, &bob, "/api/userdata/workflows/secret.json")
            .await
            .0,
        404
    );
    assert_eq!(
        t.post(1, &bob, &format!("{f}/move/workflows%2Fmine.json"), b"")
            .await
            .0,
        404
    );
    // overwrite=false: Bob has no such file, so his own is created; Alice's is untouched.
    assert_eq!(
        t.post(
            1,
            &bob,
            &format!("{f}?overwrite=false"),
            b"{\"owner\":\"bob\"}"
        )
        .await
        .0,
        200
    );
    assert_eq!(t.get(0, &alice, f).await.2, b"{\"owner\":\"alice\"}");
    assert_eq!(t.get(0, &bob, f).await.2, b"{\"owner\":\"bob\"}");
    assert_eq!(t.delete(0, &bob, f).await.0, 204);
    assert_eq!(t.get(1, &alice, f).await.2, b"{\"owner\":\"alice\"}");
    assert_eq!(t.get(1, &bob, f).await.0, 404);
    // The identity comes from the token only.
    let r = t
        .env
        .http
        .get(format!("{}{f}", t.env.base))
        .bearer_auth(&bob)
        .header("comfy-user", "name-alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn global_workflows_are_read_by_all_and_written_by_admins() {
    let t = Two::start().await;
    let admin = t.env.token_role("root", Role::Admin);
    let user = t.env.token("alice");
    let guest = t.env.token_role("visitor", Role::Guest);
    let g = "/api/userdata/workflows%2Fshared.json";

    // A non-admin cannot write the global space.
    let (s, _, b) = t.post(0, &user, &format!("{g}?global=true"), b"{}").await;
    assert_eq!(s, 403, "{}", text(&b));
    assert_eq!(parse(&b)["error"]["type"], "global_workflows_admin_only");
    // A guest cannot write at all.
    let (s, _, b) = t.post(0, &guest, g, b"{}").await;
    assert_eq!(
        (s, parse(&b)["error"]["extra_info"]["permission"].as_str()),
        (403, Some("can_modify_workflows"))
    );
    assert_eq!(
        t.post(
            0,
            &guest,
            "/api/cpe/workflow/save",
            b"{\"workflow\":\"{}\"}"
        )
        .await
        .0,
        403
    );
    assert_eq!(
        t.post(0, &guest, "/api/userdata/workflows/x.json", b"{}")
            .await
            .0,
        403
    );

    // An admin can.
    let (s, _, b) = t
        .post(0, &admin, &format!("{g}?global=true"), b"{\"g\":1}")
        .await;
    assert_eq!((s, parse(&b)), (200, json!("workflows/shared.json")));
    // Everyone reads it, on any gateway, through every form.
    for tok in [&user, &guest, &admin] {
        assert_eq!(t.get(1, tok, g).await.2, b"{\"g\":1}");
        assert_eq!(
            t.get(1, tok, "/api/userdata/workflows/shared").await.2,
            b"{\"g\":1}"
        );
        assert_eq!(
            t.json(1, tok, "/api/userdata?dir=workflows").await,
            json!(["shared.json"])
        );
        let v = t
            .json(1, tok, "/api/cpe/workflow/get?filename=shared.json")
            .await;
        assert_eq!(v["workflow"], "{\"g\":1}");
    }
    let full = t
        .json(1, &user, "/api/userdata?dir=workflows&full_info=true")
        .await;
    assert_eq!(full[0]["global"], true);
    let mss = t.json(1, &user, "/api/userdata/workflows").await;
    assert_eq!(
        (mss[0]["name"].as_str(), mss[0]["writable"].as_bool()),
        (Some("shared.json"), Some(false))
    );

    // A user can neither delete nor move it.
    assert_eq!(t.delete(1, &user, g).await.0, 403);
    let (s, _, b) = t
        .delete(1, &user, "/api/userdata/workflows/shared.json")
        .await;
    assert_eq!((s, text(&b)), (403, "Cannot delete global workflows"));
    assert_eq!(
        t.post(1, &user, &format!("{g}/move/workflows%2Fx.json"), b"")
            .await
            .0,
        403
    );
    assert_eq!(t.get(0, &user, g).await.2, b"{\"g\":1}");

    // overwrite=false: the name is taken (the user sees the global file).
    let (s, _, b) = t
        .post(0, &user, &format!("{g}?overwrite=false"), b"{}")
        .await;
    assert_eq!((s, text(&b)), (409, "File already exists"));
    // The user's own file of the same name wins for them only.
    assert_eq!(t.post(0, &user, g, b"{\"mine\":1}").await.0, 200);
    assert_eq!(t.get(1, &user, g).await.2, b"{\"mine\":1}");
    let full = t
        .json(1, &user, "/api/userdata?dir=workflows&full_info=true")
        .await;
    assert_eq!(full.as_array().unwrap().len(), 1);
    assert!(full[0].get("global").is_none(), "{full}");
    assert_eq!(t.get(1, &guest, g).await.2, b"{\"g\":1}");
    // ?global=true reads the global one.
    assert_eq!(
        t.get(1, &user, &format!("{g}?global=true")).await.2,
        b"{\"g\":1}"
    );
    let cpe = t.json(0, &user, "/api/cpe/workflow/list").await;
    assert_eq!(cpe["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(cpe["workflows"][0]["size"], 10);

    // Deleting removes the user's copy; the global one shows again.
    assert_eq!(t.delete(1, &user, g).await.0, 204);
    assert_eq!(t.get(0, &user, g).await.2, b"{\"g\":1}");
    // An admin deletes the global one (as MSS-Login: only the global copy exists).
    assert_eq!(t.delete(1, &admin, g).await.0, 204);
    assert_eq!(t.get(0, &user, g).await.0, 404);
}

#[tokio::test]
async fn traversal_and_paths_outside_the_workflow_dirs_are_refused() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    for enc in [
        "..%2F..%2Fetc%2Fpasswd",
        "workflows%2F..%2F..%2Fx.json",
        "workflows%2F..%2Fworkflows%2Fx.json",
        "%2Fetc%2Fpasswd",
        "%252E%252E%252Fx.json",
        "workflows%2F%2Fx.json",
        "workflows%2Fx%2F",
        "workflows%5Cx.json",
        "workflows%2Fa%00.json",
        "workflows%2Fa%0A.json",
        "comfy.settings.json",
        "other%2Fx.json",
        "workflows",
    ] {
        let path = format!("/api/userdata/{enc}");
        if enc != "workflows" {
            let (s, _, b) = t.post(0, &tok, &path, b"{}").await;
            assert_eq!((s, b.len()), (403, 0), "POST {enc}");
            // Reading or deleting: a well-formed name outside the workflow directories is
            // simply not there; anything malformed is refused.
            let outside = enc == "comfy.settings.json" || enc == "other%2Fx.json";
            let expected = if outside { 404 } else { 403 };
            let (s, _, _) = t.get(0, &tok, &path).await;
            assert_eq!(s, expected, "GET {enc}");
            assert_eq!(t.delete(0, &tok, &path).await.0, expected, "DELETE {enc}");
        }
        let (s, _, _) = t
            .post(
                0,
                &tok,
                &format!("/api/userdata/workflows%2Fok.json/move/{enc}"),
                b"",
            )
            .await;
        assert!(s == 403 || s == 404, "move to {enc}: {s}");
    }
    assert_eq!(
        t.post(0, &tok, "/api/userdata/workflows%2Fok.json", b"{}")
            .await
            .0,
        200
    );
    let (s, _, _) = t
        .post(
            0,
            &tok,
            "/api/userdata/workflows%2Fok.json/move/..%2Fok.json",
            b"",
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        t.get(0, &tok, "/api/userdata/workflows%2Fok.json").await.0,
        200
    );
    // Listing.
    let (s, _, b) = t.get(0, &tok, "/api/userdata?dir=..%2F..").await;
    assert_eq!((s, text(&b)), (403, "Invalid directory"));
    let (s, _, b) = t.get(0, &tok, "/api/userdata?dir=%2Fetc").await;
    assert_eq!((s, text(&b)), (403, "Invalid directory"));
    let (s, _, b) = t.get(0, &tok, "/api/userdata").await;
    assert_eq!((s, text(&b)), (400, "Directory not provided"));
    let (s, _, b) = t.get(0, &tok, "/api/userdata?dir=workflows%2Fnope").await;
    assert_eq!((s, text(&b)), (404, "Directory not found"));
    // MSS-Login and Portal forms.
    assert_eq!(
        t.get(0, &tok, "/api/userdata/workflows/..%2F..%2Fx")
            .await
            .0,
        404
    );
    let (s, _, b) = t
        .post(0, &tok, "/api/userdata/workflows/..%2Fx.json", b"{}")
        .await;
    assert_eq!((s, text(&b)), (400, "Invalid filename"));
    let v = t
        .get(
            0,
            &tok,
            "/api/cpe/workflow/get?filename=..%2F..%2Fetc%2Fpasswd",
        )
        .await;
    assert_eq!(
        (v.0, parse(&v.2)["message"].as_str()),
        (400, Some("filename query parameter is required"))
    );
    let v = t
        .post(
            0,
            &tok,
            "/api/cpe/workflow/save",
            br#"{"workflow": "{}", "name": "../../x.json"}"#,
        )
        .await;
    assert_eq!(
        (v.0, parse(&v.2)["message"].as_str()),
        (400, Some("Invalid filename path"))
    );
    // Nothing was written anywhere.
    assert_eq!(
        t.json(0, &tok, "/api/userdata?dir=workflows&recurse=true")
            .await,
        json!(["ok.json"])
    );
}

#[tokio::test]
async fn size_and_count_limits() {
    let config = GatewayConfig {
        workflow_max_bytes: 1000,
        workflow_max_files: 3,
        ..GatewayConfig::default()
    };
    let t = Two::with(config).await;
    let tok = t.env.token("alice");
    let big = vec![b' '; 1001];
    let (s, _, b) = t
        .post(0, &tok, "/api/userdata/workflows%2Fbig.json", &big)
        .await;
    assert_eq!(
        (s, parse(&b)["error"]["type"].as_str()),
        (413, Some("request_too_large"))
    );
    let mut big_json = b"{\"name\": \"big.json\", \"pad\": \"".to_vec();
    big_json.extend(vec![b'x'; 1000]);
    big_json.extend(b"\"}");
    assert_eq!(
        t.post(1, &tok, "/api/userdata/workflows/big.json", &big_json)
            .await
            .0,
        413
    );
    let cpe = json!({"workflow": String::from_utf8(big_json.clone()).unwrap()}).to_string();
    let (s, _, b) = t
        .post(1, &tok, "/api/cpe/workflow/save", cpe.as_bytes())
        .await;
    assert_eq!((s, parse(&b)["status"].as_str()), (413, Some("error")));
    assert_eq!(
        t.json(0, &tok, "/api/userdata?dir=workflows").await,
        json!([])
    );
    // Exactly at the limit is fine.
    assert_eq!(
        t.post(0, &tok, "/api/userdata/workflows%2Fat.json", &big[..1000])
            .await
            .0,
        200
    );
    // Three files at most; overwriting one of them is still allowed.
    for n in ["b", "c"] {
        assert_eq!(
            t.post(
                0,
                &tok,
                &format!("/api/userdata/workflows%2F{n}.json"),
                b"{}"
            )
            .await
            .0,
            200
        );
    }
    let (s, _, b) = t
        .post(1, &tok, "/api/userdata/workflows%2Fd.json", b"{}")
        .await;
    assert_eq!(
        (s, parse(&b)["error"]["type"].as_str()),
        (403, Some("too_many_workflows"))
    );
    assert_eq!(
        t.post(1, &tok, "/api/userdata/workflows%2Fc.json", b"[]")
            .await
            .0,
        200
    );
    // Another user has their own allowance.
    assert_eq!(
        t.post(
            1,
            &t.env.token("bob"),
            "/api/userdata/workflows%2Fd.json",
            b"{}"
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn mss_login_workflow_forms() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    // Name from the path (unencoded form; .json appended).
    let (s, ct, b) = t
        .post(0, &tok, "/api/userdata/workflows/my%20flow", b"{\"a\": 1}")
        .await;
    assert_eq!(
        (s, ct.as_str()),
        (200, "application/json; charset=utf-8"),
        "{}",
        text(&b)
    );
    let info = parse(&b);
    for (k, v) in [
        ("name", json!("my flow.json")),
        ("filename", json!("my flow.json")),
        ("file", json!("my flow.json")),
        ("path", json!("my flow.json")),
        ("subfolder", json!("")),
        ("ext", json!("json")),
        ("type", json!("file")),
        ("format", json!("json")),
        ("size", json!(8)),
        ("writable", json!(true)),
    ] {
        assert_eq!(info[k], v, "{k}: {info}");
    }
    assert!(info["created"].is_f64() && info["modified"].is_f64());
    assert_eq!(info["data"]["name"], "my flow.json");
    // Name from ?file=, ?name=, the body's name field; else untitled.json.
    assert_eq!(
        t.post(1, &tok, "/api/userdata?dir=workflows&file=q1.json", b"{}")
            .await
            .0,
        200
    );
    assert_eq!(
        t.post(1, &tok, "/api/userdata/workflows?name=q2", b"{}")
            .await
            .0,
        200
    );
    assert_eq!(
        t.post(
            1,
            &tok,
            "/api/userdata/workflows/",
            b"{\"name\": \"fromfield.json\"}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        t.post(1, &tok, "/userdata/workflows/", b"{\"nodes\": []}")
            .await
            .0,
        200
    );
    let (s, _, b) = t
        .post(0, &tok, "/api/userdata/workflows/bad.json", b"not json")
        .await;
    assert_eq!((s, text(&b)), (400, "Invalid JSON"));

    // List: a bare array of file-info objects.
    let list = t.json(0, &tok, "/api/userdata/workflows").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fromfield.json",
            "my flow.json",
            "q1.json",
            "q2.json",
            "untitled.json"
        ]
    );
    assert_eq!(t.json(1, &tok, "/userdata/workflows/").await, list);

    // Load: the raw bytes as saved (not re-serialised).
    let (s, ct, b) = t
        .get(1, &tok, "/api/userdata/workflows/my%20flow.json")
        .await;
    assert_eq!(
        (s, ct.as_str(), b.as_slice()),
        (200, "application/json", &b"{\"a\": 1}"[..])
    );
    assert_eq!(
        t.get(1, &tok, "/userdata/workflows/my%20flow").await.2,
        b"{\"a\": 1}"
    );
    let (s, _, b) = t.get(1, &tok, "/api/userdata/workflows/none.json").await;
    assert_eq!((s, text(&b)), (404, "Workflow not found"));

    // Delete.
    assert_eq!(
        t.delete(0, &tok, "/api/userdata/workflows/q2.json").await.0,
        204
    );
    assert_eq!(
        t.delete(0, &tok, "/api/userdata?dir=workflows&name=q1.json")
            .await
            .0,
        204
    );
    let (s, _, b) = t.delete(1, &tok, "/api/userdata/workflows/q2.json").await;
    assert_eq!((s, text(&b)), (404, "Workflow not found"));
    assert_eq!(
        t.json(0, &tok, "/api/userdata?dir=workflows")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn comfy_portal_endpoints() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    let api = json!({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}});
    let api_text = "{\"3\": {\"class_type\": \"KSampler\", \"inputs\": {\"seed\": 1}}}";
    for prefix in ["/api", ""] {
        let (s, _, b) = t
            .post(
                0,
                &tok,
                &format!("{prefix}/cpe/workflow/save"),
                json!({"workflow": api_text, "name": "portraits/face"})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        assert_eq!(s, 200, "{}", text(&b));
        assert_eq!(
            parse(&b),
            json!({"status": "success", "message": "Workflow saved successfully", "filename": "portraits/face.json"})
        );
        let v = t
            .json(
                1,
                &tok,
                &format!("{prefix}/cpe/workflow/get?filename=portraits/face"),
            )
            .await;
        assert_eq!(
            v,
            json!({"status": "success", "filename": "portraits/face.json", "workflow": api_text})
        );
        let v = t
            .json(
                1,
                &tok,
                &format!("{prefix}/cpe/workflow/get-and-convert?filename=portraits/face.json"),
            )
            .await;
        assert_eq!(
            v,
            json!({"status": "success", "message": "Workflow converted successfully",
                              "data": {"workflow": api}, "filename": "portraits/face.json"})
        );
        let v = t.json(1, &tok, &format!("{prefix}/cpe/health")).await;
        assert_eq!(v["status"], "success");
        assert!(v["browser"]["status"].is_string());
    }
    // The string is stored exactly; an object is serialised.
    assert_eq!(
        t.get(0, &tok, "/api/userdata/workflows%2Fportraits%2Fface.json")
            .await
            .2,
        api_text.as_bytes()
    );
    let (s, _, b) = t
        .post(
            0,
            &tok,
            "/api/cpe/workflow/save",
            br#"{"workflow": {"nodes": [], "links": []}, "name": "ui.json"}"#,
        )
        .await;
    assert_eq!(s, 200, "{}", text(&b));
    let (s, _, b) = t
        .get(
            1,
            &tok,
            "/api/cpe/workflow/get-and-convert?filename=ui.json",
        )
        .await;
    let v = parse(&b);
    assert_eq!((s, v["status"].as_str()), (422, Some("error")));
    assert!(v["message"].as_str().unwrap().contains("conversion"), "{v}");
    // Default name.
    let (s, _, b) = t
        .post(0, &tok, "/api/cpe/workflow/save", br#"{"workflow": "[]"}"#)
        .await;
    assert_eq!(s, 200);
    assert!(parse(&b)["filename"]
        .as_str()
        .unwrap()
        .starts_with("workflow_"));
    // List: {filename, size, modified}, sorted, relative to workflows/.
    let v = t.json(1, &tok, "/cpe/workflow/list").await;
    let wf = v["workflows"].as_array().unwrap();
    assert_eq!(wf.len(), 3);
    assert_eq!(wf[0]["filename"], "portraits/face.json");
    assert_eq!(wf[0]["size"], api_text.len());
    assert!(wf[0]["modified"].is_f64());
    // Errors.
    for (body, msg) in [
        (&b"nope"[..], "workflow field is required"),
        (br#"{"name": "x.json"}"#, "workflow field is required"),
        (
            br#"{"workflow": "{not json"}"#,
            "Invalid JSON in workflow field",
        ),
    ] {
        let (s, _, b) = t.post(0, &tok, "/api/cpe/workflow/save", body).await;
        assert_eq!(
            (s, parse(&b)),
            (400, json!({"status": "error", "message": msg}))
        );
    }
    let (s, _, b) = t.get(0, &tok, "/api/cpe/workflow/get").await;
    assert_eq!(
        (s, parse(&b)["message"].as_str()),
        (400, Some("filename query parameter is required"))
    );
    let (s, _, b) = t.get(0, &tok, "/api/cpe/workflow/get?filename=gone").await;
    assert_eq!(
        (s, parse(&b)),
        (
            404,
            json!({"status": "error", "message": "Workflow file not found: gone.json"})
        )
    );
    let (s, _, b) = t
        .post(1, &tok, "/api/cpe/workflow/convert", api_text.as_bytes())
        .await;
    assert_eq!((s, parse(&b)["data"]["workflow"].clone()), (200, api));
}

#[tokio::test]
async fn v2_listing_shows_directories_and_files() {
    let t = Two::start().await;
    let tok = t.env.token("alice");
    for p in ["workflows%2Fb.json", "workflows%2Fsub%2FA.json"] {
        assert_eq!(
            t.post(0, &tok, &format!("/api/userdata/{p}"), b"{}")
                .await
                .0,
            200
        );
    }
    let v = t.json(1, &tok, "/api/v2/userdata?path=workflows").await;
    let got: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("directory".to_owned(), "workflows/sub".to_owned()),
            ("file".to_owned(), "workflows/sub/A.json".to_owned()),
            ("file".to_owned(), "workflows/b.json".to_owned()),
        ]
    );
    assert_eq!(v[1]["size"], 2);
    assert!(v[1]["modified"].is_f64());
    let root = t.json(1, &tok, "/v2/userdata").await;
    assert_eq!(
        root[0],
        json!({"name": "sub", "path": "workflows/sub", "type": "directory"})
    );
    assert_eq!(
        root[1],
        json!({"name": "workflows", "path": "workflows", "type": "directory"})
    );
    assert_eq!(
        t.get(1, &tok, "/api/v2/userdata?path=workflows%2Fnope")
            .await
            .0,
        404
    );
    assert_eq!(
        t.get(1, &tok, "/api/v2/userdata?path=workflows%2Fb.json")
            .await
            .0,
        400
    );
}
