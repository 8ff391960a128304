//! Typed settings, loaded once. `arroyod serve` reads them in layers, lowest first: built-in
//! defaults, the config file (`/etc/arroyod/arroyod.toml` when it exists, or `--config FILE`),
//! `ARROYO_*` environment variables, command-line flags. `arroyod run` reads the same minus the
//! file, its state dir standing for the data dir. Unknown keys are errors; every value is
//! parsed and checked here, once: durations become [`Duration`]s (humantime syntax: `10s`,
//! `500ms`, `2m`), locations absolute [`StorageUrl`]s, so nothing downstream parses again or
//! falls back silently.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::{Policy, PolicyError};
use crate::engine::{LocationError, StorageUrl, absolute_path, fnv1a64};

/// The default config file, read when it exists and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/arroyod/arroyod.toml";

/// Errors of loading the settings: each names the key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
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
    /// A location key (`state_url`, `backup_url`) is not a local path nor a supported URL.
    #[error("{key} '{value}'")]
    Location {
        key: &'static str,
        value: String,
        #[source]
        source: LocationError,
    },
    /// A duration key is not a duration such as `10s` or `500ms`, or is zero.
    #[error("{key} '{value}': {reason}")]
    Duration {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A number key is not a whole number in its range.
    #[error("{key} '{value}': {reason}")]
    Number {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// `metrics_addr` is not a loopback `HOST:PORT` nor `unix:PATH`.
    #[error("metrics_addr '{value}': {reason}")]
    MetricsAddr { value: String, reason: String },
    /// `log_format` is not `text` nor `json`.
    #[error("log_format '{0}': use text or json")]
    LogFormat(String),
    /// `allowed_group` or `allowed_paths` cannot be used.
    #[error(transparent)]
    Access(#[from] PolicyError),
}

/// When a crashed worker is restarted, and how often before its pipeline fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window`; one more fails the pipeline.
    pub budget: u32,
    pub window: Duration,
    /// The first restart's delay; each further restart in the window doubles it.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            budget: 5,
            window: Duration::from_secs(600),
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What the controller gives every pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSettings {
    /// Pipelines' checkpoints go under it; each pipeline's location is stored relative to it.
    pub state_root: StorageUrl,
    /// The default time between checkpoints.
    pub checkpoint_interval: Duration,
    /// The largest parallelism a pipeline may ask for.
    pub max_parallelism: u32,
    /// Bytes of rows the output log of one pipeline holds on disk; the oldest go first.
    pub output_log_bytes: u64,
    /// Each pipeline's output log is under `<output_root>/<id>`.
    pub output_root: PathBuf,
    /// The output log drops no row its one reader has not read: the pipeline waits for the
    /// reader instead (`arroyod run`, whose printer must print every row).
    pub output_held: bool,
    pub restarts: RestartPolicy,
    /// How long a stop may take before the worker is killed.
    pub stop_timeout: Duration,
    /// Who may call, and what each one's pipelines may reach.
    pub access: Policy,
}

/// Where the metadata comes from at start when `backup_url` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataRestore {
    /// Only when the data dir has no database (the daemon: its local database is the truth).
    WhenMissing,
    /// Always, the newest snapshot replacing the local copy (`arroyod run -s URL`: the remote
    /// state dir is the truth, the local database a cache).
    Always,
}

/// Where the Prometheus metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A loopback address and port: readable by every local user.
    Tcp(std::net::SocketAddr),
    /// A Unix socket (mode 0660).
    Unix(PathBuf),
}

