//! Accounts against a real Redis.

use store::test_redis::TestRedis;
use store::{ApiTokenInfo, CreateUser, NewUser, SessionInfo, Store};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn users_tokens_and_sessions() {
    let r = TestRedis::start();
    let s = Store::connect(r.store_config()).await.unwrap();
    let new = NewUser {
        username: "alice".into(),
        password_hash: "$argon2id$fake".into(),
        role: "user".into(),
    };
    let CreateUser::Created(alice) = s.create_user(&new).await.unwrap() else {
        panic!()
    };
    assert_eq!(s.create_user(&new).await.unwrap(), CreateUser::Exists);
    assert_eq!(s.user("alice").await.unwrap().unwrap(), alice);
    assert_eq!(s.user_by_id(&alice.id).await.unwrap().unwrap(), alice);
    assert_eq!(
        s.user_with_hash("alice").await.unwrap().unwrap().1,
        "$argon2id$fake"
    );
    assert!(alice.sfw_check && !alice.disabled);
    assert!(s
        .update_user("alice", &[("disabled", "1".into())])
        .await
        .unwrap());
    assert!(s.user("alice").await.unwrap().unwrap().disabled);
    assert!(!s
        .update_user("nobody", &[("disabled", "1".into())])
        .await
        .unwrap());

    let tok = ApiTokenInfo {
        hash: "ab".repeat(32),
        user_id: alice.id.clone(),
        username: "alice".into(),
        label: "phone".into(),
        created_ms: now(),
        expires_ms: Some(now() + 60_000),
        last_used_ms: None,
    };
    s.create_api_token(&tok).await.unwrap();
    assert_eq!(
        s.api_token(&tok.hash).await.unwrap().unwrap().label,
        "phone"
    );
    s.touch_api_token(&tok.hash).await.unwrap();
    assert!(s
        .api_token(&tok.hash)
        .await
        .unwrap()
        .unwrap()
        .last_used_ms
        .is_some());
    assert_eq!(s.api_tokens_of(&alice.id).await.unwrap().len(), 1);
    assert_eq!(
        s.revoke_api_tokens("someone-else", "abab").await.unwrap(),
        0
    );
    assert_eq!(s.revoke_api_tokens(&alice.id, "abababab").await.unwrap(), 1);
    assert!(s.api_token(&tok.hash).await.unwrap().is_none());

    let sess = SessionInfo {
        jti: "j1".into(),
        user_id: alice.id.clone(),
        created_ms: now(),
        last_used_ms: None,
        expires_ms: now() + 60_000,
        revoked: false,
    };
    s.create_session(&sess).await.unwrap();
    assert_eq!(s.sessions_of(&alice.id).await.unwrap().len(), 1);
    assert!(!s.revoke_session("j1", Some("other")).await.unwrap());
    assert!(s.revoke_session("j1", Some(&alice.id)).await.unwrap());
    assert!(s.session("j1").await.unwrap().unwrap().revoked);
    assert!(s.sessions_of(&alice.id).await.unwrap().is_empty());

    assert_eq!(s.count_login_failure("alice", 60).await.unwrap(), 1);
    assert_eq!(s.count_login_failure("alice", 60).await.unwrap(), 2);
    assert_eq!(s.login_failures("alice").await.unwrap().0, 2);
    s.clear_login_failures("alice").await.unwrap();
    assert_eq!(s.login_failures("alice").await.unwrap().0, 0);

    assert!(s.delete_user("alice").await.unwrap());
    assert!(s.user("alice").await.unwrap().is_none());
    assert!(s.user_by_id(&alice.id).await.unwrap().is_none());
    assert!(s.user_was_deleted(&alice.id).await.unwrap());
    assert!(!s.user_was_deleted("someone-else").await.unwrap());
    assert_eq!(s.user_count().await.unwrap(), 0);
}
