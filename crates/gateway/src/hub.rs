//! The `/ws` hub: one Redis subscription per user per gateway, shared by that user's sockets;
//! events routed by `clientId` or to all of the user's sockets; bounded per-socket send queues.
//!
//! Tasks:
//! * the **control** task owns the pub/sub `Subscriptions`; it subscribes and unsubscribes users
//!   one command at a time (so Redis sees them in the order decided here) and reconnects with
//!   backoff when the pub/sub connection dies, re-subscribing every user that has sockets;
//! * the **dispatcher** task reads the `EventStream` and hands each envelope to the right sockets
//!   with `try_send` only: it never waits for a socket;
//! * the **pinger** task queues a ping for every socket that sent nothing during the last
//!   `ws_ping_interval`;
//! * one task per socket writes its queue and reads the client's frames.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use auth::{Carrier, Identity};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use protocol::envelope::{Envelope, Payload, Target};
use store::{Store, Subscriptions};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::send_queue::{Push, SendQueue};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator};
use crate::metrics::HubMetrics;

/// Close code: going away (server draining).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: policy violation (token revoked).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: internal error (could not subscribe).
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: try again later (client too slow).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// How long a new socket waits for its user's subscription to be confirmed.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Pool whose jobs the sockets follow (queue counts, reconnect replay).
    pub pool: String,
    /// Frames queued per socket.
    pub send_queue: usize,
    /// Ping idle sockets this often.
    pub ping_interval: Duration,
    /// How long a close frame may take to go out.
    pub close_timeout: Duration,
    /// Redis timeout for the per-connect reads.
    pub redis_timeout: Duration,
    /// Reply to a client's `feature_flags` (same map as `/features`).
    pub features: Bytes,
    /// How often every open socket's token is checked again (revoked → close 1008).
    pub auth_recheck: Duration,
}

/// One open socket, as the dispatcher sees it.
struct Sock {
    id: u64,
    client_id: String,
    /// The token the socket was opened with, checked again every `auth_recheck`.
    token: Box<str>,
    carrier: Carrier,
    supports_metadata: AtomicBool,
    queue: SendQueue,
    close_code: AtomicU16,
    kill: Notify,
    active: AtomicBool,
    dropped_previews: AtomicU64,
}

impl Sock {
    /// Queues a frame without waiting. When the queue is full the stalest preview gives way;
    /// a queue full of state messages drops a preview and closes the socket with 1013 rather
    /// than lose a state message.
    fn deliver(&self, msg: Message, is_preview: bool, metrics: &HubMetrics) {
        match self.queue.push(msg, is_preview) {
            Push::Queued => self.active.store(true, Ordering::Relaxed),
            Push::QueuedDroppedStale | Push::DroppedPreview => {
                self.active.store(true, Ordering::Relaxed);
                self.dropped_previews.fetch_add(1, Ordering::Relaxed);
                metrics.previews_dropped.increment(1);
            }
            Push::Full => self.close(CLOSE_TRY_AGAIN),
        }
    }

    fn close(&self, code: u16) {
        if self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.kill.notify_one();
        }
    }
}

enum Cmd {
    Subscribe(String, oneshot::Sender<bool>),
    Unsubscribe(String),
    Lost(u64),
}

/// Counters of the hub (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Open sockets.
    pub sockets: usize,
    /// Users with at least one socket.
    pub users: usize,
    /// Previews dropped because a socket's queue was full.
    pub dropped_previews: u64,
    /// Sockets closed with 1013.
    pub slow_closes: u64,
}