impl MetricsAddr {
    /// `HOST:PORT` with a loopback host (`127.0.0.1`, `[::1]`, `localhost`), or `unix:PATH`.
    pub fn parse(value: &str) -> Result<MetricsAddr, SettingsError> {
        let bad = |reason: &str| SettingsError::MetricsAddr {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a path"));
            }
            return Ok(MetricsAddr::Unix(absolute(PathBuf::from(path))));
        }
        let value = value.trim();
        let addr = match value.rsplit_once(':') {
            Some(("localhost", port)) => format!("127.0.0.1:{port}"),
            _ => value.to_string(),
        };
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| bad("a loopback HOST:PORT (such as 127.0.0.1:9464) or unix:PATH"))?;
        if !addr.ip().is_loopback() {
            return Err(bad(
                "only a loopback address is allowed: the metrics have no authentication",
            ));
        }
        Ok(MetricsAddr::Tcp(addr))
    }
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text lines; without timestamps and with syslog level prefixes when stderr is the
    /// journal.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn parse(value: &str) -> Result<LogFormat, SettingsError> {
        match value.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(SettingsError::LogFormat(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The settings of one `arroyod serve` or `arroyod run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The public API's socket; none for `arroyod run`.
    pub socket: Option<PathBuf>,
    /// SQLite database, worker socket and (by default) state; absolute.
    pub data_dir: PathBuf,
    /// Log filter (tracing-subscriber EnvFilter syntax); RUST_LOG overrides it.
    pub log: String,
    pub log_format: LogFormat,
    /// Where Prometheus metrics are served; None: nowhere.
    pub metrics_addr: Option<MetricsAddr>,
    /// Where snapshots of the metadata database go.
    pub backup_url: Option<StorageUrl>,
    pub restore: MetadataRestore,
    pub controller: ControllerSettings,
}

/// The default time between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// The default largest parallelism.
pub const DEFAULT_MAX_PARALLELISM: u32 = 64;
/// The default bytes of a pipeline's output log.
pub const DEFAULT_OUTPUT_LOG_BYTES: u64 = 64 << 20;
/// The default time a stop may take.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

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
    max_parallelism: Option<Scalar>,
    output_log_bytes: Option<Scalar>,
    /// The old name of `output_log_bytes`.
    tail_buffer_bytes: Option<Scalar>,
    metrics_addr: Option<String>,
    log_format: Option<String>,
    restart_budget: Option<Scalar>,
    restart_window: Option<String>,
    restart_backoff: Option<String>,
    stop_timeout: Option<String>,
    allowed_group: Option<String>,
    allowed_paths: Option<Vec<PathBuf>>,
}

/// A number key as the file gives it: `64` or `"64"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

/// What the command line of `arroyod serve` gives.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub backup_url: Option<String>,
    pub state_url: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub metrics_addr: Option<String>,
    pub log_format: Option<String>,
}

/// What the command line of `arroyod run` gives.
#[derive(Debug, Default, Clone)]
pub struct RunOverrides {
    /// The state dir or URL; none: a new directory under `$TMPDIR/arroyod`.
    pub state: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub metrics_addr: Option<String>,
    pub log_format: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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

fn absolute(path: PathBuf) -> PathBuf {
    absolute_path(&path)
}

/// Parses a duration key: humantime syntax, above zero.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, SettingsError> {
    let bad = |reason: String| SettingsError::Duration {
        key,
        value: value.to_string(),
        reason,
    };
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| bad(format!("{e} (a duration such as '10s' or '500ms')")))?;
    if d.is_zero() {
        return Err(bad("must be above zero".into()));
    }
    Ok(d)
}

fn parse_number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: &str,
    min: T,
) -> Result<T, SettingsError> {
    let bad = |reason: String| SettingsError::Number {
        key,
        value: value.to_string(),
        reason,
    };
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| bad("not a whole number".into()))?;
    if n < min {
        return Err(bad(format!("must be at least {min}")));
    }
    Ok(n)
}

fn location(key: &'static str, value: &str) -> Result<StorageUrl, SettingsError> {
    StorageUrl::parse(value).map_err(|source| SettingsError::Location {
        key,
        value: value.to_string(),
        source,
    })
}

/// The controller's keys, each from the first layer that has it.
struct ControllerKeys {
    checkpoint_interval: Option<String>,
    max_parallelism: Option<String>,
    output_log_bytes: Option<String>,
    restart_budget: Option<String>,
    restart_window: Option<String>,
    restart_backoff: Option<String>,
    stop_timeout: Option<String>,
}

