//! The scheduling scripts against a real Redis: fair share, weights, limits, capability
//! classes, warm preference, and the queue depth.

use store::test_redis::{sample_job, TestRedis};
use store::{
    Finish, JobClass, Lease, Limits, NewJob, Offer, Requirement, Store, Submitted, TerminalState,
};

fn job(uid: &str, pid: &str) -> NewJob {
    NewJob {
        prompt_json: "{}".into(),
        ..sample_job(uid, pid)
    }
}

fn ckpt_class(file: &str) -> (Requirement, JobClass) {
    let mut r = Requirement::default();
    r.nodes.insert("CheckpointLoaderSimple".into());
    r.models
        .entry("checkpoints".into())
        .or_default()
        .insert(file.into());
    let c = JobClass::of(&r);
    (r, c)
}

async fn store(r: &TestRedis) -> Store {
    Store::connect(r.store_config()).await.unwrap()
}

async fn submit(s: &Store, j: NewJob) {
    let out = s.submit(&j).await.unwrap();
    assert!(matches!(out, Submitted::Created { .. }), "{out:?}");
}

async fn done(s: &Store, l: &Lease) {
    let f = Finish {
        state: TerminalState::Success,
        history_json: "{}".into(),
        terminal_message_json: String::new(),
        dead_letter: None,
    };
    assert!(s.finish(l, &f).await.unwrap());
}

#[tokio::test]
async fn a_newcomer_takes_the_next_free_backends() {
    let r = TestRedis::start();
    let s = store(&r).await;
    for i in 0..20 {
        submit(&s, job("a", &format!("a{i:02}"))).await;
    }
    // Two backends busy with a's first jobs.
    let l1 = s.claim("default", "w", "b1").await.unwrap().unwrap();
    let l2 = s.claim("default", "w", "b2").await.unwrap().unwrap();
    assert_eq!(
        (l1.prompt_id.as_str(), l2.prompt_id.as_str()),
        ("a00", "a01")
    );
    submit(&s, job("b", "b0")).await;
    submit(&s, job("b", "b1")).await;
    done(&s, &l1).await;
    let n1 = s.claim("default", "w", "b1").await.unwrap().unwrap();
    done(&s, &l2).await;
    let n2 = s.claim("default", "w", "b2").await.unwrap().unwrap();
    assert_eq!((n1.prompt_id.as_str(), n2.prompt_id.as_str()), ("b0", "b1"));
    // Then a again, in arrival order.
    let n3 = s.claim("default", "w", "b3").await.unwrap().unwrap();
    assert_eq!(n3.prompt_id, "a02");
}

#[tokio::test]
async fn weights_share_backends_two_to_one() {
    let r = TestRedis::start();
    let s = store(&r).await;
    for i in 0..40 {
        let mut a = job("a", &format!("a{i:02}"));
        a.limits.weight = 2.0;
        submit(&s, a).await;
        submit(&s, job("b", &format!("b{i:02}"))).await;
    }
    let mut got_a = 0;
    for _ in 0..30 {
        let l = s.claim("default", "w", "b").await.unwrap().unwrap();
        if l.user_id == "a" {
            got_a += 1;
        }
        done(&s, &l).await;
    }
    assert!((19..=21).contains(&got_a), "a got {got_a} of 30");
}

#[tokio::test]
async fn queued_limit_refuses_and_running_limit_skips() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let limited = |pid: &str| {
        let mut j = job("a", pid);
        j.limits = Limits {
            max_queued: 3,
            max_running: 1,
            weight: 1.0,
        };
        j
    };
    for i in 0..3 {
        submit(&s, limited(&format!("a{i}"))).await;
    }
    let out = s.submit(&limited("a3")).await.unwrap();
    assert_eq!(out, Submitted::QueueFull { limit: 3 });
    assert_eq!(s.queue("default", "a").await.unwrap().pending.len(), 3);
    assert!(s.job("default", "a", "a3").await.unwrap().is_none());
    // A resubmission of an accepted id answers as before, limit or not.
    assert!(matches!(
        s.submit(&limited("a0")).await.unwrap(),
        Submitted::Existing { .. }
    ));

    let l = s.claim("default", "w", "b1").await.unwrap().unwrap();
    assert!(
        s.claim("default", "w", "b2").await.unwrap().is_none(),
        "running limit"
    );
    submit(&s, job("c", "c0")).await;
    let other = s.claim("default", "w", "b2").await.unwrap().unwrap();
    assert_eq!(other.user_id, "c");
    done(&s, &l).await;
    assert_eq!(
        s.claim("default", "w", "b1")
            .await
            .unwrap()
            .unwrap()
            .prompt_id,
        "a1"
    );
}

