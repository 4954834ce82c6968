//! The command-line client (`comfy-broker run|queue|history|cancel|login|logout`) as a user
//! runs it: real processes against a real stack (Redis, gateway, worker, simulated ComfyUI).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{basic_prompt, Stack};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A client command with a clean environment: its own config dir, the stack's URL and a token.
fn client(config_dir: &Path, url: &str, token: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfy-broker"));
    cmd.env_remove("COMFY_BROKER_URL")
        .env_remove("COMFY_BROKER_TOKEN")
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", config_dir)
        .env("HOME", config_dir)
        .env("COMFY_BROKER_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("COMFY_BROKER_TOKEN", t);
    }
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn output(mut cmd: Command) -> Out {
    let o = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("client finished in time")
        .expect("client ran");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn write_workflow(dir: &Path, graph: &Value) -> std::path::PathBuf {
    let p = dir.join("workflow.json");
    std::fs::write(&p, graph.to_string()).unwrap();
    p
}

/// Every stdout line is one JSON object; returns them.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

async fn set_faults(stack: &Stack, faults: Value) {
    let r = stack
        .http
        .post(format!("{}/sim/faults", stack.backends[0]))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

fn prompt_id_of(lines: &[Value]) -> String {
    lines
        .iter()
        .find(|l| l["type"] == "submitted")
        .and_then(|l| l["data"]["prompt_id"].as_str())
        .expect("a submitted line")
        .to_owned()
}

#[tokio::test]
async fn run_downloads_the_png_and_set_changes_its_size() {
    let stack = Stack::start(1, 1).await;
    let token = stack.token("alice");
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(64, 64));
    let out = dir.path().join("out");

    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&token));
    cmd.arg("run").arg(&wf).arg("--out").arg(&out);
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    // Not a terminal: one JSON object per line, ComfyUI's events then the result.
    let lines = json_lines(&r.stdout);
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    for t in [
        "submitted",
        "execution_start",
        "executing",
        "executed",
        "execution_success",
        "output",
        "result",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["data"]["status"], "success");
    let files = result["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    let png = Path::new(files[0].as_str().unwrap());
    assert!(png.starts_with(&out), "{png:?}");
    let img = image::open(png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(
        r.stderr.is_empty(),
        "quiet on stderr by default: {}",
        r.stderr
    );

    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&token));
    cmd.arg("run")
        .arg(&wf)
        .args(["--set", "1.width=128", "--json", "--out"])
        .arg(&out);
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let lines = json_lines(&r.stdout);
    let files = lines.last().unwrap()["data"]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 1);
    let img = image::open(files[0].as_str().unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (128, 64));
    // The first file is still there: outputs never overwrite each other.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[tokio::test]
async fn a_failing_node_exits_1_naming_the_node_and_message() {
    let stack = Stack::start(1, 1).await;
    set_faults(
        &stack,
        json!({"fail_at": "2", "fail_message": "boom: disk on fire"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(32, 32));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&stack.token("bob")));
    cmd.arg("run").arg(&wf).arg("--out").arg(dir.path());
    let r = output(cmd).await;
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("node 2 (SaveImage)") && r.stderr.contains("boom: disk on fire"),
        "stderr: {}",
        r.stderr
    );
    let lines = json_lines(&r.stdout);
    assert_eq!(lines.last().unwrap()["data"]["status"], "error");

    // A graph the server refuses: exit 1, each node error on its own line.
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&stack.token("bob")));
    cmd.arg("run").arg(&wf).args(["--set", "1.width=999999"]);
    let r = output(cmd).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused the workflow") && r.stderr.contains("node 1 (EmptyImage)"),
        "stderr: {}",
        r.stderr
    );
    // Nothing was queued, so the result names no prompt id.
    let lines = json_lines(&r.stdout);
    let result = &lines.last().unwrap()["data"];
    assert_eq!(result["status"], "failed", "{}", r.stdout);
    assert!(result["prompt_id"].is_null(), "{}", r.stdout);
}

