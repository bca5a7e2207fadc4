//! `rota notify`: notification channels and their delivery log.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use reqwest::Method;
use rota_protocol::notifications::{Channel, ChannelKind, Delivery, SetChannel};

use crate::cli::NotifyCommand;
use crate::client::Api;
use crate::commands::deploy::Outcome;
use crate::commands::{show_filtered_list, show_list};
use crate::output;

/// How long `rota notify test` follows its delivery: five attempts fit (1 + 2 + 4 + 8 s of
/// backoff plus the attempts).
const TEST_PATIENCE: Duration = Duration::from_secs(60);

pub fn notify(api: &Api, command: NotifyCommand, json: bool) -> anyhow::Result<Outcome> {
    match command {
        NotifyCommand::Set {
            name,
            webhook,
            slack,
            email,
            to,
            from,
            secret,
            env,
            events,
        } => {
            let (kind, url) = match (webhook, slack, email) {
                (Some(url), None, None) => (ChannelKind::Webhook, url),
                (None, Some(url), None) => (ChannelKind::Slack, url),
                (None, None, Some(url)) => (ChannelKind::Email, url),
                _ => bail!("give exactly one of --webhook URL, --slack URL and --email SMTP-URL"),
            };
            let secret = match secret.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the secret from stdin")?;
                    Some(line.trim_end_matches(['\n', '\r']).to_string())
                }
                other => other.map(str::to_owned),
            };
            let request = SetChannel {
                kind,
                url,
                secret,
                environment: env,
                events,
                to,
                from,
            };
            request.validate().map_err(anyhow::Error::msg)?;
            let channel: Channel = api.send_json(
                Method::PUT,
                &format!("/notifications/channels/{name}"),
                Some(&request),
            )?;
            if json {
                output::json(&channel)?;
            } else {
                outln!(
                    "channel {} set: {} {}{}; try it with `rota notify test {}`",
                    channel.name,
                    channel.kind.as_str(),
                    channel.url,
                    if channel.signed { ", signed" } else { "" },
                    channel.name
                );
            }
        }
        NotifyCommand::List => show_list(
            api,
            "/notifications/channels",
            json,
            &["NAME", "KIND", "URL", "SIGNED", "ENVIRONMENT", "EVENTS"],
            "no notification channels yet: add one with `rota notify set NAME --webhook URL`",
            |c: &Channel| {
                vec![
                    c.name.clone(),
                    c.kind.as_str().into(),
                    c.url.clone(),
                    if c.signed { "yes" } else { "no" }.into(),
                    output::or_dash(c.environment.as_deref()),
                    match c.events.is_empty() {
                        true => "all".into(),
                        false => c.events.join(","),
                    },
                ]
            },
        )?,
        NotifyCommand::Remove { name } => {
            api.send_empty(Method::DELETE, &format!("/notifications/channels/{name}"))?;
            note!("channel {name} removed");
        }
        NotifyCommand::Test { name } => return test(api, &name, json),
        NotifyCommand::Deliveries {
            channel,
            state,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(channel.map(|c| ("channel", c)));
            query.extend(state.map(|s| ("state", s)));
            show_filtered_list(
                api,
                "/notifications/deliveries",
                &query,
                json,
                &[
                    "ID",
                    "CHANNEL",
                    "EVENT",
                    "STATE",
                    "TRIES",
                    "WHEN",
                    "TEXT OR ERROR",
                ],
                "no deliveries yet",
                |d: &Delivery| {
                    vec![
                        d.id.to_string(),
                        d.channel.clone(),
                        d.event.clone(),
                        d.state.clone(),
                        d.attempts.to_string(),
                        output::ago(&d.created_at),
                        d.last_error.clone().unwrap_or_else(|| d.text.clone()),
                    ]
                },
            )?;
        }
    }
    Ok(Outcome::Done)
}

/// Queues a test notification and follows its delivery until it is delivered or failed.
fn test(api: &Api, name: &str, json: bool) -> anyhow::Result<Outcome> {
    let queued: Delivery = api.send_json(
        Method::POST,
        &format!("/notifications/channels/{name}/test"),
        None::<&()>,
    )?;
    let started = Instant::now();
    let query = [("channel", name.to_string()), ("limit", "1000".to_string())];
    loop {
        let deliveries: Vec<Delivery> = api.get_with_query("/notifications/deliveries", &query)?;
        let delivery = deliveries
            .into_iter()
            .find(|d| d.id == queued.id)
            .context("the test delivery vanished from the log")?;
        if delivery.state != "pending" || started.elapsed() > TEST_PATIENCE {
            if json {
                output::json(&delivery)?;
            }
            return match delivery.state.as_str() {
                "delivered" => {
                    note!("{name}: delivered (attempt {})", delivery.attempts);
                    Ok(Outcome::Done)
                }
                "failed" => bail!(
                    "{name}: the test notification failed after {} attempts: {}",
                    delivery.attempts,
                    delivery.last_error.unwrap_or_default()
                ),
                _ => {
                    note!(
                        "{name}: still pending after {} attempts: {}",
                        delivery.attempts,
                        delivery.last_error.unwrap_or_default()
                    );
                    Ok(Outcome::TimedOut)
                }
            };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
