//! A real gateway on a real TCP port over a real Redis, for the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use auth::{Claims, JwtConfig, JwtKeys, Role};
use futures::{SinkExt, StreamExt};
use gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use store::test_redis::TestRedis;
use store::{BackendInfo, BackendState, Store};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The secret every test signs with.
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

/// A running gateway.
pub struct Env {
    pub redis: TestRedis,
    pub store: Store,
    pub files: files::FileStore,
    pub keys: JwtKeys,
    pub base: String,
    pub ws_base: String,
    pub http: reqwest::Client,
    pub hub: std::sync::Arc<gateway::Hub>,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// The real node catalogue of ComfyUI 0.3.64.
pub fn object_info_bytes() -> Vec<u8> {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../comfy-sim/data/object_info.json");
    std::fs::read(&p)
        .or_else(|_| std::fs::read("/work/shared/comfyui-object-info.json"))
        .expect("object_info.json")
}

/// A backend report with models, embeddings and system stats.
pub fn backend(id: &str) -> BackendInfo {
    let mut models = BTreeMap::new();
    models.insert(
        "checkpoints".to_string(),
        vec![
            format!("{id}.safetensors"),
            "shared.safetensors".to_string(),
        ],
    );
    BackendInfo {
        id: id.into(),
        pool: "default".into(),
        worker: "w1".into(),
        state: BackendState::Healthy,
        object_info_sha256: None,
        models,
        embeddings: vec![format!("emb-{id}")],
        system_stats: Some(json!({
            "system": {"os": "posix", "ram_total": 1, "ram_free": 1, "comfyui_version": "0.3.64",
                        "python_version": "3.11", "pytorch_version": "2", "embedded_python": false, "argv": []},
            "devices": [{"name": format!("cpu-{id}"), "type": "cpu", "index": null,
                          "vram_total": 1, "vram_free": 1, "torch_vram_total": 1, "torch_vram_free": 1}]
        })),
        labels: BTreeMap::new(),
        jobs_run: 0,
        updated_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    }
}

impl Env {
    /// A gateway with default settings and a published catalogue.
    pub async fn start() -> Env {
        Self::start_with(GatewayConfig::default(), true).await
    }

    /// A gateway with `config` (listen address ignored); `catalog` publishes one backend first.
    pub async fn start_with(config: GatewayConfig, catalog: bool) -> Env {
        Self::start_on(TestRedis::start(), config, catalog).await
    }

    /// Same, on a given Redis.
    pub async fn start_on(redis: TestRedis, config: GatewayConfig, catalog: bool) -> Env {
        let mut sc = redis.store_config();
        sc.command_timeout = Duration::from_secs(1);
        let store = Store::connect(sc).await.expect("store");
        if catalog {
            store
                .publish_backend(&backend("b1"), Some(&object_info_bytes()))
                .await
                .expect("publish backend");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let files = files::FileStore::local(dir.path()).expect("files");
        let keys = JwtKeys::new(JwtConfig {
            secret: SECRET.into(),
            ..JwtConfig::default()
        })
        .expect("keys");
        let gw = Gateway::new(store.clone(), files.clone(), keys.clone(), config)
            .await
            .expect("gateway");
        let hub = gw.hub();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(gw.serve(listener, async move {
            let _ = rx.await;
        }));
        Env {
            redis,
            store,
            files,
            keys,
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            hub,
            _dir: dir,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Triggers the graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers the graceful shutdown and waits for the server to stop.
    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        if let Some(h) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    /// A session token for user `uid` with `role`.
    pub fn token_role(&self, uid: &str, role: Role) -> String {
        self.keys
            .mint(uid, &format!("name-{uid}"), role, Duration::from_secs(3600))
            .expect("mint")
            .0
    }

    /// A user token.
    pub fn token(&self, uid: &str) -> String {
        self.token_role(uid, Role::User)
    }

    /// An expired token.
    pub fn expired_token(&self, uid: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.keys
            .sign(&Claims {
                id: uid.into(),
                username: uid.into(),
                jti: "0".repeat(32),
                exp: now - 3600,
                sub: uid.into(),
                role: "user".into(),
                iat: now - 7200,
                iss: "comfy-broker".into(),
                aud: "comfy-broker".into(),
                nbf: None,
            })
            .expect("sign")
    }

    /// A token signed with another secret.
    pub fn forged_token(&self, uid: &str) -> String {
        JwtKeys::new(JwtConfig {
            secret: "another-secret-another-secret-another".into(),
            ..JwtConfig::default()
        })
        .unwrap()
        .mint(uid, uid, Role::Owner, Duration::from_secs(60))
        .unwrap()
        .0
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let r = self.get(token, path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    pub async fn post(
        &self,
        token: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.post(token, path, body.to_string()).await
    }

    /// Opens `/ws` with `?token=` and a clientId; returns the socket and its first message.
    pub async fn ws(&self, token: &str, client_id: Option<&str>) -> (Ws, Value) {
        let mut q = format!("token={token}");
        if let Some(c) = client_id {
            q.push_str(&format!("&clientId={c}"));
        }
        // Small client buffers, so memory measurements see the server's share.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
            format!("{}/ws?{q}", self.ws_base),
            Some(config),
            false,
        )
        .await
        .expect("ws connect");
        let first = next_text(&mut ws).await;
        (ws, first)
    }

    /// Tries a WebSocket handshake with custom headers; returns the HTTP status on refusal.
    pub async fn ws_status(&self, path_and_query: &str, headers: &[(&str, String)]) -> u16 {
        let mut req = format!("{}{}", self.ws_base, path_and_query)
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("ws error {e}"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next frame (text or binary), skipping pings; panics after 5 s.
pub async fn next_frame(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next text frame, parsed.
pub async fn next_text(ws: &mut Ws) -> Value {
    match next_frame(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("json frame"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// True when no frame other than pings arrives within `wait`.
pub async fn silent(ws: &mut Ws, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => {
                eprintln!("unexpected frame: {other:?}");
                return false;
            }
        }
    }
}

/// Sends a text frame.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// The reference graph of trace 01.
pub fn basic_prompt() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "test"}}
    })
}
