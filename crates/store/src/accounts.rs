//! Accounts shared by every gateway: users, API tokens (stored only as SHA-256), sessions
//! (JWT ids) with revocation, and login-failure counters for throttling.
//!
//! All account keys share the hash tag `{accounts}` (see [`crate::keys`]).

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::queue::now_ms;
use crate::{Store, StoreError};

/// How long a deleted user's id is remembered (longer than any token lives).
const DELETED_TOMBSTONE_SECS: u64 = 400 * 24 * 3600;

/// A user as stored (the password hash never leaves the store except for verification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id (UUID).
    pub id: String,
    /// Unique name.
    pub username: String,
    /// Role name (`owner`, `admin`, `power`, `user`, `guest`).
    pub role: String,
    /// NSFW outputs blocked for this user (default true).
    pub sfw_check: bool,
    /// A disabled user's tokens and sessions stop working.
    pub disabled: bool,
    /// Per-user limit on queued jobs (`None`: the role's default).
    pub max_queued: Option<u32>,
    /// Per-user limit on running jobs (`None`: the role's default).
    pub max_running: Option<u32>,
    /// Creation time, ms.
    pub created_ms: i64,
}

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique name.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Role name.
    pub role: String,
}

/// An API token's public record (never the secret, never the full hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenInfo {
    /// Full SHA-256 hex (kept inside the server; lists show a prefix).
    pub hash: String,
    /// Owner id.
    pub user_id: String,
    /// Owner name.
    pub username: String,
    /// Operator label.
    pub label: String,
    /// Creation, ms.
    pub created_ms: i64,
    /// Expiry, ms (`None`: never).
    pub expires_ms: Option<i64>,
    /// Last use, ms.
    pub last_used_ms: Option<i64>,
}

/// A login session (one JWT id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The JWT id.
    pub jti: String,
    /// Owner id.
    pub user_id: String,
    /// Creation, ms.
    pub created_ms: i64,
    /// Last use, ms.
    pub last_used_ms: Option<i64>,
    /// Expiry, ms.
    pub expires_ms: i64,
    /// Revoked by logout or an explicit revoke.
    pub revoked: bool,
}

/// Outcome of creating a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateUser {
    /// Created with this record.
    Created(User),
    /// The name is taken.
    Exists,
}

