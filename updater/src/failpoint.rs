//! Named points where a crash test makes the process stop, instead of relying on timing luck.
//!
//! `ROTA_FAILPOINT=NAME` exits at the first time `NAME` is reached, `ROTA_FAILPOINT=NAME@N` at the
//! N-th time (1-based), with exit code [`FAILPOINT_EXIT_CODE`] and without running destructors or
//! flushing anything, which is as close to a power cut as a process can get on its own.
//! Unset, a failpoint costs one environment lookup per call.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const FAILPOINT_EXIT_CODE: i32 = 97;
pub const FAILPOINT_ENV: &str = "ROTA_FAILPOINT";

/// Every failpoint the updater has, so tests can iterate over them.
pub const ALL: &[&str] = &[
    "after-write-temp",
    "after-fsync-temp",
    "after-rename",
    "after-mark-bad",
    "after-run-written",
    "after-progress-saved",
    "before-begin-trial",
    "after-begin-trial",
    "after-trial-recorded",
    "before-mark-good",
    "after-mark-good",
    "after-mark-bad-trial",
    "after-mark-bad-unverified",
    "app-extracted",
    "app-pending-recorded",
    "app-switched",
    "app-restarted",
];

fn armed() -> &'static Option<(String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(FAILPOINT_ENV).ok()?;
        match spec.split_once('@') {
            Some((name, count)) => Some((name.to_owned(), count.parse().ok()?)),
            None => Some((spec, 1)),
        }
    })
}

/// Stops the process here when the test armed this point.
pub fn hit(name: &'static str) {
    debug_assert!(ALL.contains(&name), "failpoint {name} is not listed in ALL");
    let Some((armed_name, at)) = armed() else {
        return;
    };
    if armed_name != name {
        return;
    }
    static HITS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);
    let mut hits = HITS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = hits
        .get_or_insert_with(HashMap::new)
        .entry(name)
        .or_insert(0);
    *count += 1;
    if *count == *at {
        eprintln!("failpoint {name} reached (hit {count}): exiting");
        std::process::exit(FAILPOINT_EXIT_CODE);
    }
}
