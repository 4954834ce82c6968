//! Every route of the gateway, in one list. Each ComfyUI route is served at its own path and
//! under `/api` (as ComfyUI registers them); the jobs API lives only under `/api/jobs`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::auth::require_auth;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{accounts, cpe, info, jobs, nsfw, prompt, queue, upload, view, workflows, ws};

/// Adds `path` and `/api{path}`.
fn both(
    router: Router<Arc<AppState>>,
    path: &str,
    route: MethodRouter<Arc<AppState>>,
) -> Router<Arc<AppState>> {
    router
        .route(path, route.clone())
        .route(&format!("/api{path}"), route)
}

/// The whole application.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut authed: Router<Arc<AppState>> = Router::new();
    authed = both(
        authed,
        "/prompt",
        get(queue::get_prompt)
            .post(prompt::post_prompt)
            .put(prompt::post_prompt),
    );
    authed = both(
        authed,
        "/queue",
        get(queue::get_queue).post(queue::post_queue),
    );
    authed = both(authed, "/interrupt", post(queue::post_interrupt));
    authed = both(
        authed,
        "/history",
        get(queue::get_history).post(queue::post_history),
    );
    authed = both(authed, "/history/{prompt_id}", get(queue::get_history_one));
    authed = both(authed, "/view", get(view::view));
    authed = both(authed, "/upload/image", post(upload::upload_image));
    authed = both(authed, "/upload/mask", post(upload::upload_mask));
    authed = both(authed, "/mss-login/api/outputs/nsfw", post(nsfw::mark));
    authed = both(authed, "/object_info", get(info::object_info));
    authed = both(authed, "/object_info/{class}", get(info::object_info_class));
    authed = both(authed, "/system_stats", get(info::system_stats));
    authed = both(authed, "/models", get(info::models));
    authed = both(authed, "/models/{folder}", get(info::models_folder));
    authed = both(authed, "/embeddings", get(info::embeddings));
    authed = both(authed, "/features", get(info::features));
    authed = both(authed, "/ws", get(ws::ws_upgrade));
    // Workflows (userdata) and MSS-Login's forms of them; see workflows.rs.
    authed = both(
        authed,
        "/userdata",
        get(workflows::list_userdata)
            .post(workflows::post_userdata_dir)
            .delete(workflows::delete_userdata_dir),
    );
    authed = both(
        authed,
        "/userdata/{file}",
        get(workflows::get_userdata)
            .post(workflows::post_userdata)
            .delete(workflows::delete_userdata),
    );
    authed = both(
        authed,
        "/userdata/{file}/move/{dest}",
        post(workflows::move_userdata),
    );
    for path in ["/userdata/workflows/", "/userdata/workflows/{*name}"] {
        authed = both(
            authed,
            path,
            get(workflows::mss_get)
                .post(workflows::mss_post)
                .delete(workflows::mss_remove),
        );
    }
    authed = both(authed, "/v2/userdata", get(workflows::list_userdata_v2));
    // The Comfy Portal endpoints (mss-login-api.md §7); see cpe.rs.
    authed = both(authed, "/cpe/workflow/list", get(cpe::list));
    authed = both(authed, "/cpe/workflow/get", get(cpe::get));
    authed = both(authed, "/cpe/workflow/save", post(cpe::save));
    authed = both(
        authed,
        "/cpe/workflow/get-and-convert",
        get(cpe::get_and_convert),
    );
    authed = both(authed, "/cpe/workflow/convert", post(cpe::convert_body));
    authed = both(authed, "/cpe/health", get(cpe::health));
    // The jobs API exists only under /api (ComfyUI also answers at /api/api/jobs...).
    for prefix in ["/api", "/api/api"] {
        authed = authed
            .route(&format!("{prefix}/jobs"), get(jobs::list_jobs))
            .route(&format!("{prefix}/jobs/cancel"), post(jobs::cancel_jobs))
            .route(&format!("{prefix}/jobs/{{job_id}}"), get(jobs::get_job))
            .route(
                &format!("{prefix}/jobs/{{job_id}}/cancel"),
                post(jobs::cancel_job),
            );
    }
    // MSS-Login: the caller's API tokens and sessions.
    for prefix in ["", "/api"] {
        authed = authed
            .route(
                &format!("{prefix}/mss-login/api/tokens"),
                get(accounts::list_tokens).delete(accounts::delete_token),
            )
            .route(
                &format!("{prefix}/mss-login/api/tokens/{{prefix}}"),
                delete(accounts::delete_token_path),
            )
            .route(
                &format!("{prefix}/mss-login/me/sessions"),
                get(accounts::list_sessions),
            )
            .route(
                &format!("{prefix}/mss-login/me/sessions/revoke"),
                post(accounts::revoke_session),
            );
    }
    authed = authed.route_layer(middleware::from_fn_with_state(state.clone(), require_auth));

    let mut open: Router<Arc<AppState>> = Router::new()
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        // Sessions and API tokens are obtained without a token.
        .route("/login", get(info::login_hint).post(accounts::login))
        .route("/logout", get(accounts::logout).post(accounts::logout))
        .route(
            "/mss-login/generate_token",
            get(accounts::generate_token_page).post(accounts::generate_token),
        )
        .route("/generate_token", post(accounts::generate_token));
    // These check the caller themselves, answering as MSS-Login does (a guest `me`, 403
    // `Admin only`); their `/api` twins answer 401 without a token.
    for prefix in ["", "/api"] {
        open = open
            .route(&format!("{prefix}/mss-login/api/me"), get(accounts::me))
            .route(
                &format!("{prefix}/mss-login/api/users"),
                get(accounts::list_users).post(accounts::create_user),
            )
            .route(
                &format!("{prefix}/mss-login/api/users/{{name}}"),
                put(accounts::update_user).delete(accounts::delete_user),
            );
    }

    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(authed)
        .merge(open)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        // Outside the body limit so 413s are counted too; labelled by route template.
        .layer(middleware::from_fn_with_state(
            state.http_metrics.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(
            usize::try_from(state.config.max_request_bytes).unwrap_or(usize::MAX),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let rid = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // Query strings may carry `token` / `access_token`: their values are redacted.
            tracing::debug_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                query = %RedactedQuery(req.uri().query().unwrap_or("")),
                request_id = %rid,
            )
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Outermost: a client's unusable request id is dropped, so a fresh one is made.
        .layer(middleware::from_fn(sanitize_request_id))
        .with_state(state)
}

/// Longest client-sent `x-request-id` kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// True for a request id worth keeping: 1 to 128 visible ASCII characters.
pub(crate) fn request_id_ok(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.iter().all(u8::is_ascii_graphic)
}

/// Removes a client-sent `x-request-id` that is too long or not visible ASCII (it would end up
/// in logs and in the job record); the request-id layer then makes a fresh one.
async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let bad = req
        .headers()
        .get_all("x-request-id")
        .iter()
        .enumerate()
        .any(|(i, v)| i > 0 || !request_id_ok(v.as_bytes()));
    if bad {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// A query string for logs with anything that may be a credential replaced: values of keys
/// that name one (`token`, `access_token`, `jwt_token`, `api_key`, `password` ... in any case)
/// and any value that looks like a token wherever it hides (a JWT's `eyJ`, or a run of 40+
/// token characters, as in `?x=1;token=<JWT>`).
pub(crate) struct RedactedQuery<'a>(pub &'a str);

/// Key fragments that mark a credential.
const SECRET_KEYS: [&str; 7] = ["token", "key", "secret", "pass", "auth", "jwt", "cookie"];

fn looks_like_token(value: &str) -> bool {
    if value.contains("eyJ") {
        return true;
    }
    let mut run = 0;
    for c in value.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

impl std::fmt::Display for RedactedQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, pair) in self.0.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key_plain = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            let key_lower = key_plain.to_ascii_lowercase();
            let value_plain = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if SECRET_KEYS.iter().any(|s| key_lower.contains(s))
                || looks_like_token(&key_plain)
                || looks_like_token(&value_plain)
            {
                let shown = if looks_like_token(&key_plain) {
                    "[redacted]"
                } else {
                    key
                };
                write!(f, "{shown}=[redacted]")?;
            } else {
                f.write_str(pair)?;
            }
        }
        Ok(())
    }
}

