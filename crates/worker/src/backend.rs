//! One task per backend: connect (catalogue, WebSocket), publish the backend to the registry,
//! then claim and run jobs while it is healthy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use store::{BackendInfo, BackendState};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{BackendWs, ComfyClient};
use crate::error::BackendError;
use crate::job::JobEnd;
use crate::metrics::BackendMetrics;
use crate::publisher::Publisher;
use crate::routing::Router;
use crate::{BackendConfig, Shared};

/// A change to what the registry shows about a backend.
pub(crate) enum RegUpdate {
    State(BackendState),
    Stats(Value),
    Catalog {
        models: BTreeMap<String, Vec<String>>,
        embeddings: Vec<String>,
        object_info: Bytes,
    },
    JobDone,
}

/// Drives one backend.
pub(crate) struct BackendRunner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: String,
    pub(crate) cfg: BackendConfig,
    pub(crate) client: ComfyClient,
    pub(crate) wake: watch::Receiver<u64>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when running jobs must stop (shutdown + drain grace).
    pub(crate) drain: CancellationToken,
    /// The backend WebSocket's client id (the `client_id` of every prompt we submit).
    pub(crate) sid: String,
    pub(crate) ws: Option<BackendWs>,
    pub(crate) publisher: Publisher,
    pub(crate) reg: mpsc::UnboundedSender<RegUpdate>,
    /// The backend's parsed node catalogue (to find inputs that name uploaded files).
    pub(crate) catalog: Option<Arc<protocol::catalog::Catalog>>,
    state: Option<BackendState>,
    last_catalog: Option<Instant>,
    registry_task: Option<tokio::task::JoinHandle<()>>,
    /// A ping was sent on the WebSocket and no pong came back yet.
    pub(crate) awaiting_pong: bool,
    /// The backend failed a job: wait one health interval before trusting it again, so the
    /// job it gave back goes to another backend rather than failing here again at once.
    cooldown: bool,
    /// The backend's model files by folder (as its `/models` lists them).
    models: BTreeMap<String, Vec<String>>,
    /// Which capability classes it can run.
    router: Router,
    /// This backend's metric handles.
    pub(crate) metrics: Arc<BackendMetrics>,
}

fn folder_is_safe(f: &str) -> bool {
    !f.is_empty()
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !f.contains("..")
}

