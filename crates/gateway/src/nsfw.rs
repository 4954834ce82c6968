//! The NSFW policy at the edge (MSS-Login's contract, shared/mss-login-api.md §9): a file
//! flagged NSFW (by the workers' classifier or by an admin) answers 403 on `/view` to a user
//! whose `sfw_check` is on; history marks flagged outputs; admins flag and unflag files by hand
//! with `POST /mss-login/api/outputs/nsfw`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use auth::{Identity, Permission};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use files::{FileKey, FileKind};
use serde_json::{json, Value};
use store::NsfwVerdict;

use crate::auth::require;
use crate::body::{json_object, read_body};
use crate::error::{json_response, ApiError};
use crate::state::AppState;
use crate::view::{locate, resolve};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The user's `sfw_check` (true for users without an account record: the safe default).
pub(crate) async fn sfw_check(st: &AppState, user_id: &str) -> Result<bool, ApiError> {
    Ok(st
        .redis(st.store.user_by_id(user_id))
        .await?
        .map(|u| u.sfw_check)
        .unwrap_or(true))
}

/// True when `viewer` must not get `owner`'s file `key`. Costs one Redis read, two when the
/// file is flagged.
pub(crate) async fn blocked(
    st: &AppState,
    viewer: &Identity,
    owner: &str,
    key: &FileKey,
) -> Result<bool, ApiError> {
    let flagged = st
        .redis(st.store.nsfw_verdict(owner, &key.name_in_space()))
        .await?
        .is_some();
    if !flagged {
        return Ok(false);
    }
    sfw_check(st, &viewer.user_id).await
}

/// `POST /mss-login/api/outputs/nsfw` `{filename, subfolder?, type?, user?, nsfw}`: admins
/// flag (`nsfw: true`) or clear a file. `user` (name or id) picks whose space; without it the
/// owner of the prompt id in `subfolder`, else the caller's own.
pub(crate) async fn mark(
    State(st): State<Arc<AppState>>,
    Extension(id): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&id, Permission::CanViewAll)?;
    let bytes = read_body(body, &headers, st.config.max_request_bytes).await?;
    let req = json_object(&bytes)?;
    let text = |k: &str| req.get(k).and_then(Value::as_str);
    let Some(flag) = req.get("nsfw").and_then(Value::as_bool) else {
        return Err(ApiError::BadRequest(
            "invalid_nsfw",
            "nsfw must be true or false".into(),
        ));
    };
    let Some(target) = resolve(text("filename"), text("subfolder"), text("type"))? else {
        return Err(ApiError::NotFound("no such file".into()));
    };
    let found = match text("user").filter(|u| !u.is_empty()) {
        Some(user) => {
            let owner = match st.redis(st.store.user(user)).await? {
                Some(u) => u.id,
                None => user.to_owned(),
            };
            let key = FileKey::new(&owner, target.kind, &target.subfolder, &target.filename)
                .map_err(|_| ApiError::NotFound("no such file".into()))?;
            match st.files.exists(&key).await? {
                true => Some((owner, key)),
                false => None,
            }
        }
        None => locate(&st, &id, &target).await?.map(|l| (l.owner, l.key)),
    };
    let Some((owner, key)) = found else {
        return Err(ApiError::NotFound("no such file".into()));
    };
    let name = key.name_in_space();
    if flag {
        let verdict = NsfwVerdict {
            score: None,
            source: "admin".into(),
            at_ms: now_ms(),
        };
        st.redis(st.store.flag_nsfw(&owner, &name, &verdict))
            .await?;
    } else {
        st.redis(st.store.unflag_nsfw(&owner, &name)).await?;
    }
    tracing::info!(admin = %id.user_id, owner = %owner, file = %name, nsfw = flag, "nsfw flag set by hand");
    Ok(json_response(
        StatusCode::OK,
        json!({
            "filename": target.filename,
            "subfolder": target.subfolder,
            "type": target.kind.as_str(),
            "user": owner,
            "nsfw": flag,
        })
        .to_string(),
    ))
}

