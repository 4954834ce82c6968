//! Accounts, sessions and API tokens with the MSS-Login contract, shared by two gateway
//! processes over one Redis.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{basic_prompt, Frame, Stack, StackOptions, Ws};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PASSWORD: &str = "s3cret-pass!";

fn add_user(stack: &Stack, name: &str, role: &str) {
    let out = stack.cli(
        &["user", "add", name, "--role", role],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn login(
    stack: &Stack,
    gw: usize,
    name: &str,
    password: &str,
) -> (u16, Value, Option<String>) {
    let r = stack
        .http
        .post(format!("{}/login", stack.gateways[gw]))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), cookie)
}

async fn api_token(stack: &Stack, gw: usize, name: &str) -> String {
    let r = stack
        .http
        .post(format!("{}/mss-login/generate_token", stack.gateways[gw]))
        .json(&json!({"username": name, "password": PASSWORD, "label": "tests"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in_hours"], 720.0);
    let t = v["jwt_token"].as_str().unwrap().to_owned();
    assert_eq!(t.len(), 43);
    assert!(!t.contains('.'));
    t
}

/// GET /queue with the token in one of the four carriers.
async fn queue_status(stack: &Stack, gw: usize, token: &str, carrier: &str) -> u16 {
    let base = &stack.gateways[gw];
    let req = match carrier {
        "bearer" => stack.http.get(format!("{base}/queue")).bearer_auth(token),
        "cookie" => stack
            .http
            .get(format!("{base}/queue"))
            .header("cookie", format!("jwt_token={token}")),
        "token" => stack.http.get(format!("{base}/queue?token={token}")),
        _ => stack.http.get(format!("{base}/queue?access_token={token}")),
    };
    req.send().await.unwrap().status().as_u16()
}

async fn ws_with(stack: &Stack, gw: usize, token: &str, carrier: &str) -> Option<Value> {
    let base = stack.gateways[gw].replacen("http", "ws", 1);
    let url = match carrier {
        "token" => format!("{base}/ws?clientId=c1&token={token}"),
        "access_token" => format!("{base}/ws?clientId=c1&access_token={token}"),
        _ => format!("{base}/ws?clientId=c1"),
    };
    let mut req = url.into_client_request().unwrap();
    match carrier {
        "bearer" => {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        "cookie" => {
            req.headers_mut().insert(
                "cookie",
                HeaderValue::from_str(&format!("jwt_token={token}")).unwrap(),
            );
        }
        _ => {}
    }
    let (stream, _) = tokio_tungstenite::connect_async(req).await.ok()?;
    let mut ws = Ws { stream };
    match ws.next(Duration::from_secs(5)).await {
        Some(Frame::Json(v)) => Some(v),
        _ => None,
    }
}

async fn wait_refused(stack: &Stack, gw: usize, token: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if queue_status(stack, gw, token, "bearer").await == 401 {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "still accepted after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sessions_and_api_tokens_work_on_every_gateway_through_every_carrier() {
    let stack = Stack::start(2, 1).await;
    add_user(&stack, "alice", "power");
    let (status, body, cookie) = login(&stack, 0, "alice", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["jwt_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt.matches('.').count(), 2);
    let cookie = cookie.unwrap();
    assert!(cookie.starts_with(&format!("jwt_token={jwt}")));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));

    // The session JWT from gateway 0 works on gateway 1: prompt, queue, history, ws.
    let pid = stack
        .submit(1, &jwt, &json!({"prompt": basic_prompt(16, 16)}))
        .await;
    let entry = stack.wait_history(1, &jwt, &pid).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(queue_status(&stack, 1, &jwt, "bearer").await, 200);
    let first = ws_with(&stack, 1, &jwt, "token").await.unwrap();
    assert_eq!(first["data"]["sid"], "c1");

    // An API token from generate_token, through each of the four carriers, REST and /ws.
    let token = api_token(&stack, 0, "alice").await;
    for carrier in ["bearer", "cookie", "token", "access_token"] {
        assert_eq!(
            queue_status(&stack, 1, &token, carrier).await,
            200,
            "{carrier}"
        );
        let first = ws_with(&stack, 1, &token, carrier).await;
        assert_eq!(first.unwrap()["type"], "status", "{carrier}");
    }
    let pid = stack
        .submit(1, &token, &json!({"prompt": basic_prompt(8, 8)}))
        .await;
    stack.wait_history(0, &jwt, &pid).await;

    // me, tokens and sessions in MSS-Login's shapes.
    let (_, me) = stack.get_json(1, &token, "/mss-login/api/me").await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["role"], "power");
    assert_eq!(me["permissions"]["can_have_api_tokens"], true);
    assert_eq!(me["sfw_check"], true);
    let (_, tokens) = stack.get_json(1, &jwt, "/mss-login/api/tokens").await;
    let listed = &tokens["tokens"][0];
    assert!(listed["token_hash_prefix"]
        .as_str()
        .unwrap()
        .ends_with("..."));
    assert_eq!(listed["label"], "tests");
    assert!(!tokens.to_string().contains(&token));
    let (_, sessions) = stack.get_json(1, &jwt, "/mss-login/me/sessions").await;
    assert_eq!(sessions["sessions"][0]["is_current"], true);
}

#[tokio::test]
async fn logout_token_delete_and_disable_reach_the_other_gateway_within_five_seconds() {
    let stack = Stack::start(2, 1).await;
    add_user(&stack, "bob", "power");
    let (_, body, _) = login(&stack, 0, "bob", PASSWORD).await;
    let jwt = body["jwt_token"].as_str().unwrap().to_owned();
    assert_eq!(queue_status(&stack, 1, &jwt, "bearer").await, 200);
    let r = stack
        .http
        .post(format!("{}/logout", stack.gateways[0]))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status() == 200,
        "{}",
        r.status()
    );
    wait_refused(&stack, 1, &jwt, Duration::from_secs(5)).await;

    let token = api_token(&stack, 0, "bob").await;
    assert_eq!(queue_status(&stack, 1, &token, "bearer").await, 200);
    let (_, fresh, _) = login(&stack, 0, "bob", PASSWORD).await;
    let jwt2 = fresh["jwt_token"].as_str().unwrap().to_owned();
    let (_, tokens) = stack.get_json(0, &jwt2, "/mss-login/api/tokens").await;
    let prefix = tokens["tokens"][0]["token_hash_prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = stack
        .http
        .delete(format!("{}/mss-login/api/tokens", stack.gateways[0]))
        .bearer_auth(&jwt2)
        .json(&json!({"token_hash_prefix": prefix}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_refused(&stack, 1, &token, Duration::from_secs(5)).await;

    let token2 = api_token(&stack, 0, "bob").await;
    assert_eq!(queue_status(&stack, 1, &token2, "bearer").await, 200);
    let out = stack.cli(&["user", "disable", "bob"], "");
    assert!(out.status.success());
    wait_refused(&stack, 1, &token2, Duration::from_secs(5)).await;
    wait_refused(&stack, 1, &jwt2, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn roles_limit_what_each_user_may_do_and_see() {
    let stack = Stack::start(1, 1).await;
    for (name, role) in [
        ("gina", "guest"),
        ("uma", "user"),
        ("pat", "power"),
        ("ada", "admin"),
    ] {
        add_user(&stack, name, role);
    }
    let mut tokens = std::collections::BTreeMap::new();
    for name in ["gina", "uma", "pat", "ada"] {
        let (s, b, _) = login(&stack, 0, name, PASSWORD).await;
        assert_eq!(s, 200);
        tokens.insert(name, b["jwt_token"].as_str().unwrap().to_owned());
    }
    // A guest cannot submit.
    let (s, b) = stack
        .post_prompt(0, &tokens["gina"], &json!({"prompt": basic_prompt(8, 8)}))
        .await;
    assert_eq!(s, 403);
    assert_eq!(b["error"]["extra_info"]["permission"], "can_run");
    // A plain user may not hold API tokens.
    let r = stack
        .http
        .post(format!("{}/mss-login/generate_token", stack.gateways[0]))
        .bearer_auth(&tokens["uma"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A user cannot see or revoke another user's tokens.
    let _pat_token = api_token(&stack, 0, "pat").await;
    let (_, pat_list) = stack
        .get_json(0, &tokens["pat"], "/mss-login/api/tokens")
        .await;
    let prefix = pat_list["tokens"][0]["token_hash_prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, uma_list) = stack
        .get_json(0, &tokens["uma"], "/mss-login/api/tokens")
        .await;
    assert_eq!(uma_list["tokens"], json!([]));
    let r = stack
        .http
        .delete(format!(
            "{}/mss-login/api/tokens/{}",
            stack.gateways[0], prefix
        ))
        .bearer_auth(&tokens["uma"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, still) = stack
        .get_json(0, &tokens["pat"], "/mss-login/api/tokens")
        .await;
    assert_eq!(still["tokens"].as_array().unwrap().len(), 1);
    // Users see their own queue and history; admins see everyone's.
    let a = stack
        .submit(0, &tokens["uma"], &json!({"prompt": basic_prompt(9, 9)}))
        .await;
    let b = stack
        .submit(0, &tokens["pat"], &json!({"prompt": basic_prompt(10, 10)}))
        .await;
    stack.wait_history(0, &tokens["uma"], &a).await;
    stack.wait_history(0, &tokens["pat"], &b).await;
    let (_, h_uma) = stack.get_json(0, &tokens["uma"], "/history").await;
    assert_eq!(
        h_uma.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![&a]
    );
    let (_, h_admin) = stack.get_json(0, &tokens["ada"], "/history").await;
    let all: Vec<&String> = h_admin.as_object().unwrap().keys().collect();
    assert!(all.contains(&&a) && all.contains(&&b), "{all:?}");
    // ... by id too; a user still sees only their own.
    let (_, one) = stack
        .get_json(0, &tokens["ada"], &format!("/history/{b}"))
        .await;
    assert!(one.get(&b).is_some(), "{one}");
    let (_, none) = stack
        .get_json(0, &tokens["uma"], &format!("/history/{b}"))
        .await;
    assert_eq!(none, json!({}));
    // Users API: admins only; MSS-Login's 403 body without admin rights.
    let (s, users) = stack
        .get_json(0, &tokens["ada"], "/mss-login/api/users")
        .await;
    assert_eq!(s, 200);
    assert_eq!(users["users"].as_array().unwrap().len(), 4);
    let (s, denied) = stack
        .get_json(0, &tokens["uma"], "/mss-login/api/users")
        .await;
    assert_eq!((s, denied), (403, json!({"error": "Admin only"})));
    let r = stack
        .http
        .post(format!("{}/mss-login/api/users", stack.gateways[0]))
        .bearer_auth(&tokens["ada"])
        .json(&json!({"username": "newbie", "password": "n3w-pass!!", "role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (s, _, _) = login(&stack, 0, "newbie", "n3w-pass!!").await;
    assert_eq!(s, 200);
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn bad_tokens_and_password_guessing_are_refused_and_no_token_is_logged() {
    let logs = tempfile::tempdir().unwrap();
    let stack = Stack::with(StackOptions {
        gateways: 1,
        backends: 1,
        gateway_logs: Some(logs.path().to_path_buf()),
        ..StackOptions::default()
    })
    .await;
    add_user(&stack, "eve", "power");
    let (_, body, _) = login(&stack, 0, "eve", PASSWORD).await;
    let jwt = body["jwt_token"].as_str().unwrap().to_owned();
    let api = api_token(&stack, 0, "eve").await;
    let parts: Vec<&str> = jwt.split('.').collect();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    let keys = auth::JwtKeys::new(auth::JwtConfig {
        secret: common::SECRET.into(),
        ..auth::JwtConfig::default()
    })
    .unwrap();
    let resign = |edit: &dyn Fn(&mut auth::Claims)| {
        let mut c: auth::Claims = serde_json::from_value(claims.clone()).unwrap();
        edit(&mut c);
        keys.sign(&c).unwrap()
    };
    let now = claims["iat"].as_i64().unwrap();
    let mut tampered_claims = claims.clone();
    tampered_claims["role"] = json!("owner");
    let hs384 = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "HS384", "typ": "JWT"})),
        parts[1],
        parts[2]
    );
    let bad: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
        ),
        ("algorithm confusion", hs384),
        (
            "tampered",
            format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]),
        ),
        ("wrong iss", resign(&|c| c.iss = "someone-else".into())),
        ("wrong aud", resign(&|c| c.aud = "someone-else".into())),
        ("future nbf", resign(&|c| c.nbf = Some(now + 3600))),
        ("expired", resign(&|c| c.exp = now - 3600)),
        ("garbage", "not-a-token".into()),
        ("unknown api token", "A".repeat(43)),
    ];
    for (what, t) in &bad {
        for carrier in ["bearer", "token"] {
            assert_eq!(
                queue_status(&stack, 0, t, carrier).await,
                401,
                "{what} via {carrier}"
            );
        }
    }
    // Twenty wrong passwords in a row: throttled with 429 and Retry-After.
    let mut last = 0;
    let mut retry_after = None;
    for _ in 0..20 {
        let r = stack
            .http
            .post(format!("{}/login", stack.gateways[0]))
            .json(&json!({"username": "eve", "password": "wrong-guess-1!"}))
            .send()
            .await
            .unwrap();
        last = r.status().as_u16();
        retry_after = r.headers().get("retry-after").cloned();
    }
    assert_eq!(last, 429);
    assert!(retry_after.is_some());
    // Even the right password is throttled now.
    let (s, _, _) = login(&stack, 0, "eve", PASSWORD).await;
    assert_eq!(s, 429);

    // The gateway's debug log never contains a token or a password.
    drop(stack);
    let log = std::fs::read_to_string(logs.path().join("gateway0.log")).unwrap();
    assert!(log.len() > 100, "the log captured something");
    for secret in [jwt.as_str(), api.as_str(), PASSWORD, parts[2]] {
        assert!(!log.contains(secret), "a secret leaked into the log");
    }
}