impl BackendRunner {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: String,
        cfg: BackendConfig,
        client: ComfyClient,
        wake: watch::Receiver<u64>,
        shutdown: CancellationToken,
        drain: CancellationToken,
    ) -> Self {
        let metrics = Arc::new(BackendMetrics::new(&cfg.pool, &id));
        metrics.state(BackendState::Unhealthy);
        let publisher = Publisher::spawn(shared.store.clone(), metrics.published.clone());
        let info = BackendInfo {
            id: id.clone(),
            pool: cfg.pool.clone(),
            worker: shared.config.id.clone(),
            state: BackendState::Unhealthy,
            object_info_sha256: None,
            models: BTreeMap::new(),
            embeddings: Vec::new(),
            system_stats: None,
            labels: cfg.labels.clone(),
            jobs_run: 0,
            updated_ms: 0,
        };
        let (reg, rx) = mpsc::unbounded_channel();
        let registry_task = tokio::spawn(registry(
            shared.clone(),
            info,
            rx,
            shared.config.health_interval,
        ));
        BackendRunner {
            shared,
            id,
            cfg,
            client,
            wake,
            shutdown,
            drain,
            sid: protocol::ids::new_sid(),
            ws: None,
            publisher,
            reg,
            state: None,
            last_catalog: None,
            catalog: None,
            registry_task: Some(registry_task),
            awaiting_pong: false,
            cooldown: false,
            models: BTreeMap::new(),
            router: Router::default(),
            metrics,
        }
    }

    pub(crate) fn set_state(&mut self, state: BackendState) {
        if self.state != Some(state) {
            if state == BackendState::Unhealthy {
                tracing::warn!(backend = %self.id, "backend unhealthy");
            } else if self.state == Some(BackendState::Unhealthy) || self.state.is_none() {
                tracing::info!(backend = %self.id, "backend healthy");
            }
            self.state = Some(state);
            self.metrics.state(state);
            let _ = self.reg.send(RegUpdate::State(state));
        }
    }

    /// The backend's loop until shutdown.
    pub(crate) async fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            if std::mem::take(&mut self.cooldown) {
                tokio::select! {
                    _ = tokio::time::sleep(self.shared.config.health_interval) => {}
                    _ = self.shutdown.cancelled() => break,
                }
            }
            if self.ws.is_none() {
                match self.connect().await {
                    Ok(()) => self.set_state(BackendState::Healthy),
                    Err(e) => {
                        if self.state != Some(BackendState::Unhealthy) {
                            tracing::warn!(backend = %self.id, error = %e, "backend not reachable");
                        }
                        self.set_state(BackendState::Unhealthy);
                        tokio::select! {
                            _ = tokio::time::sleep(self.shared.config.health_interval) => {}
                            _ = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                }
            }
            self.serve().await;
        }
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
        // Closing the registry channel marks the backend unhealthy in the registry.
        self.metrics.state(BackendState::Unhealthy);
        let (closed, _) = mpsc::unbounded_channel();
        self.reg = closed;
        if let Some(task) = self.registry_task.take() {
            let _ = task.await;
        }
    }

    async fn connect(&mut self) -> Result<(), BackendError> {
        let stats: Value = self.client.get_json("/system_stats").await?;
        let _ = self.reg.send(RegUpdate::Stats(stats));
        if self
            .last_catalog
            .is_none_or(|t| t.elapsed() >= self.shared.config.catalog_interval)
        {
            self.refresh_catalog().await?;
        }
        self.ws = Some(self.client.connect_ws(&self.sid).await?);
        self.awaiting_pong = false;
        Ok(())
    }

    async fn refresh_catalog(&mut self) -> Result<(), BackendError> {
        let object_info = self.client.get_bytes("/object_info").await?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&object_info).is_err() {
            return Err(BackendError::BadAnswer(
                "/object_info is not JSON".to_owned(),
            ));
        }
        match protocol::catalog::Catalog::from_slice(&object_info) {
            Ok(c) => self.catalog = Some(Arc::new(c)),
            Err(e) => tracing::warn!(backend = %self.id, error = %e, "catalogue not parseable"),
        }
        let folders: Vec<String> = self.client.get_json("/models").await.unwrap_or_default();
        let client = &self.client;
        let lists = futures::future::join_all(folders.iter().filter(|f| folder_is_safe(f)).map(
            |f| async move {
                let files: Result<Vec<String>, _> = client.get_json(&format!("/models/{f}")).await;
                (f.clone(), files)
            },
        ))
        .await;
        let models: BTreeMap<String, Vec<String>> = lists
            .into_iter()
            .filter_map(|(f, r)| r.ok().map(|l| (f, l)))
            .collect();
        self.models = models.clone();
        self.router.invalidate();
        let embeddings: Vec<String> = self
            .client
            .get_json("/embeddings")
            .await
            .unwrap_or_default();
        let _ = self.reg.send(RegUpdate::Catalog {
            models,
            embeddings,
            object_info,
        });
        self.last_catalog = Some(Instant::now());
        Ok(())
    }

    /// Idle health check: stats, WebSocket ping, catalogue when stale. False when unhealthy.
    async fn health_check(&mut self) -> bool {
        match self.client.get_json::<Value>("/system_stats").await {
            Ok(stats) => {
                let _ = self.reg.send(RegUpdate::Stats(stats));
            }
            Err(e) => {
                tracing::warn!(backend = %self.id, error = %e, "health check failed");
                return false;
            }
        }
        if let Some(ws) = self.ws.as_mut() {
            if self.awaiting_pong {
                tracing::warn!(backend = %self.id, "backend websocket does not answer pings");
                return false;
            }
            if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                tracing::warn!(backend = %self.id, "backend websocket lost");
                return false;
            }
            self.awaiting_pong = true;
        }
        if self
            .last_catalog
            .is_none_or(|t| t.elapsed() >= self.shared.config.catalog_interval)
        {
            if let Err(e) = self.refresh_catalog().await {
                tracing::warn!(backend = %self.id, error = %e, "catalogue refresh failed");
                return false;
            }
        }
        true
    }

    /// The next job this backend can run. The store says how many capability classes the pool
    /// knows; when that changed, the classes are re-read and the claim tried once more.
    async fn claim_next(&mut self, pool: &str) -> Result<Option<store::Lease>, store::StoreError> {
        for _ in 0..2 {
            let offer = self
                .router
                .offer(self.catalog.as_deref(), &self.models, &self.cfg.labels);
            let claimed = self
                .shared
                .store
                .claim_for(pool, &self.shared.config.id, &self.id, &offer)
                .await?;
            let stale = self.router.is_stale(claimed.known_classes);
            if stale {
                self.router
                    .refresh(&self.shared.store, pool, claimed.known_classes)
                    .await?;
            }
            if let Some(lease) = claimed.lease {
                if let Some(class) = &claimed.class {
                    self.router.ran(class);
                }
                return Ok(Some(lease));
            }
            if !stale {
                break;
            }
        }
        Ok(None)
    }

    /// Claims and runs jobs while connected; returns when the backend needs reconnecting or
    /// on shutdown.
    async fn serve(&mut self) {
        let every = self.shared.config.health_interval;
        let mut health = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_poll = self.shared.config.idle_poll;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            self.wake.borrow_and_update();
            let pool = self.cfg.pool.clone();
            match self.claim_next(&pool).await {
                Ok(Some(lease)) => {
                    self.set_state(BackendState::Busy);
                    match self.run_job(lease).await {
                        JobEnd::Done => {
                            let _ = self.reg.send(RegUpdate::JobDone);
                            self.metrics.jobs.increment(1);
                            if self.ws.is_none() {
                                // Reconnect (and health-check) before the next claim.
                                return;
                            }
                            self.set_state(BackendState::Healthy);
                            continue;
                        }
                        JobEnd::BackendDown => {
                            let _ = self.reg.send(RegUpdate::JobDone);
                            self.metrics.jobs.increment(1);
                            self.ws = None;
                            self.cooldown = true;
                            self.set_state(BackendState::Unhealthy);
                            return;
                        }
                        JobEnd::Shutdown => return,
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    crate::metrics::redis_error();
                    tracing::warn!(backend = %self.id, error = %e, "claim failed");
                }
            }
            // Wait for a reason to claim again. Messages the backend sends while idle
            // (trailing end markers, broadcasts) are read and dropped without claiming.
            loop {
                let Some(ws) = self.ws.as_mut() else { return };
                enum Idle {
                    Claim,
                    Health,
                    Ignore,
                    Lost,
                    Stop,
                }
                let ev = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => Idle::Stop,
                    r = self.wake.changed() => {
                        if r.is_err() {
                            tokio::time::sleep(idle_poll).await;
                        }
                        Idle::Claim
                    }
                    _ = tokio::time::sleep(idle_poll) => Idle::Claim,
                    _ = health.tick() => Idle::Health,
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Idle::Lost,
                        Some(Ok(Message::Pong(_))) => {
                            self.awaiting_pong = false;
                            Idle::Ignore
                        }
                        Some(Ok(_)) => Idle::Ignore,
                    },
                };
                match ev {
                    Idle::Stop => return,
                    Idle::Claim => break,
                    Idle::Ignore => {}
                    Idle::Health => {
                        if !self.health_check().await {
                            self.ws = None;
                            self.set_state(BackendState::Unhealthy);
                            return;
                        }
                    }
                    Idle::Lost => {
                        tracing::warn!(backend = %self.id, "backend websocket closed");
                        self.ws = None;
                        return;
                    }
                }
            }
        }
    }
}

