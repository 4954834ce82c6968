//! Prometheus metrics: the process-wide recorder (explicit histogram buckets, so replicas can be
//! aggregated) and the internal listener that serves `/metrics` — never on the public gateway
//! port. The metric names live with the code that records them (`gateway::metrics`,
//! `worker::metrics`); the README lists them all.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// Section `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address of the internal metrics listener (port 0 picks a free one; the bound address is
    /// logged).
    pub listen: SocketAddr,
    /// How often gateways read the queue gauges (pending, running, oldest pending) from Redis.
    #[serde(with = "humantime_serde")]
    pub queue_sample_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            queue_sample_interval: Duration::from_secs(5),
        }
    }
}

impl MetricsConfig {
    /// Start-up checks.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.queue_sample_interval < Duration::from_millis(100) {
            anyhow::bail!("metrics.queue_sample_interval must be at least 100ms");
        }
        Ok(())
    }
}

/// Buckets of HTTP request durations (seconds).
pub const HTTP_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of job wait and run times (seconds).
pub const JOB_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// How often histograms are folded (the exporter's upkeep).
const UPKEEP: Duration = Duration::from_secs(5);

/// The recorder with our buckets (not installed).
fn builder() -> anyhow::Result<PrometheusBuilder> {
    let mut b = PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full(gateway::metrics::HTTP_REQUEST_DURATION.into()),
        &HTTP_BUCKETS,
    )?;
    for name in [worker::metrics::JOB_WAIT, worker::metrics::JOB_RUN] {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), &JOB_BUCKETS)?;
    }
    Ok(b)
}

/// Installs the global recorder (once per process) and records `comfy_broker_build_info`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()?
        .install_recorder()
        .context("installing the metrics recorder")?;
    gateway::metrics::describe();
    worker::metrics::describe();
    metrics::describe_gauge!(
        "comfy_broker_build_info",
        "Build of this process (always 1)"
    );
    metrics::gauge!("comfy_broker_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Binds the metrics listener (fails start-up when the address is taken) and logs where it is.
pub async fn bind(config: &MetricsConfig) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding metrics.listen {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening on /metrics");
    Ok(listener)
}

/// The text exposition of every metric.
fn scrape(handle: &PrometheusHandle) -> Response {
    let mut r = handle.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The internal router: `/metrics` and `/healthz`.
fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(scrape(&handle))))
        .route("/healthz", get(|| std::future::ready("ok")))
}

/// Serves `/metrics` on `listener` until `shutdown`, running the exporter's upkeep meanwhile.
pub async fn serve(
    handle: PrometheusHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let result = axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    result.context("metrics listener")
}

/// The recorder and the bound listener of a process that serves metrics.
pub struct Exporter {
    handle: PrometheusHandle,
    listener: tokio::net::TcpListener,
}

impl Exporter {
    /// Installs the recorder and binds the listener, or `None` when `metrics.enabled` is false.
    pub async fn start(config: &MetricsConfig) -> anyhow::Result<Option<Exporter>> {
        if !config.enabled {
            return Ok(None);
        }
        let handle = install()?;
        let listener = bind(config).await?;
        Ok(Some(Exporter { handle, listener }))
    }

    /// Serves in the background; the listener closes when the guard drops.
    pub fn spawn(self) -> Running {
        Running(tokio::spawn(async move {
            if let Err(e) = serve(self.handle, self.listener, std::future::pending()).await {
                tracing::error!(error = %format!("{e:#}"), "metrics listener failed");
            }
        }))
    }
}

/// Stops a background task (the metrics listener, the queue sampler) when dropped.
pub struct Running(tokio::task::JoinHandle<()>);

impl Running {
    /// Runs `task` in the background until the guard drops.
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Running {
        Running(tokio::spawn(task))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the metrics listener (when enabled) and, for processes that run a gateway, the
/// queue sampler of `pools`; both stop when the returned guards drop.
pub async fn start(
    config: &MetricsConfig,
    store: &store::Store,
    gateway_pools: Option<Vec<String>>,
) -> anyhow::Result<Vec<Running>> {
    let Some(exporter) = Exporter::start(config).await? else {
        return Ok(Vec::new());
    };
    let mut guards = vec![exporter.spawn()];
    if let Some(pools) = gateway_pools {
        guards.push(Running::spawn(gateway::metrics::sample_queues(
            store.clone(),
            pools,
            config.queue_sample_interval,
        )));
    }
    Ok(guards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_our_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(gateway::metrics::HTTP_REQUEST_DURATION, "route" => "/prompt", "method" => "POST")
                .record(0.003);
            metrics::histogram!(worker::metrics::JOB_RUN, "pool" => "default").record(42.0);
        });
        let text = handle.render();
        assert!(
            text.contains(r#"comfy_broker_http_request_duration_seconds_bucket{route="/prompt",method="POST",le="0.005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"comfy_broker_http_request_duration_seconds_bucket{route="/prompt",method="POST",le="0.0025"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"comfy_broker_job_run_seconds_bucket{pool="default",le="60"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"comfy_broker_job_run_seconds_bucket{pool="default",le="30"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn defaults_validate() {
        assert!(MetricsConfig::default().validate().is_ok());
        let bad = MetricsConfig {
            queue_sample_interval: Duration::ZERO,
            ..MetricsConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
