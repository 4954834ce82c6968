//! The gateway's Prometheus metrics (recorded through the `metrics` facade; the binary installs
//! the exporter). Hot paths use handles registered once (per route, per pool), so a request
//! costs a map look-up and a few atomic adds, not a label set built per call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Gauge, Histogram};

/// `comfy_broker_http_requests_total{route,method,status}`.
pub const HTTP_REQUESTS: &str = "comfy_broker_http_requests_total";
/// `comfy_broker_http_request_duration_seconds{route,method}` (histogram).
pub const HTTP_REQUEST_DURATION: &str = "comfy_broker_http_request_duration_seconds";
/// `comfy_broker_jobs_submitted_total{pool}`.
pub const JOBS_SUBMITTED: &str = "comfy_broker_jobs_submitted_total";
/// `comfy_broker_submit_rejected_total{pool,reason}`.
pub const SUBMIT_REJECTED: &str = "comfy_broker_submit_rejected_total";
/// `comfy_broker_jobs_cancelled_total{pool}`.
pub const JOBS_CANCELLED: &str = "comfy_broker_jobs_cancelled_total";
/// `comfy_broker_auth_failures_total{reason}`.
pub const AUTH_FAILURES: &str = "comfy_broker_auth_failures_total";
/// `comfy_broker_websocket_connections` (gauge).
pub const WEBSOCKET_CONNECTIONS: &str = "comfy_broker_websocket_connections";
/// `comfy_broker_events_delivered_total{kind}` (`json` | `binary` frames written to sockets).
pub const EVENTS_DELIVERED: &str = "comfy_broker_events_delivered_total";
/// `comfy_broker_previews_dropped_total`.
pub const PREVIEWS_DROPPED: &str = "comfy_broker_previews_dropped_total";
/// `comfy_broker_websocket_slow_closes_total`.
pub const WEBSOCKET_SLOW_CLOSES: &str = "comfy_broker_websocket_slow_closes_total";
/// `comfy_broker_queue_pending_jobs{pool}` (gauge, sampled from Redis).
pub const QUEUE_PENDING: &str = "comfy_broker_queue_pending_jobs";
/// `comfy_broker_queue_running_jobs{pool}` (gauge, sampled from Redis).
pub const QUEUE_RUNNING: &str = "comfy_broker_queue_running_jobs";
/// `comfy_broker_queue_oldest_pending_seconds{pool}` (gauge, sampled from Redis).
pub const QUEUE_OLDEST_PENDING: &str = "comfy_broker_queue_oldest_pending_seconds";
/// `comfy_broker_redis_errors_total{component}`.
pub const REDIS_ERRORS: &str = "comfy_broker_redis_errors_total";
/// `comfy_broker_redis_reconnects_total{component}`.
pub const REDIS_RECONNECTS: &str = "comfy_broker_redis_reconnects_total";

/// Registers the `# HELP` text of the gateway's metrics (call once, after the recorder is
/// installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to the response head by route template and method"
    );
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted by POST /prompt");
    describe_counter!(SUBMIT_REJECTED, "POST /prompt refusals by reason");
    describe_counter!(JOBS_CANCELLED, "Pending jobs deleted by their owner");
    describe_counter!(AUTH_FAILURES, "Refused authentications by reason");
    describe_gauge!(WEBSOCKET_CONNECTIONS, "Open /ws sockets");
    describe_counter!(EVENTS_DELIVERED, "Frames written to /ws sockets by kind");
    describe_counter!(PREVIEWS_DROPPED, "Previews dropped for slow sockets");
    describe_counter!(WEBSOCKET_SLOW_CLOSES, "Sockets closed with 1013 (too slow)");
    describe_gauge!(
        QUEUE_PENDING,
        "Pending jobs of the pool (sampled from Redis)"
    );
    describe_gauge!(
        QUEUE_RUNNING,
        "Running jobs of the pool (sampled from Redis)"
    );
    describe_gauge!(
        QUEUE_OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest pending job of the pool (sampled from Redis)"
    );
    describe_counter!(
        REDIS_ERRORS,
        "Failed or timed-out Redis operations by component"
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Re-established Redis subscriptions by component"
    );
}

/// Why a token or login was refused: the only values of `auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token in any carrier.
    Missing,
    /// A token that does not verify.
    Invalid,
    /// Past its expiry.
    Expired,
    /// Revoked (logout, deleted token, deleted or disabled user).
    Revoked,
    /// A login or token request for a disabled account.
    Disabled,
    /// Authenticated, but not allowed (permission, cookie from a foreign origin).
    Forbidden,
    /// Wrong name or password.
    LoginFailed,
    /// Too many failed logins.
    Throttled,
}

impl AuthFailure {
    /// Every reason.
    pub const ALL: [AuthFailure; 8] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
        AuthFailure::Revoked,
        AuthFailure::Disabled,
        AuthFailure::Forbidden,
        AuthFailure::LoginFailed,
        AuthFailure::Throttled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Disabled => "disabled",
            AuthFailure::Forbidden => "forbidden",
            AuthFailure::LoginFailed => "login_failed",
            AuthFailure::Throttled => "throttled",
        }
    }
}

