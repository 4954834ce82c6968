//! `GET /ws` (and `/api/ws`): authenticated like REST (401 before the upgrade), then handed to
//! the [`crate::hub::Hub`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use auth::Identity;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::body::{query_get, query_pairs};
use crate::error::ApiError;
use crate::state::AppState;

/// Read buffer of one socket (clients only send a small `feature_flags` frame).
const WS_READ_BUFFER: usize = 2 * 1024;

/// The upgrade handler.
pub(crate) async fn ws_upgrade(
    State(st): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if st.draining.load(Ordering::Relaxed) || st.hub.is_closing() {
        return ApiError::Unavailable("gateway is draining".into()).into_response();
    }
    let pairs = query_pairs(query.as_deref());
    let client_id = match query_get(&pairs, "clientId") {
        Some(c) if !c.is_empty() => {
            if !protocol::ids::is_valid_client_id(c) {
                return ApiError::BadRequest(
                    "invalid_client_id",
                    "clientId must be 1 to 128 printable ASCII characters without spaces".into(),
                )
                .into_response();
            }
            c.to_owned()
        }
        _ => protocol::ids::new_sid(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return ApiError::BadRequest("not_a_websocket", e.body_text()).into_response();
        }
    };
    let Some(token) = crate::auth::request_token(&headers, query.as_deref()) else {
        return ApiError::Unauthorized("Authentication required: no token".into()).into_response();
    };
    let hub = st.hub.clone();
    let max_in = st.config.ws_max_incoming_bytes;
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max_in)
        .max_frame_size(max_in)
        .on_upgrade(move |socket| hub.run_socket(socket, identity, client_id, token))
}
