//! `POST /prompt`: authenticate (done by the middleware), check, validate against the pool's
//! catalogue, and queue with one store round trip.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use auth::{Identity, Permission};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use protocol::ids;
use protocol::validate::{self, FileCheck, PromptError, ValidateOptions};
use serde_json::{Map, Value};
use store::{NewJob, Owner, Submitted};

use crate::auth::require;
use crate::body::{json_str, read_body, truthy};
use crate::error::{json_response, ApiError};
use crate::state::AppState;

/// `extra_data` keys that are secrets: forwarded to the backend, never stored in views or logged.
const SENSITIVE_KEYS: [&str; 2] = ["api_key_comfy_org", "auth_token_comfy_org"];

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The request id set by the request-id layer, if it is a sane string.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .filter(|v| crate::routes::request_id_ok(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn bad(kind: &'static str, msg: &str) -> ApiError {
    ApiError::BadRequest(kind, msg.to_owned())
}

/// What the request asked for, checked (before graph validation).
struct Parsed {
    prompt: Map<String, Value>,
    prompt_id: String,
    client_id: Option<String>,
    extra_data: Map<String, Value>,
    number: Option<f64>,
    front: bool,
    partial: Option<Vec<String>>,
}

fn parse(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let mut root = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(bad(
                "invalid_json",
                "the request body must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(ApiError::BadRequest(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            ))
        }
    };
    let number = match root.get("number") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .map_err(|_| bad("invalid_number", "number must be a number"))?,
        ),
        Some(_) => return Err(bad("invalid_number", "number must be a number")),
    };
    if number.is_some_and(|n| !n.is_finite()) {
        return Err(bad("invalid_number", "number must be finite"));
    }
    let front = truthy(root.get("front"));
    let prompt = match root.remove("prompt") {
        None => return Err(ApiError::Prompt(Box::new(PromptError::no_prompt()))),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("invalid_prompt", "prompt must be a JSON object")),
    };
    let prompt_id = match root.get("prompt_id") {
        None | Some(Value::Null) => ids::new_prompt_id(),
        Some(Value::String(s)) if ids::is_canonical_uuid(s) => s.clone(),
        Some(_) => return Err(ApiError::Prompt(Box::new(PromptError::invalid_prompt_id()))),
    };
    let mut extra_data = match root.remove("extra_data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(bad(
                "invalid_extra_data",
                "extra_data must be a JSON object",
            ))
        }
    };
    // The top-level client_id wins over one inside extra_data (ComfyUI copies it in).
    let client_id = match root.get("client_id") {
        None | Some(Value::Null) => match extra_data.get("client_id") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("invalid_client_id", "client_id must be a string")),
    };
    if let Some(c) = &client_id {
        if !ids::is_valid_client_id(c) {
            return Err(bad(
                "invalid_client_id",
                "client_id must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        extra_data.insert("client_id".into(), Value::String(c.clone()));
    }
    let partial = match root.get("partial_execution_targets") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad(
                        "invalid_partial_execution_targets",
                        "partial_execution_targets must be a list of node ids",
                    )
                })?,
        ),
        Some(_) => {
            return Err(bad(
                "invalid_partial_execution_targets",
                "partial_execution_targets must be a list of node ids",
            ))
        }
    };
    Ok(Parsed {
        prompt,
        prompt_id,
        client_id,
        extra_data,
        number,
        front,
        partial,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s)
            if !s.is_empty()
                && s.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(s.to_owned()))
        }
        _ => Err(bad(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )),
    }
}

fn answer(prompt_id: &str, number: &str, node_errors: &str) -> Response {
    json_response(
        StatusCode::OK,
        format!(
            "{{\"prompt_id\": {}, \"number\": {}, \"node_errors\": {}}}",
            json_str(prompt_id),
            number,
            node_errors
        ),
    )
}

/// `POST /prompt` (and `PUT /prompt`); counts accepted and refused submits.
pub(crate) async fn post_prompt(
    State(st): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = submit(&st, identity, headers, body).await;
    match &r {
        Ok(Submit::Created(_)) => st.pool_metrics.submitted.increment(1),
        Ok(Submit::Answered(_)) => {}
        Err(e) => st.pool_metrics.rejected(crate::metrics::reject_reason(e)),
    }
    r.map(Submit::into_response)
}

/// What a submit came to.
enum Submit {
    /// A new job was queued.
    Created(Response),
    /// A duplicate, answered with the first answer.
    Answered(Response),
}

impl Submit {
    fn into_response(self) -> Response {
        match self {
            Submit::Created(r) | Submit::Answered(r) => r,
        }
    }
}

