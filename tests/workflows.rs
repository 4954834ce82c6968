//! Workflows end to end: real `comfy-broker` gateway processes over one Redis, and the
//! `comfy-broker workflows import` command seeding global and per-user workflows.

mod common;

use std::process::Command;

use common::Stack;
use serde_json::{json, Value};

/// Runs `comfy-broker workflows ...` against the stack's Redis.
fn cli(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_comfy-broker"))
        .arg("workflows")
        .args(args)
        .env_remove("REDIS_URL")
        .env("COMFY_BROKER__REDIS__URL", &stack.redis.url)
        .env("COMFY_BROKER__REDIS__KEY_PREFIX", &stack.redis.prefix)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run comfy-broker workflows");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn get(stack: &Stack, gw: usize, token: &str, path: &str) -> (u16, Vec<u8>) {
    let r = stack
        .http
        .get(format!("{}{path}", stack.gateways[gw]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn post(stack: &Stack, gw: usize, token: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let r = stack
        .http
        .post(format!("{}{path}", stack.gateways[gw]))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn imported_and_saved_workflows_are_served_by_every_gateway() {
    let stack = Stack::start(2, 0).await;
    let alice = stack.token("alice");
    let bob = stack.token("bob");

    // Seed the global space from a directory, as an operator would.
    let dir = tempfile::tempdir().unwrap();
    let raw = b"{\"nodes\": [],\n \"links\": []}\n";
    std::fs::create_dir_all(dir.path().join("portraits")).unwrap();
    std::fs::write(dir.path().join("starter.json"), raw).unwrap();
    std::fs::write(dir.path().join("portraits/face.json"), b"{\"3\": {}}").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = cli(&stack, &["import", d, "--global"]);
    assert!(ok, "{out}");
    assert!(out.contains("2 imported"), "{out}");
    // Again without replacing.
    let (ok, out) = cli(&stack, &["import", d, "--global", "--skip-existing"]);
    assert!(ok && out.contains("2 kept"), "{out}");
    // A user's own space, by id (alice's token id is `id-alice`).
    let mine = tempfile::tempdir().unwrap();
    std::fs::write(mine.path().join("starter.json"), b"{\"mine\": true}").unwrap();
    let (ok, out) = cli(
        &stack,
        &[
            "import",
            mine.path().to_str().unwrap(),
            "--user-id",
            "id-alice",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&stack, &["list", "--global"]);
    assert!(
        ok && out.contains("workflows/portraits/face.json\t9"),
        "{out}"
    );
    // An unknown account name is an error.
    assert!(!cli(&stack, &["import", d, "--user", "nobody"]).0);

    for gw in 0..2 {
        // Everyone sees the global files; alice's own starter.json wins for her.
        let (s, b) = get(&stack, gw, &bob, "/api/userdata?dir=workflows&recurse=true").await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, json!(["portraits/face.json", "starter.json"]));
        assert_eq!(
            get(&stack, gw, &bob, "/api/userdata/workflows%2Fstarter.json").await,
            (200, raw.to_vec())
        );
        assert_eq!(
            get(&stack, gw, &alice, "/api/userdata/workflows%2Fstarter.json").await,
            (200, b"{\"mine\": true}".to_vec())
        );
    }

    // Saved through gateway 0, read back byte for byte through gateway 1.
    let body = "{ \"étape\" : 1 }".as_bytes();
    let path = "/api/userdata/workflows%2F%C3%A9tape%201.json";
    assert_eq!(post(&stack, 0, &bob, path, body).await.0, 200);
    assert_eq!(get(&stack, 1, &bob, path).await, (200, body.to_vec()));
    assert_eq!(get(&stack, 1, &alice, path).await.0, 404);
    // Only admins write global workflows.
    assert_eq!(
        post(
            &stack,
            1,
            &bob,
            "/api/userdata/workflows%2Fx.json?global=true",
            b"{}"
        )
        .await
        .0,
        403
    );
    let admin = stack.token_with_role("root", auth::Role::Admin);
    assert_eq!(
        post(
            &stack,
            1,
            &admin,
            "/api/userdata/workflows%2Fx.json?global=true",
            b"{}"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(&stack, 0, &bob, "/api/cpe/workflow/get?filename=x")
            .await
            .0,
        200
    );
}
