//! What `run` shows while a job runs: a live progress display on a terminal, or one JSON object
//! per line per event (`{"type", "data"}`, ComfyUI's own message shape) otherwise.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::workflow::node_title;

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A progress bar on stderr; results on stdout.
    Human,
    /// One JSON object per line on stdout.
    Json,
}

/// Prints one JSON line on stdout and flushes it (a consumer reads it at once).
pub fn json_line(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The display of one run.
pub struct Display {
    mode: Mode,
    graph: Map<String, Value>,
    done: BTreeSet<String>,
    current: Option<String>,
    bar: Option<ProgressBar>,
}

impl Display {
    /// A display for a run of `graph`.
    pub fn new(mode: Mode, graph: Map<String, Value>) -> Self {
        Display {
            mode,
            graph,
            done: BTreeSet::new(),
            current: None,
            bar: None,
        }
    }

    /// The display mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts the live bar (human mode only); called once the job is submitted.
    pub fn start(&mut self, prompt_id: &str) {
        if self.mode != Mode::Human {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix:.bold} [{bar:30}] {pos}/{len}  {msg}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix("queued");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
        self.note(&format!("submitted {prompt_id}"));
        self.update_counts();
    }

    /// A client-side event (`submitted`, `uploaded`, `reconnecting`, `output`, `result` ...).
    /// In JSON mode it is a line; in human mode `text` (if any) is printed above the bar.
    pub fn client_event(&mut self, event_type: &str, data: Value, text: Option<&str>) {
        match self.mode {
            Mode::Json => json_line(&json!({"type": event_type, "data": data})),
            Mode::Human => {
                if let Some(t) = text {
                    self.note(t);
                }
            }
        }
    }

    /// A human note above the bar (stderr); nothing in JSON mode.
    pub fn note(&self, text: &str) {
        if self.mode != Mode::Human {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// A server message about this job.
    pub fn server_message(&mut self, msg: &Value) {
        if self.mode == Mode::Json {
            json_line(msg);
        }
        let t = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        match t {
            "execution_start" => self.set_prefix("starting"),
            "execution_cached" => {
                for n in data
                    .get("nodes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = n.as_str() {
                        self.done.insert(n.to_owned());
                    }
                }
            }
            "executing" => {
                if let Some(prev) = self.current.take() {
                    self.done.insert(prev);
                }
                if let Some(node) = data.get("node").and_then(Value::as_str) {
                    self.current = Some(node.to_owned());
                    let title = node_title(&self.graph, node);
                    self.set_prefix(&title);
                    if let Some(b) = &self.bar {
                        b.set_length(1);
                        b.set_position(0);
                    }
                }
            }
            "progress" => {
                let value = data.get("value").and_then(Value::as_u64).unwrap_or(0);
                let max = data.get("max").and_then(Value::as_u64).unwrap_or(1).max(1);
                if let Some(b) = &self.bar {
                    b.set_length(max);
                    b.set_position(value.min(max));
                }
            }
            "progress_state" => {
                if let Some(nodes) = data.get("nodes").and_then(Value::as_object) {
                    for (id, st) in nodes {
                        if st.get("state").and_then(Value::as_str) == Some("finished") {
                            self.done.insert(id.clone());
                        }
                    }
                }
            }
            "executed" => {
                if let Some(n) = data.get("node").and_then(Value::as_str) {
                    self.done.insert(n.to_owned());
                }
            }
            _ => {}
        }
        self.update_counts();
    }

    /// Removes the bar (before final output or an error message).
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn set_prefix(&self, p: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(p.to_owned());
        }
    }

    fn update_counts(&self) {
        if let Some(b) = &self.bar {
            let done = self
                .done
                .iter()
                .filter(|n| self.graph.contains_key(n.as_str()))
                .count();
            b.set_message(format!("nodes {done}/{}", self.graph.len()));
        }
    }

    /// Nodes counted as done so far (for tests).
    pub fn done_count(&self) -> usize {
        self.done.len()
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_events() {
        let g =
            json!({"1": {"class_type": "A"}, "2": {"class_type": "B"}, "3": {"class_type": "C"}});
        let mut d = Display::new(Mode::Human, g.as_object().unwrap().clone());
        d.server_message(&json!({"type": "execution_cached", "data": {"nodes": ["1"]}}));
        d.server_message(&json!({"type": "executing", "data": {"node": "2"}}));
        d.server_message(&json!({"type": "progress", "data": {"value": 3, "max": 10}}));
        assert_eq!(d.done_count(), 1);
        d.server_message(&json!({"type": "executing", "data": {"node": "3"}}));
        assert_eq!(d.done_count(), 2);
        d.server_message(&json!({"type": "executing", "data": {"node": null}}));
        assert_eq!(d.done_count(), 3);
    }
}