impl ControllerKeys {
    /// The environment over `file`; a flag given for the interval wins over both.
    fn layered(file: &FileConfig, interval_flag: Option<String>) -> ControllerKeys {
        let pick = |var: &str, from_file: &Option<String>| env(var).or(from_file.clone());
        let number = |var: &str, from_file: &Option<Scalar>| {
            env(var).or(from_file.as_ref().map(Scalar::text))
        };
        ControllerKeys {
            checkpoint_interval: interval_flag
                .or_else(|| pick("ARROYO_CHECKPOINT_INTERVAL", &file.checkpoint_interval)),
            max_parallelism: number("ARROYO_MAX_PARALLELISM", &file.max_parallelism),
            output_log_bytes: number("ARROYO_OUTPUT_LOG_BYTES", &file.output_log_bytes)
                .or_else(|| number("ARROYO_TAIL_BUFFER_BYTES", &file.tail_buffer_bytes)),
            restart_budget: number("ARROYO_RESTART_BUDGET", &file.restart_budget),
            restart_window: pick("ARROYO_RESTART_WINDOW", &file.restart_window),
            restart_backoff: pick("ARROYO_RESTART_BACKOFF", &file.restart_backoff),
            stop_timeout: pick("ARROYO_STOP_TIMEOUT", &file.stop_timeout),
        }
    }

    fn build(
        self,
        state_root: StorageUrl,
        data_dir: &Path,
    ) -> Result<ControllerSettings, SettingsError> {
        let duration = |key, value: Option<String>, default| match value {
            Some(v) => parse_duration(key, &v),
            None => Ok(default),
        };
        let defaults = RestartPolicy::default();
        let backoff = duration("restart_backoff", self.restart_backoff, defaults.backoff)?;
        Ok(ControllerSettings {
            state_root,
            checkpoint_interval: duration(
                "checkpoint_interval",
                self.checkpoint_interval,
                DEFAULT_CHECKPOINT_INTERVAL,
            )?,
            max_parallelism: match self.max_parallelism {
                Some(v) => parse_number("max_parallelism", &v, 1)?,
                None => DEFAULT_MAX_PARALLELISM,
            },
            output_log_bytes: match self.output_log_bytes {
                Some(v) => parse_number("output_log_bytes", &v, 1024)?,
                None => DEFAULT_OUTPUT_LOG_BYTES,
            },
            output_held: false,
            output_root: data_dir.join("output"),
            restarts: RestartPolicy {
                budget: match self.restart_budget {
                    Some(v) => parse_number("restart_budget", &v, 0)?,
                    None => defaults.budget,
                },
                window: duration("restart_window", self.restart_window, defaults.window)?,
                backoff,
                backoff_max: defaults.backoff_max.max(backoff),
            },
            stop_timeout: duration("stop_timeout", self.stop_timeout, DEFAULT_STOP_TIMEOUT)?,
            access: Policy::default(),
        })
    }
}

/// The access policy: `allowed_group` and `allowed_paths` from the environment over the
/// file; the daemon's own files (`own`, plus a local state root) denied to every pipeline.
fn access_policy(
    file: &FileConfig,
    own: &[&Path],
    state_root: &StorageUrl,
) -> Result<Policy, SettingsError> {
    let group = env("ARROYO_ALLOWED_GROUP").or(file.allowed_group.clone());
    let allowed = match std::env::var_os("ARROYO_ALLOWED_PATHS") {
        Some(list) => std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => file.allowed_paths.clone().unwrap_or_default(),
    };
    let own = own.iter().map(|p| p.to_path_buf());
    Ok(Policy::new(
        group,
        allowed,
        own.chain(state_root.local_path()).collect(),
    )?)
}

