//! `GET /ws` (and `/api/ws`): authenticated like REST (401 before the upgrade), then handed to
//! the [`crate::hub::Hub`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use auth::{Carrier, Identity};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::AuthInfo;
use crate::body::{query_get, query_pairs};
use crate::error::ApiError;
use crate::state::AppState;

/// Read buffer of one socket (clients only send a small `feature_flags` frame).
const WS_READ_BUFFER: usize = 2 * 1024;

/// True when a browser-sent `Origin` may use the cookie: listed, or the request's own host.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// The upgrade handler.
pub(crate) async fn ws_upgrade(
    State(st): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Extension(info): Extension<AuthInfo>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if info.carrier == Carrier::Cookie && !origin_allowed(&headers, &st.config.allowed_origins) {
        return ApiError::ForbiddenOther(
            "forbidden_origin",
            "this Origin may not open /ws with a cookie".into(),
        )
        .into_response();
    }
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
    let hub = st.hub.clone();
    let max_in = st.config.ws_max_incoming_bytes;
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max_in)
        .max_frame_size(max_in)
        .on_upgrade(move |socket| hub.run_socket(socket, identity, client_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookie_origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]));
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8190"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gw.example:8190"),
        );
        assert!(origin_allowed(&h, &[]));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".into()]));
    }
}
