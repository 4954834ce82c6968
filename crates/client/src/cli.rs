//! The client subcommands of `comfy-broker` (`login`, `logout`, `run`, `queue`, `history`,
//! `cancel`, `workflows`) and their dispatch. Each returns a process exit code.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::Api;
use crate::credentials::{self, Credentials};
use crate::display::Mode;
use crate::error::{ClientError, EXIT_FAILED, EXIT_OK};
use crate::run::{self, RunOptions};

/// Where to find the broker and which token to use. Flags win over the environment, which wins
/// over the stored login (`comfy-broker login`).
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Broker URL, e.g. http://127.0.0.1:8190 [default: the stored login]
    #[arg(long, env = "COMFY_BROKER_URL")]
    pub url: Option<String>,
    /// API token or session JWT [default: the stored login]
    #[arg(long, env = "COMFY_BROKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The client commands, flattened into the binary's command list.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Log in to a broker: get an API token and store it (owner-only file) for the other commands.
    Login(LoginArgs),
    /// Revoke the stored API token and forget it.
    Logout,
    /// Run a workflow (API format): live progress, then its outputs downloaded.
    Run(RunArgs),
    /// Your running and pending jobs.
    Queue {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Your finished jobs, or one job's details.
    History(HistoryArgs),
    /// Cancel jobs (pending ones are removed, running ones interrupted).
    Cancel {
        #[command(flatten)]
        conn: ConnArgs,
        /// Prompt ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `login` options.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Broker URL, e.g. https://broker.example.com
    #[arg(long, env = "COMFY_BROKER_URL")]
    pub url: String,
    /// User name (asked when absent).
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from standard input (for scripts) instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
    /// Label of the API token, shown in token lists.
    #[arg(long)]
    pub label: Option<String>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Workflow file in the API format (or a `{"prompt": {...}}` body).
    pub workflow: PathBuf,
    /// Override an input: NODE.INPUT=VALUE (VALUE is JSON, else a string). Repeatable.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    pub set: Vec<String>,
    /// Directory for the outputs.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Longest wait for the job (e.g. 90s, 10m, 2h).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub timeout: Duration,
    /// Submit, print the prompt id, and exit.
    #[arg(long)]
    pub no_wait: bool,
    /// One JSON object per line per event (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

/// `history` options.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// One job's prompt id.
    pub id: Option<String>,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Download the job's outputs into this directory (with ID).
    #[arg(long, requires = "id")]
    pub out: Option<PathBuf>,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `workflows` subcommands that work over the broker's userdata API (your own workflows, with
/// the client's login). The binary flattens them next to the Redis-side `workflows` commands.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List your saved workflows (over the API).
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print one of your workflows, or write it to a file (over the API).
    Get {
        #[command(flatten)]
        conn: ConnArgs,
        /// Workflow name (`.json` is added when missing).
        name: String,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Save a workflow file as one of yours (over the API).
    Put {
        #[command(flatten)]
        conn: ConnArgs,
        /// The file.
        file: PathBuf,
        /// Name on the server [default: the file's name].
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing workflow of that name.
        #[arg(long)]
        force: bool,
    },
    /// Delete one of your workflows (over the API).
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        /// Workflow name.
        name: String,
    },
}

/// Runs a client command to completion and returns the process exit code. Builds its own
/// runtime; needs no server configuration.
pub fn main(cmd: ClientCommand) -> i32 {
    block_on(dispatch(cmd))
}

/// Runs a `workflows` client command (see [`WorkflowsCommand`]); returns the exit code.
pub fn workflows_main(cmd: WorkflowsCommand) -> i32 {
    block_on(workflows(cmd))
}

fn block_on(fut: impl std::future::Future<Output = Result<i32, ClientError>>) -> i32 {
    // Like any Unix command: when the reader goes away (`comfy-broker history | head`), end
    // quietly instead of panicking on a failed print (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match rt.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cmd: ClientCommand) -> Result<i32, ClientError> {
    match cmd {
        ClientCommand::Login(a) => login(a).await,
        ClientCommand::Logout => logout().await,
        ClientCommand::Run(a) => {
            let api = connect(&a.conn)?;
            // JSON lines unless stdout is a terminal; the bar goes to stderr (and is hidden
            // when stderr is not a terminal).
            let human = !a.json && std::io::stdout().is_terminal();
            let opts = RunOptions {
                workflow: a.workflow,
                set: a.set,
                out: a.out,
                timeout: a.timeout,
                no_wait: a.no_wait,
                mode: if human { Mode::Human } else { Mode::Json },
            };
            run::run(&api, &opts).await.map(|_| EXIT_OK)
        }
        ClientCommand::Queue { conn, json } => queue(&connect(&conn)?, json).await,
        ClientCommand::History(a) => history(&connect(&a.conn)?, &a).await,
        ClientCommand::Cancel { conn, ids } => cancel(&connect(&conn)?, &ids).await,
    }
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.trim().is_empty()).cloned()
}

