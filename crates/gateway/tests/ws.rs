//! The `/ws` hub over real sockets and real Redis pub/sub.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{next_frame, next_text, send_text, silent, Env};
use futures::StreamExt;
use gateway::GatewayConfig;
use protocol::envelope::{Envelope, Payload, Target};
use protocol::frames::ImageFormat;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn text(target: Target, v: &Value) -> Envelope {
    Envelope::text(target, Bytes::from(v.to_string()))
}

fn preview(size: usize) -> Envelope {
    Envelope {
        target: Target::AllSockets,
        payload: Payload::Preview {
            format: ImageFormat::Jpeg,
            metadata: Bytes::from_static(br#"{"node_id":"3","prompt_id":"p"}"#),
            image: Bytes::from(vec![0xffu8; size]),
        },
    }
}

#[tokio::test]
async fn ws_auth_is_checked_before_the_upgrade() {
    let env = Env::start().await;
    let t = env.token("u1");
    assert_eq!(env.ws_status("/ws?clientId=a", &[]).await, 401);
    let forged = env.forged_token("u1");
    assert_eq!(
        env.ws_status(&format!("/ws?token={forged}"), &[]).await,
        401
    );
    let expired = env.expired_token("u1");
    assert_eq!(
        env.ws_status(&format!("/ws?token={expired}"), &[]).await,
        401
    );
    assert_eq!(env.ws_status(&format!("/ws?token={t}"), &[]).await, 101);
    assert_eq!(
        env.ws_status(&format!("/api/ws?access_token={t}"), &[])
            .await,
        101
    );
    assert_eq!(
        env.ws_status("/ws", &[("authorization", format!("Bearer {t}"))])
            .await,
        101
    );
    assert_eq!(
        env.ws_status("/ws", &[("cookie", format!("jwt_token={t}"))])
            .await,
        101
    );
    // Cookie-only from a foreign Origin is refused; the same with a Bearer token is fine.
    assert_eq!(
        env.ws_status(
            "/ws",
            &[
                ("cookie", format!("jwt_token={t}")),
                ("origin", "https://evil.example".into())
            ]
        )
        .await,
        403
    );
    assert_eq!(
        env.ws_status("/ws?clientId=has%20space&token=x", &[]).await,
        401
    );
    assert_eq!(
        env.ws_status(&format!("/ws?clientId=has%20space&token={t}"), &[])
            .await,
        400
    );
}

#[tokio::test]
async fn first_message_is_status_with_sid() {
    let env = Env::start().await;
    let t = env.token("u1");
    let (_ws, first) = env.ws(&t, Some("my-client")).await;
    assert_eq!(
        first,
        json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "my-client"}})
    );
    // Without clientId the server makes a 32-hex sid.
    let (_ws2, first) = env.ws(&t, None).await;
    let sid = first["data"]["sid"].as_str().unwrap();
    assert_eq!(sid.len(), 32);
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
    // queue_remaining is the caller's own.
    env.post_json(&t, "/prompt", &json!({"prompt": common::basic_prompt()}))
        .await;
    let (_ws3, first) = env.ws(&t, Some("c3")).await;
    assert_eq!(first["data"]["status"]["exec_info"]["queue_remaining"], 1);
    let (_ws4, first) = env.ws(&env.token("other"), Some("c3")).await;
    assert_eq!(first["data"]["status"]["exec_info"]["queue_remaining"], 0);
}

#[tokio::test]
async fn events_are_routed_by_client_id_and_never_cross_users() {
    let env = Env::start().await;
    let (a, b) = (env.token("alice"), env.token("bob"));
    let (mut a1, _) = env.ws(&a, Some("c1")).await;
    let (mut a1bis, _) = env.ws(&a, Some("c1")).await;
    let (mut a2, _) = env.ws(&a, Some("c2")).await;
    let (mut b1, _) = env.ws(&b, Some("c1")).await;

    let only_c1 =
        json!({"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "p"}});
    env.store
        .publish_event("alice", &text(Target::Client("c1".into()), &only_c1))
        .await
        .unwrap();
    assert_eq!(next_text(&mut a1).await, only_c1);
    assert_eq!(next_text(&mut a1bis).await, only_c1);
    let all = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}}});
    env.store
        .publish_event("alice", &text(Target::AllSockets, &all))
        .await
        .unwrap();
    assert_eq!(next_text(&mut a1).await, all);
    assert_eq!(next_text(&mut a1bis).await, all);
    assert_eq!(next_text(&mut a2).await, all);
    assert!(silent(&mut b1, Duration::from_millis(300)).await);

    // A submit's status broadcast (written by the store script) reaches the owner only.
    env.post_json(&a, "/prompt", &json!({"prompt": common::basic_prompt()}))
        .await;
    let s = next_text(&mut a2).await;
    assert_eq!(s["type"], "status");
    assert_eq!(s["data"]["status"]["exec_info"]["queue_remaining"], 1);
    assert!(silent(&mut b1, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn previews_follow_feature_flags_and_the_first_text_frame_only() {
    let env = Env::start().await;
    let t = env.token("u1");
    let (mut legacy, _) = env.ws(&t, Some("old")).await;
    let (mut modern, _) = env.ws(&t, Some("new")).await;
    send_text(
        &mut modern,
        r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut modern).await,
        json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}})
    );
    // A second negotiation gets no answer.
    send_text(&mut modern, r#"{"type":"feature_flags","data":{}}"#).await;
    assert!(silent(&mut modern, Duration::from_millis(200)).await);

    env.store.publish_event("u1", &preview(4)).await.unwrap();
    let Message::Binary(b) = next_frame(&mut legacy).await else {
        panic!("binary expected")
    };
    assert_eq!(&b[..8], &[0, 0, 0, 1, 0, 0, 0, 1]);
    let Message::Binary(b) = next_frame(&mut modern).await else {
        panic!("binary expected")
    };
    assert_eq!(&b[..4], &[0, 0, 0, 4]);
}

