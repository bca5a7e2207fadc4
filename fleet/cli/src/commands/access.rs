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
    let server = match &overrides.server {
        Some(server) => server.clone(),
        None => match config.selected(overrides.profile.as_deref())? {
            Some((_, profile)) => profile.server.clone(),
            None => bail!("which server? pass --server URL"),
        },
    };
    let key = match key {
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
    let name = config.name_for_login(overrides.profile.as_deref(), api.server());
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