async fn submit(
    st: &AppState,
    identity: Identity,
    headers: HeaderMap,
    body: Body,
) -> Result<Submit, ApiError> {
    require(&identity, Permission::CanRun)?;
    let limit = st.config.max_prompt_bytes.min(st.config.max_request_bytes);
    let bytes = read_body(body, &headers, limit).await?;
    let idem = idempotency_key(&headers)?;
    let mut p = parse(&bytes)?;

    let mut view = st.pool_view.get();
    if view.catalog.is_none() {
        // Nothing seen yet: look once more right now (cheap, and only until a catalogue exists).
        st.redis(st.pool_view.refresh()).await?;
        view = st.pool_view.get();
    }
    let Some(catalog) = view.catalog.as_ref() else {
        return Err(ApiError::Unavailable(
            "No backend of this pool has published its node catalogue yet".into(),
        ));
    };
    // Uploaded inputs live in the caller's file space, not in a backend's input folder (the
    // worker ships them): an input naming a file is valid when the caller has that file.
    let mine = crate::upload::callers_files(st, &identity.user_id, &p.prompt, catalog).await?;
    let opts = ValidateOptions {
        partial_execution_targets: p.partial.take(),
        files: FileCheck::Custom(Arc::new(move |f: &validate::FileRef<'_>| {
            mine.contains(f.filename)
        })),
    };
    let validated =
        validate::validate(&p.prompt, catalog, &opts).map_err(|e| ApiError::Prompt(Box::new(e)))?;
    // One backend must be able to run the whole graph (node types, model files, the caller's
    // labels); which one is decided when a backend claims it.
    let (limits, labels) = crate::sched::caller_limits(st, &identity).await?;
    let req = crate::sched::requirement(&validated.prompt, &validated.outputs_to_execute, labels);
    crate::sched::check_capable(
        &req,
        &validated.prompt,
        &validated.outputs_to_execute,
        &view.backends,
    )
    .map_err(|e| ApiError::Prompt(Box::new(e)))?;

    p.extra_data
        .insert("create_time".into(), Value::from(now_ms()));
    let mut sensitive = Map::new();
    for k in SENSITIVE_KEYS {
        if let Some(v) = p.extra_data.remove(k) {
            sensitive.insert(k.to_owned(), v);
        }
    }
    if !sensitive.is_empty() && !st.store.can_seal_secrets() {
        return Err(bad(
            "secrets_not_accepted",
            "this server has no redis.secrets_key (or auth.secret) to protect api_key_comfy_org / auth_token_comfy_org; remove them from extra_data or ask the operator to set one",
        ));
    }
    if !p.extra_data.contains_key("comfy_usage_source") {
        if let Some(src) = headers
            .get("comfy-usage-source")
            .and_then(|v| v.to_str().ok())
        {
            p.extra_data
                .insert("comfy_usage_source".into(), Value::String(src.to_owned()));
        }
    }
    let job = NewJob {
        pool: st.pool().to_owned(),
        owner: Owner {
            user_id: identity.user_id.clone(),
            username: identity.username.clone(),
        },
        prompt_id: p.prompt_id,
        client_id: p.client_id,
        front: p.front,
        number: p.number,
        prompt_json: serde_json::to_string(&validated.prompt)
            .map_err(|_| bad("invalid_prompt", "prompt could not be serialised"))?,
        extra_data_json: serde_json::to_string(&p.extra_data)
            .map_err(|_| bad("invalid_extra_data", "extra_data could not be serialised"))?,
        outputs_to_execute: validated.outputs_to_execute,
        sensitive_json: if sensitive.is_empty() {
            None
        } else {
            Some(Value::Object(sensitive).to_string())
        },
        // Hashed: bounded, and free of characters that mean something in a Redis key.
        idempotency_key: idem.map(|k| store::sha256_hex(k.as_bytes())),
        body_hash: store::sha256_hex(&bytes),
        request_id: request_id(&headers),
        class: store::JobClass::of(&req),
        limits,
    };
    let node_errors = validated.node_errors.to_json().to_string();
    match st.redis(st.store.submit(&job)).await? {
        Submitted::Created { prompt_id, number } => {
            tracing::debug!(prompt_id = %prompt_id, number = %number, request_id = job.request_id.as_deref().unwrap_or(""), "prompt queued");
            Ok(Submit::Created(answer(&prompt_id, &number, &node_errors)))
        }
        Submitted::Existing { prompt_id, number } => {
            tracing::debug!(prompt_id = %prompt_id, "duplicate submit answered with the first answer");
            Ok(Submit::Answered(answer(&prompt_id, &number, "{}")))
        }
        Submitted::IdempotencyConflict => Err(ApiError::IdempotencyConflict),
        Submitted::QueueFull { limit } => Err(ApiError::QueueFull(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rules() {
        assert!(matches!(
            parse(b"not json"),
            Err(ApiError::BadRequest("invalid_json", _))
        ));
        assert!(matches!(
            parse(br#"{"prompt": "x"}"#),
            Err(ApiError::BadRequest("invalid_prompt", _))
        ));
        assert!(matches!(parse(br#"{}"#), Err(ApiError::Prompt(_))));
        assert!(matches!(
            parse(br#"{"prompt": {}, "prompt_id": "ABC"}"#),
            Err(ApiError::Prompt(_))
        ));
        let p = parse(
            br#"{"prompt": {}, "client_id": "c1", "extra_data": {"client_id": "c0", "k": 1}}"#,
        )
        .unwrap();
        assert_eq!(p.client_id.as_deref(), Some("c1"));
        assert_eq!(p.extra_data["client_id"], "c1");
        let p = parse(br#"{"prompt": {}, "extra_data": {"client_id": "c0"}}"#).unwrap();
        assert_eq!(p.client_id.as_deref(), Some("c0"));
        assert!(parse(br#"{"prompt": {}, "client_id": "a b"}"#).is_err());
        let p = parse(br#"{"prompt": {}, "number": "7", "front": 1}"#).unwrap();
        assert_eq!(p.number, Some(7.0));
        assert!(p.front);
    }
}
