//! The worker: drives a set of ComfyUI backends (one job at a time each) for the broker.
//!
//! Per backend, one task keeps a WebSocket open to the backend (negotiating type-4 previews),
//! publishes the backend's catalogue and state to the registry, claims the next job for it from
//! the store when it is free (right after a wake-up, or every `idle_poll`), ships the owner's
//! input files the graph names to the backend, submits the job under a fresh backend prompt id,
//! translates the backend's events back to the job (ids mapped back, outputs copied into the
//! file store and rewritten into the job's namespace) and publishes them on the owner's channel,
//! and ends the job with the history entry ComfyUI would have written. Per pool, one task
//! listens to the pool's control channel and fans wake-ups and interrupts out to the backend
//! tasks, and one takes over expired leases of dead workers.
//!
//! Failures: a backend that cannot be reached is published unhealthy and gets no work until it
//! answers again; a job whose backend fails mid-run is checked against the backend's
//! `/history` and `/queue`, then finished from there or given back to the queue (ending with an
//! `execution_error` once it used up `max_attempts`).

mod backend;
mod client;
mod config;
mod control;
mod error;
mod job;
pub mod metrics;
mod nsfw;
mod publisher;
mod routing;
mod translate;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use files::FileStore;
use store::Store;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{BackendConfig, NsfwClassifier, WorkerConfig};
pub use error::{BackendError, WorkerError};

/// A message to the task running one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobSignal {
    /// Interrupt the job on its backend.
    Interrupt,
    /// Another worker owns the job now: stop publishing.
    LeaseLost,
}

/// (pool, user id, prompt id) of a running job.
pub(crate) type JobKey = (String, String, String);

/// State shared by the tasks of one worker.
pub(crate) struct Shared {
    pub store: Store,
    pub files: FileStore,
    pub config: WorkerConfig,
    /// The NSFW classifier of output images.
    pub nsfw: nsfw::Classifier,
    /// The jobs this worker runs, with the channel to their task.
    pub jobs: Mutex<HashMap<JobKey, mpsc::UnboundedSender<JobSignal>>>,
}

impl Shared {
    /// Sends a signal to the task running a job, if this worker runs it.
    pub(crate) fn signal(&self, key: &JobKey, signal: JobSignal) -> bool {
        let jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        match jobs.get(key) {
            Some(tx) => tx.send(signal).is_ok(),
            None => false,
        }
    }

    pub(crate) fn register(&self, key: JobKey, tx: mpsc::UnboundedSender<JobSignal>) {
        let mut jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        jobs.insert(key, tx);
    }

    pub(crate) fn unregister(&self, key: &JobKey) {
        let mut jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        jobs.remove(key);
    }
}

fn files_need_sweeping(files: &FileStore) -> bool {
    let c = files.config();
    c.ttl(files::FileKind::Output).is_some() || c.ttl(files::FileKind::Temp).is_some()
}

/// Deletes files past their TTL every `files.sweep_interval` (several workers sweeping at once
/// is harmless: deleting a deleted file is not an error).
async fn sweep(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.files.config().sweep_interval;
    loop {
        match shared.files.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired files swept"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired files failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Runs the worker until `shutdown` completes: each configured backend gets a task that
/// claims and runs jobs of its pool. On shutdown a running job is interrupted on its backend
/// and given back to the queue (not counted as an attempt), and the backends are marked
/// unhealthy in the registry (their catalogue stays, so gateways keep accepting jobs for them). Returns an error only for an invalid configuration.
pub async fn run(
    store: Store,
    files: FileStore,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let backends = config.validate()?;
    let mut clients = Vec::with_capacity(backends.len());
    for (id, b) in &backends {
        let client = client::ComfyClient::new(
            &b.url,
            &b.headers,
            config.connect_timeout,
            config.request_timeout,
            config.transfer_timeout,
        )?;
        clients.push((id.clone(), b.clone(), client));
    }
    // `token` stops claiming at once; `drain` stops running jobs after the grace period.
    let token = CancellationToken::new();
    let drain = CancellationToken::new();
    {
        let (token, drain) = (token.clone(), drain.clone());
        let grace = config.drain_grace;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(grace = ?grace, "draining: no new jobs; running ones may finish");
            token.cancel();
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = drain.cancelled() => {}
            }
            drain.cancel();
        });
    }
    let classifier = nsfw::Classifier::new(&config)?;
    let shared = Arc::new(Shared {
        store,
        files,
        nsfw: classifier,
        config,
        jobs: Mutex::new(HashMap::new()),
    });
    tracing::info!(worker = %shared.config.id, backends = clients.len(), "worker starting");

    let mut wakes: BTreeMap<String, watch::Receiver<u64>> = BTreeMap::new();
    let mut control_tasks = JoinSet::new();
    for (_, b, _) in &clients {
        if wakes.contains_key(&b.pool) {
            continue;
        }
        let (tx, rx) = watch::channel(0u64);
        wakes.insert(b.pool.clone(), rx);
        // Interrupts must still reach jobs that finish during the drain.
        control_tasks.spawn(control::run(
            shared.clone(),
            b.pool.clone(),
            tx,
            drain.clone(),
        ));
        control_tasks.spawn(control::reclaim(
            shared.clone(),
            b.pool.clone(),
            token.clone(),
        ));
    }
    if files_need_sweeping(&shared.files) {
        control_tasks.spawn(sweep(shared.clone(), token.clone()));
    }
    let mut backend_tasks = JoinSet::new();
    for (id, b, client) in clients {
        let Some(wake) = wakes.get(&b.pool).cloned() else {
            continue;
        };
        let runner = backend::BackendRunner::new(
            shared.clone(),
            id,
            b,
            client,
            wake,
            token.clone(),
            drain.clone(),
        );
        backend_tasks.spawn(runner.run());
    }
    while let Some(r) = backend_tasks.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "backend task failed");
        }
    }
    token.cancel();
    drain.cancel();
    while control_tasks.join_next().await.is_some() {}
    tracing::info!(worker = %shared.config.id, "worker stopped");
    Ok(())
}
