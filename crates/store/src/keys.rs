//! Every Redis key and channel the broker uses, in one place.
//!
//! All keys of one pool share the hash tag `{<pool>}` so that each Lua script touches a single
//! Redis Cluster slot. `prefix` (config `redis.key_prefix`) lets several deployments or parallel
//! tests share one Redis. Pub/sub channels are not keys and carry no hash tag.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<p>:{<pool>}:seq` | string | counter behind each job's `number` |
//! | `<p>:{<pool>}:job:<uid>:<pid>` | hash | the job record (see `jobs::fields`) |
//! | `<p>:{<pool>}:pending:<uid>` | zset | the user's pending prompt ids, scored by priority |
//! | `<p>:{<pool>}:ready` | zset | users with pending work, scored by virtual time (fair share) |
//! | `<p>:{<pool>}:q:<class>:<uid>` | zset | the user's pending prompt ids of one capability class, by priority |
//! | `<p>:{<pool>}:ucls:<uid>` | set | capability classes in which the user has pending jobs |
//! | `<p>:{<pool>}:sched` | hash | `v:<uid>` virtual time, `l:<uid>` `<max_running> <weight>`, `now` latest start tag |
//! | `<p>:{<pool>}:classes` | hash | capability class id → requirement JSON (`sched::Requirement`) |
//! | `<p>:{<pool>}:running:<uid>` | set | the user's running prompt ids |
//! | `<p>:{<pool>}:runners` | zset | `<uid>:<pid>` of every running job, scored by start time |
//! | `<p>:{<pool>}:leases` | stream | one entry per attempt; the consumer group's pending list is the set of leases |
//! | `<p>:{<pool>}:dead` | stream | dead letters: jobs that ran out of attempts |
//! | `<p>:{<pool>}:hist:<uid>` | zset | the user's finished prompt ids, scored by completion order |
//! | `<p>:{<pool>}:hist` | zset | every user's finished jobs as `<uid>:<pid>`, by completion order (admin views) |
//! | `<p>:{<pool>}:hseq` | string | completion-order counter |
//! | `<p>:{<pool>}:idem:<uid>:<key>` | hash | Idempotency-Key → prompt id and body hash |
//! | `<p>:{<pool>}:backends` | hash | backend id → JSON `BackendInfo` published by its worker |
//! | `<p>:{<pool>}:objinfo:<sha256>` | string | a backend's `/object_info` JSON, content-addressed |
//! | `<p>:{<pool>}:owners:<pid>` | set | user ids that submitted this prompt id (admins' `/view` of others' outputs) |
//!
//! Files (see `outputs.rs`; not used by scripts, so no shared hash tag):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<p>:nsfw:<uid>` | hash | the user's files flagged NSFW: `<type>/<subfolder>/<filename>` → JSON verdict |
//!
//! Accounts (one slot, tag `{accounts}`; see `accounts.rs`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<p>:{accounts}:user:<name>` | hash | id, username, role, argon2 hash, sfw_check, disabled, limits |
//! | `<p>:{accounts}:uid:<id>` | string | user id → name |
//! | `<p>:{accounts}:users` | zset | every user name, by creation time |
//! | `<p>:{accounts}:token:<sha256>` | hash | an API token: owner, label, created, expires, last_used |
//! | `<p>:{accounts}:tokens:<uid>` | set | the user's API token hashes |
//! | `<p>:{accounts}:session:<jti>` | hash | a session JWT: owner, created, last_used, expires, revoked |
//! | `<p>:{accounts}:sessions:<uid>` | zset | the user's session ids by creation |
//! | `<p>:{accounts}:deleted:<uid>` | string | tombstone of a deleted user (expires after the longest token lifetime) |
//! | `<p>:{accounts}:loginfail:<subject>` | string | failed logins of a name or address (expires) |
//!
//! Workflows (userdata files; one slot per space: tag `{wf:u:<uid>}` for a user's files,
//! `{wf:global}` for the global ones; see `workflows.rs`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<p>:{wf:<space>}:data` | hash | path → the file's bytes, exactly as saved |
//! | `<p>:{wf:<space>}:meta` | hash | path → `<size> <created_us> <modified_us>` |
//! | `<p>:{wf:<space>}:idx` | zset | every path, score 0 (lexicographic ranges list a directory) |
//!
//! | channel | what |
//! | --- | --- |
//! | `<p>:ev:<uid>` | the user's events (`protocol::envelope`) |
//! | `<p>:{<pool>}:wake` | "new work" nudges for idle workers |
//! | `<p>:{<pool>}:ctl` | control messages to workers (interrupts) |

