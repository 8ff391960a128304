//! The daemon's configuration, in layers, lowest first: built-in defaults, the config file
//! (`/etc/arroyod/arroyod.toml` when it exists, or `--config FILE`), `ARROYO_*` environment
//! variables, command-line flags. Unknown keys are errors; the result is validated once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default config file, read when it exists and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/arroyod/arroyod.toml";

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// No data dir can be chosen: no flag, variable, file entry, nor HOME.
    #[error("no data dir: pass --data-dir, set ARROYO_DATA_DIR or HOME")]
    NoDataDir,
    /// No socket can be chosen.
    #[error("choosing the default socket")]
    Socket(#[source] std::io::Error),
    /// `state_url` is not a local path nor a supported URL.
    #[error("state_url '{url}'")]
    StateUrl {
        url: String,
        #[source]
        source: arroyod_engine::storage::StorageError,
    },
    /// `checkpoint_interval` is not a duration such as `10s` or `500ms`.
    #[error("checkpoint_interval '{value}': {reason}")]
    CheckpointInterval { value: String, reason: String },
    /// `backup_url` is not a local path nor a `file://`, `s3://`, `gs://` or `az://` URL.
    #[error("backup_url '{url}'")]
    BackupUrl {
        url: String,
        #[source]
        source: arroyod_engine::storage::StorageError,
    },
}

/// The file's keys; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    log: Option<String>,
    backup_url: Option<String>,
    state_url: Option<String>,
    checkpoint_interval: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Config {
    /// Unix socket of the public API.
    pub socket: PathBuf,
    /// SQLite database, worker socket and local state.
    pub data_dir: PathBuf,
    /// Log filter (tracing-subscriber EnvFilter syntax); RUST_LOG overrides it.
    pub log: String,
    /// Where snapshots of the metadata database go: a local path or a `file://`, `s3://`,
    /// `gs://` or `az://` URL; none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_url: Option<String>,
    /// Where pipelines' checkpoints go, each under `<state_url>/<pipeline id>`: a local path
    /// or a `file://`, `s3://`, `gs://` or `az://` URL (default: `<data_dir>/state`).
    pub state_url: String,
    /// Default time between two checkpoints of a pipeline, such as `10s`.
    pub checkpoint_interval: String,
}

/// The default time between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: &str = "10s";

/// Parses a checkpoint interval (`10s`, `500ms`, `1m`); it must be above zero.
pub fn parse_interval(value: &str) -> Result<std::time::Duration, ConfigError> {
    let bad = |reason: String| ConfigError::CheckpointInterval {
        value: value.to_string(),
        reason,
    };
    let d = arroyod_engine::parse_duration(value).map_err(|e| bad(e.to_string()))?;
    if d.is_zero() {
        return Err(bad("must be above zero".into()));
    }
    Ok(d)
}

/// What the command line gives.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub backup_url: Option<String>,
    pub state_url: Option<String>,
    pub checkpoint_interval: Option<String>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The default data dir: `$XDG_STATE_HOME/arroyod`, else `$HOME/.local/state/arroyod`.
fn default_data_dir() -> Option<PathBuf> {
    env_path("XDG_STATE_HOME")
        .map(|d| d.join("arroyod"))
        .or_else(|| env_path("HOME").map(|h| h.join(".local/state/arroyod")))
}