impl Settings {
    /// The settings of `arroyod serve`.
    pub fn load(flags: &Overrides) -> Result<Settings, SettingsError> {
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
            .or(file.socket.clone());
        let socket = match socket {
            Some(s) => absolute(s),
            None => arroyod_proto::socket::default_socket().map_err(SettingsError::Socket)?,
        };
        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env_path("ARROYO_DATA_DIR"))
            .or(file.data_dir.clone())
            .or_else(default_data_dir)
            .map(absolute)
            .ok_or(SettingsError::NoDataDir)?;
        let log = env("ARROYO_LOG")
            .or(file.log.clone())
            .unwrap_or_else(|| "info".to_string());
        let log_format = log_format(flags.log_format.clone(), file.log_format.clone())?;
        let metrics_addr = metrics_addr(flags.metrics_addr.clone(), file.metrics_addr.clone())?;
        let backup_url = flags
            .backup_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| env("ARROYO_BACKUP_URL"))
            .or(file.backup_url.clone())
            .map(|u| location("backup_url", &u))
            .transpose()?;
        let state_root = match flags
            .state_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| env("ARROYO_STATE_URL"))
            .or(file.state_url.clone())
        {
            Some(url) => location("state_url", &url)?,
            None => location("state_url", &data_dir.join("state").display().to_string())?,
        };
        let mut controller = ControllerKeys::layered(&file, flags.checkpoint_interval.clone())
            .build(state_root, &data_dir)?;
        let backup_dir = backup_url.as_ref().and_then(StorageUrl::local_path);
        let mut own = vec![data_dir.as_path(), socket.as_path()];
        own.extend(backup_dir.as_deref());
        controller.access = access_policy(&file, &own, &controller.state_root)?;
        Ok(Settings {
            socket: Some(socket),
            data_dir,
            log,
            log_format,
            metrics_addr,
            backup_url,
            restore: MetadataRestore::WhenMissing,
            controller,
        })
    }

    /// The settings of `arroyod run`: the state dir is the data dir (its checkpoints under
    /// `state/`); a remote state URL keeps checkpoints and metadata snapshots there, with the
    /// database in a local cache dir named after the URL.
    pub fn for_run(flags: &RunOverrides) -> Result<Settings, SettingsError> {
        let temp = std::env::temp_dir().join("arroyod");
        let (data_dir, state_root, backup_url) = match flags.state.as_deref() {
            Some(url) if url.contains("://") && !url.starts_with("file://") => {
                let remote = location("state_dir", url)?;
                let hash = fnv1a64(remote.as_str().as_bytes());
                let cache = temp.join(format!("remote-{hash:016x}"));
                (cache, remote.clone(), Some(remote))
            }
            Some(dir) => {
                let dir = absolute(PathBuf::from(dir.strip_prefix("file://").unwrap_or(dir)));
                let root = location("state_dir", &dir.join("state").display().to_string())?;
                (dir, root, None)
            }
            None => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let dir = temp.join(format!("run-{stamp}"));
                let root = location("state_dir", &dir.join("state").display().to_string())?;
                (dir, root, None)
            }
        };
        let mut controller =
            ControllerKeys::layered(&FileConfig::default(), flags.checkpoint_interval.clone())
                .build(state_root, &data_dir)?;
        // stdout applies backpressure: no row is dropped for a slow reader.
        controller.output_held = true;
        controller.access = access_policy(
            &FileConfig::default(),
            &[data_dir.as_path()],
            &controller.state_root,
        )?;
        Ok(Settings {
            socket: None,
            data_dir,
            log: "warn".to_string(),
            log_format: log_format(flags.log_format.clone(), None)?,
            metrics_addr: metrics_addr(flags.metrics_addr.clone(), None)?,
            backup_url,
            restore: MetadataRestore::Always,
            controller,
        })
    }

    /// The effective settings as TOML, for `arroyod config`.
    pub fn to_toml(&self) -> String {
        let c = &self.controller;
        let shown = Shown {
            socket: self.socket.as_ref().map(|s| s.display().to_string()),
            data_dir: self.data_dir.display().to_string(),
            log: self.log.clone(),
            log_format: self.log_format.as_str().to_string(),
            metrics_addr: self.metrics_addr.as_ref().map(|a| a.to_string()),
            backup_url: self.backup_url.as_ref().map(|u| u.to_string()),
            state_url: c.state_root.to_string(),
            checkpoint_interval: humantime::format_duration(c.checkpoint_interval).to_string(),
            max_parallelism: c.max_parallelism,
            output_log_bytes: c.output_log_bytes,
            restart_budget: c.restarts.budget,
            restart_window: humantime::format_duration(c.restarts.window).to_string(),
            restart_backoff: humantime::format_duration(c.restarts.backoff).to_string(),
            stop_timeout: humantime::format_duration(c.stop_timeout).to_string(),
            allowed_group: c
                .access
                .allowed_group
                .as_ref()
                .map(|(name, _)| name.clone()),
            allowed_paths: c
                .access
                .allowed_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        };
        toml::to_string(&shown).unwrap_or_default()
    }
}

