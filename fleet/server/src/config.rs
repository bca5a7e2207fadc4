//! Settings, merged in stages: built-in defaults < TOML file < `ROTA_*` environment < flags.
//! Parsing ([`FileConfig::parse`]) is separate from reading the file, and validation turns the
//! merged layers into [`Settings`] with errors that name the file and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Fleet server for Rota: releases, robots, deployments and audit over a JSON API.
///
/// Every flag can also come from the environment variable shown, or from the TOML file given
/// with --config (keys named like the flags, with underscores). Flags win over the environment,
/// which wins over the file.
///
/// On the first start it creates the database and prints a bootstrap admin API key (unless
/// one is configured) and the fleet enrollment key (unless one is configured) to stderr, once.
/// Once listening, it prints its base URL on stdout.
///
/// Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on any startup or runtime error,
/// 2 on a command-line error.
// No Debug: it holds secrets, and a stray `{:?}` must not print them.
#[derive(Default, Parser)]
#[command(name = "rota-server", version)]
pub struct Args {
    /// TOML config file.
    #[arg(long, env = "ROTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and the bundle store; created on first start.
    /// [default: ./rota-data]
    #[arg(long, env = "ROTA_DATA")]
    pub data: Option<PathBuf>,
    /// Database URL, `postgres://...` or `sqlite://...`. [default: sqlite file DATA/rota.db]
    #[arg(long, env = "ROTA_DATABASE")]
    pub database: Option<String>,
    /// Address to listen on; port 0 picks a free one. [default: 127.0.0.1:8080]
    #[arg(long, env = "ROTA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// URL robots reach this server at, used in bundle URLs.
    /// [default: http://<Host header of the robot's request>]
    #[arg(long, env = "ROTA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Serve bundles from this static host or CDN (`<URL>/<sha256>.rota`) instead of this
    /// server. [default: none]
    #[arg(long, env = "ROTA_BUNDLE_BASE_URL")]
    pub bundle_base_url: Option<String>,
    /// Directory of trusted public keys (`*.pub`); uploads must be signed by one of them.
    /// Read at each upload. [default: DATA/keyring]
    #[arg(long, env = "ROTA_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Fleet enrollment key robots present to enroll. Prefer the environment or the file:
    /// flags show in `ps`. [default: generated on first start and printed once]
    #[arg(long, env = "ROTA_ENROLLMENT_KEY", hide_env_values = true)]
    pub enrollment_key: Option<String>,
    /// Admin API key to create if the server has no admin key yet. [default: generated and
    /// printed once]
    #[arg(long, env = "ROTA_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    pub bootstrap_admin_key: Option<String>,
    /// New robots wait for an admin's approval before they get assignments. [default: false]
    #[arg(long, env = "ROTA_REQUIRE_APPROVAL")]
    pub require_approval: Option<bool>,
    /// Largest bundle upload in bytes; larger ones get 413. [default: 8 GiB]
    #[arg(long, env = "ROTA_MAX_BUNDLE_SIZE")]
    pub max_bundle_size: Option<u64>,
    /// Take the client address for the audit log from X-Forwarded-For (only behind a proxy
    /// you trust). [default: false]
    #[arg(long, env = "ROTA_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
    /// Seconds between flushes of robots' last-seen times to the database. [default: 5]
    #[arg(long, env = "ROTA_LAST_SEEN_FLUSH_SECS")]
    pub last_seen_flush_secs: Option<u64>,
    /// Secret of the GitHub push webhook (POST /api/v1/webhooks/github), at least 16
    /// characters; deliveries must carry its HMAC-SHA256 in X-Hub-Signature-256. Prefer the
    /// environment or the file: flags show in `ps`. [default: none, the webhook answers 404]
    #[arg(long, env = "ROTA_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,
    /// Milliseconds between the rollout engine's looks at running deployments (stage waits,
    /// silent robots). [default: 1000]
    #[arg(long, env = "ROTA_ROLLOUT_TICK_MS")]
    pub rollout_tick_ms: Option<u64>,
    /// Where releases published from a branch deploy themselves (when the environment has
    /// auto_deploy): `main=production,staging=staging,preview/*=preview`; a trailing `*`
    /// matches any rest. In the TOML file: a `[branch_environments]` table. [default: none]
    #[arg(long, env = "ROTA_BRANCH_ENVIRONMENTS")]
    pub branch_environments: Option<String>,
    /// Deployments kept per environment: older finished ones are deleted (at start and every
    /// ten minutes) unless a robot still runs, or would roll back to, the release one gave it.
    /// The audit log and each robot's events are kept regardless. 0 keeps everything.
    /// [default: 100]
    #[arg(long, env = "ROTA_KEEP_DEPLOYMENTS")]
    pub keep_deployments: Option<u32>,
    /// Minutes a robot may stay silent before notification channels hear `robot.offline`
    /// (once per silence). 0 never tells. [default: 10]
    #[arg(long, env = "ROTA_ROBOT_OFFLINE_MINUTES")]
    pub robot_offline_minutes: Option<f64>,
}