#[tokio::test]
async fn bad_credentials_and_unreachable_servers_exit_2_clearly() {
    let stack = Stack::start(1, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(32, 32));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some("not-a-valid-token"));
    cmd.arg("run").arg(&wf);
    let r = output(cmd).await;
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("authentication failed") && r.stderr.contains("comfy-broker login"),
        "stderr: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("not-a-valid-token"),
        "token echoed: {}",
        r.stderr
    );

    let mut cmd = client(dir.path(), &stack.gateways[0], Some("not-a-valid-token"));
    cmd.arg("queue");
    let r = output(cmd).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);

    // Nothing listening.
    let port = common::free_port();
    let mut cmd = client(dir.path(), &format!("http://127.0.0.1:{port}"), Some("t"));
    cmd.arg("queue");
    let r = output(cmd).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot connect"), "{}", r.stderr);

    // No token anywhere.
    let mut cmd = client(dir.path(), &stack.gateways[0], None);
    cmd.arg("queue");
    let r = output(cmd).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not logged in"), "{}", r.stderr);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ui = json!({"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": []});
    let wf = write_workflow(dir.path(), &ui);
    let mut cmd = client(dir.path(), "http://127.0.0.1:9", Some("t"));
    cmd.arg("run").arg(&wf);
    let r = output(cmd).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Export (API)"), "{}", r.stderr);

    let wf = write_workflow(dir.path(), &basic_prompt(8, 8));
    let mut cmd = client(dir.path(), "http://127.0.0.1:9", Some("t"));
    cmd.arg("run").arg(&wf).args(["--set", "7.width=3"]);
    let r = output(cmd).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no node \"7\""), "{}", r.stderr);

    let mut cmd = client(dir.path(), "http://127.0.0.1:9", Some("t"));
    cmd.args(["run", "--no-such-flag"]);
    assert_eq!(output(cmd).await.code, 2);
}

#[tokio::test]
async fn timeout_on_a_slow_job_exits_3() {
    let stack = Stack::start(1, 1).await;
    set_faults(&stack, json!({"work_ms": 4000})).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(32, 32));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&stack.token("carol")));
    cmd.arg("run").arg(&wf).args(["--timeout", "1s"]);
    let t0 = Instant::now();
    let r = output(cmd).await;
    assert_eq!(r.code, 3, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    let lines = json_lines(&r.stdout);
    assert_eq!(lines.last().unwrap()["data"]["status"], "timeout");
}

#[tokio::test]
async fn sigint_interrupts_the_job_on_the_server() {
    let stack = Stack::start(1, 1).await;
    // Node 1 is slow; the interrupt lands before node 2 runs.
    set_faults(&stack, json!({"node_work_ms": {"1": 3000}})).await;
    let token = stack.token("dave");
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(48, 48));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(&token));
    cmd.arg("run").arg(&wf);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut prompt_id = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = tokio::time::timeout_at(deadline, stdout.next_line())
            .await
            .expect("node 1 started in time")
            .unwrap()
            .expect("client still running");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "submitted" {
            prompt_id = v["data"]["prompt_id"].as_str().map(str::to_owned);
        }
        if v["type"] == "executing" && v["data"]["node"] == "1" {
            break;
        }
    }
    let prompt_id = prompt_id.expect("submitted line first");
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("client exits after SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(err.contains("interrupt"), "{err}");
    let entry = stack.wait_history(0, &token, &prompt_id).await;
    let messages = entry["status"]["messages"].as_array().unwrap();
    assert_eq!(
        messages.last().unwrap()[0],
        "execution_interrupted",
        "{entry}"
    );
}

#[tokio::test]
async fn no_wait_then_queue_history_and_cancel() {
    let stack = Stack::start(1, 1).await;
    set_faults(&stack, json!({"node_work_ms": {"1": 4000}})).await;
    let token = stack.token("erin");
    let dir = tempfile::tempdir().unwrap();
    let gw = stack.gateways[0].clone();
    let mut ids = Vec::new();
    for w in [16, 17] {
        let wf = write_workflow(dir.path(), &basic_prompt(w, 16));
        let mut cmd = client(dir.path(), &gw, Some(&token));
        cmd.arg("run").arg(&wf).arg("--no-wait");
        let r = output(cmd).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        ids.push(prompt_id_of(&json_lines(&r.stdout)));
    }
    let mut cmd = client(dir.path(), &gw, Some(&token));
    cmd.arg("queue");
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("STATE"), "{}", r.stdout);
    for id in &ids {
        assert!(r.stdout.contains(id.as_str()), "{id} not in {}", r.stdout);
    }
    let mut cmd = client(dir.path(), &gw, Some(&token));
    cmd.arg("cancel").args(&ids);
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(": cancelled").count(), 2, "{}", r.stdout);
    // The running one ends interrupted and shows in history; the pending one never ran.
    let entry = stack.wait_history(0, &token, &ids[0]).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let mut cmd = client(dir.path(), &gw, Some(&token));
    cmd.args(["history", ids[0].as_str()]);
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("interrupted"), "{}", r.stdout);
    let mut cmd = client(dir.path(), &gw, Some(&token));
    cmd.arg("history");
    let r = output(cmd).await;
    assert!(r.stdout.contains(ids[0].as_str()), "{}", r.stdout);
    // Cancelling again: nothing to cancel, exit 1.
    let mut cmd = client(dir.path(), &gw, Some(&token));
    cmd.arg("cancel").arg(&ids[0]);
    assert_eq!(output(cmd).await.code, 1);
}

