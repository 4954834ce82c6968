//! `comfy-broker`: one binary for every part of the system. This file only parses the command
//! line and wires configuration to the crates.

mod admin;
mod config;
mod dev;
mod logging;
mod shutdown;
mod telemetry;
mod workflows_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

// glibc's malloc cost about a quarter of the gateway's CPU on the submit path (arena locks,
// consolidation); mimalloc's thread-local heaps cut the gateway's CPU per submit by ~25 %.
// Version 2 (the `v2` feature): v3's eagerly committed arenas cost an idle gateway ~25 MiB more.
// Its arenas are committed on demand (`.cargo/config.toml` compiles that default in): an idle
// gateway is resident at ~38 MiB instead of ~50 MiB, for the same submit CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Use a pool of ComfyUI GPU nodes as one authenticated ComfyUI server.
#[derive(Debug, Parser)]
#[command(name = "comfy-broker", version, about)]
struct Cli {
    /// TOML configuration file (also `COMFY_BROKER_CONFIG`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway: the authenticated ComfyUI-compatible REST + WebSocket tier.
    Gateway {
        /// Address to listen on (overrides `gateway.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run a worker: pulls jobs from Redis and drives ComfyUI backends.
    Worker {
        /// A ComfyUI backend URL (repeatable; replaces `worker.backends`).
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// A label `KEY=VALUE` of every `--backend` (repeatable), e.g. `--label tier=premium`.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Gateway + worker + simulated ComfyUI backends in one process, for trying it out.
    Dev(dev::DevArgs),
    /// A simulated ComfyUI node (for tests, demos and benchmarks).
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8188")]
        listen: SocketAddr,
        /// Work time of every node (e.g. `200ms`).
        #[arg(long, value_parser = humantime::parse_duration)]
        node_time: Option<Duration>,
        /// A model file the node pretends to have, as `folder/name` (e.g.
        /// `checkpoints/sd15.safetensors`; repeatable), so graphs with loaders validate.
        #[arg(long = "model")]
        models: Vec<String>,
        /// A node type the node does not have (removed from its `/object_info`; repeatable),
        /// to simulate backends with different custom nodes.
        #[arg(long = "hide-node")]
        hide_nodes: Vec<String>,
    },
    /// Mint tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage users (stored in Redis, shared by every gateway).
    User {
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Print the effective configuration (defaults ← file ← environment) as TOML, secrets
    /// redacted.
    Config,
    /// Operate on jobs: dead letters.
    Jobs {
        #[command(subcommand)]
        command: admin::JobsCommand,
    },
    /// Workflows: yours over the API (ls, get, put, rm), or those in Redis (import, list).
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// Load benchmark of a whole stack (separate processes over loopback); see the README's
    /// "Performance" section.
    Bench(bench::BenchArgs),
    /// Client commands (login, run, queue ...): speak the public API, need no server config.
    #[command(flatten)]
    Client(client::cli::ClientCommand),
}

/// `workflows`: the Redis-side commands and the client's (over the API) side by side.
#[derive(Debug, Subcommand)]
enum WorkflowsCommand {
    #[command(flatten)]
    Store(workflows_cmd::WorkflowsCommand),
    #[command(flatten)]
    Api(client::cli::WorkflowsCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a long-lived API token for an existing user and print it (shown once).
    Create {
        /// User name.
        #[arg(long)]
        user: String,
        /// Lifetime (e.g. `720h`); never expires when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Label shown in token lists.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Print a session JWT for a user, signed with the configured `auth.secret`.
    Jwt {
        /// User name.
        #[arg(long)]
        user: String,
        /// User id (default: derived from the name).
        #[arg(long)]
        id: Option<String>,
        /// Role: owner, admin, power, user or guest.
        #[arg(long, default_value = "user")]
        role: String,
        /// Lifetime (e.g. `24h`, `30d`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        ttl: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Client(cmd) => std::process::exit(client::cli::main(cmd)),
        Command::Workflows {
            command: WorkflowsCommand::Api(cmd),
        } => std::process::exit(client::cli::workflows_main(cmd)),
        other => other,
    };
    let config = Config::load(cli.config.as_deref())?;
    config.validate()?;
    logging::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(command, config))
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    match command {
        Command::Gateway { listen } => {
            config.validate_auth()?;
            if let Some(l) = listen {
                config.gateway.listen = l;
            }
            let store = connect(&config).await?;
            let files = files::FileStore::from_config(&config.files)?;
            let jwt = auth::JwtKeys::new(config.auth.clone())?;
            bootstrap(&store, &config).await?;
            let _metrics =
                telemetry::start(&config.metrics, &store, Some(config.gateway.pools.clone()))
                    .await?;
            let listener = tokio::net::TcpListener::bind(config.gateway.listen)
                .await
                .with_context(|| format!("binding {}", config.gateway.listen))?;
            tracing::info!(addr = %listener.local_addr()?, "gateway listening");
            let gw = gateway::Gateway::new(store, files, jwt, config.gateway.clone()).await?;
            gw.serve(listener, shutdown::signal()).await?;
            Ok(())
        }
        Command::Worker { backends, labels } => {
            if !backends.is_empty() {
                config.worker.backends = backends
                    .into_iter()
                    .map(worker::BackendConfig::new)
                    .collect();
            }
            for l in labels {
                let Some((k, v)) = l.split_once('=') else {
                    anyhow::bail!("--label must be KEY=VALUE, got {l:?}");
                };
                for b in &mut config.worker.backends {
                    b.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            anyhow::ensure!(
                !config.worker.backends.is_empty(),
                "no backends: set worker.backends in the config or pass --backend URL"
            );
            let store = connect(&config).await?;
            let files = files::FileStore::from_config(&config.files)?;
            let _metrics = telemetry::start(&config.metrics, &store, None).await?;
            worker::run(store, files, config.worker.clone(), shutdown::signal()).await?;
            Ok(())
        }
        Command::Dev(args) => dev::run(args, config).await,
        Command::Bench(args) => Ok(bench::run(args).await?),
        Command::Sim {
            listen,
            node_time,
            models,
            hide_nodes,
        } => {
            let mut sim_config = comfy_sim::SimConfig {
                work_time: node_time.unwrap_or_default(),
                ..comfy_sim::SimConfig::default()
            };
            for m in models {
                let Some((folder, name)) = m.split_once('/') else {
                    anyhow::bail!("--model must be folder/name, got {m:?}");
                };
                sim_config
                    .models
                    .entry(folder.to_owned())
                    .or_default()
                    .push(name.to_owned());
            }
            if !hide_nodes.is_empty() {
                let mut cat = (*sim_config.catalog).clone();
                for n in &hide_nodes {
                    if !cat.remove(n) {
                        anyhow::bail!("--hide-node {n:?}: no such node type");
                    }
                }
                sim_config.catalog = std::sync::Arc::new(cat);
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let handle = comfy_sim::spawn(listener, sim_config).await?;
            println!("sim listening on {}", handle.url());
            shutdown::signal().await;
            handle.shutdown().await;
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { user, ttl, name },
        } => {
            let store = connect(&config).await?;
            admin::create_api_token(&store, &user, ttl, &name).await
        }
        Command::Config => {
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
        Command::User { command } => admin::user(&connect(&config).await?, command).await,
        Command::Jobs { command } => admin::jobs(&connect(&config).await?, command).await,
        Command::Client(_)
        | Command::Workflows {
            command: WorkflowsCommand::Api(_),
        } => anyhow::bail!("client commands are dispatched before this point"),
        Command::Workflows {
            command: WorkflowsCommand::Store(command),
        } => {
            let limits = store::workflows::Limits {
                max_bytes: config.gateway.workflow_max_bytes,
                max_files: config.gateway.workflow_max_files,
            };
            workflows_cmd::run(&connect(&config).await?, limits, command).await
        }
        Command::Token {
            command:
                TokenCommand::Jwt {
                    user,
                    id,
                    role,
                    ttl,
                },
        } => {
            config.validate_auth()?;
            let mut role = auth::Role::parse(&role).context("unknown role")?;
            let keys = auth::JwtKeys::new(config.auth.clone())?;
            // A user of the accounts store gets their own id and current role.
            let account = match connect(&config).await {
                Ok(store) => store.user(&user).await.ok().flatten(),
                Err(_) => None,
            };
            let id = match (&account, id) {
                (Some(a), _) => {
                    role = auth::Role::parse(&a.role).unwrap_or(role);
                    a.id.clone()
                }
                (None, Some(id)) => id,
                (None, None) => dev::user_id_for(&user),
            };
            let (token, _) = keys.mint(&id, &user, role, ttl)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// Creates the configured bootstrap owner when Redis has no user yet.
async fn bootstrap(store: &store::Store, config: &Config) -> anyhow::Result<()> {
    match (
        &config.accounts.bootstrap_owner,
        &config.accounts.bootstrap_password,
    ) {
        (Some(name), Some(password)) => {
            if gateway::bootstrap_owner(store, name, password).await? {
                tracing::info!(owner = %name, "bootstrap owner created");
            }
            Ok(())
        }
        (None, None) => Ok(()),
        _ => anyhow::bail!(
            "set both accounts.bootstrap_owner and accounts.bootstrap_password, or neither"
        ),
    }
}

async fn connect(config: &Config) -> anyhow::Result<store::Store> {
    store::Store::connect(config.store_config())
        .await
        .context("connecting to Redis")
}
