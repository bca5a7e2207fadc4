//! Where `rota` keeps its servers and API keys: named profiles in
//! `$XDG_CONFIG_HOME/rota/config.toml` (or `~/.config/rota/config.toml`), readable by the user
//! only (0600, directory 0700), and which server and key a command uses.
//!
//! ```toml
//! current = "prod"
//! [profiles.prod]
//! server = "https://rota.example.com"
//! key_file = "/run/secrets/rota-prod"   # or key = "rota_op_..." as `rota login` writes it
//! [profiles.lab]
//! server = "http://lab-server:8080"
//! key = "rota_op_..."
//! ```
//!
//! An earlier `rota login` wrote `credentials.toml` with one server and key; it is read as the
//! profile `default` until the first write of `config.toml`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The profile a first `rota login` creates when none is named.
pub const DEFAULT_PROFILE: &str = "default";

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file holding the key (a secrets manager's mount, say): read at each command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even in debug output.
        f.debug_struct("Profile")
            .field("server", &self.server)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// The profile's key: stored in the file, or read from its key file.
    pub fn key(&self) -> anyhow::Result<Option<String>> {
        if let Some(key) = self.key.as_ref().filter(|k| !k.is_empty()) {
            return Ok(Some(key.clone()));
        }
        match &self.key_file {
            Some(path) => {
                let key = fs::read_to_string(path)
                    .with_context(|| format!("reading the key file {}", path.display()))?;
                let key = key.trim();
                if key.is_empty() {
                    bail!("the key file {} is empty", path.display());
                }
                Ok(Some(key.to_string()))
            }
            None => Ok(None),
        }
    }

    /// How the key is kept, for listings (never the key itself).
    pub fn key_source(&self) -> String {
        match (&self.key, &self.key_file) {
            (Some(_), _) => "stored".into(),
            (None, Some(path)) => format!("file {}", path.display()),
            (None, None) => "none".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when neither --profile nor ROTA_PROFILE names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// The one-server file of earlier versions.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyCredentials {
    server: String,
    key: String,
}

pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("rota"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("rota")),
        None => bail!("neither XDG_CONFIG_HOME nor HOME is set: cannot find rota's config file"),
    }
}

pub fn path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("config.toml"))
}

pub fn parse(text: &str, origin: &Path) -> anyhow::Result<ConfigFile> {
    toml::from_str(text).with_context(|| format!("parsing {}", origin.display()))
}