#[tokio::test]
async fn reconnecting_submitter_is_told_the_current_node() {
    let env = Env::start().await;
    let t = env.token("u1");
    env.post_json(
        &t,
        "/prompt",
        &json!({"prompt": common::basic_prompt(), "client_id": "owner"}),
    )
    .await;
    let lease = env.store.claim("default", "w", "b").await.unwrap().unwrap();
    env.store.set_current_node(&lease, Some("1")).await.unwrap();
    let (mut ws, first) = env.ws(&t, Some("owner")).await;
    assert_eq!(first["type"], "status");
    assert_eq!(
        next_text(&mut ws).await,
        json!({"type": "executing", "data": {"node": "1"}})
    );
    let (mut observer, _) = env.ws(&t, Some("observer")).await;
    assert!(silent(&mut observer, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn slow_socket_is_closed_with_1013_and_previews_are_dropped() {
    let cfg = GatewayConfig {
        ws_send_queue: 4,
        ..GatewayConfig::default()
    };
    let env = Env::start_with(cfg, true).await;
    let t = env.token("u1");
    let (mut slow, _) = env.ws(&t, Some("slow")).await;
    let (mut fast, _) = env.ws(&t, Some("fast")).await;
    // Fill the slow client's TCP buffers and queue with previews it never reads.
    let fast_reader = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(Ok(m)) = fast.next().await {
            if let Message::Text(t) = &m {
                if t.as_str().contains("\"done\"") {
                    return n;
                }
            }
            n += 1;
        }
        n
    });
    for _ in 0..200 {
        env.store
            .publish_event("u1", &preview(256 * 1024))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stats = env.hub.stats();
    assert!(stats.dropped_previews > 0, "{stats:?}");
    // State messages are never dropped silently: the slow socket is closed instead.
    let msg = json!({"type": "executing", "data": {"node": "1", "prompt_id": "p"}});
    for _ in 0..8 {
        env.store
            .publish_event("u1", &text(Target::Client("slow".into()), &msg))
            .await
            .unwrap();
    }
    env.store
        .publish_event("u1", &text(Target::AllSockets, &json!({"type": "done"})))
        .await
        .unwrap();
    // The fast socket was never stalled.
    let got = tokio::time::timeout(Duration::from_secs(10), fast_reader)
        .await
        .expect("fast socket stalled")
        .unwrap();
    assert!(got > 0);
    // Now read the slow one: after what was buffered comes a 1013 close.
    let mut code = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, slow.next()).await {
        match frame {
            Ok(Message::Close(Some(f))) => {
                code = Some(f.code);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(CloseCode::Again));
    for _ in 0..50 {
        stats = env.hub.stats();
        if stats.slow_closes == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.slow_closes, 1, "{stats:?}");
}

#[tokio::test]
async fn shutdown_fails_readiness_and_closes_sockets_with_1001() {
    let mut env = Env::start().await;
    let t = env.token("u1");
    let (mut ws, _) = env.ws(&t, Some("c")).await;
    let base = env.base.clone();
    env.shutdown().await;
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = frame {
            code = Some(f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

#[tokio::test]
async fn readiness_fails_first_while_draining() {
    let cfg = GatewayConfig {
        drain_delay: Duration::from_millis(800),
        ..GatewayConfig::default()
    };
    let mut env = Env::start_with(cfg, true).await;
    let t = env.token("u1");
    let (mut ws, _) = env.ws(&t, Some("c")).await;
    env.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = env.http.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // New sockets are refused while draining; the open one is still served, then closed 1001.
    assert_eq!(env.ws_status(&format!("/ws?token={t}"), &[]).await, 503);
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = frame {
            code = Some(f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
    env.shutdown().await;
}

#[tokio::test]
async fn idle_sockets_are_pinged() {
    let cfg = GatewayConfig {
        ws_ping_interval: Duration::from_millis(100),
        ..GatewayConfig::default()
    };
    let env = Env::start_with(cfg, true).await;
    let (mut ws, _) = env.ws(&env.token("u1"), Some("c")).await;
    let got = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true));
}

#[tokio::test]
async fn sockets_keep_receiving_after_redis_restarts() {
    let mut env = Env::start_on(
        store::test_redis::TestRedis::own(false),
        GatewayConfig::default(),
        true,
    )
    .await;
    let t = env.token("u1");
    let (mut ws, _) = env.ws(&t, Some("c")).await;
    env.redis.restart();
    // The hub re-subscribes the user on a new pub/sub connection; keep publishing until one
    // event gets through.
    let msg = json!({"type": "progress", "data": {"value": 1, "max": 2}});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut got = false;
    while tokio::time::Instant::now() < deadline && !got {
        let _ = env
            .store
            .publish_event("u1", &text(Target::AllSockets, &msg))
            .await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        {
            got = serde_json::from_str::<Value>(t.as_str()).ok() == Some(msg.clone());
        }
    }
    assert!(got, "no event after the Redis restart");
}
