//! The gateway's configuration (section `gateway` of the broker's config file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a gateway replica can be told. Unknown keys are rejected; every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Pools this gateway serves; jobs go to the first one for now, and catalogue, models and
    /// system stats come from it.
    pub pools: Vec<String>,
    /// Limit of every request body (ComfyUI's `--max-upload-size`, also advertised in
    /// `/features`); over it → 413.
    pub max_request_bytes: u64,
    /// Limit of a `POST /prompt` body; over it → 413.
    pub max_prompt_bytes: u64,
    /// Frames queued per WebSocket before previews are dropped and other frames close the
    /// socket with 1013.
    pub ws_send_queue: usize,
    /// Idle sockets get a ping this often.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// Largest message a client may send on `/ws` (it only ever sends `feature_flags`).
    pub ws_max_incoming_bytes: usize,
    /// How long a socket being closed (1013, 1001) may take to accept its close frame.
    #[serde(with = "humantime_serde")]
    pub ws_close_timeout: Duration,
    /// How often the pool's node catalogue, models and system stats are re-read from Redis.
    #[serde(with = "humantime_serde")]
    pub catalog_refresh: Duration,
    /// A backend whose worker has not reported for this long is retired: dropped from the
    /// registry, so its catalogue and models no longer count (graphs only it could run are
    /// refused again instead of waiting for ever). Workers report every `worker.health_interval`.
    #[serde(with = "humantime_serde")]
    pub backend_retire_after: Duration,
    /// Origins allowed to use the `jwt_token` cookie (REST and `/ws`) besides the request's own
    /// host; `*` allows any. Token carriers a browser does not attach by itself (Bearer, query)
    /// are not checked.
    pub allowed_origins: Vec<String>,
    /// Where browsers without a valid token are redirected.
    pub login_path: String,
    /// Upper bound of any one Redis operation made for a request (a Redis outage answers 503
    /// after at most this long, never hangs).
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// `Retry-After` seconds sent with 503 and 429 answers.
    pub retry_after_secs: u64,
    /// How long an authentication answer (API token look-up, session revocation, disabled
    /// user, current role) is reused: revocation takes effect within this time. Open `/ws`
    /// sockets have their token checked again this often (at least every 100 ms); a revoked
    /// token or a disabled user closes them with 1008.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Failed logins allowed per user name within `login_failure_window` before `/login` and
    /// `/mss-login/generate_token` answer 429 for that name.
    pub login_max_failures: u64,
    /// Failed logins allowed per client address within `login_failure_window`.
    pub login_max_failures_per_address: u64,
    /// Window of the failed-login counters.
    #[serde(with = "humantime_serde")]
    pub login_failure_window: Duration,
    /// Take the client address from the first `X-Forwarded-For` entry (only behind a proxy that
    /// sets it); otherwise the TCP peer address is used.
    pub trust_forwarded_for: bool,
    /// On shutdown, how long `/readyz` fails before sockets are closed and the listener stops
    /// (time for load balancers to notice).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Largest workflow (userdata) file, in bytes; over it → 413.
    pub workflow_max_bytes: u64,
    /// Most workflow files one user may keep (the global space has the same limit); a new file
    /// past it is refused with 403.
    pub workflow_max_files: u64,
    /// Default most pending jobs per user (0: no limit); over it `POST /prompt` answers 429.
    /// A role (`roles`) or a user (`max_queued` of the users API) may set another.
    pub max_queued: u32,
    /// Default most running jobs per user (0: no limit); a user at it waits even when
    /// backends are idle.
    pub max_running: u32,
    /// Scheduling per role (`owner`, `admin`, `power`, `user`, `guest`): `max_queued`,
    /// `max_running`, `weight` (share of free backends, default 1) and `require_labels`
    /// (backend labels the role's jobs are restricted to).
    pub roles: BTreeMap<String, RoleSchedule>,
}

