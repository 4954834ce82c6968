//! HTTP and WebSocket client for one ComfyUI backend.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::BackendError;
use crate::WorkerError;

/// The WebSocket to a backend.
pub(crate) type BackendWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest piece of an error body kept for logs and error messages.
const ERROR_BODY_MAX: usize = 4096;

/// Answer of `POST /prompt`.
#[derive(Debug)]
pub(crate) enum SubmitAnswer {
    /// Queued on the backend.
    Queued,
    /// 400: the backend refused the graph; the parsed error body.
    Refused(Value),
}

/// Talks to one ComfyUI server.
#[derive(Clone)]
pub(crate) struct ComfyClient {
    base: String,
    http: reqwest::Client,
    headers: HeaderMap,
    connect_timeout: Duration,
    transfer_timeout: Duration,
    /// `X-Request-Id` sent on every HTTP call (the request id of the job being run).
    request_id: Option<HeaderValue>,
}

fn unreachable(e: reqwest::Error) -> BackendError {
    // Without the URL (it may carry credentials); reqwest never prints header values.
    BackendError::Unreachable(e.without_url().to_string())
}

impl ComfyClient {
    /// A client for the backend at `base` sending `headers` on every request.
    pub(crate) fn new(
        base: &str,
        headers: &BTreeMap<String, String>,
        connect_timeout: Duration,
        request_timeout: Duration,
        transfer_timeout: Duration,
    ) -> Result<Self, WorkerError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| WorkerError::Config(format!("invalid header name {k:?}")))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| WorkerError::Config(format!("invalid value for header {k:?}")))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(map.clone())
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| WorkerError::Config(format!("http client: {e}")))?;
        Ok(ComfyClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            headers: map,
            connect_timeout,
            transfer_timeout,
            request_id: None,
        })
    }

    /// The same client, sending `X-Request-Id: <id>` on every HTTP call (so a job can be
    /// followed into the backend's logs); `None` sends none.
    pub(crate) fn with_request_id(&self, id: Option<&str>) -> ComfyClient {
        let mut c = self.clone();
        c.request_id = id.and_then(|id| HeaderValue::from_str(id).ok());
        c
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to `path` with the job's request id.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let b = self.http.request(method, self.url(path));
        match &self.request_id {
            Some(id) => b.header("x-request-id", id.clone()),
            None => b,
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, BackendError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(BackendError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_MAX)]).into_owned(),
        })
    }

    /// GET a path, returning the raw body of a 2xx answer.
    pub(crate) async fn get_bytes(&self, path: &str) -> Result<Bytes, BackendError> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?.bytes().await.map_err(unreachable)
    }

    /// GET a path and parse the body as JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, BackendError> {
        let body = self.get_bytes(path).await?;
        serde_json::from_slice(&body).map_err(|e| BackendError::BadAnswer(format!("{path}: {e}")))
    }

    /// `POST /prompt`.
    pub(crate) async fn submit(&self, body: &Value) -> Result<SubmitAnswer, BackendError> {
        let resp = self
            .request(reqwest::Method::POST, "/prompt")
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST {
            let body = resp.bytes().await.map_err(unreachable)?;
            let v = serde_json::from_slice(&body).unwrap_or_else(|_| {
                Value::String(
                    String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_MAX)]).into_owned(),
                )
            });
            return Ok(SubmitAnswer::Refused(v));
        }
        Self::check(resp).await?;
        Ok(SubmitAnswer::Queued)
    }

    /// `POST /interrupt {"prompt_id"}` (a no-op on the backend unless that prompt runs).
    pub(crate) async fn interrupt(&self, backend_prompt_id: &str) -> Result<(), BackendError> {
        let resp = self
            .request(reqwest::Method::POST, "/interrupt")
            .json(&serde_json::json!({ "prompt_id": backend_prompt_id }))
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?;
        Ok(())
    }

    /// `POST /queue {"delete": [id]}`: drops a prompt that is still pending on the backend.
    pub(crate) async fn delete_pending(&self, backend_prompt_id: &str) -> Result<(), BackendError> {
        let resp = self
            .request(reqwest::Method::POST, "/queue")
            .json(&serde_json::json!({ "delete": [backend_prompt_id] }))
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?;
        Ok(())
    }

    /// `GET /history/{id}`: the entry once the prompt finished, `None` before (or if unknown).
    pub(crate) async fn history(
        &self,
        backend_prompt_id: &str,
    ) -> Result<Option<Value>, BackendError> {
        let mut v: Value = self
            .get_json(&format!("/history/{backend_prompt_id}"))
            .await?;
        Ok(v.as_object_mut()
            .and_then(|m| m.remove(backend_prompt_id))
            .filter(Value::is_object))
    }

    /// True when the prompt is running or pending on the backend (`GET /queue`).
    pub(crate) async fn in_queue(&self, backend_prompt_id: &str) -> Result<bool, BackendError> {
        let v: Value = self.get_json("/queue").await?;
        let listed = |key: &str| {
            v.get(key).and_then(Value::as_array).is_some_and(|items| {
                items
                    .iter()
                    .any(|it| it.get(1).and_then(Value::as_str) == Some(backend_prompt_id))
            })
        };
        Ok(listed("queue_running") || listed("queue_pending"))
    }

    /// Opens a file of the backend's `/view` for streaming (large outputs never sit whole in
    /// memory).
    pub(crate) async fn view_stream(
        &self,
        filename: &str,
        subfolder: &str,
        kind: &str,
    ) -> Result<reqwest::Response, BackendError> {
        let resp = self
            .request(reqwest::Method::GET, "/view")
            .query(&[
                ("filename", filename),
                ("subfolder", subfolder),
                ("type", kind),
            ])
            .timeout(self.transfer_timeout)
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await
    }

    pub(crate) async fn upload(
        &self,
        kind: &str,
        subfolder: &str,
        filename: &str,
        data: Bytes,
    ) -> Result<(), BackendError> {
        let part = reqwest::multipart::Part::stream(reqwest::Body::from(data))
            .file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", kind.to_owned())
            .text("subfolder", subfolder.to_owned())
            .text("overwrite", "true");
        let resp = self
            .request(reqwest::Method::POST, "/upload/image")
            .multipart(form)
            .timeout(self.transfer_timeout)
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?;
        Ok(())
    }

    /// Opens `/ws?clientId=<sid>` with the backend's headers and sends the feature flags that
    /// make the backend name the prompt of every preview (type 4).
    pub(crate) async fn connect_ws(&self, sid: &str) -> Result<BackendWs, BackendError> {
        use futures::SinkExt;
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(BackendError::Unreachable(
                "unsupported url scheme".to_owned(),
            ));
        };
        let mut req = format!("{ws_base}/ws?clientId={sid}")
            .into_client_request()
            .map_err(|e| BackendError::Unreachable(format!("websocket request: {e}")))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let connect = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let (mut ws, _) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::Unreachable("websocket connect timed out".into()))?
            .map_err(|e| BackendError::Unreachable(format!("websocket: {e}")))?;
        let flags = r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#;
        ws.send(tokio_tungstenite::tungstenite::Message::text(flags))
            .await
            .map_err(|e| BackendError::Unreachable(format!("websocket: {e}")))?;
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers one HTTP request with `{}` and returns the request head it read.
    async fn one_request(listener: tokio::net::TcpListener) -> String {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request head ended");
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    }

    #[tokio::test]
    async fn the_jobs_request_id_goes_to_the_backend() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(one_request(listener));
        let t = Duration::from_secs(5);
        let plain = ComfyClient::new(&base, &BTreeMap::new(), t, t, t).unwrap();
        let client = plain.with_request_id(Some("trace-42"));
        let _: Value = client.get_json("/system_stats").await.unwrap();
        let head = server.await.unwrap();
        assert!(head.contains("x-request-id: trace-42\r\n"), "{head}");

        // Without a job, no header.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(one_request(listener));
        let plain = ComfyClient::new(&base, &BTreeMap::new(), t, t, t).unwrap();
        let _: Value = plain.get_json("/system_stats").await.unwrap();
        let head = server.await.unwrap();
        assert!(!head.contains("x-request-id"), "{head}");
    }
}
