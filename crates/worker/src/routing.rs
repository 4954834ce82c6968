//! Capability routing on the worker side: which capability classes a backend can run (its node
//! types, model files and labels against each class's requirement), and which of them are warm
//! (they load the checkpoint the backend ran last). The list is recomputed only when the pool
//! learns a new class or the backend's catalogue changes.

use std::collections::{BTreeMap, HashMap};

use protocol::catalog::Catalog;
use store::{Capabilities, Offer, Requirement, StoreError};

/// What one backend has, borrowed for a check.
struct Caps<'a> {
    catalog: Option<&'a Catalog>,
    models: &'a BTreeMap<String, Vec<String>>,
    labels: &'a BTreeMap<String, String>,
}

impl Capabilities for Caps<'_> {
    fn has_node(&self, class_type: &str) -> bool {
        self.catalog.is_some_and(|c| c.has_class(class_type))
    }
    fn has_model(&self, folder: &str, file: &str) -> bool {
        self.models
            .get(folder)
            .is_some_and(|l| l.iter().any(|f| f == file))
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// One backend's view of the pool's capability classes.
#[derive(Default)]
pub(crate) struct Router {
    /// Class count the store reported when `classes` was read (`None`: never read).
    known: Option<u64>,
    classes: HashMap<String, Requirement>,
    /// The offer, recomputed when `None`.
    offer: Option<Offer>,
    /// The checkpoint of the backend's latest job.
    last_checkpoint: Option<String>,
}

impl Router {
    /// The backend's catalogue or model lists changed.
    pub(crate) fn invalidate(&mut self) {
        self.offer = None;
    }

    /// True when the store knows another number of classes than we read.
    pub(crate) fn is_stale(&self, known: u64) -> bool {
        self.known != Some(known)
    }

    /// Re-reads the pool's classes.
    pub(crate) async fn refresh(
        &mut self,
        store: &store::Store,
        pool: &str,
        known: u64,
    ) -> Result<(), StoreError> {
        self.classes = store.classes(pool).await?;
        self.known = Some(known);
        self.offer = None;
        Ok(())
    }

    /// A job of `class` was handed to the backend: its checkpoint (if any) is now loaded.
    pub(crate) fn ran(&mut self, class: &str) {
        if let Some(ck) = self.classes.get(class).and_then(Requirement::checkpoint) {
            if self.last_checkpoint.as_deref() != Some(ck) {
                self.last_checkpoint = Some(ck.to_owned());
                self.offer = None;
            }
        }
    }

    /// The classes this backend can run, warm ones marked.
    pub(crate) fn offer(
        &mut self,
        catalog: Option<&Catalog>,
        models: &BTreeMap<String, Vec<String>>,
        labels: &BTreeMap<String, String>,
    ) -> Offer {
        if let Some(o) = &self.offer {
            return o.clone();
        }
        let caps = Caps {
            catalog,
            models,
            labels,
        };
        let mut list: Vec<(String, bool)> = self
            .classes
            .iter()
            .filter(|(_, r)| r.satisfied_by(&caps))
            .map(|(id, r)| {
                let warm = self.last_checkpoint.is_some()
                    && r.checkpoint() == self.last_checkpoint.as_deref();
                (id.clone(), warm)
            })
            .collect();
        list.sort();
        let o = Offer::Classes(list);
        self.offer = Some(o.clone());
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_capable_classes_and_marks_warm_ones() {
        let full = Catalog::from_slice(comfy_sim_free_catalog().as_bytes()).unwrap();
        let mut x = Requirement::default();
        x.nodes.insert("EmptyImage".into());
        x.models
            .entry("checkpoints".into())
            .or_default()
            .insert("x.ckpt".into());
        let mut y = x.clone();
        y.models.insert(
            "checkpoints".into(),
            std::iter::once("y.ckpt".to_owned()).collect(),
        );
        let mut premium = Requirement::default();
        premium.labels.insert("tier".into(), "premium".into());
        let mut r = Router::default();
        r.classes.insert("x".into(), x);
        r.classes.insert("y".into(), y);
        r.classes.insert("p".into(), premium);
        let models = BTreeMap::from([("checkpoints".to_owned(), vec!["x.ckpt".to_owned()])]);
        let labels = BTreeMap::new();
        assert_eq!(
            r.offer(Some(&full), &models, &labels),
            Offer::Classes(vec![("x".into(), false)])
        );
        r.ran("x");
        assert_eq!(
            r.offer(Some(&full), &models, &labels),
            Offer::Classes(vec![("x".into(), true)])
        );
        let premium_labels = BTreeMap::from([("tier".to_owned(), "premium".to_owned())]);
        r.invalidate();
        assert_eq!(
            r.offer(None, &models, &premium_labels),
            Offer::Classes(vec![("p".into(), false)])
        );
    }

    fn comfy_sim_free_catalog() -> String {
        serde_json::json!({"EmptyImage": {"input": {"required": {}}, "output": ["IMAGE"],
            "output_is_list": [false], "output_name": ["IMAGE"], "name": "EmptyImage",
            "display_name": "EmptyImage", "description": "", "python_module": "nodes",
            "category": "image", "output_node": false}})
        .to_string()
    }
}
