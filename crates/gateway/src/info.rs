//! Read-only pool information: `/object_info`, `/system_stats`, `/models`, `/embeddings`,
//! `/features`, and the health probes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::error::{json_response, ApiError};
use crate::state::AppState;

/// `GET /object_info`: the pool's union catalogue (pre-serialised).
pub(crate) async fn object_info(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, st.pool_view.get().object_info.clone())
}

/// `GET /object_info/{class}`: `{class: info}` or `{}`.
pub(crate) async fn object_info_class(
    State(st): State<Arc<AppState>>,
    Path(class): Path<String>,
) -> Response {
    let view = st.pool_view.get();
    match view.classes.get(&class) {
        Some(b) => json_response(StatusCode::OK, b.clone()),
        None => json_response(StatusCode::OK, "{}"),
    }
}

/// `GET /system_stats`.
pub(crate) async fn system_stats(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, st.pool_view.get().system_stats.clone())
}

fn json_list(items: impl Iterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<serde_json::Value> = items
        .map(|s| serde_json::Value::String(s.as_ref().to_owned()))
        .collect();
    serde_json::Value::Array(v).to_string()
}

/// `GET /models`: folder names.
pub(crate) async fn models(State(st): State<Arc<AppState>>) -> Response {
    let view = st.pool_view.get();
    json_response(StatusCode::OK, json_list(view.models.keys()))
}

/// `GET /models/{folder}`: files of one folder; 404 for an unknown folder.
pub(crate) async fn models_folder(
    State(st): State<Arc<AppState>>,
    Path(folder): Path<String>,
) -> Result<Response, ApiError> {
    let view = st.pool_view.get();
    match view.models.get(&folder) {
        Some(files) => Ok(json_response(StatusCode::OK, json_list(files.iter()))),
        None => Err(ApiError::NotFound(format!(
            "unknown model folder {folder:?}"
        ))),
    }
}

/// `GET /embeddings`.
pub(crate) async fn embeddings(State(st): State<Arc<AppState>>) -> Response {
    let view = st.pool_view.get();
    json_response(StatusCode::OK, json_list(view.embeddings.iter()))
}

/// `GET /features`.
pub(crate) async fn features(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, st.features.clone())
}

/// `GET /healthz`: the process runs.
pub(crate) async fn healthz() -> Response {
    json_response(StatusCode::OK, "{\"status\": \"ok\"}")
}

/// `GET /readyz`: Redis answers and the gateway is not draining.
pub(crate) async fn readyz(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if st.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("draining".into()));
    }
    let timeout = st.config.redis_timeout.min(Duration::from_secs(2));
    match tokio::time::timeout(timeout, st.store.ping()).await {
        Ok(Ok(())) => Ok(json_response(StatusCode::OK, "{\"status\": \"ready\"}")),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: redis failed");
            Err(ApiError::Unavailable("redis unavailable".into()))
        }
        Err(_) => Err(ApiError::Unavailable("redis unavailable".into())),
    }
}

/// `GET /login`: no HTML here (headless clients only); say how to log in.
pub(crate) async fn login_hint() -> Response {
    json_response(
        StatusCode::OK,
        r#"{"message": "POST {\"username\", \"password\"} as JSON or a form to /login; the answer carries jwt_token"}"#,
    )
}