/// Resolves URL and token: flags and environment first, then the stored login. The stored
/// token is only ever sent to the stored URL.
pub fn resolve(
    conn: &ConnArgs,
    stored: Option<Credentials>,
) -> Result<(String, String), ClientError> {
    let url = nonempty(&conn.url);
    let token = nonempty(&conn.token);
    let url = match (url, &stored) {
        (Some(u), _) => u,
        (None, Some(c)) => c.url.clone(),
        (None, None) => return Err(ClientError::Usage(
            "no broker URL: run `comfy-broker login --url URL`, or set COMFY_BROKER_URL / --url"
                .into(),
        )),
    };
    let token = match (token, stored) {
        (Some(t), _) => t,
        (None, Some(c)) if same_url(&c.url, &url) => c.token,
        (None, Some(c)) => {
            return Err(ClientError::Auth(format!(
                "no token for {url} (the stored login is for {}): run `comfy-broker login --url {url}` or set COMFY_BROKER_TOKEN",
                c.url
            )))
        }
        (None, None) => {
            return Err(ClientError::Auth(
                "not logged in: run `comfy-broker login --url URL`, or set COMFY_BROKER_TOKEN".into(),
            ))
        }
    };
    Ok((url, token))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn stored_credentials() -> Result<Option<(PathBuf, Credentials)>, ClientError> {
    let Some(path) = credentials::default_path() else {
        return Ok(None);
    };
    Ok(credentials::load(&path)?.map(|c| (path, c)))
}

fn connect(conn: &ConnArgs) -> Result<Api, ClientError> {
    let need_file = nonempty(&conn.url).is_none() || nonempty(&conn.token).is_none();
    let stored = if need_file {
        stored_credentials()?.map(|(_, c)| c)
    } else {
        None
    };
    let (url, token) = resolve(conn, stored)?;
    Api::new(&url, Some(token))
}

async fn login(a: LoginArgs) -> Result<i32, ClientError> {
    let api = Api::new(&a.url, None)?;
    let path = credentials::default_path().ok_or_else(|| {
        ClientError::Usage("no configuration directory on this system (set XDG_CONFIG_HOME)".into())
    })?;
    let username = match a.username.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if a.password_stdin => {
            return Err(ClientError::Usage(
                "--password-stdin needs --username".into(),
            ))
        }
        None => {
            eprint!("Username: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| ClientError::Usage(format!("reading the user name: {e}")))?;
            let u = line.trim().to_owned();
            if u.is_empty() {
                return Err(ClientError::Usage("no user name given".into()));
            }
            u
        }
    };
    let password = if a.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| ClientError::Usage(format!("reading the password from stdin: {e}")))?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password("Password: ").map_err(|e| {
            ClientError::Usage(format!(
                "cannot ask for the password ({e}): use --password-stdin"
            ))
        })?
    };
    let label = a.label.unwrap_or_else(default_label);
    let body = json!({"username": username, "password": password, "label": label});
    let path_gen = "/mss-login/generate_token";
    let resp = api
        .request(Method::POST, path_gen)
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| api.transport_error(e))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let msg = crate::api::error_message(&text);
        return Err(ClientError::Auth(format!("login failed: {msg}")));
    }
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        return Err(ClientError::Usage(format!(
            "{} does not offer API tokens ({path_gen} answered {status}); is this a comfy-broker?",
            api.base()
        )));
    }
    if !status.is_success() {
        return Err(api.status_error(&Method::POST, path_gen, status, &text));
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Transport(format!("{path_gen}: the answer is not JSON: {e}")))?;
    if v.get("mfa_required").and_then(Value::as_bool) == Some(true) {
        return Err(ClientError::Auth(
            "login failed: this account needs multi-factor authentication, which `comfy-broker login` does not support yet; create a token in the web UI and set COMFY_BROKER_TOKEN".into(),
        ));
    }
    let token = v
        .get("jwt_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ClientError::Transport(format!("{path_gen}: no token in the answer")))?;
    let creds = Credentials {
        url: api.base().to_owned(),
        token: token.to_owned(),
        username: Some(username.clone()),
    };
    credentials::save(&path, &creds)?;
    let expiry = match v.get("expires_in_hours").and_then(Value::as_f64) {
        Some(h) => format!(
            ", expires in {}",
            humantime::format_duration(Duration::from_secs((h * 3600.0) as u64))
        ),
        None => ", never expires".into(),
    };
    eprintln!(
        "logged in to {} as {username}; API token stored in {}{expiry}",
        api.base(),
        path.display()
    );
    Ok(EXIT_OK)
}

