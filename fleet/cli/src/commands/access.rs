//! login, whoami, keys.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{bail, Context as _};
use reqwest::Method;
use rota_protocol::operator::{ApiKeyInfo, CreateApiKeyRequest, CreatedApiKey, WhoAmI};

use crate::cli::KeysCommand;
use crate::client::Api;
use crate::commands::show_list;
use crate::credentials::{self, Credentials};
use crate::output;

pub fn login(server: Option<&str>, key: Option<String>, json: bool) -> anyhow::Result<()> {
    let server = match server {
        Some(server) => server.to_string(),
        None => match credentials::load()? {
            Some(stored) => stored.server,
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
    let path = credentials::store(&Credentials {
        server: api.server().to_string(),
        key,
    })?;
    note!(
        "logged in to {} as {} ({}, {}); credentials in {}",
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
                        output::time(&k.created_at),
                        k.revoked_at.as_deref().map_or("-".into(), output::time),
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
