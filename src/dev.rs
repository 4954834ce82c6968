//! `comfy-broker dev`: gateway + worker + simulated (or real) ComfyUI backends in one process,
//! with a throwaway Redis when none answers, and a ready-made owner token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::shutdown;

/// Flags of `comfy-broker dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8190")]
    listen: SocketAddr,
    /// Redis URL (default: `REDIS_URL`, else redis://127.0.0.1:6379; when nothing answers there
    /// and `redis-server` is on PATH, a throwaway one is started).
    #[arg(long)]
    redis: Option<String>,
    /// Number of simulated ComfyUI backends.
    #[arg(long, default_value_t = 2)]
    sim_backends: usize,
    /// Work time of each simulated node (e.g. `300ms`), so progress can be watched.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    sim_node_time: Duration,
    /// A real ComfyUI backend URL (repeatable); replaces the simulated ones.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// Directory for the file store, the JWT secret and a throwaway Redis.
    #[arg(long, default_value = ".comfy-broker-dev")]
    data_dir: PathBuf,
}

/// Name of the owner `dev` prints a token for.
pub const DEV_USER: &str = "dev";

/// A stable user id for a name (UUID-shaped), used where no accounts store assigns one.
pub fn user_id_for(name: &str) -> String {
    let d = Sha256::digest(format!("comfy-broker-user:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// Reads the dev JWT secret from the data dir, creating it (owner-only) the first time.
fn dev_secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("jwt_secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if s.trim().len() >= 32 {
            return Ok(s.trim().to_owned());
        }
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// The `dev` owner in the accounts store (created on first use, with a password kept in the
/// data dir); returns its id and password.
async fn dev_owner(store: &store::Store, dir: &Path) -> anyhow::Result<(String, String)> {
    let path = dir.join("dev_password");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            let p = format!("dev-{}!1", uuid::Uuid::new_v4().simple());
            std::fs::write(&path, &p)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            p
        }
    };
    if let Some(u) = store.user(DEV_USER).await? {
        // The user may come from an earlier run with another data dir (a shared Redis): make
        // the password printed below the one that works.
        store
            .update_user(DEV_USER, &[("hash", auth::hash_password(&password)?)])
            .await?;
        return Ok((u.id, password));
    }
    let created = store
        .create_user(&store::NewUser {
            username: DEV_USER.to_owned(),
            password_hash: auth::hash_password(&password)?,
            role: auth::Role::Owner.as_str().to_owned(),
        })
        .await?;
    match created {
        store::CreateUser::Created(u) => Ok((u.id, password)),
        store::CreateUser::Exists => {
            let u = store.user(DEV_USER).await?.context("dev user vanished")?;
            Ok((u.id, password))
        }
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let attempt = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(_))
    )
}

/// Starts a throwaway `redis-server` in `dir` on a free port.
async fn throwaway_redis(dir: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::create_dir_all(dir)?;
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..200 {
        if redis_answers(&url).await {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the throwaway redis-server did not answer")
}

/// Runs the whole stack until Ctrl-C.
pub async fn run(args: DevArgs, mut config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    let mut _redis_child = None;
    let url = args
        .redis
        .clone()
        .unwrap_or_else(|| config.redis.url.clone());
    if redis_answers(&url).await {
        config.redis.url = url;
    } else if args.redis.is_none() && which("redis-server") {
        let (child, url) = throwaway_redis(&data_dir.join("redis")).await?;
        eprintln!(
            "no Redis answered at {}; started a throwaway redis-server at {url}",
            config.redis.url
        );
        config.redis.url = url;
        _redis_child = Some(child);
    } else {
        anyhow::bail!("no Redis answers at {url} (start one, or put redis-server on PATH)");
    }

    if config.auth.secret.len() < 32 {
        config.auth.secret = dev_secret(&data_dir)?;
    }
    // `dev` keeps its files under --data-dir unless the config chose another store.
    let mut files_config = config.files.clone();
    if files_config.backend == files::Backend::Local
        && files_config.dir == files::FilesConfig::default().dir
    {
        files_config.dir = data_dir.join("files");
    }
    let files = files::FileStore::from_config(&files_config)?;
    let store = store::Store::connect(config.store_config())
        .await
        .context("connecting to Redis")?;
    // One listener serves the gateway's and the worker's metrics; `dev` keeps it on loopback
    // unless configured, and runs without it when the port is taken.
    let mut metrics_config = config.metrics.clone();
    if metrics_config.listen == crate::telemetry::MetricsConfig::default().listen {
        metrics_config
            .listen
            .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let pools = Some(config.gateway.pools.clone());
    let _metrics = match crate::telemetry::start(&metrics_config, &store, pools).await {
        Ok(guards) => guards,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no /metrics for this dev run");
            Vec::new()
        }
    };

    let mut sims = Vec::new();
    let backend_urls: Vec<String> = if args.backends.is_empty() {
        for _ in 0..args.sim_backends.max(1) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let sim_config = comfy_sim::SimConfig {
                work_time: args.sim_node_time,
                ..comfy_sim::SimConfig::default()
            };
            let handle = comfy_sim::spawn(listener, sim_config).await?;
            sims.push(handle);
        }
        sims.iter().map(|s| s.url()).collect()
    } else {
        args.backends.clone()
    };
    config.worker.backends = backend_urls
        .iter()
        .cloned()
        .map(worker::BackendConfig::new)
        .collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let worker_task = tokio::spawn(worker::run(
        store.clone(),
        files.clone(),
        config.worker.clone(),
        worker_stop,
    ));

    let jwt = auth::JwtKeys::new(config.auth.clone())?;
    let (owner_id, password) = dev_owner(&store, &data_dir).await?;
    let (token, _) = jwt.mint(
        &owner_id,
        DEV_USER,
        auth::Role::Owner,
        Duration::from_secs(30 * 24 * 3600),
    )?;
    config.gateway.listen = args.listen;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let gw = gateway::Gateway::new(store, files, jwt, config.gateway.clone()).await?;

    println!("ready: http://{addr}");
    println!("token: {token}");
    println!("login: {DEV_USER} / {password}  (POST /login or /mss-login/generate_token)");
    println!("backends: {}", backend_urls.join(", "));
    println!("try:");
    println!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n    -d '{{\"prompt\": {{\"1\": {{\"class_type\": \"EmptyImage\", \"inputs\": {{\"width\": 64, \"height\": 64, \"batch_size\": 1, \"color\": 0}}}}, \"2\": {{\"class_type\": \"SaveImage\", \"inputs\": {{\"images\": [\"1\", 0], \"filename_prefix\": \"test\"}}}}}}}}' \\\n    http://{addr}/prompt"
    );
    println!("  (with TOKEN set to the token above; then GET /history/<prompt_id> and /view?filename=...)");

    let gateway_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let serve = tokio::spawn(gw.serve(listener, gateway_stop));
    shutdown::signal().await;
    let _ = stop_tx.send(true);
    let _ = serve.await;
    let _ = worker_task.await;
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_stable_uuids() {
        let a = user_id_for("alice");
        assert_eq!(a, user_id_for("alice"));
        assert_ne!(a, user_id_for("bob"));
        assert!(protocol::ids::is_canonical_uuid(&a));
    }
}