/// One request as the fake server saw it.
struct FakeRequest {
    /// `METHOD /path?query`.
    target: String,
    /// The bearer token, if any.
    bearer: Option<String>,
    body: String,
}

type Handler = std::sync::Arc<dyn Fn(&FakeRequest) -> (u16, String) + Send + Sync>;

/// A minimal HTTP/1.1 server for routes the gateway does not serve yet (accounts, userdata):
/// every request goes to `handler`; returns its URL and a log of `target authed body` lines.
async fn fake_server(handler: Handler) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (tx, handler) = (tx.clone(), handler.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body_start) = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).into_owned(), i + 4);
                    }
                };
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < body_start + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = head.lines().next().unwrap_or("");
                let target = line
                    .rsplit_once(' ')
                    .map(|(t, _)| t)
                    .unwrap_or(line)
                    .to_owned();
                let req = FakeRequest {
                    target,
                    bearer: header("authorization")
                        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)),
                    body: String::from_utf8_lossy(&buf[body_start..]).into_owned(),
                };
                let (status, answer) = handler(&req);
                let _ = tx.send(format!(
                    "{} authed={} {}",
                    req.target,
                    req.bearer.is_some(),
                    req.body
                ));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, rx)
}

/// A stand-in for the token routes (until they land on main): `POST /mss-login/generate_token`,
/// `GET /queue` and `DELETE /mss-login/api/tokens` (only with the issued token).
async fn fake_login_server(
    token: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    fake_server(std::sync::Arc::new(move |req: &FakeRequest| {
        let authed = req.bearer.as_deref() == Some(token);
        if req.target == "POST /mss-login/generate_token" {
            let v: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
            if v["username"] == "alice" && v["password"] == "pw with spaces" {
                let ok = json!({"message": "API token created.", "jwt_token": token, "expires_in_hours": 720.0});
                (200, ok.to_string())
            } else {
                (401, json!({"error": "Invalid credentials."}).to_string())
            }
        } else if !authed {
            (401, json!({"error": "Authentication required."}).to_string())
        } else if req.target == "GET /queue" {
            (200, json!({"queue_running": [], "queue_pending": []}).to_string())
        } else if req.target == "DELETE /mss-login/api/tokens" {
            (200, json!({"message": "Token revoked."}).to_string())
        } else {
            (404, json!({"error": "no such route"}).to_string())
        }
    }))
    .await
}

#[cfg(unix)]
#[tokio::test]
async fn login_stores_an_owner_only_token_that_is_never_printed_and_logout_revokes_it() {
    use std::os::unix::fs::PermissionsExt;
    const TOKEN: &str = "q3Zr0x-7M2aV9_kLp1sT4uWbYcD8eF6gHiJkLmNoPqR";
    let (url, mut seen) = fake_login_server(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let login = |password: &'static str| {
        let mut cmd = client(dir.path(), &url, None);
        cmd.env_remove("COMFY_BROKER_URL")
            .args([
                "login",
                "--url",
                &url,
                "--username",
                "alice",
                "--password-stdin",
            ])
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        async move {
            stdin.write_all(password.as_bytes()).await.unwrap();
            stdin.write_all(b"\n").await.unwrap();
            drop(stdin);
            let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            Out {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }
        }
    };
    let creds = dir.path().join("comfy-broker").join("credentials.json");

    let r = login("wrong").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Invalid credentials"), "{}", r.stderr);
    assert!(!creds.exists());

    let r = login("pw with spaces").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN));
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    assert_eq!(stored["token"], TOKEN);
    assert_eq!(stored["url"], url.as_str());

    // Other commands use the stored login (no URL, no token given).
    let mut cmd = client(dir.path(), &url, None);
    cmd.env_remove("COMFY_BROKER_URL").arg("queue");
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN));

    let mut cmd = client(dir.path(), &url, None);
    cmd.env_remove("COMFY_BROKER_URL").arg("logout");
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!creds.exists());
    let mut asked = Vec::new();
    while let Ok(l) = seen.try_recv() {
        asked.push(l);
    }
    let revoke = asked
        .iter()
        .find(|l| l.starts_with("DELETE /mss-login/api/tokens"))
        .unwrap_or_else(|| panic!("no revocation in {asked:?}"));
    assert!(revoke.contains("authed=true"), "{revoke}");
    let prefix = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes())
    );
    assert!(
        revoke.contains(&prefix),
        "the full hash names the token: {revoke}"
    );
    assert!(revoke.contains("token_hash_prefix"), "{revoke}");
    assert!(
        !revoke.contains(TOKEN),
        "the token itself is never sent as the prefix"
    );
}

