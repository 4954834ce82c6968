//! Stored credentials: the broker URL and an API token, in the user's config directory
//! (`$XDG_CONFIG_HOME/comfy-broker/credentials.json` on Linux), readable by the owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// The stored login.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// Base URL of the broker, e.g. `https://broker.example.com`.
    pub url: String,
    /// The API token (opaque) or session JWT.
    pub token: String,
    /// Who logged in (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("username", &self.username)
            .finish()
    }
}

/// `<config dir>/comfy-broker/credentials.json`, or `None` when the platform has no config dir.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("comfy-broker").join("credentials.json"))
}

/// Reads the credentials at `path`; `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<Credentials>, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::io(path, e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        ClientError::Usage(format!(
            "{}: not a valid credentials file ({e}); run `comfy-broker login` again",
            path.display()
        ))
    })
}

/// Writes `creds` to `path` atomically. The file is created with mode 0600 from the start (a
/// temporary file in the same directory, then renamed), and a missing directory with 0700, so
/// the token is never readable by others, not even briefly.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), ClientError> {
    let dir = path
        .parent()
        .ok_or_else(|| ClientError::Usage(format!("{}: no parent directory", path.display())))?;
    create_private_dir(dir).map_err(|e| ClientError::io(dir, e))?;
    let body = serde_json::to_vec_pretty(creds)
        .map_err(|e| ClientError::Usage(format!("serialising credentials: {e}")))?;
    let tmp = dir.join(format!(
        ".credentials.json.{}.{}.tmp",
        std::process::id(),
        protocol::ids::new_sid()
    ));
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ClientError::io(path, e));
    }
    Ok(())
}

/// Deletes the credentials file; `Ok(false)` when there was none.
pub fn remove(path: &Path) -> Result<bool, ClientError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ClientError::io(path, e)),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            url: "http://127.0.0.1:8190".into(),
            token: "q3Zr0x-7M2aV9_kLp1sT4uWbYcD8eF6gHiJkLmNoPqR".into(),
            username: Some("alice".into()),
        }
    }

    #[cfg(unix)]
    #[test]
    fn credentials_file_is_owner_only_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("cfg")
            .join("comfy-broker")
            .join("credentials.json");
        // A permissive umask must not matter: the mode is given at creation.
        save(&path, &sample()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&path).unwrap(), Some(sample()));
        // Overwriting keeps 0600 and leaves no temporary file behind.
        let mut other = sample();
        other.token = "another".into();
        save(&path, &other).unwrap();
        assert_eq!(load(&path).unwrap(), Some(other));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("credentials.json")]);
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("q3Zr0x"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn a_corrupt_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path).unwrap_err().exit_code(), 2);
    }
}