/// Name of the consumer group on every lease stream.
pub const LEASE_GROUP: &str = "workers";

/// Builds key and channel names for one deployment (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `cb`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>:{<pool>}` — the part every key of a pool starts with (scripts build the per-user
    /// keys of that pool from it, so they stay in the same slot).
    pub fn pool_base(&self, pool: &str) -> String {
        format!("{}:{{{}}}", self.prefix, pool)
    }

    /// Job number counter.
    pub fn seq(&self, pool: &str) -> String {
        format!("{}:seq", self.pool_base(pool))
    }

    /// A job record.
    pub fn job(&self, pool: &str, uid: &str, pid: &str) -> String {
        format!("{}:job:{}:{}", self.pool_base(pool), uid, pid)
    }

    /// A user's pending jobs.
    pub fn pending(&self, pool: &str, uid: &str) -> String {
        format!("{}:pending:{}", self.pool_base(pool), uid)
    }

    /// Users with pending work.
    pub fn ready(&self, pool: &str) -> String {
        format!("{}:ready", self.pool_base(pool))
    }

    /// A user's pending jobs of one capability class.
    pub fn class_queue(&self, pool: &str, class: &str, uid: &str) -> String {
        format!("{}:q:{}:{}", self.pool_base(pool), class, uid)
    }

    /// Capability classes in which a user has pending jobs.
    pub fn user_classes(&self, pool: &str, uid: &str) -> String {
        format!("{}:ucls:{}", self.pool_base(pool), uid)
    }

    /// Scheduler state of a pool: virtual times, limits and weights.
    pub fn sched(&self, pool: &str) -> String {
        format!("{}:sched", self.pool_base(pool))
    }

    /// Capability classes of a pool.
    pub fn classes(&self, pool: &str) -> String {
        format!("{}:classes", self.pool_base(pool))
    }

    /// A user's running jobs.
    pub fn running(&self, pool: &str, uid: &str) -> String {
        format!("{}:running:{}", self.pool_base(pool), uid)
    }

    /// Every running job of the pool.
    pub fn runners(&self, pool: &str) -> String {
        format!("{}:runners", self.pool_base(pool))
    }

    /// The lease stream.
    pub fn leases(&self, pool: &str) -> String {
        format!("{}:leases", self.pool_base(pool))
    }

    /// Dead letters of a pool.
    pub fn dead(&self, pool: &str) -> String {
        format!("{}:dead", self.pool_base(pool))
    }

    /// A user's history index.
    pub fn history(&self, pool: &str, uid: &str) -> String {
        format!("{}:hist:{}", self.pool_base(pool), uid)
    }

    /// Every user's history, for admins (`can_view_all`).
    pub fn history_all(&self, pool: &str) -> String {
        format!("{}:hist", self.pool_base(pool))
    }

    /// Completion-order counter.
    pub fn history_seq(&self, pool: &str) -> String {
        format!("{}:hseq", self.pool_base(pool))
    }

    /// An Idempotency-Key record.
    pub fn idempotency(&self, pool: &str, uid: &str, key: &str) -> String {
        format!("{}:idem:{}:{}", self.pool_base(pool), uid, key)
    }

    /// Backend registry of a pool.
    pub fn backends(&self, pool: &str) -> String {
        format!("{}:backends", self.pool_base(pool))
    }

    /// A stored object_info document.
    pub fn object_info(&self, pool: &str, sha256: &str) -> String {
        format!("{}:objinfo:{}", self.pool_base(pool), sha256)
    }

    /// Users that submitted a prompt id (written by the submit script).
    pub fn owners(&self, pool: &str, pid: &str) -> String {
        format!("{}:owners:{}", self.pool_base(pool), pid)
    }

    /// A user's NSFW-flagged files.
    pub fn nsfw(&self, uid: &str) -> String {
        format!("{}:nsfw:{}", self.prefix, uid)
    }

    /// A user's event channel.
    pub fn events(&self, uid: &str) -> String {
        format!("{}:ev:{}", self.prefix, uid)
    }

    /// Prefix of every event channel (the gateway strips it to find the user id).
    pub fn events_prefix(&self) -> String {
        format!("{}:ev:", self.prefix)
    }

    /// Work nudges of a pool.
    pub fn wake(&self, pool: &str) -> String {
        format!("{}:wake", self.pool_base(pool))
    }

    /// Worker control channel of a pool.
    pub fn control(&self, pool: &str) -> String {
        format!("{}:ctl", self.pool_base(pool))
    }

    fn account(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{{accounts}}:{}", self.prefix, rest)
    }

    /// A user record.
    pub fn user(&self, name: &str) -> String {
        self.account(format_args!("user:{name}"))
    }

    /// User id → name.
    pub fn user_id(&self, id: &str) -> String {
        self.account(format_args!("uid:{id}"))
    }

    /// Every user name.
    pub fn users(&self) -> String {
        self.account(format_args!("users"))
    }

    /// An API token record, by hash.
    pub fn api_token(&self, sha256: &str) -> String {
        self.account(format_args!("token:{sha256}"))
    }

    /// A user's API token hashes.
    pub fn api_tokens(&self, uid: &str) -> String {
        self.account(format_args!("tokens:{uid}"))
    }

    /// A session record, by JWT id.
    pub fn session(&self, jti: &str) -> String {
        self.account(format_args!("session:{jti}"))
    }

    /// A user's session ids.
    pub fn sessions(&self, uid: &str) -> String {
        self.account(format_args!("sessions:{uid}"))
    }

    /// Tombstone of a deleted user id (its JWTs must stop working).
    pub fn deleted_user(&self, uid: &str) -> String {
        self.account(format_args!("deleted:{uid}"))
    }

    /// `<p>:{wf:<space>}` — the part every key of one workflow space starts with (`space` is
    /// `u:<uid>` or `global`).
    pub fn workflow_base(&self, space: &str) -> String {
        format!("{}:{{wf:{}}}", self.prefix, space)
    }

    /// A workflow space's file contents.
    pub fn workflow_data(&self, space: &str) -> String {
        format!("{}:data", self.workflow_base(space))
    }

    /// A workflow space's sizes and times.
    pub fn workflow_meta(&self, space: &str) -> String {
        format!("{}:meta", self.workflow_base(space))
    }

    /// A workflow space's path index.
    pub fn workflow_index(&self, space: &str) -> String {
        format!("{}:idx", self.workflow_base(space))
    }

    /// Failed-login counter of a name or address.
    pub fn login_failures(&self, subject: &str) -> String {
        self.account(format_args!("loginfail:{subject}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_share_one_hash_tag() {
        let k = Keys::new("cb");
        for key in [
            k.seq("gpu"),
            k.job("gpu", "u1", "p1"),
            k.pending("gpu", "u1"),
            k.ready("gpu"),
            k.class_queue("gpu", "c1", "u1"),
            k.user_classes("gpu", "u1"),
            k.sched("gpu"),
            k.classes("gpu"),
            k.running("gpu", "u1"),
            k.runners("gpu"),
            k.leases("gpu"),
            k.dead("gpu"),
            k.history("gpu", "u1"),
            k.history_seq("gpu"),
            k.history_all("gpu"),
            k.idempotency("gpu", "u1", "k"),
            k.backends("gpu"),
            k.object_info("gpu", "abc"),
            k.owners("gpu", "p1"),
        ] {
            assert!(key.starts_with("cb:{gpu}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
        assert_eq!(k.events("u1"), "cb:ev:u1");
        for key in [
            k.workflow_data("u:u1"),
            k.workflow_meta("u:u1"),
            k.workflow_index("u:u1"),
        ] {
            assert!(key.starts_with("cb:{wf:u:u1}:"), "{key}");
        }
    }
}
