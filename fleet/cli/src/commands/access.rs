//! login, profiles, whoami, keys.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{bail, Context as _};
use reqwest::Method;
use rota_protocol::operator::{ApiKeyInfo, CreateApiKeyRequest, CreatedApiKey, WhoAmI};

use crate::cli::{KeysCommand, ProfilesCommand};
use crate::client::Api;
use crate::commands::show_list;
use crate::output;
use crate::profiles::{self, Overrides, Profile};

pub fn login(overrides: &Overrides, key: Option<String>, json: bool) -> anyhow::Result<()> {
    let mut config = profiles::load()?;
    let named = overrides.profile.as_deref();
    let existing = named.and_then(|name| config.profiles.get(name));
    // The profile being (re)written keeps its server unless --server says otherwise; a new
    // one takes ROTA_SERVER, then the current profile's.
    let server = match (&overrides.server_flag, existing) {
        (Some(flag), _) => flag.clone(),
        (None, Some(profile)) => profile.server.clone(),
        (None, None) => match (&overrides.server_env, config.selected(None)?) {
            (Some(env), _) => env.clone(),
            (None, Some((_, profile))) if named.is_none() => profile.server.clone(),
            _ => bail!("which server? pass --server URL"),
        },
    };
    let name = config.name_for_login(named, &server);
    if let Some(path) = config.profiles.get(&name).and_then(|p| p.key_file.as_ref()) {
        bail!(
            "profile {name} reads its key from {}: put the new key there (rota login does not \
             replace a key file with a stored key)",
            path.display()
        );
    }
    let key = match key.or_else(|| overrides.key.clone()) {
        Some(key) => key,
        None => {
            if std::io::stdin().is_terminal() {
                {
                    use std::io::Write as _;
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "API key: ").and_then(|()| err.flush());
                }
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the API key from stdin")?;
            line.trim().to_string()
        }
    };
    if key.is_empty() {
        bail!("empty API key");
    }
    let api = Api::new(&server, &key)?;
    let me: WhoAmI = api.get("/whoami").context("checking the key")?;
    config.profiles.insert(
        name.clone(),
        Profile {
            server: api.server().to_string(),
            key: Some(key),
            key_file: None,
        },
    );
    config.current = Some(name.clone());
    let path = profiles::store(&config)?;
    note!(
        "logged in to {} as {} ({}, {}); profile {name} (current) in {}",
        api.server(),
        me.name,
        me.key_id,
        me.role,
        path.display()
    );
    if json {
        output::json(&me)?;
    } else {
        outln!("{}", me.key_id);
    }
    Ok(())
}

/// One profile as `rota profiles --json` lists it: never the key.
#[derive(serde::Serialize)]
struct ProfileEntry<'a> {
    name: &'a str,
    server: &'a str,
    current: bool,
    key: String,
}

pub fn profiles(action: Option<ProfilesCommand>, json: bool) -> anyhow::Result<()> {
    let mut config = profiles::load()?;
    match action {
        None => {
            let entries: Vec<ProfileEntry> = config
                .profiles
                .iter()
                .map(|(name, p)| ProfileEntry {
                    name,
                    server: &p.server,
                    current: config.current.as_deref() == Some(name.as_str()),
                    key: p.key_source(),
                })
                .collect();
            if json {
                return output::json(&entries);
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let marker = if e.current { "*" } else { "" };
                    vec![marker.into(), e.name.into(), e.server.into(), e.key.clone()]
                })
                .collect();
            output::table(
                &["", "PROFILE", "SERVER", "KEY"],
                &rows,
                Some("no profiles yet: rota login --server URL"),
            )
        }
        Some(ProfilesCommand::Use { name }) => {
            config.require(&name)?;
            config.current = Some(name.clone());
            profiles::store(&config)?;
            note!("profile {name} is now current");
            if json {
                output::json(&serde_json::json!({ "current": name }))?;
            }
            Ok(())
        }
        Some(ProfilesCommand::Remove { name }) => {
            config.require(&name)?;
            config.profiles.remove(&name);
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            profiles::store(&config)?;
            note!("profile {name} removed");
            if json {
                output::json(&serde_json::json!({ "removed": name }))?;
            }
            Ok(())
        }
    }
}

pub fn whoami(api: &Api, json: bool) -> anyhow::Result<()> {
    let me: WhoAmI = api.get("/whoami")?;
    if json {
        output::json(&me)
    } else {
        outln!("{} {} {} {}", me.key_id, me.role, me.name, api.server());
        Ok(())
    }
}

pub fn keys(api: &Api, command: KeysCommand, json: bool) -> anyhow::Result<()> {
    match command {
        KeysCommand::List => {
            show_list(
                api,
                "/api-keys",
                json,
                &["ID", "ROLE", "NAME", "CREATED", "REVOKED"],
                "no API keys: create one with `rota keys create NAME --role deployer`",
                |k: &ApiKeyInfo| {
                    vec![
                        k.id.clone(),
                        k.role.to_string(),
                        k.name.clone(),
                        output::ago(&k.created_at),
                        k.revoked_at.as_deref().map_or("-".into(), output::ago),
                    ]
                },
            )?;
        }
        KeysCommand::Create { name, role } => {
            let created: CreatedApiKey = api.send_json(
                Method::POST,
                "/api-keys",
                Some(&CreateApiKeyRequest { name, role }),
            )?;
            note!(
                "created {} key {} ({}); the key is shown only now",
                created.info.role,
                created.info.id,
                created.info.name
            );
            if json {
                return output::json(&created);
            }
            outln!("{}", created.key);
        }
        KeysCommand::Revoke { id } => {
            api.send_empty(Method::DELETE, &format!("/api-keys/{id}"))?;
            note!("revoked {id}");
        }
    }
    Ok(())
}