/// Refuses bodies whose declared length is over `max_request_bytes` before anything reads them.
async fn body_limit(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > st.config.max_request_bytes);
    if too_big {
        return ApiError::TooLarge(st.config.max_request_bytes).into_response();
    }
    next.run(req).await
}

async fn not_found() -> Response {
    ApiError::NotFound("no such route".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::{request_id_ok, RedactedQuery};

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert!(request_id_ok(b"abc-123_XYZ.7"));
        assert!(!request_id_ok(b""));
        assert!(!request_id_ok(b"has space"));
        assert!(!request_id_ok("caf\u{e9}".as_bytes()));
        assert!(!request_id_ok(b"line\nbreak"));
        assert!(request_id_ok(&[b'a'; 128]));
        assert!(!request_id_ok(&[b'a'; 129]));
    }

    #[test]
    fn tokens_never_reach_the_access_log() {
        assert_eq!(
            RedactedQuery("clientId=c1&token=a.b.c&access%5Ftoken=x&access_token=y").to_string(),
            "clientId=c1&token=[redacted]&access%5Ftoken=[redacted]&access_token=[redacted]"
        );
        assert_eq!(RedactedQuery("").to_string(), "");
        // Other names a client may use, and tokens hidden in other values.
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let api = "A".repeat(43);
        for q in [
            format!("jwt_token={jwt}"),
            format!("Token={jwt}"),
            format!("token%3D{jwt}"),
            format!("x=1;token={jwt}"),
            format!("api_key={api}"),
            format!("t={api}"),
        ] {
            let shown = RedactedQuery(&q).to_string();
            assert!(
                !shown.contains("eyJ") && !shown.contains(&api),
                "{q} -> {shown}"
            );
        }
        assert_eq!(
            RedactedQuery("filename=ComfyUI_00001_.png&subfolder=0b8e2f4a-9c1d-4e2f-8a3b-5c6d7e8f9a0b&type=output").to_string(),
            "filename=ComfyUI_00001_.png&subfolder=0b8e2f4a-9c1d-4e2f-8a3b-5c6d7e8f9a0b&type=output"
        );
    }
}