fn default_label() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    if host.is_empty() {
        "comfy-broker CLI".into()
    } else {
        format!("comfy-broker CLI on {host}")
    }
}

async fn logout() -> Result<i32, ClientError> {
    let Some((path, creds)) = stored_credentials()? else {
        eprintln!("not logged in (no stored credentials)");
        return Ok(EXIT_OK);
    };
    let api = Api::new(&creds.url, Some(creds.token.clone()))?;
    match revoke(&api, &creds.token).await {
        Ok(()) => eprintln!("token revoked on {}", api.base()),
        Err(e) => eprintln!(
            "warning: could not revoke the token on {} ({e}); it stays valid until it expires",
            api.base()
        ),
    }
    credentials::remove(&path)?;
    eprintln!("forgot the login stored in {}", path.display());
    Ok(EXIT_OK)
}

/// Revokes `token` on the server: a session JWT through `POST /logout`, an API token through
/// `DELETE /mss-login/api/tokens` with its full SHA-256 as the prefix (matches only itself).
async fn revoke(api: &Api, token: &str) -> Result<(), ClientError> {
    let (method, path, rb) = if token.matches('.').count() >= 2 {
        let rb = api.request(Method::POST, "/logout");
        (Method::POST, "/logout", rb)
    } else {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let rb = api
            .request(Method::DELETE, "/mss-login/api/tokens")
            .json(&json!({"token_hash_prefix": hash}));
        (Method::DELETE, "/mss-login/api/tokens", rb)
    };
    let resp = rb
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| api.transport_error(e))?;
    let status = resp.status();
    // `/logout` answers with a redirect to /login, which is its success.
    if status.is_success() || status.is_redirection() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(api.status_error(&method, path, status, &body))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// "3m 12s ago" for an epoch-ms time.
fn ago(ms: Option<i64>) -> String {
    match ms {
        Some(t) if t > 0 => {
            let secs = ((now_ms() - t).max(0) / 1000) as u64;
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(secs))
            )
        }
        _ => "-".into(),
    }
}

/// Prints rows as aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

async fn queue(api: &Api, as_json: bool) -> Result<i32, ClientError> {
    let v = api.get_json("/queue").await?;
    if as_json {
        println!("{v}");
        return Ok(EXIT_OK);
    }
    let mut rows = Vec::new();
    for (state, key) in [("running", "queue_running"), ("pending", "queue_pending")] {
        let mut items: Vec<&Value> = v
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        // ComfyUI lists pending items in heap order; the true order is (number, prompt_id).
        items.sort_by(|a, b| {
            let na = a.get(0).and_then(Value::as_f64).unwrap_or(0.0);
            let nb = b.get(0).and_then(Value::as_f64).unwrap_or(0.0);
            na.total_cmp(&nb).then_with(|| {
                let ia = a.get(1).and_then(Value::as_str).unwrap_or("");
                let ib = b.get(1).and_then(Value::as_str).unwrap_or("");
                ia.cmp(ib)
            })
        });
        for it in items {
            rows.push(vec![
                state.to_owned(),
                it.get(0).map(Value::to_string).unwrap_or_default(),
                it.get(1).and_then(Value::as_str).unwrap_or("?").to_owned(),
                it.get(2)
                    .and_then(Value::as_object)
                    .map(|g| g.len().to_string())
                    .unwrap_or_default(),
                ago(it
                    .get(3)
                    .and_then(|e| e.get("create_time"))
                    .and_then(Value::as_i64)),
            ]);
        }
    }
    if rows.is_empty() {
        eprintln!("no running or pending jobs");
        return Ok(EXIT_OK);
    }
    print_table(
        &["STATE", "NUMBER", "PROMPT_ID", "NODES", "SUBMITTED"],
        &rows,
    );
    Ok(EXIT_OK)
}

