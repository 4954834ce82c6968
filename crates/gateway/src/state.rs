//! State shared by every handler of one gateway process.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use store::{Store, StoreError};

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::pool_view::PoolViewCache;

/// Everything a handler may need.
pub struct AppState {
    /// Configuration.
    pub config: GatewayConfig,
    /// Redis.
    pub store: Store,
    /// Outputs, temp files and uploads.
    pub files: files::FileStore,
    /// Token verification.
    pub auth: Arc<dyn Authenticator>,
    /// Session JWT signing (login) and reading (logout).
    pub jwt: auth::JwtKeys,
    /// The primary pool's catalogue and reports.
    pub pool_view: Arc<PoolViewCache>,
    /// The `/ws` hub.
    pub hub: Arc<Hub>,
    /// Set when shutting down: `/readyz` fails.
    pub draining: AtomicBool,
    /// Per-user limit overrides (cached).
    pub(crate) limits: crate::sched::UserLimitsCache,
    /// The `/features` document (also the reply to a socket's `feature_flags`).
    pub features: Bytes,
    /// Request counters and latencies by route.
    pub(crate) http_metrics: Arc<crate::metrics::HttpMetrics>,
    /// Submit and cancel counters of the primary pool.
    pub(crate) pool_metrics: crate::metrics::PoolMetrics,
}

impl AppState {
    /// The pool jobs go to.
    pub fn pool(&self) -> &str {
        self.config.primary_pool()
    }

    /// Runs a store operation under `redis_timeout` (an outage answers 503, never hangs).
    pub async fn redis<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.redis_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                crate::metrics::redis_error("gateway");
                Err(ApiError::from(e))
            }
            Err(_) => {
                crate::metrics::redis_error("gateway");
                Err(ApiError::StoreTimeout)
            }
        }
    }
}

/// The `/features` map as ComfyUI 0.3.64 sends it.
pub(crate) fn features_doc(max_request_bytes: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "supports_preview_metadata": true,
            "max_upload_size": max_request_bytes,
        })
        .to_string(),
    )
}