/// Counts one refused authentication (labels from a fixed set: never token material).
pub(crate) fn auth_failure(reason: AuthFailure) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason.as_str()).increment(1);
}

/// Counts one failed Redis operation of this gateway (`component`: `gateway` for request and
/// background reads, `hub` for the event subscription).
pub(crate) fn redis_error(component: &'static str) {
    metrics::counter!(REDIS_ERRORS, "component" => component).increment(1);
}

/// Counts one re-established Redis connection (the hub's event subscription).
pub(crate) fn redis_reconnect(component: &'static str) {
    metrics::counter!(REDIS_RECONNECTS, "component" => component).increment(1);
}

/// Every value [`reject_reason`] gives.
const REJECT_REASONS: [&str; 7] = [
    "invalid_prompt",
    "too_large",
    "forbidden",
    "idempotency_conflict",
    "unavailable",
    "quota",
    "other",
];

/// Why a `POST /prompt` was refused: the values of `submit_rejected_total{reason}`.
pub(crate) fn reject_reason(e: &crate::ApiError) -> &'static str {
    use crate::ApiError as E;
    match e {
        E::Prompt(_) | E::BadRequest(..) => "invalid_prompt",
        E::TooLarge(_) => "too_large",
        E::Forbidden(_) | E::ForbiddenOther(..) => "forbidden",
        E::IdempotencyConflict => "idempotency_conflict",
        E::Unavailable(_) | E::Store(_) | E::StoreTimeout | E::Files(_) => "unavailable",
        E::QueueFull(_) => "quota",
        E::Raw(status, ..) | E::Text(status, _)
            if *status == axum::http::StatusCode::TOO_MANY_REQUESTS =>
        {
            "quota"
        }
        _ => "other",
    }
}

/// Handles of one pool's submit counters.
pub(crate) struct PoolMetrics {
    pool: String,
    /// Jobs accepted (created, not duplicates).
    pub submitted: Counter,
    /// Pending jobs cancelled by their owner.
    pub cancelled: Counter,
    rejected: RwLock<HashMap<&'static str, Counter>>,
}

impl PoolMetrics {
    /// Handles for `pool`.
    pub(crate) fn new(pool: &str) -> Self {
        // Every series of a fixed label set exists from the start at 0, so dashboards and
        // `absent()` / `increase()` alerts see a fresh gateway correctly.
        let rejected = REJECT_REASONS
            .iter()
            .map(|r| {
                let c =
                    metrics::counter!(SUBMIT_REJECTED, "pool" => pool.to_owned(), "reason" => *r);
                c.increment(0);
                (*r, c)
            })
            .collect();
        for reason in AuthFailure::ALL {
            metrics::counter!(AUTH_FAILURES, "reason" => reason.as_str()).increment(0);
        }
        for component in ["gateway", "hub"] {
            metrics::counter!(REDIS_ERRORS, "component" => component).increment(0);
        }
        metrics::counter!(REDIS_RECONNECTS, "component" => "hub").increment(0);
        PoolMetrics {
            pool: pool.to_owned(),
            submitted: metrics::counter!(JOBS_SUBMITTED, "pool" => pool.to_owned()),
            cancelled: metrics::counter!(JOBS_CANCELLED, "pool" => pool.to_owned()),
            rejected: RwLock::new(rejected),
        }
    }

    /// Counts a refused submit.
    pub(crate) fn rejected(&self, reason: &'static str) {
        if let Some(c) = self
            .rejected
            .read()
            .ok()
            .and_then(|m| m.get(reason).cloned())
        {
            c.increment(1);
            return;
        }
        let c = metrics::counter!(SUBMIT_REJECTED, "pool" => self.pool.clone(), "reason" => reason);
        c.increment(1);
        if let Ok(mut m) = self.rejected.write() {
            m.insert(reason, c);
        }
    }
}

/// Handles of the `/ws` hub.
pub(crate) struct HubMetrics {
    /// Open sockets.
    pub connections: Gauge,
    /// JSON frames written to sockets.
    pub delivered_json: Counter,
    /// Binary frames written to sockets.
    pub delivered_binary: Counter,
    /// Previews dropped for slow sockets.
    pub previews_dropped: Counter,
    /// Sockets closed with 1013.
    pub slow_closes: Counter,
}

impl HubMetrics {
    /// Registers the hub's metrics.
    pub(crate) fn new() -> Self {
        HubMetrics {
            connections: metrics::gauge!(WEBSOCKET_CONNECTIONS),
            delivered_json: metrics::counter!(EVENTS_DELIVERED, "kind" => "json"),
            delivered_binary: metrics::counter!(EVENTS_DELIVERED, "kind" => "binary"),
            previews_dropped: metrics::counter!(PREVIEWS_DROPPED),
            slow_closes: metrics::counter!(WEBSOCKET_SLOW_CLOSES),
        }
    }
}

