//! A thin client of the broker's public API (the ComfyUI-compatible REST routes, `/ws`, and the
//! MSS-Login token routes), with error mapping to [`ClientError`].

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::error::ClientError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary (non-transfer) request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The WebSocket stream type the client uses.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection to one broker: base URL, optional token, shared HTTP client.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

impl Api {
    /// A client of the broker at `base` (`http://` or `https://`), authenticating with `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(base)
            .map_err(|e| ClientError::Usage(format!("invalid broker URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::Usage(format!(
                "invalid broker URL {base:?}: expected http://host:port or https://host"
            )));
        }
        if parsed.query().is_some() || !parsed.username().is_empty() {
            return Err(ClientError::Usage(format!(
                "invalid broker URL {base:?}: no query string or user name, please (the token goes in --token or COMFY_BROKER_TOKEN)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("comfy-broker-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Transport(format!("HTTP client: {e}")))?;
        Ok(Api {
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The base URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request to `path` (which starts with `/` and may carry an already-encoded query),
    /// with the bearer token when there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends `rb` (with the ordinary timeout unless `transfer`), maps transport errors, and
    /// turns any non-2xx status into an error.
    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        rb: RequestBuilder,
        transfer: bool,
    ) -> Result<Response, ClientError> {
        let rb = if transfer {
            rb
        } else {
            rb.timeout(REQUEST_TIMEOUT)
        };
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(self.status_error(method, path, status, &body))
    }

    /// `GET path` → JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self
            .send(&Method::GET, path, self.request(Method::GET, path), false)
            .await?;
        read_json(resp, path).await
    }

    /// `POST path` with a JSON body → the JSON answer (`Value::Null` for an empty body).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let rb = self.request(Method::POST, path).json(body);
        let resp = self.send(&Method::POST, path, rb, false).await?;
        read_json(resp, path).await
    }

    /// Turns a reqwest error into a readable [`ClientError`].
    pub fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Connect {
                url: self.base.clone(),
                reason: root_cause(&e),
            }
        } else if e.is_timeout() {
            ClientError::Transport(format!("{}: request timed out", self.base))
        } else {
            ClientError::Transport(format!("{}: {}", self.base, root_cause(&e)))
        }
    }

    /// Turns an error status into a [`ClientError`] (401 → authentication error).
    pub fn status_error(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        body: &str,
    ) -> ClientError {
        let message = error_message(body);
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::auth_failed(&message);
        }
        let message = if message.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            message
        };
        ClientError::Http {
            method: method.to_string(),
            path: path.split('?').next().unwrap_or(path).to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    /// Opens `/ws?clientId=<client_id>`, authenticating with the bearer header (so the token
    /// never sits in a URL).
    pub async fn connect_ws(&self, client_id: &str) -> Result<WsStream, ClientError> {
        use tungstenite::client::IntoClientRequest;
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(ClientError::Usage(format!(
                "invalid broker URL {}",
                self.base
            )));
        };
        let url = format!("{ws_base}/ws?clientId={client_id}");
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Transport(format!("WebSocket request: {e}")))?;
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}").parse().map_err(|_| {
                ClientError::Usage("the token has characters a header cannot carry".into())
            })?;
            req.headers_mut().insert("authorization", v);
        }
        let connect = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(ClientError::Transport(format!(
                "{}: WebSocket connection timed out",
                self.base
            ))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let status =
                    StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                Err(self.status_error(&Method::GET, "/ws", status, &body))
            }
            Ok(Err(tungstenite::Error::Io(e))) => Err(ClientError::Connect {
                url: self.base.clone(),
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(ClientError::Transport(format!("{}/ws: {e}", self.base))),
        }
    }
}

/// Reads a JSON body; an empty body is `Value::Null`.
async fn read_json(resp: Response, path: &str) -> Result<Value, ClientError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Transport(format!("{path}: reading the answer: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Transport(format!("{path}: the answer is not JSON: {e}")))
}

/// The innermost cause of an error, which is the readable one for connection failures.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The human message of an error body: ComfyUI's `{"error": {"message", "details"}}`,
/// MSS-Login's `{"error": "..."}`, or the text itself (shortened).
pub fn error_message(body: &str) -> String {
    let body = body.trim();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        match v.get("error") {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Object(o)) => {
                let msg = o.get("message").and_then(Value::as_str).unwrap_or("");
                let details = o.get("details").and_then(Value::as_str).unwrap_or("");
                return match (msg.is_empty(), details.is_empty()) {
                    (false, false) if msg == details => msg.to_owned(),
                    (false, false) => format!("{msg}: {details}"),
                    (false, true) => msg.to_owned(),
                    (true, false) => details.to_owned(),
                    (true, true) => o
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_owned(),
                };
            }
            _ => {}
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_owned();
        }
    }
    let mut s: String = body.chars().take(300).collect();
    if body.chars().count() > 300 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            error_message(
                r#"{"error": {"type": "x", "message": "Token expired", "details": "", "extra_info": {}}, "node_errors": {}}"#
            ),
            "Token expired"
        );
        assert_eq!(
            error_message(r#"{"error":"Invalid credentials."}"#),
            "Invalid credentials."
        );
        assert_eq!(
            error_message("500 Internal Server Error"),
            "500 Internal Server Error"
        );
        assert_eq!(error_message(""), "");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Api::new("http://127.0.0.1:8190/", None).is_ok());
        assert_eq!(
            Api::new("http://127.0.0.1:8190/", None).unwrap().base(),
            "http://127.0.0.1:8190"
        );
        assert_eq!(
            Api::new("https://h/comfy/", None).unwrap().base(),
            "https://h/comfy"
        );
        assert!(Api::new("127.0.0.1:8190", None).is_err());
        assert!(Api::new("ftp://h", None).is_err());
        assert!(Api::new("http://h/?token=x", None).is_err());
    }
}