/// The settings as `arroyod config` prints them, in the config file's keys.
#[derive(Serialize)]
struct Shown {
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<String>,
    data_dir: String,
    log: String,
    log_format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_url: Option<String>,
    state_url: String,
    checkpoint_interval: String,
    max_parallelism: u32,
    output_log_bytes: u64,
    restart_budget: u32,
    restart_window: String,
    restart_backoff: String,
    stop_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_group: Option<String>,
    allowed_paths: Vec<String>,
}

/// Parses a size such as `512MiB`, `2GB` or `1048576` (bytes), above zero.
pub fn parse_bytes(key: &'static str, value: &str) -> Result<u64, SettingsError> {
    let bad = |reason: String| SettingsError::Number {
        key,
        value: value.to_string(),
        reason,
    };
    let size: bytesize::ByteSize = value
        .trim()
        .parse()
        .map_err(|e| bad(format!("{e} (a size such as 512MiB, 2GB or 1048576)")))?;
    if size.as_u64() == 0 {
        return Err(bad("must be above zero".into()));
    }
    Ok(size.as_u64())
}

/// `log_format`: the flag, else `ARROYO_LOG_FORMAT`, else the file, else text. `arroyod run`
/// asks for it (with no file) before its other settings, to log from the start.
pub fn log_format(flag: Option<String>, file: Option<String>) -> Result<LogFormat, SettingsError> {
    match flag.or_else(|| env("ARROYO_LOG_FORMAT")).or(file) {
        Some(v) => LogFormat::parse(&v),
        None => Ok(LogFormat::Text),
    }
}

/// `metrics_addr`: the flag, else `ARROYO_METRICS_ADDR`, else the file; none when unset or
/// empty.
fn metrics_addr(
    flag: Option<String>,
    file: Option<String>,
) -> Result<Option<MetricsAddr>, SettingsError> {
    flag.or_else(|| env("ARROYO_METRICS_ADDR"))
        .or(file)
        .filter(|v| !v.trim().is_empty())
        .map(|v| MetricsAddr::parse(&v))
        .transpose()
}

