//! The one typed configuration: defaults, overridden by a TOML file (`--config` or
//! `COMFY_BROKER_CONFIG`), overridden by environment variables `COMFY_BROKER__SECTION__KEY`,
//! overridden by command-line flags. Unknown keys are rejected; values are checked at start-up.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything a `comfy-broker` process can be told.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis connection and retention (`[redis]`).
    pub redis: store::StoreConfig,
    /// Session JWT settings (`[auth]`).
    pub auth: auth::JwtConfig,
    /// The HTTP/WebSocket tier (`[gateway]`).
    pub gateway: gateway::GatewayConfig,
    /// The backend drivers (`[worker]`).
    pub worker: worker::WorkerConfig,
    /// Where outputs and uploads live, and for how long (`[files]`).
    pub files: files::FilesConfig,
    /// Accounts (`[accounts]`).
    pub accounts: AccountsConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// Prometheus metrics (`[metrics]`).
    pub metrics: crate::telemetry::MetricsConfig,
}

/// Accounts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Name of the owner created on first start, when Redis has no user yet.
    pub bootstrap_owner: Option<String>,
    /// That owner's password (give it through `COMFY_BROKER__ACCOUNTS__BOOTSTRAP_PASSWORD`).
    pub bootstrap_password: Option<String>,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info,gateway=debug` (`RUST_LOG` wins when set).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Environment variable prefix of overrides (`COMFY_BROKER__REDIS__URL=...`).
pub const ENV_PREFIX: &str = "COMFY_BROKER__";

impl Config {
    /// Loads defaults ← file ← environment, then applies `REDIS_URL` (when the config did not
    /// set `redis.url` explicitly through `COMFY_BROKER__REDIS__URL`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("COMFY_BROKER_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            if !url.is_empty() {
                fig = fig.merge(Serialized::default("redis.url", url));
            }
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let config: Config = fig.extract().context("invalid configuration")?;
        Ok(config)
    }

    /// Start-up checks shared by every subcommand.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.redis.url.starts_with("redis://")
            || self.redis.url.starts_with("rediss://")
            || self.redis.url.starts_with("unix://")
            || self.redis.url.starts_with("redis+unix://"))
        {
            bail!("redis.url must be a redis://, rediss:// or unix:// URL");
        }
        if self.redis.key_prefix.is_empty()
            || !self
                .redis
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("redis.key_prefix must be non-empty letters, digits, '-' or '_'");
        }
        if self.redis.history_max_items == 0 {
            bail!("redis.history_max_items must be at least 1");
        }
        if let Err(e) = self.files.validate() {
            bail!("{e}");
        }
        self.metrics.validate()?;
        // Checked here too, not only when a gateway starts, so `comfy-broker config` and every
        // process refuse a bad gateway section before doing anything.
        if let Err(e) = self.gateway.validate() {
            bail!("{e}");
        }
        Ok(())
    }

    /// The configuration as TOML with secrets replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let mut c = self.clone();
        if !c.auth.secret.is_empty() {
            c.auth.secret = "<redacted>".into();
        }
        if !c.redis.secrets_key.is_empty() {
            c.redis.secrets_key = "<redacted>".into();
        }
        if c.accounts.bootstrap_password.is_some() {
            c.accounts.bootstrap_password = Some("<redacted>".into());
        }
        c.redis.url = redact_url_password(&c.redis.url);
        if !c.files.s3_secret_access_key.is_empty() {
            c.files.s3_secret_access_key = "<redacted>".into();
        }
        for b in &mut c.worker.backends {
            b.url = redact_url_password(&b.url);
            for v in b.headers.values_mut() {
                *v = "<redacted>".into();
            }
        }
        Ok(toml::to_string_pretty(&c)?)
    }

    /// The store settings, with `redis.secrets_key` falling back to `auth.secret` so a
    /// deployment that set one shared secret seals `extra_data` secrets without more set-up.
    pub fn store_config(&self) -> store::StoreConfig {
        let mut c = self.redis.clone();
        if c.secrets_key.is_empty() {
            c.secrets_key = self.auth.secret.clone();
        }
        c
    }

    /// Checks needed by processes that verify or mint tokens.
    pub fn validate_auth(&self) -> anyhow::Result<()> {
        match self.auth.algorithm {
            auth::JwtAlgorithm::HS256 if self.auth.secret.len() < 32 => {
                bail!("auth.secret (COMFY_BROKER__AUTH__SECRET) must be set to at least 32 bytes")
            }
            auth::JwtAlgorithm::RS256 | auth::JwtAlgorithm::EdDSA
                if self.auth.public_key_file.is_none() =>
            {
                bail!("auth.public_key_file is required with auth.algorithm RS256 or EdDSA")
            }
            _ => Ok(()),
        }
    }
}

/// `url` with its password (if any) replaced, for printing.
fn redact_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[redis]\nurll = \"redis://x\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("urll"), "{err}");
        std::fs::write(&p, "[nope]\na = 1\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        let doc: toml::Value =
            toml::from_str(&Config::default().to_redacted_toml().unwrap()).unwrap();
        let mut missing = Vec::new();
        for (section, table) in doc.as_table().unwrap() {
            for key in table.as_table().unwrap().keys() {
                let name = format!("`{section}.{key}`");
                if !readme.contains(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "README lacks {missing:?}");
    }

    #[test]
    fn redacted_output_hides_secrets_and_reads_back() {
        let mut c = Config::default();
        c.auth.secret = "super-secret-super-secret-super-secret".into();
        c.redis.url = "redis://:hunter2@localhost:6379".into();
        c.files.s3_secret_access_key = "s3-hunter3".into();
        c.worker.backends.push(worker::BackendConfig {
            url: "http://u:BackendPw4@gpu-1:8188".into(),
            ..worker::BackendConfig::default()
        });
        let text = c.to_redacted_toml().unwrap();
        assert!(
            !text.contains("super-secret")
                && !text.contains("hunter2")
                && !text.contains("hunter3")
                && !text.contains("BackendPw4")
                && text.contains("gpu-1:8188"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, &text).unwrap();
        assert!(Config::load(Some(&p)).is_ok());
    }

    #[test]
    fn file_values_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[redis]\nkey_prefix = \"bad prefix\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.redis.key_prefix, "bad prefix");
        assert!(c.validate().is_err());
    }
}
