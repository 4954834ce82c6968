//! `/ws?clientId=`: the event socket, as ComfyUI's `websocket_handler`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::net::ConnMeta;
use crate::state::{Shared, SocketEntry};

pub(crate) async fn handler(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnMeta>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q
        .get("clientId")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    ws.max_message_size(64 << 20)
        .on_upgrade(move |socket| serve(shared, socket, sid, conn))
}

async fn serve(shared: Arc<Shared>, socket: WebSocket, sid: String, conn: ConnMeta) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let queued = Arc::new(AtomicUsize::new(0));
    {
        let mut inner = shared.lock();
        // A socket with the same id is dropped from the registry (not closed), as ComfyUI does.
        inner.sockets.insert(
            sid.clone(),
            SocketEntry {
                conn: id,
                tx: tx.clone(),
                flags: json!({}),
                kill: conn.kill.clone(),
                queued: queued.clone(),
            },
        );
        let status = json!({"status": inner.queue_info(), "sid": sid});
        let text = crate::pyjson::to_string(&json!({"type": "status", "data": status}));
        let _ = tx.send(Message::Text(text.into()));
        // The submitter reconnecting while its prompt runs is told the current node.
        if inner.client_id.as_deref() == Some(sid.as_str()) {
            if let Some(node) = &inner.last_node_id {
                let text =
                    crate::pyjson::to_string(&json!({"type": "executing", "data": {"node": node}}));
                let _ = tx.send(Message::Text(text.into()));
            }
        }
    }

    let (mut sink, mut stream) = socket.split();
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            // hang_ws holds frames back (in order) until it clears.
            writer_shared.wait_while(|f| f.hang_ws).await;
            let res = sink.send(msg).await;
            // Frames sent directly (the first status) were not counted.
            let _ = queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| q.checked_sub(1));
            if res.is_err() {
                break;
            }
        }
    });

    let mut first = true;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = conn.kill.cancelled() => None,
            _ = shared.shutdown.cancelled() => None,
        };
        let Some(Ok(msg)) = msg else { break };
        match msg {
            Message::Text(t) => {
                let Ok(Value::Object(data)) = serde_json::from_str::<Value>(t.as_str()) else {
                    // Python only clears its first-message flag after a JSON object.
                    continue;
                };
                if first && data.get("type").and_then(Value::as_str) == Some("feature_flags") {
                    let flags = data.get("data").cloned().unwrap_or_else(|| json!({}));
                    let mut inner = shared.lock();
                    if let Some(e) = inner.sockets.get_mut(&sid) {
                        if e.conn == id {
                            e.flags = flags;
                        }
                    }
                    let text = crate::pyjson::to_string(
                        &json!({"type": "feature_flags", "data": shared.features()}),
                    );
                    let _ = tx.send(Message::Text(text.into()));
                }
                first = false;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    {
        let mut inner = shared.lock();
        if inner.sockets.get(&sid).is_some_and(|e| e.conn == id) {
            inner.sockets.remove(&sid);
        }
    }
    drop(tx);
    if shared.shutdown.is_cancelled() && !shared.kill.is_cancelled() {
        // Graceful shutdown: let the writer flush and close.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), writer).await;
    } else {
        writer.abort();
    }
}