/// Marks the output items of history entries (`(prompt_id, entry JSON)`): `"nsfw": true` on
/// flagged files (plus `"blocked": true` when the viewer's `sfw_check` refuses them) and
/// `"expired": true` on files past their TTL (counted from the job's start). Entries are only
/// parsed when something may need marking. `own` says the entries are all the viewer's; an
/// admin's view of everyone's history keeps the marks the workers wrote.
pub(crate) async fn annotate_history(
    st: &AppState,
    viewer: &Identity,
    own: bool,
    entries: &mut [(String, String)],
) -> Result<(), ApiError> {
    if entries.is_empty() {
        return Ok(());
    }
    let ttls = (
        st.files.config().ttl(FileKind::Output),
        st.files.config().ttl(FileKind::Temp),
    );
    let flags = if own {
        Some(st.redis(st.store.nsfw_flags(&viewer.user_id)).await?)
    } else {
        None
    };
    let stale = own && entries.iter().any(|(_, e)| e.contains("\"nsfw\""));
    let no_flags = flags.as_ref().is_none_or(HashMap::is_empty);
    if no_flags && ttls.0.is_none() && ttls.1.is_none() && !stale {
        return Ok(());
    }
    let blocks = !no_flags && sfw_check(st, &viewer.user_id).await?;
    let now = now_ms();
    for (pid, entry) in entries.iter_mut() {
        let Ok(mut v) = serde_json::from_str::<Value>(entry) else {
            continue;
        };
        let started = v
            .pointer("/status/messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter().find_map(|pair| {
                    (pair.get(0)? == "execution_start")
                        .then(|| pair.get(1)?.get("timestamp")?.as_i64())
                        .flatten()
                })
            });
        if mark_outputs(&mut v, flags.as_ref(), blocks, ttls, started, now) {
            *entry = v.to_string();
        }
        let _ = pid;
    }
    Ok(())
}

/// Marks one entry's output items (NSFW marks only when `flags` is given); true when anything
/// changed.
fn mark_outputs(
    entry: &mut Value,
    flags: Option<&HashMap<String, NsfwVerdict>>,
    blocks: bool,
    ttls: (Option<std::time::Duration>, Option<std::time::Duration>),
    started_ms: Option<i64>,
    now_ms: i64,
) -> bool {
    let mut changed = false;
    let Some(outputs) = entry.get_mut("outputs").and_then(Value::as_object_mut) else {
        return false;
    };
    for ui in outputs.values_mut() {
        let Some(ui) = ui.as_object_mut() else {
            continue;
        };
        for list in ui.values_mut() {
            let Some(items) = list.as_array_mut() else {
                continue;
            };
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                let (Some(name), Some(kind)) = (
                    item.get("filename").and_then(Value::as_str),
                    item.get("type").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let (name, kind) = (name.to_owned(), FileKind::parse(kind));
                let sub = item.get("subfolder").and_then(Value::as_str).unwrap_or("");
                let kind_s = kind.map(FileKind::as_str).unwrap_or("");
                let path = if sub.is_empty() {
                    format!("{kind_s}/{name}")
                } else {
                    format!("{kind_s}/{sub}/{name}")
                };
                match flags {
                    Some(f) if f.contains_key(&path) => {
                        item.insert("nsfw".into(), Value::Bool(true));
                        if blocks {
                            item.insert("blocked".into(), Value::Bool(true));
                        }
                        changed = true;
                    }
                    Some(_) if item.remove("nsfw").is_some() | item.remove("blocked").is_some() => {
                        changed = true;
                    }
                    _ => {}
                }
                let ttl = match kind {
                    Some(FileKind::Output) => ttls.0,
                    Some(FileKind::Temp) => ttls.1,
                    _ => None,
                };
                if let (Some(ttl), Some(start)) = (ttl, started_ms) {
                    if start + ttl.as_millis() as i64 <= now_ms {
                        item.insert("expired".into(), Value::Bool(true));
                        changed = true;
                    }
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_marked() {
        let mut e = json!({"outputs": {"9": {"images": [
            {"filename": "a.png", "subfolder": "p1", "type": "output"},
            {"filename": "b.png", "subfolder": "p1", "type": "output", "nsfw": true},
            {"filename": "c.png", "subfolder": "p1", "type": "temp"}
        ]}}});
        let mut flags = HashMap::new();
        flags.insert(
            "output/p1/a.png".to_owned(),
            NsfwVerdict {
                score: Some(0.9),
                source: "classifier".into(),
                at_ms: 0,
            },
        );
        let ttl = Some(std::time::Duration::from_secs(10));
        assert!(mark_outputs(
            &mut e,
            Some(&flags),
            true,
            (None, ttl),
            Some(0),
            20_000
        ));
        let items = &e["outputs"]["9"]["images"];
        assert_eq!(items[0]["nsfw"], true);
        assert_eq!(items[0]["blocked"], true);
        assert!(items[1].get("nsfw").is_none(), "an admin cleared it");
        assert!(items[0].get("expired").is_none());
        assert_eq!(items[2]["expired"], true);
    }
}
