//! An ordered, non-blocking publisher: the job task queues events and store writes, one task per
//! backend performs them in order, so reading the backend never waits on Redis round trips.

use std::sync::Arc;

use protocol::envelope::Envelope;
use store::{Lease, Store};
use tokio::sync::{mpsc, oneshot};

/// Capacity of the queue (a backend producing faster than Redis takes them is slowed down).
const QUEUE: usize = 1024;

enum Op {
    Event(Arc<Lease>, Envelope),
    Node(Arc<Lease>, Option<String>),
    Flush(oneshot::Sender<()>),
}

/// Handle to queue work for the publisher task.
#[derive(Clone)]
pub(crate) struct Publisher {
    tx: mpsc::Sender<Op>,
}

impl Publisher {
    /// Starts the task; it ends when every handle is dropped.
    pub(crate) fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                match op {
                    Op::Event(lease, env) => {
                        if let Err(e) = store.publish_event(&lease.user_id, &env).await {
                            tracing::warn!(prompt_id = %lease.prompt_id, error = %e, "publish failed");
                        }
                    }
                    Op::Node(lease, node) => {
                        if let Err(e) = store.set_current_node(&lease, node.as_deref()).await {
                            tracing::debug!(prompt_id = %lease.prompt_id, error = %e, "set_current_node failed");
                        }
                    }
                    Op::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Publisher { tx }
    }

    /// Queues an event for the job's owner.
    pub(crate) async fn event(&self, lease: &Arc<Lease>, env: Envelope) {
        let _ = self.tx.send(Op::Event(lease.clone(), env)).await;
    }

    /// Queues recording the job's current node.
    pub(crate) async fn node(&self, lease: &Arc<Lease>, node: Option<String>) {
        let _ = self.tx.send(Op::Node(lease.clone(), node)).await;
    }

    /// Waits until everything queued so far is done.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