impl Config {
    pub fn load(flags: &Overrides) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };
        let socket = flags
            .socket
            .clone()
            .or_else(|| env_path("ARROYO_SOCKET"))
            .or(file.socket);
        let socket = match socket {
            Some(s) => s,
            None => arroyod_proto::socket::default_socket().map_err(ConfigError::Socket)?,
        };
        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env_path("ARROYO_DATA_DIR"))
            .or(file.data_dir)
            .or_else(default_data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        let log = std::env::var("ARROYO_LOG")
            .ok()
            .filter(|l| !l.is_empty())
            .or(file.log)
            .unwrap_or_else(|| "info".to_string());
        let backup_url = flags
            .backup_url
            .clone()
            .or_else(|| std::env::var("ARROYO_BACKUP_URL").ok())
            .filter(|u| !u.is_empty())
            .or(file.backup_url);
        if let Some(url) = &backup_url {
            arroyod_engine::storage::Location::parse(url, vec![]).map_err(|source| {
                ConfigError::BackupUrl {
                    url: url.clone(),
                    source,
                }
            })?;
        }
        let state_url = flags
            .state_url
            .clone()
            .or_else(|| std::env::var("ARROYO_STATE_URL").ok())
            .filter(|u| !u.is_empty())
            .or(file.state_url)
            .unwrap_or_else(|| data_dir.join("state").display().to_string());
        arroyod_engine::storage::Location::parse(&state_url, vec![]).map_err(|source| {
            ConfigError::StateUrl {
                url: state_url.clone(),
                source,
            }
        })?;
        let checkpoint_interval = flags
            .checkpoint_interval
            .clone()
            .or_else(|| std::env::var("ARROYO_CHECKPOINT_INTERVAL").ok())
            .filter(|u| !u.is_empty())
            .or(file.checkpoint_interval)
            .unwrap_or_else(|| DEFAULT_CHECKPOINT_INTERVAL.to_string());
        parse_interval(&checkpoint_interval)?;
        Ok(Config {
            socket,
            data_dir,
            log,
            backup_url,
            state_url,
            checkpoint_interval,
        })
    }

    /// The checkpoint interval (validated by [`Config::load`]).
    pub fn checkpoint_interval(&self) -> std::time::Duration {
        parse_interval(&self.checkpoint_interval).unwrap_or(std::time::Duration::from_secs(10))
    }

    /// The effective configuration as TOML, for `arroyod config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "data_dir = \"/x\"\ncolour = \"red\"\n").unwrap();
        let err = Config::load(&Overrides {
            config: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("colour"), "{chain}");

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "data_dir = \"/from-file\"\nsocket = \"/s.sock\"\n").unwrap();
        let c = Config::load(&Overrides {
            config: Some(good),
            data_dir: Some("/from-flag".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.backup_url, None);
        assert!(!c.to_toml().contains("backup_url"));
    }

    #[test]
    fn backup_url_is_layered_validated_and_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "data_dir = \"/d\"\nsocket = \"/s.sock\"\nbackup_url = \"file:///from-file\"\n",
        )
        .unwrap();
        let from_file = Config::load(&Overrides {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        // ARROYO_BACKUP_URL may be set around the test; only assert the file's value without it.
        if std::env::var_os("ARROYO_BACKUP_URL").is_none() {
            assert_eq!(from_file.backup_url.as_deref(), Some("file:///from-file"));
            assert!(
                from_file
                    .to_toml()
                    .contains("backup_url = \"file:///from-file\""),
                "{}",
                from_file.to_toml()
            );
        }
        let from_flag = Config::load(&Overrides {
            config: Some(file.clone()),
            backup_url: Some("/from-flag".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_flag.backup_url.as_deref(), Some("/from-flag"));
        let err = Config::load(&Overrides {
            config: Some(file),
            backup_url: Some("ftp://host/x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::BackupUrl { .. }), "{err}");
        let chain = crate::api::error_chain(&err);
        assert!(chain.contains("unsupported scheme 'ftp'"), "{chain}");
    }

    #[test]
    fn state_url_and_checkpoint_interval_are_layered_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dir = \"/d\"\nsocket = \"/s.sock\"\n").unwrap();
        let load = |state_url: Option<&str>, interval: Option<&str>| {
            Config::load(&Overrides {
                config: Some(file.clone()),
                state_url: state_url.map(str::to_string),
                checkpoint_interval: interval.map(str::to_string),
                ..Default::default()
            })
        };
        // The environment may set these around the test; only assert defaults without it.
        if std::env::var_os("ARROYO_STATE_URL").is_none()
            && std::env::var_os("ARROYO_CHECKPOINT_INTERVAL").is_none()
        {
            let c = load(None, None).unwrap();
            assert_eq!(c.state_url, "/d/state");
            assert_eq!(c.checkpoint_interval(), std::time::Duration::from_secs(10));
        }
        let c = load(Some("s3://bucket/state"), Some("500ms")).unwrap();
        assert_eq!(c.state_url, "s3://bucket/state");
        assert_eq!(
            c.checkpoint_interval(),
            std::time::Duration::from_millis(500)
        );
        assert!(c.to_toml().contains("checkpoint_interval = \"500ms\""));
        for bad in ["0s", "soon"] {
            let err = load(None, Some(bad)).unwrap_err();
            assert!(
                matches!(err, ConfigError::CheckpointInterval { .. }),
                "{err}"
            );
        }
        let err = load(Some("ftp://host/x"), None).unwrap_err();
        assert!(matches!(err, ConfigError::StateUrl { .. }), "{err}");
    }
}
