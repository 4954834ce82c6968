//! Queue statistics (the metrics gateways sample) against a real Redis.

use store::test_redis::{sample_job, TestRedis};
use store::{NewJob, Store};

fn job(uid: &str, pid: &str) -> NewJob {
    sample_job(uid, pid)
}

#[tokio::test]
async fn pending_running_and_oldest_are_counted() {
    let r = TestRedis::start();
    let s = Store::connect(r.store_config()).await.unwrap();
    let empty = s.queue_stats("default").await.unwrap();
    assert_eq!((empty.pending, empty.running), (0, 0));
    assert_eq!(empty.oldest_pending_created_ms, None);

    let before = chrono_ms();
    for (uid, pid) in [("u1", "p1"), ("u1", "p2"), ("u2", "p3"), ("u3", "p4")] {
        s.submit(&job(uid, pid)).await.unwrap();
    }
    let st = s.queue_stats("default").await.unwrap();
    assert_eq!((st.pending, st.running, st.users), (4, 0, 3));
    let oldest = st.oldest_pending_created_ms.expect("an oldest job");
    assert!(oldest >= before - 1000 && oldest <= chrono_ms(), "{oldest}");
    assert!(!st.truncated);

    let lease = s.claim("default", "w1", "b1").await.unwrap().unwrap();
    assert_eq!(lease.prompt_id, "p1");
    let st = s.queue_stats("default").await.unwrap();
    assert_eq!((st.pending, st.running), (3, 1));
    // Another pool sees nothing.
    let other = s.queue_stats("other").await.unwrap();
    assert_eq!((other.pending, other.running), (0, 0));
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
