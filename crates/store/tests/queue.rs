//! The queue scripts against a real Redis.

use std::time::Duration;

use bytes::Bytes;
use protocol::envelope::{Envelope, Payload, Target};
use store::test_redis::{sample_job, TestRedis};
use store::{Finish, HistoryWindow, JobState, NewJob, Store, Submitted, TerminalState};

fn job(uid: &str, pid: &str, front: bool) -> NewJob {
    NewJob {
        client_id: Some("c1".into()),
        front,
        extra_data_json: r#"{"client_id":"c1"}"#.into(),
        outputs_to_execute: vec!["2".into()],
        ..sample_job(uid, pid)
    }
}

async fn store(r: &TestRedis) -> Store {
    Store::connect(r.store_config()).await.unwrap()
}

#[tokio::test]
async fn submit_claim_finish_round_trip() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let sub = s.submit(&job("u1", "p1", false)).await.unwrap();
    let Submitted::Created { number, .. } = sub else {
        panic!("{sub:?}")
    };
    let q = s.queue("default", "u1").await.unwrap();
    assert_eq!(q.pending.len(), 1);
    let item: serde_json::Value = serde_json::from_str(&q.pending[0]).unwrap();
    assert_eq!(item[0].to_string(), number);
    assert_eq!(item[1], "p1");
    assert_eq!(item[4], serde_json::json!(["2"]));
    assert!(s.queue("default", "u2").await.unwrap().pending.is_empty());

    let lease = s.claim("default", "w1", "b1").await.unwrap().unwrap();
    assert_eq!(lease.prompt_id, "p1");
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.client_id.as_deref(), Some("c1"));
    assert!(s.claim("default", "w1", "b2").await.unwrap().is_none());
    assert_eq!(s.queue("default", "u1").await.unwrap().running.len(), 1);
    assert_eq!(s.queue_remaining("default", "u1").await.unwrap(), 1);

    let (subs, mut events) = s.event_subscriber().await.unwrap().split(&s);
    subs.subscribe("u1").await.unwrap();
    let fin = Finish {
        state: TerminalState::Success,
        history_json: r#"{"outputs":{}}"#.into(),
        terminal_message_json: r#"{"type": "execution_success", "data": {"prompt_id": "p1"}}"#
            .into(),
        dead_letter: None,
    };
    assert!(s.finish(&lease, &fin).await.unwrap());
    // A second finish with the same (now released) lease is refused.
    assert!(!s.finish(&lease, &fin).await.unwrap());

    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (uid, raw) = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uid, "u1");
        let env = Envelope::decode(&raw).unwrap();
        let Payload::Text(t) = env.payload else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        kinds.push((env.target, v["type"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        kinds,
        vec![
            (Target::Client("c1".into()), "execution_success".into()),
            (Target::AllSockets, "status".into()),
            (Target::Client("c1".into()), "executing".into()),
        ]
    );
    let h = s
        .history("default", "u1", HistoryWindow::default())
        .await
        .unwrap();
    assert_eq!(h, vec![("p1".into(), r#"{"outputs":{}}"#.into())]);
    assert!(s
        .history("default", "u2", HistoryWindow::default())
        .await
        .unwrap()
        .is_empty());
    let rec = s.job("default", "u1", "p1").await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Success);
    let _ = Bytes::new();
}

#[tokio::test]
async fn duplicates_and_order() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let a = s.submit(&job("u1", "a", false)).await.unwrap();
    let again = s.submit(&job("u1", "a", false)).await.unwrap();
    match (&a, &again) {
        (Submitted::Created { number: n1, .. }, Submitted::Existing { number: n2, .. }) => {
            assert_eq!(n1, n2)
        }
        _ => panic!("{a:?} {again:?}"),
    }
    // Another user may use the same prompt id: a separate job in their own namespace.
    assert!(matches!(
        s.submit(&job("u2", "a", false)).await.unwrap(),
        Submitted::Created { .. }
    ));
    s.submit(&job("u1", "b", false)).await.unwrap();
    s.submit(&job("u1", "f1", true)).await.unwrap();
    s.submit(&job("u1", "f2", true)).await.unwrap();
    let order: Vec<String> = {
        let mut v = Vec::new();
        while let Some(l) = s.claim("default", "w", "b").await.unwrap() {
            if l.user_id == "u1" {
                v.push(l.prompt_id);
            }
        }
        v
    };
    assert_eq!(order, vec!["f2", "f1", "a", "b"]);
}

#[tokio::test]
async fn cancelled_pending_never_runs() {
    let r = TestRedis::start();
    let s = store(&r).await;
    s.submit(&job("u1", "a", false)).await.unwrap();
    s.submit(&job("u1", "b", false)).await.unwrap();
    let removed = s
        .cancel_pending("default", "u1", &["a".into(), "zzz".into()])
        .await
        .unwrap();
    assert_eq!(removed, vec!["a".to_string()]);
    // Another user cannot cancel u1's job.
    assert!(s
        .cancel_pending("default", "u2", &["b".into()])
        .await
        .unwrap()
        .is_empty());
    let l = s.claim("default", "w", "b").await.unwrap().unwrap();
    assert_eq!(l.prompt_id, "b");
    assert!(s.claim("default", "w", "b").await.unwrap().is_none());
    assert_eq!(
        s.job("default", "u1", "a").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    s.submit(&job("u1", "c", false)).await.unwrap();
    assert_eq!(s.clear_pending("default", "u1").await.unwrap(), vec!["c"]);
    assert_eq!(s.queue("default", "u1").await.unwrap().running.len(), 1);
}

#[tokio::test]
async fn release_puts_a_job_back_and_heartbeat_sees_loss() {
    let r = TestRedis::start();
    let s = store(&r).await;
    s.submit(&job("u1", "a", false)).await.unwrap();
    s.submit(&job("u1", "b", false)).await.unwrap();
    let l = s.claim("default", "w", "b1").await.unwrap().unwrap();
    assert_eq!(l.prompt_id, "a");
    assert_eq!(s.heartbeat(&l).await.unwrap(), store::Heartbeat::Kept);
    s.request_interrupt("default", "u1", Some("a"))
        .await
        .unwrap();
    assert_eq!(
        s.heartbeat(&l).await.unwrap(),
        store::Heartbeat::InterruptRequested
    );
    assert!(s.release(&l, false).await.unwrap());
    assert_eq!(s.heartbeat(&l).await.unwrap(), store::Heartbeat::Lost);
    assert!(!s.release(&l, false).await.unwrap());
    // It keeps its place ahead of b, and the released attempt did not count.
    let again = s.claim("default", "w", "b2").await.unwrap().unwrap();
    assert_eq!(again.prompt_id, "a");
    assert_eq!(again.attempt, 1);
    assert_ne!(again.lease_id, l.lease_id);
    // The old lease can no longer finish the job.
    let fin = Finish {
        state: TerminalState::Success,
        history_json: "{}".into(),
        terminal_message_json: String::new(),
        dead_letter: None,
    };
    assert!(!s.finish(&l, &fin).await.unwrap());
    assert!(s.finish(&again, &fin).await.unwrap());
}

#[tokio::test]
async fn expired_leases_are_requeued_then_dead_lettered() {
    let r = TestRedis::start();
    let s = store(&r).await;
    s.submit(&job("u1", "a", false)).await.unwrap();
    let (subs, mut events) = s.event_subscriber().await.unwrap().split(&s);
    subs.subscribe("u1").await.unwrap();
    let mut last = None;
    for attempt in 1..=2 {
        let l = s.claim("default", "w-dead", "b1").await.unwrap().unwrap();
        assert_eq!(l.attempt, attempt);
        // A live lease is not taken over.
        let none = s
            .reclaim_expired("default", "w2/x", Duration::from_secs(60), 2)
            .await
            .unwrap();
        assert_eq!(none, store::Reclaimed::default());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let got = s
            .reclaim_expired("default", "w2/x", Duration::from_millis(10), 2)
            .await
            .unwrap();
        if attempt == 1 {
            assert_eq!(got.requeued, 1);
        } else {
            assert_eq!(got.dead, 1);
        }
        last = Some(l);
    }
    // The presumed-dead worker wakes up: it cannot finish the job any more.
    let fin = Finish {
        state: TerminalState::Success,
        history_json: "{}".into(),
        terminal_message_json: String::new(),
        dead_letter: None,
    };
    assert!(!s.finish(&last.unwrap(), &fin).await.unwrap());
    let rec = s.job("default", "u1", "a").await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Error);
    let h: serde_json::Value = serde_json::from_str(&rec.history_json.unwrap()).unwrap();
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["messages"][2][0], "execution_error");
    assert_eq!(
        h["status"]["messages"][2][1]["executed"],
        serde_json::json!([])
    );
    assert_eq!(h["prompt"][1], "a");
    let dead = s.dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].prompt_id, "a");
    assert_eq!(dead[0].attempts, 2);
    // The owner's socket was told: execution_error, status, executing null.
    let mut types = Vec::new();
    while types.len() < 3 {
        let (_, raw) = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .unwrap()
            .unwrap();
        let Payload::Text(t) = Envelope::decode(&raw).unwrap().payload else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        if v["type"] != "status" || types.last().is_some_and(|t| t == "execution_error") {
            types.push(v["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(types, vec!["execution_error", "status", "executing"]);
    // An operator retries it: it runs again.
    let again = s.retry_dead("default", &dead[0].id).await.unwrap();
    assert_eq!(again, Some(("u1".into(), "a".into())));
    assert!(s.dead_letters("default", 10).await.unwrap().is_empty());
    let l = s.claim("default", "w3", "b1").await.unwrap().unwrap();
    assert_eq!((l.prompt_id.as_str(), l.attempt), ("a", 1));
}

#[tokio::test]
async fn admin_views_of_an_idle_pool_are_empty_not_errors() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let q = s.queue_all("default").await.unwrap();
    assert!(q.running.is_empty() && q.pending.is_empty());
    let window = HistoryWindow {
        max_items: None,
        offset: None,
    };
    assert!(s.history_all("default", window).await.unwrap().is_empty());
    assert!(s.users().await.unwrap().is_empty());
    // And with one pending job (no runner yet) the running list is still empty.
    s.submit(&job("u1", "p1", false)).await.unwrap();
    let q = s.queue_all("default").await.unwrap();
    assert_eq!((q.running.len(), q.pending.len()), (0, 1));
}