fn read_file(path: &Path) -> Result<FileConfig, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error_chain;

    /// True when none of `vars` is set around the test (then defaults can be asserted).
    fn unset(vars: &[&str]) -> bool {
        vars.iter().all(|v| std::env::var_os(v).is_none())
    }

    #[test]
    fn unknown_keys_are_errors_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "data_dir = \"/x\"\ncolour = \"red\"\n").unwrap();
        let err = Settings::load(&Overrides {
            config: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            error_chain(&err).contains("colour"),
            "{}",
            error_chain(&err)
        );

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "data_dir = \"/from-file\"\nsocket = \"/s.sock\"\n").unwrap();
        let s = Settings::load(&Overrides {
            config: Some(good),
            data_dir: Some("/from-flag".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from-flag"));
        if unset(&["ARROYO_BACKUP_URL"]) {
            assert_eq!(s.backup_url, None);
            assert!(!s.to_toml().contains("backup_url"));
        }
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
        let load = |flag: Option<&str>| {
            Settings::load(&Overrides {
                config: Some(file.clone()),
                backup_url: flag.map(str::to_string),
                ..Default::default()
            })
        };
        if unset(&["ARROYO_BACKUP_URL"]) {
            let from_file = load(None).unwrap();
            assert_eq!(
                from_file.backup_url.as_ref().map(StorageUrl::as_str),
                Some("file:///from-file")
            );
            assert!(
                from_file
                    .to_toml()
                    .contains("backup_url = \"file:///from-file\""),
                "{}",
                from_file.to_toml()
            );
        }
        let from_flag = load(Some("/from-flag")).unwrap();
        assert_eq!(
            from_flag.backup_url.as_ref().map(StorageUrl::as_str),
            Some("/from-flag")
        );
        let err = load(Some("ftp://host/x")).unwrap_err();
        assert!(
            matches!(
                err,
                SettingsError::Location {
                    key: "backup_url",
                    ..
                }
            ),
            "{err}"
        );
        assert!(error_chain(&err).contains("unsupported scheme 'ftp'"));
    }

    #[test]
    fn state_url_and_durations_are_layered_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/d\"\nsocket = \"/s.sock\"\nrestart_budget = 40\nrestart_backoff = \"10ms\"\n",
        )
        .unwrap();
        let load = |state_url: Option<&str>, interval: Option<&str>| {
            Settings::load(&Overrides {
                config: Some(file.clone()),
                state_url: state_url.map(str::to_string),
                checkpoint_interval: interval.map(str::to_string),
                ..Default::default()
            })
        };
        if unset(&[
            "ARROYO_STATE_URL",
            "ARROYO_CHECKPOINT_INTERVAL",
            "ARROYO_RESTART_BUDGET",
            "ARROYO_RESTART_BACKOFF",
            "ARROYO_MAX_PARALLELISM",
        ]) {
            let s = load(None, None).unwrap();
            assert_eq!(s.controller.state_root.as_str(), "/d/state");
            assert_eq!(s.controller.checkpoint_interval, Duration::from_secs(10));
            assert_eq!(s.controller.restarts.budget, 40);
            assert_eq!(s.controller.restarts.backoff, Duration::from_millis(10));
            assert_eq!(s.controller.max_parallelism, DEFAULT_MAX_PARALLELISM);
        }
        let s = load(Some("s3://bucket/state"), Some("500ms")).unwrap();
        assert_eq!(s.controller.state_root.as_str(), "s3://bucket/state");
        assert_eq!(s.controller.checkpoint_interval, Duration::from_millis(500));
        assert!(s.to_toml().contains("checkpoint_interval = \"500ms\""));
        for bad in ["0s", "soon", "10"] {
            let err = load(None, Some(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    SettingsError::Duration {
                        key: "checkpoint_interval",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = load(Some("ftp://host/x"), None).unwrap_err();
        assert!(
            matches!(
                err,
                SettingsError::Location {
                    key: "state_url",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_relative_run_state_dir_is_made_absolute_once() {
        let s = Settings::for_run(&RunOverrides {
            state: Some("st".into()),
            checkpoint_interval: Some("1s".into()),
            ..Default::default()
        })
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.data_dir, cwd.join("st"));
        assert_eq!(
            s.controller.state_root.as_str(),
            cwd.join("st/state").display().to_string()
        );
        assert_eq!(s.socket, None);
        assert_eq!(s.backup_url, None);
        assert_eq!(s.controller.checkpoint_interval, Duration::from_secs(1));
    }

    #[test]
    fn metrics_addr_is_loopback_or_a_unix_socket() {
        assert_eq!(
            MetricsAddr::parse("127.0.0.1:9464").unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            MetricsAddr::parse("localhost:9").unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert!(matches!(
            MetricsAddr::parse("[::1]:80").unwrap(),
            MetricsAddr::Tcp(_)
        ));
        assert_eq!(
            MetricsAddr::parse("unix:/run/m.sock").unwrap(),
            MetricsAddr::Unix("/run/m.sock".into())
        );
        for bad in [
            "0.0.0.0:9464",
            "10.1.2.3:80",
            "9464",
            "unix:",
            "example.com:80",
        ] {
            let err = MetricsAddr::parse(bad).unwrap_err();
            assert!(
                matches!(err, SettingsError::MetricsAddr { .. }),
                "{bad}: {err}"
            );
        }
        assert_eq!(LogFormat::parse("json").unwrap(), LogFormat::Json);
        assert!(LogFormat::parse("xml").is_err());
    }
}
