//! Rota's fleet server: a JSON API under `/api/v1` for robots (enroll, poll, report) and
//! operators (releases, robots, groups, deployments, keys, audit), on SQLite or PostgreSQL.
//!
//! `main.rs` only parses the command line; [`server::run`] does the rest.

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod git;
pub mod history;
pub mod hub;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod query;
pub mod replica_wake;
pub mod retention;
pub mod rollout;
pub mod routes;
pub mod secrets;
pub mod seen;
pub mod server;
pub mod state;
pub mod time;