fn user_from(map: &HashMap<String, String>) -> Option<User> {
    Some(User {
        id: map.get("id")?.clone(),
        username: map.get("username")?.clone(),
        role: map.get("role")?.clone(),
        sfw_check: map.get("sfw_check").map(|v| v != "0").unwrap_or(true),
        disabled: map.get("disabled").map(|v| v == "1").unwrap_or(false),
        max_queued: map.get("max_queued").and_then(|v| v.parse().ok()),
        max_running: map.get("max_running").and_then(|v| v.parse().ok()),
        created_ms: map.get("created").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

fn opt_ms(map: &HashMap<String, String>, k: &str) -> Option<i64> {
    map.get(k).and_then(|v| v.parse().ok()).filter(|v| *v > 0)
}

impl Store {
    /// Creates a user unless the name is taken (atomic).
    pub async fn create_user(&self, new: &NewUser) -> Result<CreateUser, StoreError> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = now_ms();
        let key = self.keys().user(&new.username);
        let mut conn = self.conn();
        let created: bool = redis::cmd("HSETNX")
            .arg(&key)
            .arg("id")
            .arg(&id)
            .query_async(&mut conn)
            .await?;
        if !created {
            return Ok(CreateUser::Exists);
        }
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("username", new.username.as_str()),
                    ("role", new.role.as_str()),
                    ("hash", new.password_hash.as_str()),
                    ("sfw_check", "1"),
                    ("disabled", "0"),
                    ("created", &now.to_string()),
                ],
            )
            .set(self.keys().user_id(&id), &new.username)
            .zadd(self.keys().users(), &new.username, now)
            .query_async(&mut conn)
            .await?;
        Ok(CreateUser::Created(User {
            id,
            username: new.username.clone(),
            role: new.role.clone(),
            sfw_check: true,
            disabled: false,
            max_queued: None,
            max_running: None,
            created_ms: now,
        }))
    }

    /// A user by name.
    pub async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn();
        let map: HashMap<String, String> = conn.hgetall(self.keys().user(username)).await?;
        Ok(user_from(&map))
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn();
        let name: Option<String> = conn.get(self.keys().user_id(id)).await?;
        match name {
            Some(n) => Ok(self.user(&n).await?.filter(|u| u.id == id)),
            None => Ok(None),
        }
    }

    /// A user and their password hash, for login.
    pub async fn user_with_hash(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, StoreError> {
        let mut conn = self.conn();
        let map: HashMap<String, String> = conn.hgetall(self.keys().user(username)).await?;
        let hash = map.get("hash").cloned();
        Ok(user_from(&map).zip(hash))
    }

    /// Every user, oldest first.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut conn = self.conn();
        let names: Vec<String> = conn.zrange(self.keys().users(), 0, -1).await?;
        if names.is_empty() {
            // An empty pipeline is an error in the client.
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.hgetall(self.keys().user(n));
        }
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(maps.iter().filter_map(user_from).collect())
    }

    /// Updates fields of an existing user; `false` when there is no such user.
    pub async fn update_user(
        &self,
        username: &str,
        fields: &[(&str, String)],
    ) -> Result<bool, StoreError> {
        let key = self.keys().user(username);
        let mut conn = self.conn();
        let exists: bool = conn.hexists(&key, "id").await?;
        if !exists || fields.is_empty() {
            return Ok(exists);
        }
        let _: () = conn.hset_multiple(&key, fields).await?;
        Ok(true)
    }

    /// Deletes a user and their API tokens; their sessions die with the user record.
    pub async fn delete_user(&self, username: &str) -> Result<bool, StoreError> {
        let Some(user) = self.user(username).await? else {
            return Ok(false);
        };
        let mut conn = self.conn();
        let hashes: Vec<String> = conn.smembers(self.keys().api_tokens(&user.id)).await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys().user(username))
            .del(self.keys().user_id(&user.id))
            .zrem(self.keys().users(), username)
            .del(self.keys().api_tokens(&user.id))
            // Tokens minted outside the login flow carry no session record: the tombstone
            // stops them too.
            .set_ex(
                self.keys().deleted_user(&user.id),
                1,
                DELETED_TOMBSTONE_SECS,
            );
        for h in &hashes {
            pipe.del(self.keys().api_token(h));
        }
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(true)
    }

    /// True when `user_id` belonged to a user that was deleted.
    pub async fn user_was_deleted(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        Ok(conn.exists(self.keys().deleted_user(user_id)).await?)
    }

    /// Number of users.
    pub async fn user_count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        Ok(conn.zcard(self.keys().users()).await?)
    }

    /// Stores a new API token (by hash).
    pub async fn create_api_token(&self, info: &ApiTokenInfo) -> Result<(), StoreError> {
        let key = self.keys().api_token(&info.hash);
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("user_id", info.user_id.clone()),
                    ("username", info.username.clone()),
                    ("label", info.label.clone()),
                    ("created", info.created_ms.to_string()),
                    ("expires", info.expires_ms.unwrap_or(0).to_string()),
                    ("last_used", "0".to_owned()),
                ],
            )
            .sadd(self.keys().api_tokens(&info.user_id), &info.hash);
        if let Some(exp) = info.expires_ms {
            pipe.pexpire_at(&key, exp);
        }
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Looks up an API token by hash; expired tokens are `None`.
    pub async fn api_token(&self, hash: &str) -> Result<Option<ApiTokenInfo>, StoreError> {
        let mut conn = self.conn();
        let map: HashMap<String, String> = conn.hgetall(self.keys().api_token(hash)).await?;
        let Some(user_id) = map.get("user_id").cloned() else {
            return Ok(None);
        };
        let info = ApiTokenInfo {
            hash: hash.to_owned(),
            user_id,
            username: map.get("username").cloned().unwrap_or_default(),
            label: map.get("label").cloned().unwrap_or_default(),
            created_ms: opt_ms(&map, "created").unwrap_or(0),
            expires_ms: opt_ms(&map, "expires"),
            last_used_ms: opt_ms(&map, "last_used"),
        };
        if info.expires_ms.is_some_and(|e| e <= now_ms()) {
            return Ok(None);
        }
        Ok(Some(info))
    }

    /// Records a use of an API token (callers throttle how often).
    pub async fn touch_api_token(&self, hash: &str) -> Result<(), StoreError> {
        let key = self.keys().api_token(hash);
        let mut conn = self.conn();
        let exists: bool = conn.exists(&key).await?;
        if exists {
            let _: () = conn.hset(&key, "last_used", now_ms()).await?;
        }
        Ok(())
    }

    /// The user's live API tokens.
    pub async fn api_tokens_of(&self, user_id: &str) -> Result<Vec<ApiTokenInfo>, StoreError> {
        let mut conn = self.conn();
        let hashes: Vec<String> = conn.smembers(self.keys().api_tokens(user_id)).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for h in hashes {
            match self.api_token(&h).await? {
                Some(t) if t.user_id == user_id => out.push(t),
                _ => gone.push(h),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.srem(self.keys().api_tokens(user_id), gone).await?;
        }
        out.sort_by_key(|t| t.created_ms);
        Ok(out)
    }

    /// Revokes the user's tokens whose hash starts with `prefix`; returns how many.
    pub async fn revoke_api_tokens(
        &self,
        user_id: &str,
        prefix: &str,
    ) -> Result<usize, StoreError> {
        let tokens = self.api_tokens_of(user_id).await?;
        let doomed: Vec<&ApiTokenInfo> = tokens
            .iter()
            .filter(|t| t.hash.starts_with(prefix))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for t in &doomed {
            pipe.del(self.keys().api_token(&t.hash))
                .srem(self.keys().api_tokens(user_id), &t.hash);
        }
        let mut conn = self.conn();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(doomed.len())
    }

    /// Registers a new session (JWT id) until its expiry.
    pub async fn create_session(&self, s: &SessionInfo) -> Result<(), StoreError> {
        let key = self.keys().session(&s.jti);
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("user_id", s.user_id.clone()),
                    ("created", s.created_ms.to_string()),
                    ("last_used", "0".to_owned()),
                    ("expires", s.expires_ms.to_string()),
                    ("revoked", "0".to_owned()),
                ],
            )
            .pexpire_at(&key, s.expires_ms)
            .zadd(self.keys().sessions(&s.user_id), &s.jti, s.created_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A session by JWT id (`None` when unknown or expired).
    pub async fn session(&self, jti: &str) -> Result<Option<SessionInfo>, StoreError> {
        let mut conn = self.conn();
        let map: HashMap<String, String> = conn.hgetall(self.keys().session(jti)).await?;
        let Some(user_id) = map.get("user_id").cloned() else {
            return Ok(None);
        };
        Ok(Some(SessionInfo {
            jti: jti.to_owned(),
            user_id,
            created_ms: opt_ms(&map, "created").unwrap_or(0),
            last_used_ms: opt_ms(&map, "last_used"),
            expires_ms: opt_ms(&map, "expires").unwrap_or(0),
            revoked: map.get("revoked").is_some_and(|v| v == "1"),
        }))
    }

    /// Marks a session revoked; `false` when it is unknown (or not the user's, when `user_id`
    /// is given) or already revoked.
    pub async fn revoke_session(
        &self,
        jti: &str,
        user_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let Some(s) = self.session(jti).await? else {
            return Ok(false);
        };
        if s.revoked || user_id.is_some_and(|u| u != s.user_id) {
            return Ok(false);
        }
        let mut conn = self.conn();
        let _: () = conn.hset(self.keys().session(jti), "revoked", "1").await?;
        Ok(true)
    }

    /// Records a use of a session (callers throttle how often).
    pub async fn touch_session(&self, jti: &str) -> Result<(), StoreError> {
        let key = self.keys().session(jti);
        let mut conn = self.conn();
        let exists: bool = conn.exists(&key).await?;
        if exists {
            let _: () = conn.hset(&key, "last_used", now_ms()).await?;
        }
        Ok(())
    }

    /// The user's live (not revoked, not expired) sessions.
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let mut conn = self.conn();
        let idx = self.keys().sessions(user_id);
        let jtis: Vec<String> = conn.zrange(&idx, 0, -1).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for j in jtis {
            match self.session(&j).await? {
                Some(s) if !s.revoked && s.expires_ms > now_ms() => out.push(s),
                Some(s) if !s.revoked => gone.push(s.jti),
                Some(_) => {}
                None => gone.push(j),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.zrem(&idx, gone).await?;
        }
        Ok(out)
    }

    /// Counts a failed login for `subject` (a user name or a client address) within `window_secs`;
    /// returns the count so far.
    pub async fn count_login_failure(
        &self,
        subject: &str,
        window_secs: u64,
    ) -> Result<u64, StoreError> {
        let key = self.keys().login_failures(subject);
        let mut conn = self.conn();
        let (n,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, window_secs as i64)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// Failed logins counted for `subject` and the seconds until the count resets.
    pub async fn login_failures(&self, subject: &str) -> Result<(u64, u64), StoreError> {
        let key = self.keys().login_failures(subject);
        let mut conn = self.conn();
        let (n, ttl): (Option<u64>, i64) = redis::pipe()
            .get(&key)
            .ttl(&key)
            .query_async(&mut conn)
            .await?;
        Ok((n.unwrap_or(0), ttl.max(0) as u64))
    }

    /// Forgets failed logins for `subject` (after a success).
    pub async fn clear_login_failures(&self, subject: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: () = conn.del(self.keys().login_failures(subject)).await?;
        Ok(())
    }
}