/// The TOML file: the same keys as the flags. No Debug: it holds secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub database: Option<String>,
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    pub bundle_base_url: Option<String>,
    pub keyring: Option<PathBuf>,
    pub enrollment_key: Option<String>,
    pub bootstrap_admin_key: Option<String>,
    pub require_approval: Option<bool>,
    pub max_bundle_size: Option<u64>,
    pub trust_forwarded_for: Option<bool>,
    pub last_seen_flush_secs: Option<u64>,
    pub github_webhook_secret: Option<String>,
    pub rollout_tick_ms: Option<u64>,
    pub branch_environments: Option<std::collections::BTreeMap<String, String>>,
    pub keep_deployments: Option<u32>,
    pub robot_offline_minutes: Option<f64>,
}

impl FileConfig {
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            origin: origin.into(),
            message: err.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Validated settings the server runs with. No Debug: it holds secrets.
#[derive(Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub bundle_base_url: Option<String>,
    pub keyring_dir: PathBuf,
    pub enrollment_key: Option<String>,
    pub bootstrap_admin_key: Option<String>,
    pub require_approval: bool,
    pub max_bundle_size: u64,
    pub trust_forwarded_for: bool,
    pub last_seen_flush: Duration,
    pub github_webhook_secret: Option<String>,
    pub rollout_tick: Duration,
    /// Branch patterns and the environment each maps to, first match wins.
    pub branch_environments: Vec<(String, String)>,
    /// Deployments kept per environment beyond those robots reference; 0: all.
    pub keep_deployments: u32,
    /// Silence after which channels hear `robot.offline`; `None`: never.
    pub robot_offline_after: Option<Duration>,
}

/// The environment a release from `branch` goes to: an exact pattern wins over a `*` one,
/// a longer prefix over a shorter.
pub fn environment_for_branch<'a>(map: &'a [(String, String)], branch: &str) -> Option<&'a str> {
    map.iter()
        .filter_map(|(pattern, env)| match pattern.strip_suffix('*') {
            Some(prefix) if branch.starts_with(prefix) => Some((prefix.len(), env)),
            None if pattern == branch => Some((usize::MAX, env)),
            _ => None,
        })
        .max_by_key(|(specificity, _)| *specificity)
        .map(|(_, env)| env.as_str())
}

fn parse_branch_environments(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((branch, env)) if !branch.trim().is_empty() && !env.trim().is_empty() => {
                Ok((branch.trim().to_string(), env.trim().to_string()))
            }
            _ => Err(ConfigError::Invalid {
                key: "branch_environments",
                message: format!("{pair:?} must be BRANCH=ENVIRONMENT"),
            }),
        })
        .collect()
}

