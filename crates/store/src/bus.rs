//! Redis pub/sub: per-user event channels (worker → gateways) and per-pool control channels
//! (gateways → workers: wake-ups and interrupts).

use bytes::Bytes;
use futures::StreamExt;
use protocol::envelope::Envelope;
use redis::aio::{PubSubSink, PubSubStream};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// A gateway's subscription to user event channels: one Redis connection, any number of users.
pub struct EventSubscriber {
    sink: PubSubSink,
    stream: PubSubStream,
    prefix: String,
}

/// Subscribes and unsubscribes user channels; cheap to clone, usable while another task reads
/// the messages.
#[derive(Clone)]
pub struct Subscriptions {
    sink: PubSubSink,
    store: Store,
}

/// Receives user events.
pub struct EventStream {
    stream: PubSubStream,
    prefix: String,
}

impl EventSubscriber {
    /// Splits into the subscription handle and the message stream.
    pub fn split(self, store: &Store) -> (Subscriptions, EventStream) {
        (
            Subscriptions {
                sink: self.sink,
                store: store.clone(),
            },
            EventStream {
                stream: self.stream,
                prefix: self.prefix,
            },
        )
    }
}

impl Subscriptions {
    /// Subscribes to a user's channel; returns once Redis confirmed the subscription.
    pub async fn subscribe(&self, user_id: &str) -> Result<(), StoreError> {
        let mut sink = self.sink.clone();
        sink.subscribe(self.store.keys().events(user_id)).await?;
        Ok(())
    }

    /// Unsubscribes from a user's channel.
    pub async fn unsubscribe(&self, user_id: &str) -> Result<(), StoreError> {
        let mut sink = self.sink.clone();
        sink.unsubscribe(self.store.keys().events(user_id)).await?;
        Ok(())
    }
}

impl EventStream {
    /// The next event: `(user id, raw envelope)`. `None` when the connection is gone (the
    /// caller reconnects and subscribes again).
    pub async fn next(&mut self) -> Option<(String, Bytes)> {
        loop {
            let msg = self.stream.next().await?;
            let channel = msg.get_channel_name();
            let Some(uid) = channel.strip_prefix(&self.prefix) else {
                continue;
            };
            let uid = uid.to_owned();
            return Some((uid, Bytes::copy_from_slice(msg.get_payload_bytes())));
        }
    }
}

/// A message to the workers of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlMessage {
    /// New work was queued (the payload of the wake channel).
    Wake,
    /// Interrupt this running job wherever it runs.
    Interrupt {
        /// Owner.
        user_id: String,
        /// The job.
        prompt_id: String,
    },
}

/// A worker's subscription to a pool's wake and control channels.
pub struct ControlSubscriber {
    stream: PubSubStream,
    wake_channel: String,
}

impl ControlSubscriber {
    /// The next control message; `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<ControlMessage> {
        loop {
            let msg = self.stream.next().await?;
            if msg.get_channel_name() == self.wake_channel {
                return Some(ControlMessage::Wake);
            }
            if let Ok(m) = serde_json::from_slice(msg.get_payload_bytes()) {
                return Some(m);
            }
        }
    }
}

impl Store {
    /// Publishes one event on a user's channel.
    pub async fn publish_event(&self, user_id: &str, event: &Envelope) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: () = conn
            .publish(self.keys().events(user_id), event.encode().as_ref())
            .await?;
        Ok(())
    }

    /// Opens a dedicated pub/sub connection for user events.
    pub async fn event_subscriber(&self) -> Result<EventSubscriber, StoreError> {
        let (sink, stream) = self.inner.client.get_async_pubsub().await?.split();
        Ok(EventSubscriber {
            sink,
            stream,
            prefix: self.keys().events_prefix(),
        })
    }

    /// Opens a pub/sub connection on a pool's wake and control channels.
    pub async fn control_subscriber(&self, pool: &str) -> Result<ControlSubscriber, StoreError> {
        let (mut sink, stream) = self.inner.client.get_async_pubsub().await?.split();
        let wake = self.keys().wake(pool);
        sink.subscribe(&[wake.clone(), self.keys().control(pool)])
            .await?;
        Ok(ControlSubscriber {
            stream,
            wake_channel: wake,
        })
    }

    /// Sends a control message to every worker of the pool.
    pub async fn send_control(&self, pool: &str, msg: &ControlMessage) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: () = conn
            .publish(self.keys().control(pool), serde_json::to_string(msg)?)
            .await?;
        Ok(())
    }

    /// Asks whichever worker runs the user's job `prompt_id` (or every running job of the
    /// user, with `None`) to interrupt it; returns how many jobs were asked.
    pub async fn request_interrupt(
        &self,
        pool: &str,
        user_id: &str,
        prompt_id: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let running: Vec<String> = conn.smembers(self.keys().running(pool, user_id)).await?;
        let mut asked = 0;
        for pid in running
            .iter()
            .filter(|p| prompt_id.is_none_or(|want| want == p.as_str()))
        {
            let _: () = conn
                .hset(self.keys().job(pool, user_id, pid), "interrupt", 1)
                .await?;
            self.send_control(
                pool,
                &ControlMessage::Interrupt {
                    user_id: user_id.to_owned(),
                    prompt_id: pid.clone(),
                },
            )
            .await?;
            asked += 1;
        }
        Ok(asked)
    }
}
