//! What the pool's backends report, cached in memory: the union node catalogue (parsed once per
//! change, never per request), `/object_info` bytes, model lists, embeddings and system stats.
//!
//! A background task re-reads the registry every `catalog_refresh`; requests only clone an
//! `Arc` of the current [`PoolView`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use protocol::catalog::Catalog;
use serde_json::{json, Map, Value};
use store::{BackendInfo, BackendState, Store, StoreError};
use tokio::sync::Mutex;

/// A snapshot of one pool as its backends describe it.
#[derive(Default)]
pub struct PoolView {
    /// Union of the backends' catalogues; `None` until some backend published one.
    pub catalog: Option<Arc<Catalog>>,
    /// The union catalogue serialised as `/object_info` JSON.
    pub object_info: Bytes,
    /// Each class's raw entry, serialised (for `/object_info/{class}`).
    pub classes: HashMap<String, Bytes>,
    /// Model files by folder: union, sorted, de-duplicated.
    pub models: BTreeMap<String, Vec<String>>,
    /// Embedding names: union, sorted, de-duplicated.
    pub embeddings: Vec<String>,
    /// `/system_stats` document.
    pub system_stats: Bytes,
    /// What each registered backend (healthy or not) can run, to check that one backend has
    /// everything a graph needs.
    pub backends: Vec<crate::sched::BackendCaps>,
    /// The sorted set of catalogue hashes this view was built from.
    catalog_key: Vec<String>,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Keeps [`PoolView`] fresh for one pool.
pub struct PoolViewCache {
    store: Store,
    pool: String,
    /// Registry entries not updated for this long are retired.
    retire_after: Duration,
    current: RwLock<Arc<PoolView>>,
    /// Parsed catalogues by content hash (a backend's document is parsed once).
    parsed: Mutex<HashMap<String, Arc<Catalog>>>,
}

impl PoolViewCache {
    /// An empty cache for `pool` (call [`PoolViewCache::refresh`] to fill it); backends whose
    /// worker has been silent for `retire_after` are dropped from the registry.
    pub fn new(store: Store, pool: String, retire_after: Duration) -> Self {
        PoolViewCache {
            store,
            pool,
            retire_after,
            current: RwLock::new(Arc::new(PoolView {
                system_stats: Bytes::from(system_stats_doc(&[]).to_string()),
                object_info: Bytes::from_static(b"{}"),
                ..PoolView::default()
            })),
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// The current snapshot.
    pub fn get(&self) -> Arc<PoolView> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the registry; the catalogue is rebuilt only when the set of documents changed.
    /// Serialised by the `parsed` lock, so concurrent callers do the work once.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut parsed = self.parsed.lock().await;
        let mut backends = self.store.backends(&self.pool).await?;
        // A backend whose worker stopped reporting long ago (removed from every config, or its
        // worker gone for good) is retired, so it no longer vouches for graphs nobody can run.
        let cutoff = now_ms() - i64::try_from(self.retire_after.as_millis()).unwrap_or(i64::MAX);
        let (retired, kept): (Vec<BackendInfo>, Vec<BackendInfo>) =
            backends.into_iter().partition(|b| b.updated_ms < cutoff);
        backends = kept;
        for b in retired {
            tracing::info!(pool = %self.pool, backend = %b.id, "retiring a backend whose worker stopped reporting");
            self.store.remove_backend(&self.pool, &b.id).await?;
        }
        let live: Vec<&BackendInfo> = backends
            .iter()
            .filter(|b| b.state != BackendState::Unhealthy)
            .collect();
        // Catalogues of every registered backend count: an unhealthy node comes back with the
        // same nodes, and refusing its graphs meanwhile would be surprising.
        let mut shas: Vec<String> = backends
            .iter()
            .filter_map(|b| b.object_info_sha256.clone())
            .collect();
        shas.sort();
        shas.dedup();

        let old = self.get();
        let (catalog, object_info, classes) = if shas == old.catalog_key {
            (
                old.catalog.clone(),
                old.object_info.clone(),
                old.classes.clone(),
            )
        } else {
            let mut cats = Vec::with_capacity(shas.len());
            for sha in &shas {
                if let Some(c) = parsed.get(sha) {
                    cats.push(c.clone());
                    continue;
                }
                let Some(doc) = self.store.object_info_doc(&self.pool, sha).await? else {
                    continue;
                };
                match Catalog::from_slice(&doc) {
                    Ok(c) => {
                        let c = Arc::new(c);
                        parsed.insert(sha.clone(), c.clone());
                        cats.push(c);
                    }
                    Err(e) => {
                        tracing::warn!(pool = %self.pool, sha = %sha, error = %e, "unusable object_info document")
                    }
                }
            }
            parsed.retain(|k, _| shas.contains(k));
            if cats.is_empty() {
                (None, Bytes::from_static(b"{}"), HashMap::new())
            } else {
                let union = if cats.len() == 1 {
                    cats[0].clone()
                } else {
                    let owned: Vec<Catalog> = cats.iter().map(|c| (**c).clone()).collect();
                    let mut union = Catalog::union(&owned);
                    // A loader's dropdown lists every backend's files, not only the first's
                    // (which backend has which is checked per backend at submit).
                    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                    for c in &cats {
                        for (folder, list) in c.model_files() {
                            files.entry(folder).or_default().extend(list);
                        }
                    }
                    for (folder, list) in files {
                        let list: Vec<String> = list.into_iter().collect();
                        union.set_model_files(&folder, &list);
                    }
                    Arc::new(union)
                };
                let json = union.to_json();
                let mut classes = HashMap::new();
                if let Value::Object(m) = &json {
                    for (k, v) in m {
                        let mut one = Map::new();
                        one.insert(k.clone(), v.clone());
                        classes.insert(k.clone(), Bytes::from(Value::Object(one).to_string()));
                    }
                }
                tracing::info!(pool = %self.pool, classes = union.len(), documents = cats.len(), "node catalogue updated");
                (Some(union), Bytes::from(json.to_string()), classes)
            }
        };

        let caps = backends
            .iter()
            .map(|b| crate::sched::BackendCaps {
                catalog: b
                    .object_info_sha256
                    .as_ref()
                    .and_then(|sha| parsed.get(sha).cloned()),
                models: b
                    .models
                    .iter()
                    .map(|(f, files)| (f.clone(), files.iter().cloned().collect()))
                    .collect(),
                labels: b.labels.clone(),
            })
            .collect();
        let mut models: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut embeddings: BTreeSet<String> = BTreeSet::new();
        for b in &backends {
            for (folder, files) in &b.models {
                models
                    .entry(folder.clone())
                    .or_default()
                    .extend(files.iter().cloned());
            }
            embeddings.extend(b.embeddings.iter().cloned());
        }
        let stats_sources: Vec<&BackendInfo> = if live.is_empty() {
            backends.iter().collect()
        } else {
            live
        };
        let view = PoolView {
            catalog,
            object_info,
            classes,
            models: models
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            embeddings: embeddings.into_iter().collect(),
            system_stats: Bytes::from(system_stats_doc(&stats_sources).to_string()),
            backends: caps,
            catalog_key: shas,
        };
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(view),
            Err(p) => *p.into_inner() = Arc::new(view),
        }
        Ok(())
    }

    /// Refreshes every `every` until the task is dropped.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                crate::metrics::redis_error("gateway");
                tracing::debug!(pool = %self.pool, error = %e, "catalogue refresh failed");
            }
        }
    }
}

/// A ComfyUI-shaped `/system_stats`: `system` from the first backend that published stats,
/// `devices` from all of them.
fn system_stats_doc(backends: &[&BackendInfo]) -> Value {
    let mut system: Option<Value> = None;
    let mut devices: Vec<Value> = Vec::new();
    for b in backends {
        let Some(stats) = &b.system_stats else {
            continue;
        };
        if system.is_none() {
            system = stats.get("system").cloned();
        }
        if let Some(Value::Array(ds)) = stats.get("devices") {
            devices.extend(ds.iter().cloned());
        }
    }
    let system = system.unwrap_or_else(|| {
        json!({
            "os": std::env::consts::OS,
            "ram_total": 0,
            "ram_free": 0,
            "comfyui_version": "",
            "required_frontend_version": "",
            "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": "",
            "pytorch_version": "",
            "embedded_python": false,
            "argv": []
        })
    });
    json!({"system": system, "devices": devices})
}
