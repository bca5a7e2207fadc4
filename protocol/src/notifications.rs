//! Notifications: channels that hear about deployments and robots (a signed JSON webhook, or a
//! Slack incoming webhook), and the log of every delivery.

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
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
        }
    }

    pub fn parse(text: &str) -> Option<ChannelKind> {
        match text {
            "webhook" => Some(ChannelKind::Webhook),
            "slack" => Some(ChannelKind::Slack),
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
    pub created_at: String,
}

/// `PUT /api/v1/notifications/channels/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetChannel {
    pub kind: ChannelKind,
    pub url: String,
    /// The HMAC key of a webhook (at least 16 characters). Never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
}

impl SetChannel {
    /// Why the server would refuse it, if it would.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?} is not an http(s) URL", self.url));
        }
        match (&self.secret, self.kind) {
            (Some(_), ChannelKind::Slack) => {
                return Err("a Slack channel takes no secret: its URL is the secret".into())
            }
            (Some(secret), _) if secret.len() < 16 => {
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
