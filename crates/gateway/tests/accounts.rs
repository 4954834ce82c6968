//! The default authenticator against the accounts in Redis: API tokens, revoked sessions,
//! disabled users, current roles.

mod common;

use std::time::Duration;

use auth::Role;
use common::{basic_prompt, Env};
use gateway::GatewayConfig;
use serde_json::{json, Value};
use store::{ApiTokenInfo, CreateUser, NewUser, SessionInfo, User};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn user(env: &Env, name: &str, role: &str) -> User {
    match env
        .store
        .create_user(&NewUser {
            username: name.into(),
            password_hash: "x".into(),
            role: role.into(),
        })
        .await
        .unwrap()
    {
        CreateUser::Created(u) => u,
        CreateUser::Exists => panic!("exists"),
    }
}

fn quick() -> GatewayConfig {
    GatewayConfig {
        auth_cache_ttl: Duration::from_millis(100),
        ..GatewayConfig::default()
    }
}

#[tokio::test]
async fn api_tokens_authenticate_as_their_user() {
    let env = Env::start_with(quick(), true).await;
    let dora = user(&env, "dora", "user").await;
    let (raw, hash) = auth::generate_api_token();
    env.store
        .create_api_token(&ApiTokenInfo {
            hash,
            user_id: dora.id.clone(),
            username: "dora".into(),
            label: "ci".into(),
            created_ms: now_ms(),
            expires_ms: None,
            last_used_ms: None,
        })
        .await
        .unwrap();
    let r = env
        .post_json(&raw, "/prompt", &json!({"prompt": basic_prompt()}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        env.store
            .queue("default", &dora.id)
            .await
            .unwrap()
            .pending
            .len(),
        1
    );
    // The same user's session token sees the same queue.
    let jwt = env.token(&dora.id);
    let q = env.get_json(&jwt, "/queue").await;
    assert_eq!(q["queue_pending"].as_array().unwrap().len(), 1);
    // On /ws too.
    let (_ws, first) = env.ws(&raw, Some("c")).await;
    assert_eq!(first["data"]["status"]["exec_info"]["queue_remaining"], 1);

    // The use is recorded (MSS-Login's last_used_at_iso).
    let mut used = None;
    for _ in 0..40 {
        used = env
            .store
            .api_tokens_of(&dora.id)
            .await
            .unwrap()
            .first()
            .and_then(|t| t.last_used_ms)
            .filter(|ms| *ms > 0);
        if used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(used.is_some(), "last_used never recorded");

    let (unknown, _) = auth::generate_api_token();
    let r = env.get(&unknown, "/queue").await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(!body.to_string().contains(&unknown));

    // Revoking the token takes effect within the cache lifetime.
    assert_eq!(env.store.revoke_api_tokens(&dora.id, "").await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.get(&raw, "/queue").await.status(), 401);
}

#[tokio::test]
async fn revoked_sessions_and_disabled_users_are_refused() {
    let env = Env::start_with(quick(), true).await;
    let erin = user(&env, "erin", "user").await;
    let (jwt, claims) = env
        .keys
        .mint(&erin.id, "erin", Role::User, Duration::from_secs(600))
        .unwrap();
    env.store
        .create_session(&SessionInfo {
            jti: claims.jti.clone(),
            user_id: erin.id.clone(),
            created_ms: now_ms(),
            last_used_ms: None,
            expires_ms: now_ms() + 600_000,
            revoked: false,
        })
        .await
        .unwrap();
    assert_eq!(env.get(&jwt, "/queue").await.status(), 200);
    assert!(env.store.revoke_session(&claims.jti, None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = env.get(&jwt, "/queue").await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));

    // A disabled user's other tokens stop working too.
    let other = env.token(&erin.id);
    assert_eq!(env.get(&other, "/queue").await.status(), 200);
    env.store
        .update_user("erin", &[("disabled", "1".into())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.get(&other, "/queue").await.status(), 401);
}

#[tokio::test]
async fn the_accounts_role_wins_over_the_token_claim() {
    let env = Env::start_with(quick(), true).await;
    let gus = user(&env, "gus", "guest").await;
    // A token minted when gus was an owner does not let the guest run.
    let owner_token = env.token_role(&gus.id, Role::Owner);
    let r = env
        .post_json(&owner_token, "/prompt", &json!({"prompt": basic_prompt()}))
        .await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn open_sockets_of_a_revoked_session_are_closed_with_1008() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    // quick(): tokens of open sockets are re-checked every 100 ms.
    let env = Env::start_with(quick(), true).await;
    let fay = user(&env, "fay", "user").await;
    let (jwt, claims) = env
        .keys
        .mint(&fay.id, "fay", Role::User, Duration::from_secs(600))
        .unwrap();
    env.store
        .create_session(&SessionInfo {
            jti: claims.jti.clone(),
            user_id: fay.id.clone(),
            created_ms: now_ms(),
            last_used_ms: None,
            expires_ms: now_ms() + 600_000,
            revoked: false,
        })
        .await
        .unwrap();
    let (mut ws, _) = env.ws(&jwt, Some("c")).await;
    let (mut other, _) = env.ws(&env.token("someone-else"), Some("c")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.store.revoke_session(&claims.jti, None).await.unwrap();
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = frame {
            code = Some(f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Policy));
    // Other users' sockets stay open.
    assert!(common::silent(&mut other, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn admins_cannot_touch_the_owner_or_other_admins_nor_make_admins() {
    let env = Env::start_with(quick(), true).await;
    let boss = user(&env, "boss", "owner").await;
    let adm = user(&env, "adm", "admin").await;
    let _adm2 = user(&env, "adm2", "admin").await;
    let _alice = user(&env, "alice", "user").await;
    let as_admin = env.token_role(&adm.id, Role::Admin);
    let as_owner = env.token_role(&boss.id, Role::Owner);
    let call = |method: reqwest::Method, token: &str, name: &str, body: Option<Value>| {
        let mut rb = env
            .http
            .request(method, format!("{}/mss-login/api/users/{name}", env.base))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send()
    };
    let put = reqwest::Method::PUT;
    let del = reqwest::Method::DELETE;
    // The owner and other admins are out of an admin's reach: no password reset, no disable,
    // no delete.
    for (name, body) in [
        ("boss", json!({"password": "Takeover-12345!"})),
        ("boss", json!({"disabled": true})),
        ("adm2", json!({"password": "Takeover-12345!"})),
        ("adm2", json!({"role": "user"})),
    ] {
        let r = call(put.clone(), &as_admin, name, Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name} {body}");
    }
    for name in ["boss", "adm2"] {
        let r = call(del.clone(), &as_admin, name, None).await.unwrap();
        assert_eq!(r.status(), 403, "delete {name}");
    }
    assert!(!env.store.user("boss").await.unwrap().unwrap().disabled);
    assert!(env.store.user("adm2").await.unwrap().is_some());
    // Promoting to admin is the owner's call.
    let r = call(
        put.clone(),
        &as_admin,
        "alice",
        Some(json!({"role": "admin"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(env.store.user("alice").await.unwrap().unwrap().role, "user");
    // Users below admin are still managed by admins; the owner may do all of the above.
    let r = call(
        put.clone(),
        &as_admin,
        "alice",
        Some(json!({"sfw_check": false})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        put.clone(),
        &as_owner,
        "alice",
        Some(json!({"role": "admin"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(put, &as_owner, "adm2", Some(json!({"disabled": true})))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(del, &as_owner, "adm2", None).await.unwrap();
    assert_eq!(r.status(), 200);
}
