//! The worker's Prometheus metrics (recorded through the `metrics` facade; the binary installs
//! the exporter). Each backend task registers its handles once, so the per-job and per-event
//! paths only add to atomics.

use metrics::{Counter, Gauge, Histogram};
use store::{BackendState, TerminalState};

/// `comfy_broker_jobs_started_total{pool,backend}`.
pub const JOBS_STARTED: &str = "comfy_broker_jobs_started_total";
/// `comfy_broker_jobs_finished_total{pool,outcome}` (`success` | `error` | `interrupted`).
pub const JOBS_FINISHED: &str = "comfy_broker_jobs_finished_total";
/// `comfy_broker_job_wait_seconds{pool}` (histogram: submitted → first started).
pub const JOB_WAIT: &str = "comfy_broker_job_wait_seconds";
/// `comfy_broker_job_run_seconds{pool}` (histogram: started → terminal).
pub const JOB_RUN: &str = "comfy_broker_job_run_seconds";
/// `comfy_broker_jobs_reclaimed_total{pool}`.
pub const JOBS_RECLAIMED: &str = "comfy_broker_jobs_reclaimed_total";
/// `comfy_broker_jobs_dead_lettered_total{pool}`.
pub const JOBS_DEAD_LETTERED: &str = "comfy_broker_jobs_dead_lettered_total";
/// `comfy_broker_events_published_total{pool}`.
pub const EVENTS_PUBLISHED: &str = "comfy_broker_events_published_total";
/// `comfy_broker_backend_up{pool,backend,state}` (gauge: 1 for the current state, 0 others).
pub const BACKEND_UP: &str = "comfy_broker_backend_up";
/// `comfy_broker_backend_jobs_total{pool,backend}` (jobs a backend ran to their end).
pub const BACKEND_JOBS: &str = "comfy_broker_backend_jobs_total";
/// `comfy_broker_redis_errors_total{component}` (shared with the gateway).
pub const REDIS_ERRORS: &str = "comfy_broker_redis_errors_total";
/// `comfy_broker_redis_reconnects_total{component}` (shared with the gateway).
pub const REDIS_RECONNECTS: &str = "comfy_broker_redis_reconnects_total";

/// Registers the `# HELP` text of the worker's metrics (call once, after the recorder is
/// installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(JOBS_STARTED, "Job attempts started, by backend");
    describe_counter!(JOBS_FINISHED, "Jobs ended by outcome");
    describe_histogram!(JOB_WAIT, Unit::Seconds, "Submit to first start");
    describe_histogram!(JOB_RUN, Unit::Seconds, "Start to terminal state");
    describe_counter!(JOBS_RECLAIMED, "Expired leases given back to the queue");
    describe_counter!(JOBS_DEAD_LETTERED, "Jobs that ran out of attempts");
    describe_counter!(EVENTS_PUBLISHED, "Events published to Redis for clients");
    describe_gauge!(
        BACKEND_UP,
        "1 for the backend's current state, 0 for the others"
    );
    describe_counter!(BACKEND_JOBS, "Jobs a backend ran to their end");
}

/// Counts one failed Redis operation of the worker.
pub(crate) fn redis_error() {
    metrics::counter!(REDIS_ERRORS, "component" => "worker").increment(1);
}

/// Counts one re-established Redis subscription of the worker (its control channel).
pub(crate) fn redis_reconnect() {
    metrics::counter!(REDIS_RECONNECTS, "component" => "worker").increment(1);
}

/// Counts reclaimed and dead-lettered jobs of a reclaim pass.
pub(crate) fn reclaimed(pool: &str, requeued: u64, dead: u64) {
    if requeued > 0 {
        metrics::counter!(JOBS_RECLAIMED, "pool" => pool.to_owned()).increment(requeued);
    }
    if dead > 0 {
        metrics::counter!(JOBS_DEAD_LETTERED, "pool" => pool.to_owned()).increment(dead);
    }
}

/// Handles of one backend (labels: its pool and its configured id, never its URL).
pub(crate) struct BackendMetrics {
    pub started: Counter,
    success: Counter,
    error: Counter,
    interrupted: Counter,
    pub wait: Histogram,
    pub run: Histogram,
    pub jobs: Counter,
    pub dead_lettered: Counter,
    /// Events this backend's jobs published (shared with its publisher task).
    pub published: Counter,
    up: [Gauge; 3],
}

const STATES: [(BackendState, &str); 3] = [
    (BackendState::Healthy, "healthy"),
    (BackendState::Busy, "busy"),
    (BackendState::Unhealthy, "unhealthy"),
];

impl BackendMetrics {
    /// Registers the handles of backend `backend` of `pool`.
    pub(crate) fn new(pool: &str, backend: &str) -> Self {
        let (p, b) = (pool.to_owned(), backend.to_owned());
        // Series that move rarely exist from the start at 0 (dashboards, `absent()` alerts).
        metrics::counter!(JOBS_RECLAIMED, "pool" => p.clone()).increment(0);
        metrics::counter!(REDIS_ERRORS, "component" => "worker").increment(0);
        metrics::counter!(REDIS_RECONNECTS, "component" => "worker").increment(0);
        let finished =
            |o: &'static str| metrics::counter!(JOBS_FINISHED, "pool" => p.clone(), "outcome" => o);
        BackendMetrics {
            started: metrics::counter!(JOBS_STARTED, "pool" => p.clone(), "backend" => b.clone()),
            success: finished("success"),
            error: finished("error"),
            interrupted: finished("interrupted"),
            wait: metrics::histogram!(JOB_WAIT, "pool" => p.clone()),
            run: metrics::histogram!(JOB_RUN, "pool" => p.clone()),
            jobs: metrics::counter!(BACKEND_JOBS, "pool" => p.clone(), "backend" => b.clone()),
            dead_lettered: metrics::counter!(JOBS_DEAD_LETTERED, "pool" => p.clone()),
            published: metrics::counter!(EVENTS_PUBLISHED, "pool" => p.clone()),
            up: STATES.map(|(_, s)| {
                metrics::gauge!(BACKEND_UP, "pool" => p.clone(), "backend" => b.clone(), "state" => s)
            }),
        }
    }

    /// Counts a job that reached its terminal state.
    pub(crate) fn finished(&self, state: TerminalState) {
        match state {
            TerminalState::Success => &self.success,
            TerminalState::Error => &self.error,
            TerminalState::Interrupted => &self.interrupted,
        }
        .increment(1);
    }

    /// Shows `state` as the backend's current state.
    pub(crate) fn state(&self, state: BackendState) {
        for ((s, _), g) in STATES.iter().zip(&self.up) {
            g.set(if *s == state { 1.0 } else { 0.0 });
        }
    }
}

/// Seconds from a job's `create_time` (ms, stamped by the gateway into `extra_data`) to
/// `now_ms`; `None` when the item has none. Clock skew between hosts is clamped at 0.
pub(crate) fn wait_secs(item: &serde_json::Value, now_ms: i64) -> Option<f64> {
    let created = item.get(3)?.get("create_time")?.as_i64()?;
    Some((now_ms - created).max(0) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_from_the_items_create_time() {
        let item = serde_json::json!([1, "p", {}, {"create_time": 1_000}, []]);
        assert_eq!(wait_secs(&item, 3_500), Some(2.5));
        assert_eq!(wait_secs(&item, 500), Some(0.0));
        assert_eq!(wait_secs(&serde_json::json!([1, "p", {}, {}, []]), 1), None);
    }
}
