//! Logs go to the journal (with priorities and fields) when systemd started us, to stderr
//! otherwise. `ROTA_LOG` sets the level: error, warn, info (default), debug, trace.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        // Only our own crates: dependencies' debug chatter is not for robot operators.
        if record.level() > log::Level::Info && !record.target().starts_with("rota") {
            return;
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

fn level_from_env() -> LevelFilter {
    std::env::var("ROTA_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger once, at start-up.
pub fn init() {
    let level = level_from_env();
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            if journal.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLogger)).is_ok() {
        log::set_max_level(level);
    }
}
