//! Ordered, non-blocking store writes for running jobs: the job task queues events and
//! current-node updates, two tasks per backend perform them (events in order on one, node
//! updates on the other, so a job-record write never delays an event), and reading the backend
//! never waits on Redis round trips.

use std::sync::Arc;

use metrics::Counter;
use protocol::envelope::Envelope;
use store::{Lease, Store};
use tokio::sync::{mpsc, oneshot};

/// Capacity of each queue (a backend producing faster than Redis takes it is slowed down).
const QUEUE: usize = 1024;

enum Op {
    Event(Arc<Lease>, Envelope),
    Node(Arc<Lease>, Option<String>),
    Flush(oneshot::Sender<()>),
}

/// Handle to queue work for the publisher tasks.
#[derive(Clone)]
pub(crate) struct Publisher {
    events: mpsc::Sender<Op>,
    nodes: mpsc::Sender<Op>,
}

fn spawn_queue(store: Store, published: Counter) -> mpsc::Sender<Op> {
    let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
    tokio::spawn(async move {
        while let Some(op) = rx.recv().await {
            match op {
                Op::Event(lease, env) => {
                    published.increment(1);
                    if let Err(e) = store.publish_event(&lease.user_id, &env).await {
                        crate::metrics::redis_error();
                        tracing::warn!(prompt_id = %lease.prompt_id, error = %e, "publish failed");
                    }
                }
                Op::Node(lease, node) => {
                    if let Err(e) = store.set_current_node(&lease, node.as_deref()).await {
                        crate::metrics::redis_error();
                        tracing::debug!(prompt_id = %lease.prompt_id, error = %e, "set_current_node failed");
                    }
                }
                Op::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

impl Publisher {
    /// Starts the tasks; they end when every handle is dropped. `published` counts the events
    /// handed to Redis.
    pub(crate) fn spawn(store: Store, published: Counter) -> Self {
        Publisher {
            events: spawn_queue(store.clone(), published),
            nodes: spawn_queue(store, Counter::noop()),
        }
    }

    /// Queues an event for the job's owner.
    pub(crate) async fn event(&self, lease: &Arc<Lease>, env: Envelope) {
        let _ = self.events.send(Op::Event(lease.clone(), env)).await;
    }

    /// Queues recording the job's current node.
    pub(crate) async fn node(&self, lease: &Arc<Lease>, node: Option<String>) {
        let _ = self.nodes.send(Op::Node(lease.clone(), node)).await;
    }

    /// Waits until everything queued so far is done.
    pub(crate) async fn flush(&self) {
        let (e_tx, e_rx) = oneshot::channel();
        let (n_tx, n_rx) = oneshot::channel();
        let e_sent = self.events.send(Op::Flush(e_tx)).await.is_ok();
        let n_sent = self.nodes.send(Op::Flush(n_tx)).await.is_ok();
        if e_sent {
            let _ = e_rx.await;
        }
        if n_sent {
            let _ = n_rx.await;
        }
    }
}