/// (status word, finish time in ms) of a history entry.
fn entry_summary(e: &Value) -> (String, Option<i64>) {
    let msgs = e.pointer("/status/messages").and_then(Value::as_array);
    let last = msgs.and_then(|m| m.last());
    let kind = last
        .and_then(|m| m.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    let ts = last
        .and_then(|m| m.get(1))
        .and_then(|d| d.get("timestamp"))
        .and_then(Value::as_i64);
    let status = match kind {
        "execution_success" => "success",
        "execution_error" => "error",
        "execution_interrupted" => "interrupted",
        _ => e
            .pointer("/status/status_str")
            .and_then(Value::as_str)
            .unwrap_or("?"),
    };
    (status.to_owned(), ts)
}

async fn history(api: &Api, a: &HistoryArgs) -> Result<i32, ClientError> {
    let Some(id) = &a.id else {
        let v = api
            .get_json(&format!("/history?max_items={}", a.limit))
            .await?;
        if a.json {
            println!("{v}");
            return Ok(EXIT_OK);
        }
        let Some(map) = v.as_object().filter(|m| !m.is_empty()) else {
            eprintln!("no finished jobs");
            return Ok(EXIT_OK);
        };
        let rows: Vec<Vec<String>> = map
            .iter()
            .rev()
            .map(|(id, e)| {
                let (status, ts) = entry_summary(e);
                vec![
                    id.clone(),
                    status,
                    run::output_items(e).len().to_string(),
                    ago(ts),
                ]
            })
            .collect();
        print_table(&["PROMPT_ID", "STATUS", "OUTPUTS", "FINISHED"], &rows);
        return Ok(EXIT_OK);
    };
    let path_id: String =
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string();
    let v = api.get_json(&format!("/history/{path_id}")).await?;
    let Some(entry) = v.get(id.as_str()) else {
        return Err(ClientError::Http {
            method: "GET".into(),
            path: format!("/history/{id}"),
            status: 404,
            message: "no finished job with this id (still pending or running, or unknown)".into(),
        });
    };
    if a.json {
        println!("{entry}");
    } else {
        let (status, ts) = entry_summary(entry);
        println!("prompt_id: {id}");
        println!("status:    {status} (finished {})", ago(ts));
        let graph = entry
            .get("prompt")
            .and_then(|p| p.get(2))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Err(e) = run::check_outcome(entry, &graph, id) {
            println!("error:     {e}");
        }
        let items = run::output_items(entry);
        if !items.is_empty() {
            println!("outputs:");
            for (node, it) in &items {
                println!(
                    "  node {node}: {} (subfolder {:?}, type {})",
                    it.get("filename").and_then(Value::as_str).unwrap_or(""),
                    it.get("subfolder").and_then(Value::as_str).unwrap_or(""),
                    it.get("type").and_then(Value::as_str).unwrap_or("output"),
                );
            }
        }
    }
    if let Some(out) = &a.out {
        let mode = if a.json { Mode::Json } else { Mode::Human };
        let mut display = crate::display::Display::new(mode, Default::default());
        for f in run::download_outputs(api, entry, out, &mut display).await? {
            if !a.json {
                println!("{}", f.display());
            }
        }
    }
    Ok(EXIT_OK)
}

async fn cancel(api: &Api, ids: &[String]) -> Result<i32, ClientError> {
    let mut code = EXIT_OK;
    for id in ids {
        if !protocol::ids::is_canonical_uuid(id) {
            eprintln!("{id}: not a prompt id (a lowercase UUID)");
            code = crate::error::EXIT_USAGE;
            continue;
        }
        let path = format!("/api/jobs/{id}/cancel");
        let cancelled = match api.post_json(&path, &json!({})).await {
            Ok(v) => v.get("cancelled").and_then(Value::as_bool).unwrap_or(false),
            Err(ClientError::Http {
                status: 404 | 405, ..
            }) => {
                // A server without the jobs API: interrupt if running, delete if pending.
                api.post_json("/interrupt", &json!({"prompt_id": id}))
                    .await?;
                api.post_json("/queue", &json!({"delete": [id]})).await?;
                println!("{id}: cancel requested");
                continue;
            }
            Err(e) => return Err(e),
        };
        if cancelled {
            println!("{id}: cancelled");
        } else {
            eprintln!("{id}: not pending or running (nothing to cancel)");
            code = EXIT_FAILED;
        }
    }
    Ok(code)
}

/// `workflows/<name>` as one encoded path segment (`/` → `%2F`), `.json` added when missing.
fn workflow_path(name: &str) -> Result<String, ClientError> {
    let name = name.trim();
    if name.is_empty() || name.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(ClientError::Usage(format!(
            "invalid workflow name {name:?}"
        )));
    }
    let name = if name.ends_with(".json") {
        name.to_owned()
    } else {
        format!("{name}.json")
    };
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    let enc = percent_encoding::utf8_percent_encode(&format!("workflows/{name}"), SET).to_string();
    Ok(format!("/api/userdata/{enc}"))
}