/// Counter and histogram of one (route, method), counters by status.
struct RouteHandles {
    duration: Histogram,
    by_status: RwLock<HashMap<u16, Counter>>,
}

/// The handles of one route template, by method.
type RouteMethods = Vec<(Method, Arc<RouteHandles>)>;

/// HTTP request metrics keyed by the matched route template (never the raw path).
#[derive(Default)]
pub(crate) struct HttpMetrics {
    /// Route template → (method, handles); the map is small (one entry per route).
    routes: RwLock<HashMap<Box<str>, RouteMethods>>,
}

/// Method label of every method we never serve (a valid extension method, so it always parses).
static OTHER_METHOD: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"OTHER").unwrap_or(Method::CONNECT));

/// Route label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

impl HttpMetrics {
    fn handles(&self, route: &str, method: &Method) -> Arc<RouteHandles> {
        if let Ok(m) = self.routes.read() {
            if let Some(h) = m
                .get(route)
                .and_then(|v| v.iter().find(|(me, _)| me == method))
            {
                return h.1.clone();
            }
        }
        let handles = Arc::new(RouteHandles {
            duration: metrics::histogram!(HTTP_REQUEST_DURATION,
                "route" => route.to_owned(), "method" => method.as_str().to_owned()),
            by_status: RwLock::new(HashMap::new()),
        });
        if let Ok(mut m) = self.routes.write() {
            let v = m.entry(Box::from(route)).or_default();
            if !v.iter().any(|(me, _)| me == method) {
                v.push((method.clone(), handles.clone()));
            }
        }
        handles
    }

    fn record(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let h = self.handles(route, method);
        h.duration.record(elapsed.as_secs_f64());
        if let Some(c) = h
            .by_status
            .read()
            .ok()
            .and_then(|m| m.get(&status).cloned())
        {
            c.increment(1);
            return;
        }
        let c = metrics::counter!(HTTP_REQUESTS,
            "route" => route.to_owned(), "method" => method.as_str().to_owned(),
            "status" => status.to_string());
        c.increment(1);
        if let Ok(mut m) = h.by_status.write() {
            m.insert(status, c);
        };
    }
}

/// Middleware: counts and times every request by its route template.
pub(crate) async fn track(
    axum::extract::State(m): axum::extract::State<Arc<HttpMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    // Any token is a valid HTTP method: fold the ones we never serve into one label value, so
    // a client cannot grow the series (or their label sizes) without bound.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().clone(),
        _ => OTHER_METHOD.clone(),
    };
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = route.as_ref().map(MatchedPath::as_str).unwrap_or(UNMATCHED);
    m.record(route, &method, resp.status().as_u16(), start.elapsed());
    resp
}

/// Samples the queue gauges of `pools` from Redis every `every`, until the task is dropped.
/// Every gateway reports the same values: aggregate with `max by (pool)`.
pub async fn sample_queues(store: store::Store, pools: Vec<String>, every: Duration) {
    struct Gauges {
        pool: String,
        pending: Gauge,
        running: Gauge,
        oldest: Gauge,
    }
    let gauges: Vec<Gauges> = pools
        .into_iter()
        .map(|pool| Gauges {
            pending: metrics::gauge!(QUEUE_PENDING, "pool" => pool.clone()),
            running: metrics::gauge!(QUEUE_RUNNING, "pool" => pool.clone()),
            oldest: metrics::gauge!(QUEUE_OLDEST_PENDING, "pool" => pool.clone()),
            pool,
        })
        .collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for g in &gauges {
            match tokio::time::timeout(every, store.queue_stats(&g.pool)).await {
                Ok(Ok(s)) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    g.pending.set(s.pending as f64);
                    g.running.set(s.running as f64);
                    g.oldest.set(s.oldest_pending_age_secs(now));
                }
                Ok(Err(e)) => {
                    redis_error("gateway");
                    tracing::debug!(pool = %g.pool, error = %e, "queue sample failed");
                }
                Err(_) => {
                    redis_error("gateway");
                    tracing::debug!(pool = %g.pool, "queue sample timed out");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_are_a_small_fixed_set() {
        use crate::ApiError as E;
        assert_eq!(
            reject_reason(&E::BadRequest("invalid_json", "x".into())),
            "invalid_prompt"
        );
        assert_eq!(reject_reason(&E::StoreTimeout), "unavailable");
        assert_eq!(reject_reason(&E::TooLarge(1)), "too_large");
        assert_eq!(reject_reason(&E::Forbidden("can_run")), "forbidden");
        assert_eq!(reject_reason(&E::QueueFull(5)), "quota");
        assert_eq!(reject_reason(&E::NotFoundEmpty), "other");
    }

    #[test]
    fn auth_failure_labels() {
        let names: Vec<_> = AuthFailure::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            [
                "missing",
                "invalid",
                "expired",
                "revoked",
                "disabled",
                "forbidden",
                "login_failed",
                "throttled"
            ]
        );
    }
}
