//! `comfy-broker workflows ...`: seed and inspect the workflows stored in Redis (the files every
//! gateway serves through the userdata API).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use store::workflows::{Limits, Space, WorkflowError};
use store::Store;

/// Which space a command works on.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The global workflows (read by every user, written by admins).
    #[arg(long)]
    global: bool,
    /// A user's own workflows, by account name.
    #[arg(long)]
    user: Option<String>,
    /// A user's own workflows, by user id (for users known only from their tokens).
    #[arg(long)]
    user_id: Option<String>,
}

/// Workflow operations.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Import every `.json` file under DIR (recursively) as `workflows/<path relative to DIR>`.
    Import {
        /// Directory to read, e.g. a ComfyUI `user/default/workflows` folder.
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Keep files that already exist instead of replacing them.
        #[arg(long)]
        skip_existing: bool,
    },
    /// List the stored workflows (path, size).
    List {
        #[command(flatten)]
        target: Target,
    },
}

async fn user_id(store: &Store, target: &Target) -> anyhow::Result<Option<String>> {
    if target.global {
        return Ok(None);
    }
    if let Some(id) = &target.user_id {
        return Ok(Some(id.clone()));
    }
    let name = target
        .user
        .as_deref()
        .context("--global, --user or --user-id")?;
    match store.user(name).await? {
        Some(u) => Ok(Some(u.id)),
        None => bail!("no user named {name:?} (use --user-id for token-only users)"),
    }
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            json_files(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Runs a `workflows` subcommand.
pub async fn run(store: &Store, limits: Limits, cmd: WorkflowsCommand) -> anyhow::Result<()> {
    match cmd {
        WorkflowsCommand::Import {
            dir,
            target,
            skip_existing,
        } => {
            let uid = user_id(store, &target).await?;
            let space = uid.as_deref().map(Space::User).unwrap_or(Space::Global);
            let mut files = Vec::new();
            json_files(&dir, &mut files)?;
            files.sort();
            let (mut imported, mut kept, mut refused) = (0, 0, 0);
            for file in files {
                let rel = file.strip_prefix(&dir).unwrap_or(&file);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let path = format!("workflows/{}", rel.join("/"));
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                match store
                    .workflow_put(space, &path, &bytes, !skip_existing, &limits)
                    .await
                {
                    Ok(_) => {
                        imported += 1;
                        println!("imported {path}");
                    }
                    Err(WorkflowError::Exists) => {
                        kept += 1;
                        println!("kept existing {path}");
                    }
                    Err(WorkflowError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        refused += 1;
                        eprintln!("refused {}: {e}", file.display());
                    }
                }
            }
            println!("{imported} imported, {kept} kept, {refused} refused");
            if refused > 0 {
                bail!("{refused} files were refused");
            }
            Ok(())
        }
        WorkflowsCommand::List { target } => {
            let uid = user_id(store, &target).await?;
            let space = uid.as_deref().map(Space::User).unwrap_or(Space::Global);
            for f in store.workflow_list(space, "").await? {
                println!("{}\t{}", f.path, f.size);
            }
            Ok(())
        }
    }
}