async fn workflows(cmd: WorkflowsCommand) -> Result<i32, ClientError> {
    match cmd {
        WorkflowsCommand::Ls { conn } => {
            let api = &connect(&conn)?;
            let v = match api
                .get_json("/api/userdata?dir=workflows&recurse=true")
                .await
            {
                Ok(v) => v,
                // ComfyUI answers 404 for a missing directory: no workflows yet. A server
                // without the userdata API says "no such route".
                Err(ClientError::Http {
                    status: 404,
                    message,
                    ..
                }) if !message.contains("no such route") => Value::Array(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut names: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("path").and_then(Value::as_str).map(str::to_owned),
                    Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_owned),
                    _ => None,
                })
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
            Ok(EXIT_OK)
        }
        WorkflowsCommand::Get { conn, name, output } => {
            let api = &connect(&conn)?;
            let path = workflow_path(&name)?;
            let resp = api
                .send(&Method::GET, &path, api.request(Method::GET, &path), true)
                .await
                .map_err(|e| not_found_as(e, &name))?;
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Transport(format!("{path}: {e}")))?;
            match output {
                Some(f) => std::fs::write(&f, &bytes).map_err(|e| ClientError::io(&f, e))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)
                        .and_then(|_| out.flush())
                        .map_err(|e| ClientError::io("<stdout>", e))?;
                }
            }
            Ok(EXIT_OK)
        }
        WorkflowsCommand::Put {
            conn,
            file,
            name,
            force,
        } => {
            let api = &connect(&conn)?;
            let body = std::fs::read(&file).map_err(|e| ClientError::io(&file, e))?;
            if let Err(e) = serde_json::from_slice::<Value>(&body) {
                return Err(ClientError::Usage(format!(
                    "{}: not JSON: {e}",
                    file.display()
                )));
            }
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| ClientError::Usage("give --name".into()))?,
            };
            let path = format!("{}?overwrite={force}", workflow_path(&name)?);
            let rb = api
                .request(Method::POST, &path)
                .header("content-type", "application/json")
                .body(body);
            match api.send(&Method::POST, &path, rb, true).await {
                Ok(_) => {
                    eprintln!("saved {name}");
                    Ok(EXIT_OK)
                }
                Err(ClientError::Http { status: 409, .. }) => Err(ClientError::Usage(format!(
                    "a workflow named {name} already exists: pass --force to replace it"
                ))),
                Err(e) => Err(e),
            }
        }
        WorkflowsCommand::Rm { conn, name } => {
            let api = &connect(&conn)?;
            let path = workflow_path(&name)?;
            api.send(
                &Method::DELETE,
                &path,
                api.request(Method::DELETE, &path),
                false,
            )
            .await
            .map_err(|e| not_found_as(e, &name))?;
            eprintln!("deleted {name}");
            Ok(EXIT_OK)
        }
    }
}

fn not_found_as(e: ClientError, name: &str) -> ClientError {
    match e {
        ClientError::Http { status: 404, .. } => ClientError::Http {
            method: "GET".into(),
            path: format!("workflows/{name}"),
            status: 404,
            message: "no such workflow".into(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Option<Credentials> {
        Some(Credentials {
            url: "http://a:1".into(),
            token: "s3cr3t-tok".into(),
            username: None,
        })
    }

    #[test]
    fn flags_and_env_win_over_the_stored_login() {
        let c = ConnArgs {
            url: None,
            token: None,
        };
        assert_eq!(
            resolve(&c, stored()).unwrap(),
            ("http://a:1".into(), "s3cr3t-tok".into())
        );
        let c = ConnArgs {
            url: Some("http://a:1/".into()),
            token: Some("flag".into()),
        };
        assert_eq!(resolve(&c, stored()).unwrap().1, "flag");
        let c = ConnArgs {
            url: None,
            token: Some("".into()),
        };
        assert_eq!(resolve(&c, stored()).unwrap().1, "s3cr3t-tok");
    }

    #[test]
    fn the_stored_token_never_goes_to_another_server() {
        let c = ConnArgs {
            url: Some("http://evil:1".into()),
            token: None,
        };
        let e = resolve(&c, stored()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let none = ConnArgs {
            url: None,
            token: None,
        };
        assert_eq!(resolve(&none, None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn workflow_names_are_one_segment() {
        assert_eq!(
            workflow_path("my flow").unwrap(),
            "/api/userdata/workflows%2Fmy%20flow.json"
        );
        assert_eq!(
            workflow_path("a/b.json").unwrap(),
            "/api/userdata/workflows%2Fa%2Fb.json"
        );
        assert!(workflow_path("../x").is_err());
        assert!(workflow_path("").is_err());
    }
}
