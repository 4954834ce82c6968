//! One task per pool: listens to the pool's wake and control channels and fans them out to the
//! backend tasks of this worker (wake-ups through a watch counter, interrupts to the task that
//! runs the job).

use std::sync::Arc;
use std::time::Duration;

use store::ControlMessage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{JobSignal, Shared};

/// Pause before subscribing again after the control connection failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

fn nudge(wake: &watch::Sender<u64>) {
    wake.send_modify(|v| *v = v.wrapping_add(1));
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    pool: String,
    wake: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut subscribed_before = false;
    loop {
        let sub = tokio::select! {
            s = shared.store.control_subscriber(&pool) => s,
            _ = shutdown.cancelled() => return,
        };
        match sub {
            Ok(mut sub) => {
                tracing::debug!(pool = %pool, "control channel subscribed");
                if std::mem::replace(&mut subscribed_before, true) {
                    crate::metrics::redis_reconnect();
                }
                // Wake-ups may have been missed while not subscribed.
                nudge(&wake);
                loop {
                    let msg = tokio::select! {
                        m = sub.next() => m,
                        _ = shutdown.cancelled() => return,
                    };
                    match msg {
                        Some(ControlMessage::Wake) => nudge(&wake),
                        Some(ControlMessage::Interrupt { user_id, prompt_id }) => {
                            let key = (pool.clone(), user_id, prompt_id);
                            if shared.signal(&key, JobSignal::Interrupt) {
                                tracing::info!(pool = %pool, prompt_id = %key.2, "interrupt requested");
                            }
                        }
                        None => {
                            crate::metrics::redis_error();
                            tracing::warn!(pool = %pool, "control channel lost; subscribing again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                crate::metrics::redis_error();
                tracing::warn!(pool = %pool, error = %e, "control subscribe failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One task per pool: takes over leases whose worker stopped heartbeating (crashed, cut off),
/// so their jobs run again elsewhere or end visibly past the attempt limit.
pub(crate) async fn reclaim(shared: Arc<Shared>, pool: String, shutdown: CancellationToken) {
    let consumer = format!("{}/reclaim", shared.config.id);
    let mut tick = tokio::time::interval(shared.config.reclaim_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match shared
            .store
            .reclaim_expired(
                &pool,
                &consumer,
                shared.config.lease_timeout,
                shared.config.max_attempts,
            )
            .await
        {
            Ok(r) if r.requeued > 0 || r.dead > 0 => {
                crate::metrics::reclaimed(&pool, r.requeued, r.dead);
                tracing::warn!(pool = %pool, requeued = r.requeued, dead = r.dead, "reclaimed expired leases");
            }
            Ok(_) => {}
            Err(e) => {
                crate::metrics::redis_error();
                tracing::debug!(pool = %pool, error = %e, "reclaim pass failed")
            }
        }
    }
}