/// Scheduling settings of one role (every field optional: the gateway-wide default applies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSchedule {
    /// Most pending jobs per user of this role (0: no limit).
    pub max_queued: Option<u32>,
    /// Most running jobs per user of this role (0: no limit).
    pub max_running: Option<u32>,
    /// Share of free backends relative to other users (default 1; 2 = twice as many).
    pub weight: Option<f64>,
    /// Labels a backend must carry to run this role's jobs (e.g. `{tier = "premium"}`).
    pub require_labels: BTreeMap<String, String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8190)),
            pools: vec!["default".into()],
            max_request_bytes: 100 * 1024 * 1024,
            max_prompt_bytes: 10 * 1024 * 1024,
            ws_send_queue: 256,
            ws_ping_interval: Duration::from_secs(20),
            ws_max_incoming_bytes: 64 * 1024,
            ws_close_timeout: Duration::from_secs(5),
            catalog_refresh: Duration::from_secs(1),
            backend_retire_after: Duration::from_secs(3600),
            allowed_origins: Vec::new(),
            login_path: "/login".into(),
            redis_timeout: Duration::from_secs(5),
            retry_after_secs: 2,
            auth_cache_ttl: Duration::from_secs(2),
            login_max_failures: 10,
            login_max_failures_per_address: 30,
            login_failure_window: Duration::from_secs(15 * 60),
            trust_forwarded_for: false,
            drain_delay: Duration::from_secs(0),
            workflow_max_bytes: 10 * 1024 * 1024,
            workflow_max_files: 1000,
            max_queued: 10_000,
            max_running: 0,
            roles: BTreeMap::new(),
        }
    }
}

impl GatewayConfig {
    /// The pool new jobs go to.
    pub fn primary_pool(&self) -> &str {
        self.pools.first().map(String::as_str).unwrap_or("default")
    }

    /// Checks the values make sense (called by [`crate::Gateway::new`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.pools.is_empty() {
            return Err("gateway.pools must name at least one pool".into());
        }
        if self.ws_send_queue == 0 {
            return Err("gateway.ws_send_queue must be at least 1".into());
        }
        if self.max_prompt_bytes == 0 || self.max_request_bytes == 0 {
            return Err("gateway body limits must be positive".into());
        }

        if self.backend_retire_after < Duration::from_secs(60) {
            return Err(
                "gateway.backend_retire_after must be at least 1m (workers report every few seconds)"
                    .into(),
            );
        }
        if self.ws_ping_interval.is_zero() || self.catalog_refresh.is_zero() {
            return Err("gateway intervals must be positive".into());
        }
        if self.login_max_failures == 0 || self.login_max_failures_per_address == 0 {
            return Err("gateway login failure limits must be at least 1".into());
        }
        if self.login_failure_window.is_zero() {
            return Err("gateway.login_failure_window must be positive".into());
        }
        if self.workflow_max_bytes == 0 || self.workflow_max_files == 0 {
            return Err(
                "gateway.workflow_max_bytes and workflow_max_files must be positive".into(),
            );
        }
        for (role, r) in &self.roles {
            if auth::Role::parse(role).is_none() {
                return Err(format!(
                    "gateway.roles: unknown role {role:?} (owner, admin, power, user, guest)"
                ));
            }
            if r.weight
                .is_some_and(|w| !(w.is_finite() && w > 0.0 && w <= 1000.0))
            {
                return Err(format!(
                    "gateway.roles.{role}.weight must be a number above 0 and at most 1000"
                ));
            }
        }
        if !self.login_path.starts_with('/') {
            return Err("gateway.login_path must start with '/'".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_and_rejects_unknown_keys() {
        let c: GatewayConfig = serde_json::from_value(serde_json::json!({
            "listen": "0.0.0.0:9000",
            "ws_ping_interval": "15s",
            "catalog_refresh": "500ms",
            "pools": ["gpu"]
        }))
        .unwrap();
        assert_eq!(c.ws_ping_interval, Duration::from_secs(15));
        assert_eq!(c.catalog_refresh, Duration::from_millis(500));
        assert_eq!(c.primary_pool(), "gpu");
        assert_eq!(c.max_request_bytes, 100 * 1024 * 1024);
        assert!(c.validate().is_ok());
        assert!(serde_json::from_value::<GatewayConfig>(serde_json::json!({"bogus": 1})).is_err());
        let bad = GatewayConfig {
            pools: vec![],
            ..GatewayConfig::default()
        };
        assert!(bad.validate().is_err());
        let roles: GatewayConfig = serde_json::from_value(serde_json::json!({
            "roles": {"power": {"weight": 2.0, "max_running": 3, "require_labels": {"tier": "premium"}}}
        }))
        .unwrap();
        assert!(roles.validate().is_ok());
        assert_eq!(roles.roles["power"].weight, Some(2.0));
        let bad: GatewayConfig =
            serde_json::from_value(serde_json::json!({"roles": {"boss": {}}})).unwrap();
        assert!(bad.validate().is_err());
        let bad: GatewayConfig =
            serde_json::from_value(serde_json::json!({"roles": {"user": {"weight": 0.0}}}))
                .unwrap();
        assert!(bad.validate().is_err());
    }
}