/// A TCP proxy in front of a gateway that can cut every open connection and refuse WebSocket
/// upgrades (so only polling can tell the client its job ended).
struct CutProxy {
    url: String,
    cut: tokio::sync::broadcast::Sender<()>,
    block_ws: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// This many `POST /prompt` get a 503 with `Retry-After: 1`.
    busy_prompts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// This many `POST /prompt` reach the gateway but lose their answer.
    lost_answers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Takes one from `n` if it is positive.
fn take_one(n: &std::sync::atomic::AtomicUsize) -> bool {
    use std::sync::atomic::Ordering;
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl CutProxy {
    async fn start(upstream: &str) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (cut, _) = tokio::sync::broadcast::channel::<()>(4);
        let block_ws = std::sync::Arc::new(AtomicBool::new(false));
        let busy_prompts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lost_answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut2, block2) = (cut.clone(), block_ws.clone());
        let (busy2, lost2) = (busy_prompts.clone(), lost_answers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut2.subscribe();
                let (upstream, block) = (upstream.clone(), block2.clone());
                let (busy, lost) = (busy2.clone(), lost2.clone());
                tokio::spawn(async move {
                    let mut first = vec![0u8; 8192];
                    let Ok(n) = down.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    let head = String::from_utf8_lossy(&first).to_lowercase();
                    if block.load(Ordering::SeqCst) && head.contains("upgrade: websocket") {
                        let _ = down
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let is_submit = head.starts_with("post /prompt ");
                    if is_submit && take_one(&busy) {
                        let body = r#"{"error": {"type": "busy", "message": "Too many requests", "details": "", "extra_info": {}}, "node_errors": {}}"#;
                        let resp = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = down.write_all(resp.as_bytes()).await;
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if up.write_all(&first).await.is_err() {
                        return;
                    }
                    if is_submit && take_one(&lost) {
                        // Forward the request, and drop the connection once the answer starts.
                        let (mut up_r, mut up_w) = up.into_split();
                        let mut answer = [0u8; 1];
                        tokio::select! {
                            _ = tokio::io::copy(&mut down, &mut up_w) => {}
                            _ = up_r.read(&mut answer) => {}
                        }
                        return;
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        CutProxy {
            url,
            cut,
            block_ws,
            busy_prompts,
            lost_answers,
        }
    }
}

#[tokio::test]
async fn a_dropped_socket_that_cannot_come_back_falls_back_to_polling() {
    dropped_socket(true).await;
}

#[tokio::test]
async fn a_dropped_socket_is_reopened_with_the_same_client_id() {
    dropped_socket(false).await;
}

async fn dropped_socket(block_ws: bool) {
    let stack = Stack::start(1, 1).await;
    set_faults(&stack, json!({"node_work_ms": {"1": 1500}})).await;
    let proxy = CutProxy::start(&stack.gateways[0]).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(40, 24));
    let out = dir.path().join("out");
    let mut cmd = client(dir.path(), &proxy.url, Some(&stack.token("frank")));
    cmd.arg("run")
        .arg(&wf)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "20s"]);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = tokio::time::timeout_at(deadline, stdout.next_line())
            .await
            .expect("node 1 started in time")
            .unwrap()
            .expect("client still running");
        let v: Value = serde_json::from_str(&line).unwrap();
        lines.push(v.clone());
        if v["type"] == "executing" && v["data"]["node"] == "1" {
            break;
        }
    }
    // The socket dies (and, with `block_ws`, can never be opened again).
    proxy
        .block_ws
        .store(block_ws, std::sync::atomic::Ordering::SeqCst);
    proxy.cut.send(()).unwrap();
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, stdout.next_line())
        .await
        .expect("client finished in time")
    {
        lines.push(serde_json::from_str(&line).unwrap());
    }
    let status = child.wait().await.unwrap();
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(status.code(), Some(0), "{types:?}");
    assert!(types.contains(&"reconnecting"), "{types:?}");
    assert_eq!(types.contains(&"reconnected"), !block_ws, "{types:?}");
    if !block_ws {
        // Same clientId: the submitter-only events reach the new socket.
        assert!(types.contains(&"execution_success"), "{types:?}");
    }
    let result = lines.last().unwrap();
    assert_eq!(result["data"]["status"], "success", "{result}");
    let file = result["data"]["files"][0].as_str().unwrap();
    let img = image::open(file).unwrap();
    assert_eq!((img.width(), img.height()), (40, 24));
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare simulated ComfyUI node (no broker): the client speaks plain ComfyUI, so it runs there
/// too. Used for what the gateway does not serve yet (uploads).
async fn bare_sim() -> (KillOnDrop, String) {
    let port = common::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("{url}/system_stats"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "sim never answered");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    (KillOnDrop(child), url)
}

#[tokio::test]
async fn local_images_are_uploaded_and_the_graph_rewritten() {
    let (_sim, url) = bare_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut img = image::RgbImage::new(10, 6);
    img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
    img.save(dir.path().join("input.png")).unwrap();
    // The path is relative to the workflow file's directory.
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}
    });
    let wf = write_workflow(dir.path(), &graph);
    let out = dir.path().join("out");
    let mut cmd = client(dir.path(), &url, Some("any"));
    cmd.current_dir("/")
        .arg("run")
        .arg(&wf)
        .arg("--out")
        .arg(&out);
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = json_lines(&r.stdout);
    let up = lines
        .iter()
        .find(|l| l["type"] == "uploaded")
        .expect("an uploaded line");
    assert_eq!(up["data"]["node"], "1");
    assert_eq!(up["data"]["name"], "input.png");
    let file = lines.last().unwrap()["data"]["files"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let got = image::open(file).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), (10, 6));
    assert_eq!(got.get_pixel(0, 0), &image::Rgb([0, 255, 255]));
    assert_eq!(got.get_pixel(1, 1), &image::Rgb([255, 255, 255]));
}

