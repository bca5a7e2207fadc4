//! rota-updater: streams a signed bundle into the inactive slot, trial-boots it, and commits it
//! only after health checks pass, rolling back otherwise.
//!
//! One module per concept; the byte path is `install`: source → plan (reuse from
//! the booted slot or fetch) → `rota_bundle` (verify, decompress) → sink. The lifecycle is `state` (diagram in `STATE.md`), persisted by
//! `store`. `daemon` talks to the fleet server, queuing its reports in `outbox` and describing the
//! robot with `inventory`.

pub mod apps;
pub mod atomic_file;
pub mod cli;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod health;
pub mod install;
pub mod inventory;
pub mod local_time;
pub mod logging;
pub mod notify;
pub mod outbox;
pub mod progress;
pub mod retry;
pub mod state;
pub mod status;
pub mod store;
