//! The contract between Rota's robots, its fleet server and its operators.
//!
//! - [`robot`]: what a robot and the server exchange (enroll, poll, events, slots).
//! - [`operator`]: what the `rota` CLI, CI and the dashboard exchange with the server.
//! - [`notifications`]: channels that hear about deployments and robots, and deliveries.
//! - `client` (feature `client`): a blocking robot client, no async runtime to manage.
//!
//! Both sides compile against these types, so the protocol cannot drift. Everything is JSON
//! under `/api/v1`; errors are [`operator::ErrorBody`] with a 4xx/5xx status.

pub mod notifications;
pub mod operator;
pub mod robot;

#[cfg(feature = "client")]
pub mod client;

/// Prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";
