//! The gateway: an axum application that looks like one ComfyUI server to headless clients.
//!
//! It authenticates every request ([`auth::Authenticator`]), validates graphs against the node
//! catalogue the pool's workers publish, queues jobs in Redis with one round trip, answers the
//! caller's own queue/history/files, and runs the `/ws` hub that forwards each user's events from
//! Redis pub/sub. Gateways keep no state a request depends on: any replica serves any request.
//!
//! ```ignore
//! let gw = Gateway::new(store, files, jwt_keys, GatewayConfig::default()).await?;
//! let listener = tokio::net::TcpListener::bind(gw.config().listen).await?;
//! gw.serve(listener, shutdown_signal()).await?;
//! ```

#![deny(missing_docs)]

mod accounts;
pub mod auth;
mod body;
mod config;
mod cpe;
mod error;
pub mod hub;
mod info;
mod jobs;
pub mod metrics;
mod nsfw;
mod pool_view;
mod prompt;
mod queue;
mod routes;
mod sched;
mod send_queue;
mod state;
mod upload;
mod view;
mod workflows;
mod ws;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use crate::auth::{
    AccountsAuthenticator, AuthError, AuthInfo, Authenticator, JwtAuthenticator,
};
pub use accounts::{bootstrap_owner, BootstrapError};
pub use config::{GatewayConfig, RoleSchedule};
pub use error::{ApiError, GatewayError};
pub use hub::{Hub, HubConfig, HubStats};
pub use pool_view::{PoolView, PoolViewCache};
pub use sched::BackendCaps;

use state::AppState;

/// One gateway replica.
pub struct Gateway {
    state: Arc<AppState>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Gateway {
    /// A gateway that verifies HS256 session JWTs with `jwt` and API tokens against the
    /// accounts in Redis ([`AccountsAuthenticator`]).
    pub async fn new(
        store: store::Store,
        files: files::FileStore,
        jwt: ::auth::JwtKeys,
        config: GatewayConfig,
    ) -> Result<Gateway, GatewayError> {
        let auth = AccountsAuthenticator::new(jwt.clone(), store.clone(), config.auth_cache_ttl);
        Self::with_authenticator(store, files, jwt, Arc::new(auth), config).await
    }

    /// A gateway with any [`Authenticator`] (API tokens, revocation, user look-ups ...).
    pub async fn with_authenticator(
        store: store::Store,
        files: files::FileStore,
        jwt: ::auth::JwtKeys,
        authenticator: Arc<dyn Authenticator>,
        config: GatewayConfig,
    ) -> Result<Gateway, GatewayError> {
        config.validate().map_err(GatewayError::Config)?;
        error::set_retry_after(config.retry_after_secs);
        let pool = config.primary_pool().to_owned();
        let pool_view = Arc::new(PoolViewCache::new(
            store.clone(),
            pool.clone(),
            config.backend_retire_after,
        ));
        // A first look now; failures are not fatal (Redis may come up later).
        match tokio::time::timeout(config.redis_timeout, pool_view.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "initial catalogue read failed"),
            Err(_) => tracing::warn!("initial catalogue read timed out"),
        }
        let refresher = tokio::spawn(pool_view.clone().run(config.catalog_refresh));
        let features = state::features_doc(config.max_request_bytes);
        let auth_ttl = config.auth_cache_ttl;
        let hub = Hub::start(
            store.clone(),
            HubConfig {
                pool,
                send_queue: config.ws_send_queue,
                ping_interval: config.ws_ping_interval,
                close_timeout: config.ws_close_timeout,
                redis_timeout: config.redis_timeout,
                features: features.clone(),
                auth_recheck: config.auth_cache_ttl.max(Duration::from_millis(100)),
            },
            Some(authenticator.clone()),
        );
        let pool_metrics = metrics::PoolMetrics::new(config.primary_pool());
        let state = Arc::new(AppState {
            http_metrics: Default::default(),
            pool_metrics,
            config,
            store,
            files,
            auth: authenticator,
            jwt,
            pool_view,
            hub,
            draining: Default::default(),
            limits: sched::UserLimitsCache::new(auth_ttl),
            features,
        });
        Ok(Gateway { state, refresher })
    }

    /// The configuration in use.
    pub fn config(&self) -> &GatewayConfig {
        &self.state.config
    }

    /// The `/ws` hub (counters, closing a user's sockets).
    pub fn hub(&self) -> Arc<Hub> {
        self.state.hub.clone()
    }

    /// The cached pool information (catalogue, models, system stats).
    pub fn pool_view(&self) -> Arc<PoolViewCache> {
        self.state.pool_view.clone()
    }

    /// Every route, ready to serve.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` fails first, after
    /// `drain_delay` every socket is closed with 1001 and in-flight requests finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let app = self.router();
        let drain = async move {
            shutdown.await;
            state.draining.store(true, Ordering::Relaxed);
            tracing::info!("draining: readiness now fails");
            if !state.config.drain_delay.is_zero() {
                tokio::time::sleep(state.config.drain_delay).await;
            }
            state.hub.close_all(hub::CLOSE_GOING_AWAY);
        };
        let result = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(drain)
        .await;
        drop(self);
        result
    }
}
