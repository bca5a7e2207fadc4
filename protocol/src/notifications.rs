//! Notifications: channels that hear about deployments and robots (a signed JSON webhook, a
//! Slack incoming webhook, or email over SMTP), and the log of every delivery.

use serde::{Deserialize, Serialize};

/// Every event a channel can hear about, as named in channel filters and deliveries.
pub const EVENTS: [&str; 9] = [
    "deployment.created",
    "deployment.awaiting_approval",
    "deployment.stage_started",
    "deployment.halted",
    "deployment.succeeded",
    "deployment.failed",
    "robot.rolled_back",
    "robot.offline",
    "test",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A JSON POST, signed with HMAC-SHA256 of the body in `X-Rota-Signature-256` when the
    /// channel has a secret.
    Webhook,
    /// A Slack incoming webhook: `{"text": ...}`. Its URL is the secret.
    Slack,
    /// Mail over SMTP: `smtp://[user@]host[:587]` (STARTTLS required) or
    /// `smtps://[user@]host[:465]` (TLS from the start), checked against the system's roots;
    /// the secret is the password.
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Option<ChannelKind> {
        match text {
            "webhook" => Some(ChannelKind::Webhook),
            "slack" => Some(ChannelKind::Slack),
            "email" => Some(ChannelKind::Email),
            _ => None,
        }
    }
}

/// A channel as the API answers it: never its secret, and a Slack URL (which is one) only as
/// its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// The webhook's URL; for Slack, `https://hooks.slack.com/…`.
    pub url: String,
    /// Whether deliveries are signed.
    pub signed: bool,
    /// Only events of deployments to this environment and of its robots; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The events it hears; empty: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// An email channel's recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// An email channel's sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub created_at: String,
}

/// `PUT /api/v1/notifications/channels/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetChannel {
    pub kind: ChannelKind,
    pub url: String,
    /// The HMAC key of a webhook (at least 16 characters), or an email channel's SMTP
    /// password. Never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    /// An email channel's recipients (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// An email channel's sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl SetChannel {
    /// Why the server would refuse it, if it would.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind == ChannelKind::Email {
            if !(self.url.starts_with("smtp://") || self.url.starts_with("smtps://")) {
                return Err(format!(
                    "url {:?} is not smtp://HOST[:PORT] (STARTTLS) or smtps://HOST[:PORT]",
                    self.url
                ));
            }
            if self.to.is_empty() || self.from.is_none() {
                return Err(
                    "an email channel needs its recipients (to) and its sender (from)".into(),
                );
            }
            let bad = |a: &String| !a.contains('@') || a.chars().any(char::is_whitespace);
            if let Some(address) = self.to.iter().chain(&self.from).find(|a| bad(a)) {
                return Err(format!("{address:?} is not an email address"));
            }
        } else if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?} is not an http(s) URL", self.url));
        } else if !self.to.is_empty() || self.from.is_some() {
            return Err("to and from are for email channels".into());
        }
        match (&self.secret, self.kind) {
            (Some(_), ChannelKind::Slack) => {
                return Err("a Slack channel takes no secret: its URL is the secret".into())
            }
            (Some(secret), ChannelKind::Webhook) if secret.len() < 16 => {
                return Err("secret must be at least 16 characters".into())
            }
            _ => {}
        }
        if let Some(unknown) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(format!(
                "unknown event {unknown:?}: one of {}",
                EVENTS.join(", ")
            ));
        }
        Ok(())
    }
}

/// One notification sent (or being sent) to one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub id: i64,
    pub channel: String,
    pub event: String,
    /// `pending` (retried with backoff), `delivered` or `failed` (every attempt failed).
    pub state: String,
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the channel was sent, in words.
    pub text: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}