fn read_if_present(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// The config file, or an empty one when there is none yet.
pub fn load() -> anyhow::Result<ConfigFile> {
    // Without a home (a systemd unit, `env -i`) there is no file; ROTA_SERVER and ROTA_API_KEY
    // still work.
    let Ok(path) = path() else {
        return Ok(ConfigFile::default());
    };
    if let Some(text) = read_if_present(&path)? {
        return parse(&text, &path);
    }
    let legacy = path.with_file_name("credentials.toml");
    match read_if_present(&legacy)? {
        Some(text) => {
            let old: LegacyCredentials =
                toml::from_str(&text).with_context(|| format!("parsing {}", legacy.display()))?;
            let profile = Profile {
                server: old.server,
                key: Some(old.key),
                key_file: None,
            };
            Ok(ConfigFile {
                current: Some(DEFAULT_PROFILE.into()),
                profiles: BTreeMap::from([(DEFAULT_PROFILE.into(), profile)]),
            })
        }
        None => Ok(ConfigFile::default()),
    }
}

/// Writes the config atomically with mode 0600; returns the file's path.
pub fn store(config: &ConfigFile) -> anyhow::Result<PathBuf> {
    let dir = config_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    let path = dir.join("config.toml");
    let temp = dir.join(".config.toml.tmp");
    let text = toml::to_string(config).context("encoding the config")?;
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, &path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(path)
}

/// Two spellings of one server (`http://h:8080/` and `http://h:8080`) are the same server.
pub fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// What the command line and the environment say about the server and key.
#[derive(Default, Clone)]
pub struct Overrides {
    /// --server: beats everything.
    pub server_flag: Option<String>,
    /// --profile or ROTA_PROFILE: beats ROTA_SERVER (naming a profile is the more specific
    /// choice; a ROTA_SERVER left in the shell must not send `--profile prod` elsewhere).
    pub profile: Option<String>,
    /// ROTA_SERVER.
    pub server_env: Option<String>,
    /// ROTA_API_KEY or ROTA_KEY.
    pub key: Option<String>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("server_flag", &self.server_flag)
            .field("profile", &self.profile)
            .field("server_env", &self.server_env)
            .field("key", &self.key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Overrides {
    /// From the parsed flags and the environment.
    pub fn from_env(server_flag: Option<String>, profile: Option<String>) -> Overrides {
        Overrides {
            server_flag,
            profile,
            server_env: non_empty_env("ROTA_SERVER"),
            // ROTA_API_KEY, else ROTA_KEY.
            key: non_empty_env("ROTA_API_KEY").or_else(|| non_empty_env("ROTA_KEY")),
        }
    }
}

/// A server and the key to use with it.
pub struct Resolved {
    pub server: String,
    pub key: String,
    /// The profile they came from, if any.
    pub profile: Option<String>,
}

impl ConfigFile {
    fn names(&self) -> String {
        if self.profiles.is_empty() {
            "none yet".into()
        } else {
            self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// The profile of that name, or an error listing the names there are.
    pub fn require(&self, name: &str) -> anyhow::Result<(&str, &Profile)> {
        match self.profiles.get_key_value(name) {
            Some((name, profile)) => Ok((name.as_str(), profile)),
            None => bail!(
                "no profile named {name:?} (profiles: {}); create it with \
                 `rota login --profile {name} --server URL`",
                self.names()
            ),
        }
    }

    /// The profile a command uses: the one named, else the current one.
    pub fn selected(&self, named: Option<&str>) -> anyhow::Result<Option<(&str, &Profile)>> {
        match (named, self.current.as_deref()) {
            (Some(name), _) => self.require(name).map(Some),
            // A current profile removed by hand counts as none.
            (None, Some(current)) => Ok(self.require(current).ok()),
            (None, None) => Ok(None),
        }
    }

    /// The server a command talks to, and the profile that owns it if any: --server, else
    /// the named profile's, else ROTA_SERVER, else the current profile's. --server naming
    /// another server than an explicitly named profile is refused, not guessed at.
    pub fn server<'a>(
        &'a self,
        overrides: &Overrides,
    ) -> anyhow::Result<(String, Option<(&'a str, &'a Profile)>)> {
        let named = overrides.profile.as_deref();
        if let (Some(flag), Some(name)) = (&overrides.server_flag, named) {
            let (_, profile) = self.require(name)?;
            if !same_server(flag, &profile.server) {
                bail!(
                    "--server {flag} is not the server of profile {name} ({}): give one of them",
                    profile.server
                );
            }
        }
        let explicit = match (&overrides.server_flag, named) {
            (Some(flag), _) => Some(flag),
            (None, Some(_)) => None,
            (None, None) => overrides.server_env.as_ref(),
        };
        let Some(server) = explicit else {
            return match self.selected(named)? {
                Some((name, profile)) => Ok((profile.server.clone(), Some((name, profile)))),
                None => bail!("{}", self.no_server()),
            };
        };
        // The profile for this server: the selected one when it is for this server, else any.
        let selected = self
            .selected(named)?
            .filter(|(_, p)| same_server(server, &p.server));
        let owner = selected.or_else(|| {
            self.profiles
                .iter()
                .find(|(_, p)| same_server(server, &p.server))
                .map(|(name, p)| (name.as_str(), p))
        });
        Ok((server.clone(), owner))
    }

    fn no_server(&self) -> String {
        let current = match self.current.as_deref() {
            Some(name) if !self.profiles.contains_key(name) => {
                format!(" (the current profile {name:?} is not in the config file)")
            }
            _ => String::new(),
        };
        format!(
            "no server{current}: run `rota login --server URL`, set ROTA_SERVER, or pick a \
             profile with --profile (profiles: {})",
            self.names()
        )
    }

    /// Which server and key a command uses. A stored key is only ever sent to the server it
    /// was stored for: `--server` naming another server needs that server's own profile or
    /// ROTA_API_KEY, so a typo in a URL cannot hand a key to a stranger.
    pub fn resolve(&self, overrides: &Overrides) -> anyhow::Result<Resolved> {
        let (server, profile) = self.server(overrides)?;
        let key = match &overrides.key {
            Some(key) => key.clone(),
            None => match profile.map(|(_, p)| p.key()).transpose()?.flatten() {
                Some(key) => key,
                None => bail!(
                    "no API key for {server}: run `rota login --server {server}` or set \
                     ROTA_API_KEY"
                ),
            },
        };
        Ok(Resolved {
            server,
            key,
            profile: profile.map(|(name, _)| name.to_string()),
        })
    }

    /// The name `rota login` stores a server under: the one given, else the profile that
    /// already has this server, else the current profile when it is for this server, else
    /// `default` for a first login, else the server's host name (numbered when taken).
    pub fn name_for_login(&self, named: Option<&str>, server: &str) -> String {
        if let Some(name) = named {
            return name.to_string();
        }
        if let Some(current) = self.current.as_deref() {
            if self
                .profiles
                .get(current)
                .is_some_and(|p| same_server(server, &p.server))
            {
                return current.to_string();
            }
        }
        if let Some((name, _)) = self
            .profiles
            .iter()
            .find(|(_, p)| same_server(server, &p.server))
        {
            return name.clone();
        }
        if self.profiles.is_empty() {
            return DEFAULT_PROFILE.into();
        }
        let host = server
            .split("://")
            .nth(1)
            .unwrap_or(server)
            .split(['/', ':'])
            .next()
            .filter(|h| !h.is_empty())
            .unwrap_or(DEFAULT_PROFILE);
        let mut name = host.to_string();
        let mut n = 2;
        while self.profiles.contains_key(&name) {
            name = format!("{host}-{n}");
            n += 1;
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(server: &str, key: &str) -> Profile {
        Profile {
            server: server.into(),
            key: Some(key.into()),
            key_file: None,
        }
    }

    fn two_profiles() -> ConfigFile {
        ConfigFile {
            current: Some("prod".into()),
            profiles: BTreeMap::from([
                (
                    "prod".into(),
                    profile("https://prod.example", "rota_op_prod"),
                ),
                ("lab".into(), profile("http://lab:8080/", "rota_op_lab")),
            ]),
        }
    }

    fn resolve(config: &ConfigFile, server: Option<&str>, profile: Option<&str>) -> String {
        match config.resolve(&Overrides {
            server_flag: server.map(Into::into),
            profile: profile.map(Into::into),
            ..Overrides::default()
        }) {
            Ok(r) => format!("{} {} {:?}", r.server, r.key, r.profile),
            Err(err) => format!("error: {err}"),
        }
    }

    #[test]
    fn profiles_pick_server_and_key() {
        let config = two_profiles();
        let table = [
            (
                None,
                None,
                "https://prod.example rota_op_prod Some(\"prod\")",
            ),
            (
                None,
                Some("lab"),
                "http://lab:8080/ rota_op_lab Some(\"lab\")",
            ),
            // --server naming a profile's server takes that profile's key.
            (
                Some("http://lab:8080"),
                None,
                "http://lab:8080 rota_op_lab Some(\"lab\")",
            ),
        ];
        for (server, name, expected) in table {
            assert_eq!(
                resolve(&config, server, name),
                expected,
                "{server:?} {name:?}"
            );
        }
        assert!(resolve(&config, None, Some("nope")).contains("no profile named \"nope\""));
    }

    #[test]
    fn a_stored_key_never_goes_to_another_server() {
        let config = two_profiles();
        let answer = resolve(&config, Some("https://typo.example"), None);
        assert!(
            answer.starts_with("error: no API key for https://typo.example"),
            "{answer}"
        );
        let with_env_key = config
            .resolve(&Overrides {
                server_flag: Some("https://typo.example".into()),
                key: Some("rota_op_env".into()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(with_env_key.key, "rota_op_env");
    }

    #[test]
    fn a_named_profile_beats_rota_server_and_a_contradicting_flag_is_refused() {
        // ROTA_SERVER left in the shell sent `rota --profile prod` to lab, with lab's key.
        let config = two_profiles();
        let with_env = |profile: Option<&str>| {
            config
                .resolve(&Overrides {
                    profile: profile.map(Into::into),
                    server_env: Some("http://lab:8080".into()),
                    ..Overrides::default()
                })
                .map(|r| (r.server, r.key))
                .unwrap()
        };
        assert_eq!(
            with_env(Some("prod")),
            ("https://prod.example".into(), "rota_op_prod".into())
        );
        assert_eq!(
            with_env(None),
            ("http://lab:8080".into(), "rota_op_lab".into())
        );
        let answer = resolve(&config, Some("http://lab:8080"), Some("prod"));
        assert!(
            answer.contains("is not the server of profile prod"),
            "{answer}"
        );
    }

    #[test]
    fn a_removed_current_profile_is_named_in_the_error() {
        let config = ConfigFile {
            current: Some("gone".into()),
            profiles: BTreeMap::new(),
        };
        let answer = resolve(&config, None, None);
        assert!(answer.contains("the current profile \"gone\""), "{answer}");
    }

    #[test]
    fn login_names() {
        let config = two_profiles();
        assert_eq!(config.name_for_login(Some("x"), "http://a"), "x");
        assert_eq!(config.name_for_login(None, "http://lab:8080"), "lab");
        let mut shared = two_profiles();
        shared
            .profiles
            .insert("a-lab".into(), profile("http://lab:8080", "k"));
        shared.current = Some("lab".into());
        assert_eq!(shared.name_for_login(None, "http://lab:8080"), "lab");
        assert_eq!(
            config.name_for_login(None, "http://10.0.0.5:8080/"),
            "10.0.0.5"
        );
        assert_eq!(
            ConfigFile::default().name_for_login(None, "http://a"),
            DEFAULT_PROFILE
        );
    }

    #[test]
    fn key_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        fs::write(&file, "rota_op_from_file\n").unwrap();
        let p = Profile {
            server: "http://s".into(),
            key: None,
            key_file: Some(file.clone()),
        };
        assert_eq!(p.key().unwrap().as_deref(), Some("rota_op_from_file"));
        assert_eq!(p.key_source(), format!("file {}", file.display()));
        assert!(!format!("{p:?}").contains("rota_op"));
    }
}