#[tokio::test]
async fn workflows_ls_get_put_rm_over_the_userdata_api() {
    let stack = Stack::start(1, 0).await;
    let url = stack.gateways[0].clone();
    let token = stack.token("kim");
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(8, 8));
    let run = |args: Vec<String>| {
        let mut cmd = client(dir.path(), &url, Some(&token));
        cmd.args(args);
        output(cmd)
    };
    let a = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let wf_s = wf.to_str().unwrap().to_owned();

    let r = run(a("workflows ls")).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    let r = run(vec![
        "workflows".into(),
        "put".into(),
        wf_s.clone(),
        "--name".into(),
        "my flow".into(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Stored where ComfyUI's own clients look for it.
    let (status, _) = stack
        .get_json(0, &token, "/api/userdata/workflows%2Fmy%20flow.json")
        .await;
    assert_eq!(status, 200);
    let r = run(a("workflows ls")).await;
    assert_eq!(r.stdout, "my flow.json\n");
    // Someone else does not see it.
    let mut cmd = client(dir.path(), &url, Some(&stack.token("lee")));
    cmd.args(["workflows", "ls"]);
    let r = output(cmd).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    // No silent overwrite.
    let r = run(vec![
        "workflows".into(),
        "put".into(),
        wf_s.clone(),
        "--name".into(),
        "my flow".into(),
    ])
    .await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    let r = run(vec![
        "workflows".into(),
        "put".into(),
        wf_s.clone(),
        "--name".into(),
        "my flow".into(),
        "--force".into(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(vec!["workflows".into(), "get".into(), "my flow".into()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(got, basic_prompt(8, 8));
    let r = run(vec!["workflows".into(), "rm".into(), "my flow".into()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(vec!["workflows".into(), "rm".into(), "my flow".into()]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no such workflow"), "{}", r.stderr);
    let r = run(a("workflows get nope")).await;
    assert_eq!(r.code, 1);
}

#[tokio::test]
async fn a_busy_server_and_a_lost_submit_answer_are_retried_without_a_second_job() {
    let stack = Stack::start(1, 1).await;
    let proxy = CutProxy::start(&stack.gateways[0]).await;
    proxy
        .busy_prompts
        .store(1, std::sync::atomic::Ordering::SeqCst);
    proxy
        .lost_answers
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let token = stack.token("gina");
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(20, 20));
    let mut cmd = client(dir.path(), &proxy.url, Some(&token));
    cmd.arg("run").arg(&wf).arg("--out").arg(dir.path());
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines = json_lines(&r.stdout);
    assert_eq!(lines.last().unwrap()["data"]["status"], "success");
    // Three submits reached the proxy; the gateway queued one job.
    let (_, history) = stack.get_json(0, &token, "/history").await;
    assert_eq!(history.as_object().unwrap().len(), 1, "{history}");
    assert_eq!(
        proxy.busy_prompts.load(std::sync::atomic::Ordering::SeqCst)
            + proxy.lost_answers.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Runs an admin command of the binary against the stack's Redis; returns its stdout.
fn admin(stack: &Stack, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .args(args)
        .env_remove("REDIS_URL")
        .env("COMFY_BROKER__REDIS__URL", &stack.redis.url)
        .env("COMFY_BROKER__REDIS__KEY_PREFIX", &stack.redis.prefix)
        .env("COMFY_BROKER__AUTH__SECRET", common::SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn an_api_token_from_token_create_runs_workflows() {
    let stack = Stack::start(1, 1).await;
    admin(
        &stack,
        &[
            "user",
            "add",
            "hank",
            "--role",
            "user",
            "--password",
            "hunter2-long",
        ],
    );
    let token = admin(
        &stack,
        &["token", "create", "--user", "hank", "--name", "cli"],
    );
    let token = token.trim();
    assert!(
        !token.is_empty() && !token.contains('.'),
        "an opaque API token"
    );
    let dir = tempfile::tempdir().unwrap();
    let wf = write_workflow(dir.path(), &basic_prompt(24, 24));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(token));
    cmd.arg("run").arg(&wf).arg("--out").arg(dir.path());
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains(token) && !r.stderr.contains(token));
    let mut cmd = client(dir.path(), &stack.gateways[0], Some(token));
    cmd.arg("history");
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.lines().count(),
        2,
        "header + one job: {}",
        r.stdout
    );
}

/// `comfy-broker login --url gw --username NAME --password-stdin` with `password` on stdin.
async fn cli_login(config_dir: &Path, gw: &str, name: &str, password: &str) -> Out {
    let mut cmd = client(config_dir, gw, None);
    cmd.env_remove("COMFY_BROKER_URL")
        .args(["login", "--url", gw, "--username", name, "--password-stdin"])
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn login_run_logout_against_the_broker() {
    use std::os::unix::fs::PermissionsExt;
    let stack = Stack::start(1, 1).await;
    admin(
        &stack,
        &[
            "user",
            "add",
            "ivy",
            "--role",
            "power",
            "--password",
            "correct-horse-42",
        ],
    );
    admin(
        &stack,
        &[
            "user",
            "add",
            "jack",
            "--role",
            "user",
            "--password",
            "correct-horse-43",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = stack.gateways[0].clone();
    let creds = dir.path().join("comfy-broker").join("credentials.json");

    // Wrong password, and a role without API tokens: exit 2, clear messages, nothing stored.
    let r = cli_login(dir.path(), &gw, "ivy", "wrong-horse-42").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("login failed"), "{}", r.stderr);
    let r = cli_login(dir.path(), &gw, "jack", "correct-horse-43").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("permission"), "{}", r.stderr);
    assert!(!creds.exists());

    let r = cli_login(dir.path(), &gw, "ivy", "correct-horse-42").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    let token = stored["token"].as_str().unwrap().to_owned();
    assert!(!r.stderr.contains(&token) && !r.stdout.contains(&token));

    // The stored login runs a workflow.
    let wf = write_workflow(dir.path(), &basic_prompt(16, 16));
    let mut cmd = client(dir.path(), &gw, None);
    cmd.env_remove("COMFY_BROKER_URL")
        .arg("run")
        .arg(&wf)
        .arg("--out")
        .arg(dir.path());
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    // Logout revokes it on the server.
    let mut cmd = client(dir.path(), &gw, None);
    cmd.env_remove("COMFY_BROKER_URL").arg("logout");
    let r = output(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("token revoked"), "{}", r.stderr);
    assert!(!creds.exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = client(dir.path(), &gw, Some(&token));
        cmd.arg("queue");
        let r = output(cmd).await;
        if r.code == 2 {
            assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the token still works after logout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
