//! `rota env var set|list|unset`: an environment's variables and secrets for its apps.

use std::io::BufRead as _;

use anyhow::{bail, Context as _};
use reqwest::Method;
use rota_protocol::operator::{validate_env_var, EnvVar, SetEnvVar};

use crate::cli::VarCommand;
use crate::client::Api;
use crate::output;

pub fn vars(api: &Api, action: VarCommand, json: bool) -> anyhow::Result<()> {
    match action {
        VarCommand::List { env } => crate::commands::show_list(
            api,
            &format!("/environments/{env}/vars"),
            json,
            &["NAME", "VALUE", "VERSION", "UPDATED", "BY"],
            &format!("no variables in {env} yet: set one with `rota env var set {env} NAME=VALUE`"),
            |var: &EnvVar| {
                vec![
                    var.name.clone(),
                    var.value.clone().unwrap_or_else(|| "(secret)".into()),
                    var.version.to_string(),
                    output::time(&var.updated_at),
                    var.updated_by.clone(),
                ]
            },
        ),
        VarCommand::Set {
            env,
            assignment,
            secret,
        } => {
            let Some((name, value)) = assignment.split_once('=') else {
                bail!("{assignment:?} is not NAME=VALUE (NAME=- reads the value from stdin)");
            };
            let value = if value == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the value from stdin")?;
                line.trim_end_matches(['\n', '\r']).to_string()
            } else {
                value.to_string()
            };
            validate_env_var(name, &value).map_err(anyhow::Error::msg)?;
            let set: EnvVar = api.send_json(
                Method::PUT,
                &format!("/environments/{env}/vars/{name}"),
                Some(&SetEnvVar { value, secret }),
            )?;
            if json {
                return output::json(&set);
            }
            outln!(
                "{env}: {} {} (version {}); robots get it with their next app deployment",
                set.name,
                if set.secret { "secret set" } else { "set" },
                set.version
            );
            Ok(())
        }
        VarCommand::Unset { env, name } => {
            api.send_empty(Method::DELETE, &format!("/environments/{env}/vars/{name}"))?;
            note!("{env}: {name} removed");
            Ok(())
        }
    }
}