/// Keeps the backend's registry entry current; marks it unhealthy when the runner is gone.
async fn registry(
    shared: Arc<Shared>,
    mut info: BackendInfo,
    mut rx: mpsc::UnboundedReceiver<RegUpdate>,
    every: Duration,
) {
    let mut pending_doc: Option<Bytes> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let apply = |info: &mut BackendInfo, pending_doc: &mut Option<Bytes>, u: RegUpdate| match u {
        RegUpdate::State(s) => info.state = s,
        RegUpdate::Stats(s) => info.system_stats = Some(s),
        RegUpdate::JobDone => info.jobs_run += 1,
        RegUpdate::Catalog {
            models,
            embeddings,
            object_info,
        } => {
            info.models = models;
            info.embeddings = embeddings;
            let sha = store::sha256_hex(&object_info);
            if info.object_info_sha256.as_deref() != Some(sha.as_str()) {
                *pending_doc = Some(object_info);
            }
        }
    };
    loop {
        tokio::select! {
            u = rx.recv() => {
                let Some(u) = u else { break };
                apply(&mut info, &mut pending_doc, u);
                while let Ok(u) = rx.try_recv() {
                    apply(&mut info, &mut pending_doc, u);
                }
            }
            _ = tick.tick() => {}
        }
        info.updated_ms = crate::translate::now_ms();
        if let Some(doc) = pending_doc.as_ref() {
            info.object_info_sha256 = Some(store::sha256_hex(doc));
        }
        match shared
            .store
            .publish_backend(&info, pending_doc.as_deref())
            .await
        {
            Ok(()) => pending_doc = None,
            Err(e) => {
                crate::metrics::redis_error();
                tracing::warn!(backend = %info.id, error = %e, "registry publish failed")
            }
        }
    }
    // Marked unhealthy, not removed: gateways keep validating against its catalogue while
    // the worker restarts, so jobs queue instead of being refused.
    info.state = BackendState::Unhealthy;
    info.updated_ms = crate::translate::now_ms();
    if let Err(e) = shared.store.publish_backend(&info, None).await {
        tracing::warn!(backend = %info.id, error = %e, "registry update failed");
    }
}
