//! Operator commands that work directly on Redis: users, API tokens, dead letters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;
use store::{ApiTokenInfo, CreateUser, NewUser, Store};

/// `comfy-broker user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (the password is read from stdin when `--password` is absent).
    Add {
        /// User name (letters, digits, `_`; at least 3).
        name: String,
        /// Role: owner, admin, power, user or guest.
        #[arg(long, default_value = "user")]
        role: String,
        /// Password (prefer stdin, so it stays out of shell history).
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Change a user's role.
    SetRole {
        /// User name.
        name: String,
        /// New role.
        role: String,
    },
    /// Change a user's password (read from stdin when `--password` is absent).
    SetPassword {
        /// User name.
        name: String,
        /// New password.
        #[arg(long)]
        password: Option<String>,
    },
    /// Disable a user: every token and session of theirs stops working.
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// User name.
        name: String,
    },
    /// Set a user's own limits (over the role's): `--max-queued` pending jobs, `--max-running`
    /// jobs at once; a number (0: no limit) or `default` to fall back to the role's.
    SetLimits {
        /// User name.
        name: String,
        /// Most pending jobs.
        #[arg(long)]
        max_queued: Option<String>,
        /// Most running jobs.
        #[arg(long)]
        max_running: Option<String>,
    },
    /// Delete a user and their API tokens.
    Delete {
        /// User name.
        name: String,
    },
}

/// `comfy-broker jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List dead letters: jobs that ran out of attempts.
    Dead {
        /// Pool.
        #[arg(long, default_value = "default")]
        pool: String,
        /// How many (newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Requeue a dead letter by its id (from `jobs dead`).
    Retry {
        /// Dead-letter id.
        id: String,
        /// Pool.
        #[arg(long, default_value = "default")]
        pool: String,
    },
}

fn read_password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn role(s: &str) -> anyhow::Result<auth::Role> {
    auth::Role::parse(s)
        .with_context(|| format!("unknown role {s:?}: owner, admin, power, user or guest"))
}

/// Runs a `user` command.
pub async fn user(store: &Store, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            role: r,
            password,
        } => {
            auth::check_username(&name).map_err(anyhow::Error::msg)?;
            let r = role(&r)?;
            let password = read_password(password)?;
            auth::check_new_password(&password).map_err(anyhow::Error::msg)?;
            let new = NewUser {
                username: name.clone(),
                password_hash: auth::hash_password(&password)?,
                role: r.as_str().to_owned(),
            };
            match store.create_user(&new).await? {
                CreateUser::Created(u) => {
                    println!("created {} ({}), id {}", u.username, u.role, u.id)
                }
                CreateUser::Exists => bail!("user {name} exists"),
            }
        }
        UserCommand::List => {
            println!(
                "{:<24} {:<7} {:<9} {:<9} {:<10} {:<11} id",
                "name", "role", "disabled", "sfw_check", "max_queued", "max_running"
            );
            let limit = |v: Option<u32>| v.map_or_else(|| "role".to_owned(), |n| n.to_string());
            for u in store.users().await? {
                println!(
                    "{:<24} {:<7} {:<9} {:<9} {:<10} {:<11} {}",
                    u.username,
                    u.role,
                    u.disabled,
                    u.sfw_check,
                    limit(u.max_queued),
                    limit(u.max_running),
                    u.id
                );
            }
        }
        UserCommand::SetRole { name, role: r } => {
            let r = role(&r)?;
            update(store, &name, &[("role", r.as_str().to_owned())]).await?;
        }
        UserCommand::SetPassword { name, password } => {
            let password = read_password(password)?;
            auth::check_new_password(&password).map_err(anyhow::Error::msg)?;
            update(store, &name, &[("hash", auth::hash_password(&password)?)]).await?;
        }
        UserCommand::SetLimits {
            name,
            max_queued,
            max_running,
        } => {
            let mut fields = Vec::new();
            for (key, v) in [("max_queued", max_queued), ("max_running", max_running)] {
                match v.as_deref() {
                    None => {}
                    // An empty field reads back as "no override".
                    Some("default") => fields.push((key, String::new())),
                    Some(n) => {
                        let n: u32 = n
                            .parse()
                            .map_err(|_| anyhow::anyhow!("--{key}: a number or `default`"))?;
                        fields.push((key, n.to_string()));
                    }
                }
            }
            if fields.is_empty() {
                bail!("give --max-queued and/or --max-running");
            }
            update(store, &name, &fields).await?;
        }
        UserCommand::Disable { name } => update(store, &name, &[("disabled", "1".into())]).await?,
        UserCommand::Enable { name } => update(store, &name, &[("disabled", "0".into())]).await?,
        UserCommand::Delete { name } => {
            if !store.delete_user(&name).await? {
                bail!("no user {name}");
            }
            println!("deleted {name}");
        }
    }
    Ok(())
}

async fn update(store: &Store, name: &str, fields: &[(&str, String)]) -> anyhow::Result<()> {
    if !store.update_user(name, fields).await? {
        bail!("no user {name}");
    }
    println!("updated {name}");
    Ok(())
}

/// Mints an API token for a user and prints it once.
pub async fn create_api_token(
    store: &Store,
    username: &str,
    ttl: Option<Duration>,
    label: &str,
) -> anyhow::Result<()> {
    let user = store
        .user(username)
        .await?
        .with_context(|| format!("no user {username}"))?;
    let (raw, hash) = auth::generate_api_token();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    store
        .create_api_token(&ApiTokenInfo {
            hash,
            user_id: user.id,
            username: user.username,
            label: label
                .chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect(),
            created_ms: now,
            expires_ms: ttl.map(|t| now + t.as_millis() as i64),
            last_used_ms: None,
        })
        .await?;
    println!("{raw}");
    Ok(())
}

/// Runs a `jobs` command.
pub async fn jobs(store: &Store, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Dead { pool, limit } => {
            println!(
                "{:<17} {:<38} {:<38} {:>8}  reason",
                "id", "user", "prompt", "attempts"
            );
            for d in store.dead_letters(&pool, limit).await? {
                println!(
                    "{:<17} {:<38} {:<38} {:>8}  {}",
                    d.id, d.user_id, d.prompt_id, d.attempts, d.reason
                );
            }
        }
        JobsCommand::Retry { id, pool } => match store.retry_dead(&pool, &id).await? {
            Some((user, prompt)) => println!("requeued {prompt} of {user}"),
            None => bail!("no dead letter {id} in pool {pool} (or its job is gone)"),
        },
    }
    Ok(())
}
