//! A socket's bounded send queue (DESIGN.md "Events"): when it is full, the **stalest preview**
//! makes room first — for a newer preview or for a state message — so a client that falls
//! behind sees the latest image, and state messages are never dropped silently: only a queue
//! full of them refuses one (the hub then closes the socket with 1013).
//!
//! One producer side shared by the dispatcher and the pinger, one consumer (the socket's task).
//! Nothing is allocated until the first frame is queued, so idle sockets cost little.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::Message;
use tokio::sync::Notify;

/// What happened to a frame offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest queued preview to make room.
    QueuedDroppedStale,
    /// Not queued: a preview, and the queue is full of state messages.
    DroppedPreview,
    /// Not queued: a state message, and the queue is full of state messages.
    Full,
}

/// A bounded FIFO of frames with preview-aware overflow.
pub(crate) struct SendQueue {
    cap: usize,
    frames: Mutex<VecDeque<(Message, bool)>>,
    ready: Notify,
}

impl SendQueue {
    /// A queue holding at most `cap` frames (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        SendQueue {
            cap: cap.max(1),
            frames: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    /// Offers a frame without waiting; `is_preview` marks frames that may be dropped.
    pub(crate) fn push(&self, msg: Message, is_preview: bool) -> Push {
        let outcome = {
            let mut q = match self.frames.lock() {
                Ok(q) => q,
                Err(p) => p.into_inner(),
            };
            if q.len() < self.cap {
                q.push_back((msg, is_preview));
                Push::Queued
            } else if let Some(i) = q.iter().position(|(_, p)| *p) {
                q.remove(i);
                q.push_back((msg, is_preview));
                Push::QueuedDroppedStale
            } else if is_preview {
                return Push::DroppedPreview;
            } else {
                return Push::Full;
            }
        };
        // A permit is stored when the consumer is not waiting yet, so no wake-up is lost.
        self.ready.notify_one();
        outcome
    }

    /// The next frame, waiting until there is one. Only one task may call this.
    pub(crate) async fn pop(&self) -> Message {
        loop {
            if let Some(m) = self.try_pop() {
                return m;
            }
            self.ready.notified().await;
        }
    }

    fn try_pop(&self) -> Option<Message> {
        let mut q = match self.frames.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        let m = q.pop_front().map(|(m, _)| m);
        if q.is_empty() && q.capacity() > 64 {
            // A burst grew the buffer: give the memory back once drained.
            q.shrink_to(0);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.to_owned().into())
    }

    fn drain(q: &SendQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = q.try_pop() {
            out.push(match m {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => format!("bin{}", b.len()),
                _ => "other".into(),
            });
        }
        out
    }

    #[test]
    fn stale_previews_make_room_first_and_state_is_never_dropped_silently() {
        let q = SendQueue::new(3);
        assert_eq!(q.push(text("s1"), false), Push::Queued);
        assert_eq!(q.push(Message::Binary(vec![1].into()), true), Push::Queued);
        assert_eq!(
            q.push(Message::Binary(vec![1, 2].into()), true),
            Push::Queued
        );
        // Full: a newer preview replaces the oldest one.
        assert_eq!(
            q.push(Message::Binary(vec![1, 2, 3].into()), true),
            Push::QueuedDroppedStale
        );
        // A state message displaces the oldest remaining preview.
        assert_eq!(q.push(text("s2"), false), Push::QueuedDroppedStale);
        assert_eq!(drain(&q), ["s1", "bin3", "s2"]);

        // Full of state messages: a preview is dropped, a state message refused.
        for s in ["a", "b", "c"] {
            assert_eq!(q.push(text(s), false), Push::Queued);
        }
        assert_eq!(
            q.push(Message::Binary(vec![9].into()), true),
            Push::DroppedPreview
        );
        assert_eq!(q.push(text("d"), false), Push::Full);
        assert_eq!(drain(&q), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn pop_waits_for_a_frame() {
        let q = std::sync::Arc::new(SendQueue::new(2));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        q.push(text("x"), false);
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("pop woke up")
            .expect("task");
        assert!(matches!(got, Message::Text(t) if t.as_str() == "x"));
    }
}
