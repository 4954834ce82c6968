//! `comfy-broker dev` as a new user meets it: one command, then a token and a working stack.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::basic_prompt;
use serde_json::json;
use store::test_redis::TestRedis;

#[tokio::test]
async fn dev_prints_ready_and_an_owner_token_that_runs_a_workflow() {
    let redis = TestRedis::start();
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis", &redis.url, "--sim-backends", "1"])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("REDIS_URL")
        .env("COMFY_BROKER__REDIS__KEY_PREFIX", &redis.prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ready = None;
    let mut token = None;
    while ready.is_none() || token.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dev printed its ready and token lines");
        if let Some(u) = line.strip_prefix("ready: ") {
            ready = Some(u.to_owned());
        }
        if let Some(t) = line.strip_prefix("token: ") {
            token = Some(t.to_owned());
        }
    }
    let (base, token) = (ready.unwrap(), token.unwrap());
    assert_eq!(base, format!("http://127.0.0.1:{port}"));

    let http = reqwest::Client::new();
    // The token belongs to the owner, and the catalogue appears once the worker published it.
    let mut answer = serde_json::Value::Null;
    for _ in 0..200 {
        let r = http
            .post(format!("{base}/prompt"))
            .bearer_auth(&token)
            .json(&json!({"prompt": basic_prompt(40, 30)}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            answer = r.json().await.unwrap();
            break;
        }
        assert_eq!(
            r.status(),
            503,
            "only 'no catalogue yet' may delay the first submit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = answer["prompt_id"].as_str().expect("submitted").to_owned();
    let mut entry = serde_json::Value::Null;
    for _ in 0..400 {
        let v: serde_json::Value = http
            .get(format!("{base}/history/{pid}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = v.get(&pid) {
            entry = e.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    let _ = child.kill();
    let _ = child.wait();
}