#[tokio::test]
async fn classes_route_jobs_to_capable_backends_and_warm_ones_first() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let (rx, cx) = ckpt_class("x.safetensors");
    let (_, cy) = ckpt_class("y.safetensors");
    let mut jx = job("a", "x0");
    jx.class = cx.clone();
    let mut jy = job("a", "y0");
    jy.class = cy.clone();
    let mut jx1 = job("a", "x1");
    jx1.class = cx.clone();
    submit(&s, jx).await;
    submit(&s, jy).await;
    submit(&s, jx1).await;
    let classes = s.classes("default").await.unwrap();
    assert_eq!(classes.get(&cx.id), Some(&rx));

    // A backend offering only y gets y0 though x0 is older.
    let only_y = Offer::Classes(vec![(cy.id.clone(), false)]);
    let c = s.claim_for("default", "w", "by", &only_y).await.unwrap();
    assert_eq!(c.known_classes, 2);
    let l = c.lease.unwrap();
    assert_eq!(
        (l.prompt_id.as_str(), c.class.as_deref()),
        ("y0", Some(cy.id.as_str()))
    );
    assert!(s
        .claim_for("default", "w", "by", &only_y)
        .await
        .unwrap()
        .lease
        .is_none());
    // Unknown classes offered: nothing.
    let none = Offer::Classes(vec![("nope".into(), true)]);
    assert!(s
        .claim_for("default", "w", "b", &none)
        .await
        .unwrap()
        .lease
        .is_none());

    // Warm preference: y is warm on this backend, so the newer y job goes before x0.
    let mut jy1 = job("a", "y1");
    jy1.class = cy.clone();
    submit(&s, jy1).await;
    let both_warm_y = Offer::Classes(vec![(cx.id.clone(), false), (cy.id.clone(), true)]);
    let l = s
        .claim_for("default", "w", "b", &both_warm_y)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(l.prompt_id, "y1");
    let both_cold = Offer::Classes(vec![(cx.id.clone(), false), (cy.id.clone(), false)]);
    let l = s
        .claim_for("default", "w", "b", &both_cold)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(l.prompt_id, "x0");

    // Cancel keeps the class queues consistent.
    assert_eq!(
        s.cancel_pending("default", "a", &["x1".into()])
            .await
            .unwrap(),
        vec!["x1".to_string()]
    );
    assert!(s.claim("default", "w", "b").await.unwrap().is_none());
    assert_eq!(s.queue_stats("default").await.unwrap().pending, 0);
}

#[tokio::test]
async fn released_jobs_go_back_to_their_class_and_depth_counts_them() {
    let r = TestRedis::start();
    let s = store(&r).await;
    let (_, cx) = ckpt_class("x.safetensors");
    let mut j = job("a", "x0");
    j.class = cx.clone();
    submit(&s, j).await;
    submit(&s, job("b", "b0")).await;
    let d = s.queue_stats("default").await.unwrap();
    assert_eq!((d.pending, d.users), (2, 2));
    assert!(d.oldest_pending_created_ms.is_some());
    let offer = Offer::Classes(vec![(cx.id.clone(), false)]);
    let l = s
        .claim_for("default", "w", "b", &offer)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(l.prompt_id, "x0");
    assert!(s.release(&l, false).await.unwrap());
    let again = s
        .claim_for("default", "w", "b", &offer)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(again.prompt_id, "x0");
    assert_eq!(s.queue_stats("default").await.unwrap().pending, 1);
}

#[tokio::test]
async fn jobs_queued_before_routing_existed_still_run() {
    let r = TestRedis::start();
    let s = store(&r).await;
    // The shape an older release left: a job record, the user's pending zset, and the user in
    // `ready` scored by its head job's number; no class queues.
    let client = redis::Client::open(r.store_config().url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let k = s.keys();
    let _: () = redis::pipe()
        .hset_multiple(
            k.job("default", "old", "p-old"),
            &[
                ("uid", "old"),
                ("user", "old"),
                ("pid", "p-old"),
                ("number", "4242"),
                ("state", "pending"),
                ("attempts", "0"),
                ("item", "[4242,\"p-old\",{},{},[]]"),
            ],
        )
        .zadd(k.pending("default", "old"), "p-old", 4242)
        .zadd(k.ready("default"), "old", 4242)
        .query_async(&mut c)
        .await
        .unwrap();
    let (_, cx) = ckpt_class("x.safetensors");
    let offer = Offer::Classes(vec![(cx.id.clone(), false)]);
    let l = s
        .claim_for("default", "w", "b", &offer)
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(l.prompt_id, "p-old");
    assert_eq!(s.queue_stats("default").await.unwrap().pending, 0);
}