impl Settings {
    /// Merges the layers: each `args` field that is set wins over the file's.
    pub fn resolve(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        let data_dir = args
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("rota-data"));
        let database_url = match args.database.or(file.database) {
            Some(url) => url,
            None => format!("sqlite://{}?mode=rwc", data_dir.join("rota.db").display()),
        };
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid {
                key: "database",
                message: "must start with postgres://, postgresql:// or sqlite:".into(),
            });
        }
        let trim_url = |url: Option<String>, key: &'static str| -> Result<_, ConfigError> {
            match url {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    Err(ConfigError::Invalid {
                        key,
                        message: format!("{url:?} is not an http(s) URL"),
                    })
                }
                other => Ok(other.map(|url| url.trim_end_matches('/').to_string())),
            }
        };
        let non_empty = |secret: Option<String>, key: &'static str| match secret {
            Some(s) if s.len() < 16 => Err(ConfigError::Invalid {
                key,
                message: "must be at least 16 characters".into(),
            }),
            other => Ok(other),
        };
        Ok(Settings {
            keyring_dir: args
                .keyring
                .or(file.keyring)
                .unwrap_or_else(|| data_dir.join("keyring")),
            database_url,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            public_url: trim_url(args.public_url.or(file.public_url), "public_url")?,
            bundle_base_url: trim_url(
                args.bundle_base_url.or(file.bundle_base_url),
                "bundle_base_url",
            )?,
            enrollment_key: non_empty(
                args.enrollment_key.or(file.enrollment_key),
                "enrollment_key",
            )?,
            bootstrap_admin_key: non_empty(
                args.bootstrap_admin_key.or(file.bootstrap_admin_key),
                "bootstrap_admin_key",
            )?,
            require_approval: args
                .require_approval
                .or(file.require_approval)
                .unwrap_or(false),
            max_bundle_size: args
                .max_bundle_size
                .or(file.max_bundle_size)
                .unwrap_or(8 << 30),
            trust_forwarded_for: args
                .trust_forwarded_for
                .or(file.trust_forwarded_for)
                .unwrap_or(false),
            last_seen_flush: Duration::from_secs(
                args.last_seen_flush_secs
                    .or(file.last_seen_flush_secs)
                    .unwrap_or(5)
                    .max(1),
            ),
            github_webhook_secret: non_empty(
                args.github_webhook_secret.or(file.github_webhook_secret),
                "github_webhook_secret",
            )?,
            rollout_tick: Duration::from_millis(
                args.rollout_tick_ms
                    .or(file.rollout_tick_ms)
                    .unwrap_or(1000)
                    .max(10),
            ),
            branch_environments: match (args.branch_environments, file.branch_environments) {
                (Some(text), _) => parse_branch_environments(&text)?,
                (None, Some(table)) => table.into_iter().collect(),
                (None, None) => Vec::new(),
            },
            keep_deployments: args
                .keep_deployments
                .or(file.keep_deployments)
                .unwrap_or(100),
            robot_offline_after: match args
                .robot_offline_minutes
                .or(file.robot_offline_minutes)
                .unwrap_or(10.0)
            {
                minutes if minutes.is_finite() && minutes > 0.0 => {
                    Some(Duration::from_secs_f64(minutes * 60.0))
                }
                0.0 => None,
                minutes => {
                    return Err(ConfigError::Invalid {
                        key: "robot_offline_minutes",
                        message: format!("{minutes} is not a number of minutes"),
                    })
                }
            },
            data_dir,
        })
    }

    /// Reads the file named by `args.config`, if any, and merges.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }

    pub fn bundle_dir(&self) -> PathBuf {
        self.data_dir.join("bundles")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_map_to_environments_most_specific_first() {
        let map = parse_branch_environments(
            "main=production, staging=staging,preview/*=preview,preview/big-*=big",
        )
        .unwrap();
        assert_eq!(environment_for_branch(&map, "main"), Some("production"));
        assert_eq!(environment_for_branch(&map, "preview/x"), Some("preview"));
        assert_eq!(environment_for_branch(&map, "preview/big-1"), Some("big"));
        assert_eq!(environment_for_branch(&map, "mainline"), None);
        assert!(parse_branch_environments("main").is_err());
    }

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let file = FileConfig::parse(
            "data = \"/srv/rota\"\nrequire_approval = true\nlisten = \"0.0.0.0:9000\"\n",
            "test.toml",
        )
        .unwrap();
        let args = Args {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Args::default()
        };
        let settings = Settings::resolve(args, file).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:1".parse().unwrap());
        assert!(settings.require_approval);
        assert_eq!(settings.keyring_dir, PathBuf::from("/srv/rota/keyring"));
        assert_eq!(settings.database_url, "sqlite:///srv/rota/rota.db?mode=rwc");
        assert!(!settings.is_postgres());
    }

    #[test]
    fn webhook_secret_comes_from_the_file_and_must_be_long_enough() {
        let file = FileConfig::parse(
            "github_webhook_secret = \"0123456789abcdef-from-file\"\n",
            "test.toml",
        )
        .unwrap();
        let settings = Settings::resolve(Args::default(), file).unwrap();
        assert_eq!(
            settings.github_webhook_secret.as_deref(),
            Some("0123456789abcdef-from-file")
        );
        assert!(Settings::resolve(Args::default(), FileConfig::default())
            .unwrap()
            .github_webhook_secret
            .is_none());
        let args = Args {
            github_webhook_secret: Some("short".into()),
            ..Args::default()
        };
        let err = expect_err(Settings::resolve(args, FileConfig::default()));
        assert!(err.starts_with("github_webhook_secret:"), "{err}");
        assert!(!err.contains("short"), "the secret leaked into {err}");
    }

    fn expect_err<T>(result: Result<T, ConfigError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_culprit() {
        let err = expect_err(FileConfig::parse("databse = \"x\"", "fleet.toml"));
        assert!(
            err.contains("fleet.toml") && err.contains("databse"),
            "{err}"
        );
        let args = Args {
            database: Some("mysql://x".into()),
            ..Args::default()
        };
        let err = expect_err(Settings::resolve(args, FileConfig::default()));
        assert!(err.starts_with("database:"), "{err}");
        let args = Args {
            enrollment_key: Some("short".into()),
            ..Args::default()
        };
        let err = expect_err(Settings::resolve(args, FileConfig::default()));
        assert!(err.starts_with("enrollment_key:"), "{err}");
    }
}
