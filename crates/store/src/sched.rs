//! Scheduling: capability classes (what a job needs from a backend), per-user limits and
//! weights, what a backend offers to run, and the queue depth an autoscaler reads.
//!
//! The scripts (`lua/sched.lua` and the queue scripts) keep, per pool: `pending:<uid>` (every
//! pending job of a user, by priority), `q:<class>:<uid>` (the user's pending jobs of one class),
//! `ucls:<uid>` (the classes in which the user has pending jobs), `ready` (users with pending
//! work scored by virtual time), `sched` (virtual times, limits, weights) and `classes`
//! (class id → requirement JSON).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// What a job needs from a backend: every node type and model file its graph names, and the
/// labels its owner is restricted to. Its canonical hash is the job's capability class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Node `class_type`s.
    #[serde(default)]
    pub nodes: BTreeSet<String>,
    /// Model files by folder (`checkpoints` → `sd15.safetensors`).
    #[serde(default)]
    pub models: BTreeMap<String, BTreeSet<String>>,
    /// Labels the backend must carry with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How a backend describes itself to [`Requirement::satisfied_by`].
pub trait Capabilities {
    /// True when the backend has this node type.
    fn has_node(&self, class_type: &str) -> bool;
    /// True when the backend lists this model file in this folder.
    fn has_model(&self, folder: &str, file: &str) -> bool;
    /// The backend's value of a label.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Requirement {
    /// Canonical JSON (sorted sets and maps), what the pool's `classes` hash stores.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The capability class: the first 16 hex digits of the SHA-256 of the canonical JSON.
    pub fn class_id(&self) -> String {
        let mut id = crate::sha256_hex(self.to_json().as_bytes());
        id.truncate(16);
        id
    }

    /// True when a backend with these capabilities can run every job of this class.
    pub fn satisfied_by(&self, caps: &impl Capabilities) -> bool {
        self.missing_node(caps).is_none()
            && self.missing_label(caps).is_none()
            && self.missing_model(caps).is_none()
    }

    /// A node type the backend lacks.
    pub fn missing_node<'a>(&'a self, caps: &impl Capabilities) -> Option<&'a str> {
        self.nodes
            .iter()
            .find(|n| !caps.has_node(n))
            .map(String::as_str)
    }

    /// A label the backend lacks (or has with another value).
    pub fn missing_label<'a>(&'a self, caps: &impl Capabilities) -> Option<&'a str> {
        self.labels
            .iter()
            .find(|(k, v)| caps.label(k) != Some(v.as_str()))
            .map(|(k, _)| k.as_str())
    }

    /// A model file the backend lacks, as `(folder, file)`.
    pub fn missing_model<'a>(&'a self, caps: &impl Capabilities) -> Option<(&'a str, &'a str)> {
        self.models.iter().find_map(|(folder, files)| {
            files
                .iter()
                .find(|f| !caps.has_model(folder, f))
                .map(|f| (folder.as_str(), f.as_str()))
        })
    }

    /// The checkpoint this class loads, if exactly one (what "warm" is about).
    pub fn checkpoint(&self) -> Option<&str> {
        let files = self.models.get("checkpoints")?;
        (files.len() == 1)
            .then(|| files.iter().next().map(String::as_str))
            .flatten()
    }
}

/// A job's capability class, as the submit script stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClass {
    /// [`Requirement::class_id`].
    pub id: String,
    /// [`Requirement::to_json`].
    pub requirement_json: String,
}

impl JobClass {
    /// The class of a requirement.
    pub fn of(req: &Requirement) -> Self {
        JobClass {
            id: req.class_id(),
            requirement_json: req.to_json(),
        }
    }
}

impl Default for JobClass {
    /// The class with no requirement (every backend can run it).
    fn default() -> Self {
        JobClass::of(&Requirement::default())
    }
}

/// A user's scheduling limits, resolved by the gateway (role defaults, per-user overrides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most pending jobs (0: no limit); over it the submit is refused.
    pub max_queued: u32,
    /// Most running jobs (0: no limit); the claim skips a user at it.
    pub max_running: u32,
    /// Share of free backends relative to other users (> 0).
    pub weight: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queued: 0,
            max_running: 0,
            weight: 1.0,
        }
    }
}

/// What a backend asks [`Store::claim_for`] for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Offer {
    /// Any job (a backend that can run everything; tests).
    #[default]
    Any,
    /// Jobs of these classes: `(class id, warm)`, warm meaning the class loads the checkpoint the
    /// backend ran last.
    Classes(Vec<(String, bool)>),
}

/// Answer of [`Store::claim_for`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The job, when one could be handed out.
    pub lease: Option<crate::Lease>,
    /// The class of that job.
    pub class: Option<String>,
    /// How many classes the pool knows: when it changes, re-read [`Store::classes`].
    pub known_classes: u64,
}

/// How many ready users one claim inspects at most (users at their running limit or without a
/// job this backend can run are skipped within this window).
pub(crate) const CLAIM_SCAN: usize = 64;

impl Store {
    /// Every capability class the pool has seen: class id → requirement.
    pub async fn classes(&self, pool: &str) -> Result<HashMap<String, Requirement>, StoreError> {
        let mut conn = self.conn();
        let raw: HashMap<String, String> = conn.hgetall(self.keys().classes(pool)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|r| (k, r)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Caps(Vec<&'static str>, Vec<(&'static str, &'static str)>);
    impl Capabilities for Caps {
        fn has_node(&self, c: &str) -> bool {
            self.0.contains(&c)
        }
        fn has_model(&self, folder: &str, file: &str) -> bool {
            self.1.contains(&(folder, file))
        }
        fn label(&self, _: &str) -> Option<&str> {
            None
        }
    }

    #[test]
    fn class_ids_are_canonical_and_requirements_checked() {
        let mut a = Requirement::default();
        a.nodes.insert("B".into());
        a.nodes.insert("A".into());
        a.models
            .entry("checkpoints".into())
            .or_default()
            .insert("x.safetensors".into());
        let mut b = Requirement::default();
        b.models
            .entry("checkpoints".into())
            .or_default()
            .insert("x.safetensors".into());
        b.nodes.insert("A".into());
        b.nodes.insert("B".into());
        assert_eq!(a.class_id(), b.class_id());
        assert_eq!(a.class_id().len(), 16);
        assert_ne!(a.class_id(), Requirement::default().class_id());
        assert_eq!(a.checkpoint(), Some("x.safetensors"));
        let back: Requirement = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(back, a);
        assert!(a.satisfied_by(&Caps(
            vec!["A", "B"],
            vec![("checkpoints", "x.safetensors")]
        )));
        assert!(!a.satisfied_by(&Caps(
            vec!["A", "B"],
            vec![("checkpoints", "y.safetensors")]
        )));
        assert!(!a.satisfied_by(&Caps(vec!["A"], vec![("checkpoints", "x.safetensors")])));
        let mut l = Requirement::default();
        l.labels.insert("tier".into(), "premium".into());
        assert!(!l.satisfied_by(&Caps(vec![], vec![])));
    }
}