/// The hub of one gateway.
pub struct Hub {
    store: Store,
    config: HubConfig,
    users: RwLock<HashMap<String, Vec<Arc<Sock>>>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
    dropped_previews: AtomicU64,
    slow_closes: AtomicU64,
    closing: AtomicBool,
    stop: CancellationToken,
    metrics: HubMetrics,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Hub {
    /// Starts the hub's background tasks (they stop when the hub is dropped). With an
    /// authenticator, open sockets whose token stops being valid are closed with 1008.
    pub fn start(
        store: Store,
        config: HubConfig,
        authenticator: Option<Arc<dyn Authenticator>>,
    ) -> Arc<Hub> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            store,
            config,
            users: RwLock::new(HashMap::new()),
            cmd: tx,
            next_id: AtomicU64::new(1),
            dropped_previews: AtomicU64::new(0),
            slow_closes: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            stop: CancellationToken::new(),
            metrics: HubMetrics::new(),
        });
        tokio::spawn(control(Arc::downgrade(&hub), rx, hub.stop.clone()));
        tokio::spawn(pinger(Arc::downgrade(&hub), hub.stop.clone()));
        if let Some(a) = authenticator {
            tokio::spawn(rechecker(Arc::downgrade(&hub), a, hub.stop.clone()));
        }
        hub
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        let users = self.read_users();
        HubStats {
            sockets: users.values().map(Vec::len).sum(),
            users: users.len(),
            dropped_previews: self.dropped_previews.load(Ordering::Relaxed)
                + users
                    .values()
                    .flatten()
                    .map(|s| s.dropped_previews.load(Ordering::Relaxed))
                    .sum::<u64>(),
            slow_closes: self.slow_closes.load(Ordering::Relaxed),
        }
    }

    /// Closes every socket with `code` (1001 when draining); new sockets are refused after.
    pub fn close_all(&self, code: u16) {
        self.closing.store(true, Ordering::Relaxed);
        for s in self.read_users().values().flatten() {
            s.close(code);
        }
    }

    /// Closes every socket of one user (e.g. 1008 when their token is revoked).
    pub fn close_user(&self, user_id: &str, code: u16) {
        if let Some(socks) = self.read_users().get(user_id) {
            for s in socks {
                s.close(code);
            }
        }
    }

    /// True once [`Hub::close_all`] ran.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    fn read_users(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Arc<Sock>>>> {
        match self.users.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write_users(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Arc<Sock>>>> {
        match self.users.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn user_ids(&self) -> Vec<String> {
        self.read_users().keys().cloned().collect()
    }

    fn has_user(&self, uid: &str) -> bool {
        self.read_users().contains_key(uid)
    }

    fn register(&self, uid: &str, sock: Arc<Sock>) {
        self.metrics.connections.increment(1.0);
        self.write_users()
            .entry(uid.to_owned())
            .or_default()
            .push(sock);
    }

    fn unregister(&self, uid: &str, sock: &Sock) {
        let dropped = sock.dropped_previews.load(Ordering::Relaxed);
        self.dropped_previews.fetch_add(dropped, Ordering::Relaxed);
        if sock.close_code.load(Ordering::Relaxed) == CLOSE_TRY_AGAIN {
            self.slow_closes.fetch_add(1, Ordering::Relaxed);
            self.metrics.slow_closes.increment(1);
        }
        self.metrics.connections.decrement(1.0);
        let now_empty = {
            let mut users = self.write_users();
            let empty = match users.get_mut(uid) {
                Some(v) => {
                    v.retain(|s| s.id != sock.id);
                    v.is_empty()
                }
                None => false,
            };
            if empty {
                users.remove(uid);
            }
            empty
        };
        if now_empty {
            let _ = self.cmd.send(Cmd::Unsubscribe(uid.to_owned()));
        }
    }

    /// Routes one envelope from a user's channel to that user's sockets on this gateway.
    fn dispatch(&self, uid: &str, raw: &Bytes) {
        let env = match Envelope::decode(raw) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable event envelope");
                return;
            }
        };
        let users = self.read_users();
        let Some(socks) = users.get(uid) else {
            return;
        };
        let wanted = |s: &&Arc<Sock>| match &env.target {
            Target::AllSockets => true,
            Target::Client(c) => s.client_id == *c,
        };
        match &env.payload {
            Payload::Text(b) => {
                let Ok(text) = Utf8Bytes::try_from(b.clone()) else {
                    tracing::warn!("event text is not UTF-8");
                    return;
                };
                let msg = Message::Text(text);
                for s in socks.iter().filter(wanted) {
                    s.deliver(msg.clone(), false, &self.metrics);
                }
            }
            payload => {
                let preview = payload.is_preview();
                let mut frames: [Option<Option<Bytes>>; 2] = [None, None];
                for s in socks.iter().filter(wanted) {
                    let meta = s.supports_metadata.load(Ordering::Relaxed);
                    let frame =
                        frames[meta as usize].get_or_insert_with(|| payload.binary_for(meta));
                    if let Some(f) = frame {
                        s.deliver(Message::Binary(f.clone()), preview, &self.metrics);
                    }
                }
            }
        }
    }

    async fn subscribe(&self, uid: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Subscribe(uid.to_owned(), tx)).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await,
            Ok(Ok(true))
        )
    }

    /// Serves one upgraded socket until it closes.
    pub async fn run_socket(
        self: Arc<Self>,
        mut ws: WebSocket,
        identity: Identity,
        client_id: String,
        token: (String, Carrier),
    ) {
        let uid = identity.user_id;
        let sock = Arc::new(Sock {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client_id: client_id.clone(),
            token: token.0.into_boxed_str(),
            carrier: token.1,
            supports_metadata: AtomicBool::new(false),
            queue: SendQueue::new(self.config.send_queue),
            close_code: AtomicU16::new(0),
            kill: Notify::new(),
            active: AtomicBool::new(true),
            dropped_previews: AtomicU64::new(0),
        });
        // Registered before subscribing: events that arrive from now on wait in the queue and
        // go out after the first status.
        self.register(&uid, sock.clone());
        let _guard = Unregister {
            hub: self.clone(),
            uid: uid.clone(),
            sock: sock.clone(),
        };
        if self.is_closing() {
            close(&mut ws, CLOSE_GOING_AWAY, self.config.close_timeout).await;
            return;
        }
        if !self.subscribe(&uid).await {
            tracing::warn!("could not subscribe to the user's events; closing socket");
            close(&mut ws, CLOSE_INTERNAL, self.config.close_timeout).await;
            return;
        }
        let pool = self.config.pool.clone();
        let remaining = match tokio::time::timeout(
            self.config.redis_timeout,
            self.store.queue_remaining(&pool, &uid),
        )
        .await
        {
            Ok(Ok(n)) => n,
            _ => {
                close(&mut ws, CLOSE_INTERNAL, self.config.close_timeout).await;
                return;
            }
        };
        let status = protocol::messages::status(remaining, Some(&client_id)).to_string();
        if ws.send(Message::Text(status.into())).await.is_err() {
            return;
        }
        self.metrics.delivered_json.increment(1);
        // A reconnecting submitter is told where its running job stands (trace 15).
        if let Ok(Ok(running)) = tokio::time::timeout(
            self.config.redis_timeout,
            self.store.running_jobs(&pool, &uid),
        )
        .await
        {
            for job in running {
                if job.client_id.as_deref() == Some(client_id.as_str()) {
                    if let Some(node) = &job.current_node {
                        let m = protocol::messages::executing_replay(node).to_string();
                        if ws.send(Message::Text(m.into())).await.is_err() {
                            return;
                        }
                        self.metrics.delivered_json.increment(1);
                    }
                }
            }
        }

        let mut first_text_seen = false;
        loop {
            let code = sock.close_code.load(Ordering::Acquire);
            if code != 0 {
                if code == CLOSE_TRY_AGAIN {
                    tracing::info!(
                        dropped_previews = sock.dropped_previews.load(Ordering::Relaxed),
                        "closing slow socket (1013)"
                    );
                }
                close(&mut ws, code, self.config.close_timeout).await;
                return;
            }
            tokio::select! {
                biased;
                _ = sock.kill.notified() => continue,
                msg = sock.queue.pop() => {
                    let delivered = match &msg {
                        Message::Text(_) => Some(&self.metrics.delivered_json),
                        Message::Binary(_) => Some(&self.metrics.delivered_binary),
                        _ => None,
                    };
                    tokio::select! {
                        r = ws.send(msg) => {
                            if r.is_err() { return }
                            if let Some(c) = delivered { c.increment(1) }
                        }
                        _ = sock.kill.notified() => continue,
                    }
                }
                inc = ws.recv() => match inc {
                    Some(Ok(Message::Text(t))) => {
                        if !first_text_seen {
                            first_text_seen = true;
                            if let Some(meta) = feature_flags(t.as_str()) {
                                sock.supports_metadata.store(meta, Ordering::Relaxed);
                                let reply = format!(
                                    "{{\"type\": \"feature_flags\", \"data\": {}}}",
                                    String::from_utf8_lossy(&self.config.features)
                                );
                                if ws.send(Message::Text(reply.into())).await.is_err() {
                                    return;
                                }
                                self.metrics.delivered_json.increment(1);
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// `supports_preview_metadata` of a client's `feature_flags` frame; `None` for other frames.
fn feature_flags(text: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "feature_flags" {
        return None;
    }
    let data = v.get("data")?;
    Some(
        data.get("supports_preview_metadata")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    )
}

async fn close(ws: &mut WebSocket, code: u16, timeout: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(match code {
            CLOSE_GOING_AWAY => "server going away",
            CLOSE_POLICY => "token revoked",
            CLOSE_TRY_AGAIN => "client too slow",
            _ => "internal error",
        }),
    };
    let _ = tokio::time::timeout(timeout, ws.send(Message::Close(Some(frame)))).await;
}

struct Unregister {
    hub: Arc<Hub>,
    uid: String,
    sock: Arc<Sock>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.hub.unregister(&self.uid, &self.sock);
    }
}

/// Owns the subscriptions; reconnects the pub/sub connection when it dies.
async fn control(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<Cmd>, stop: CancellationToken) {
    let mut generation: u64 = 0;
    let mut subs: Option<Subscriptions> = None;
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        if subs.is_none() {
            let Some(h) = hub.upgrade() else { return };
            match h.store.event_subscriber().await {
                Ok(sub) => {
                    generation += 1;
                    let (s, events) = sub.split(&h.store);
                    tokio::spawn(dispatcher(hub.clone(), events, generation, stop.clone()));
                    subscribed.clear();
                    let mut ok = true;
                    for uid in h.user_ids() {
                        if s.subscribe(&uid).await.is_err() {
                            ok = false;
                            break;
                        }
                        subscribed.insert(uid);
                    }
                    if ok {
                        if generation > 1 {
                            crate::metrics::redis_reconnect("hub");
                            tracing::info!(
                                users = subscribed.len(),
                                "event subscription re-established"
                            );
                        }
                        subs = Some(s);
                        backoff = Duration::from_millis(50);
                    }
                }
                Err(e) => {
                    crate::metrics::redis_error("hub");
                    tracing::warn!(error = %e, "event subscriber connection failed");
                }
            }
            drop(h);
            if subs.is_none() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        let cmd = tokio::select! {
            _ = stop.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        match cmd {
            Cmd::Subscribe(uid, reply) => {
                if subscribed.contains(&uid) {
                    let _ = reply.send(true);
                    continue;
                }
                let Some(s) = subs.as_ref() else {
                    let _ = reply.send(false);
                    continue;
                };
                match s.subscribe(&uid).await {
                    Ok(()) => {
                        subscribed.insert(uid);
                        let _ = reply.send(true);
                    }
                    Err(e) => {
                        crate::metrics::redis_error("hub");
                        tracing::warn!(error = %e, "subscribe failed; reconnecting");
                        let _ = reply.send(false);
                        subs = None;
                    }
                }
            }
            Cmd::Unsubscribe(uid) => {
                let still_used = hub.upgrade().is_some_and(|h| h.has_user(&uid));
                if !still_used && subscribed.remove(&uid) {
                    if let Some(s) = subs.as_ref() {
                        if s.unsubscribe(&uid).await.is_err() {
                            subs = None;
                        }
                    }
                }
            }
            Cmd::Lost(g) => {
                if g == generation {
                    crate::metrics::redis_error("hub");
                    tracing::warn!("event subscription lost; reconnecting");
                    subs = None;
                }
            }
        }
    }
}

async fn dispatcher(
    hub: Weak<Hub>,
    mut events: store::EventStream,
    generation: u64,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.next() => ev,
        };
        let Some(h) = hub.upgrade() else { return };
        match ev {
            Some((uid, raw)) => h.dispatch(&uid, &raw),
            None => {
                let _ = h.cmd.send(Cmd::Lost(generation));
                return;
            }
        }
    }
}

/// Closes sockets whose token was revoked (or whose user was disabled) since they opened.
/// Expiry alone does not close an open socket.
async fn rechecker(hub: Weak<Hub>, auth: Arc<dyn Authenticator>, stop: CancellationToken) {
    let every = match hub.upgrade() {
        Some(h) => h.config.auth_recheck,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let socks: Vec<(String, Arc<Sock>)> = match hub.upgrade() {
            Some(h) => h
                .read_users()
                .iter()
                .flat_map(|(u, v)| v.iter().map(move |s| (u.clone(), s.clone())))
                .collect(),
            None => return,
        };
        for (uid, sock) in socks {
            match auth.authenticate(&sock.token, sock.carrier).await {
                Ok(identity) if identity.user_id == uid => {}
                Err(AuthError::Expired | AuthError::Unavailable) => {}
                _ => {
                    tracing::info!("closing a socket whose token is no longer valid (1008)");
                    sock.close(CLOSE_POLICY);
                }
            }
        }
    }
}

async fn pinger(hub: Weak<Hub>, stop: CancellationToken) {
    let every = match hub.upgrade() {
        Some(h) => h.config.ping_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(h) = hub.upgrade() else { return };
        for s in h.read_users().values().flatten() {
            if !s.active.swap(false, Ordering::Relaxed) {
                // A full queue means the socket is anything but idle: no ping needed.
                // Droppable like a preview: a ping only matters to an idle socket.
                let _ = s.queue.push(Message::Ping(Bytes::new()), true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_flag_frames() {
        assert_eq!(
            feature_flags(r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#),
            Some(true)
        );
        assert_eq!(
            feature_flags(r#"{"type":"feature_flags","data":{}}"#),
            Some(false)
        );
        assert_eq!(feature_flags(r#"{"type":"other"}"#), None);
        assert_eq!(feature_flags("garbage"), None);
    }
}
