//! Progress for long byte-copying steps: a redrawing bar on a terminal, plain lines at every
//! tenth otherwise (CI logs, journald), always on stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Progress of one step measured in bytes.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    reported_tenths: u64,
}

impl Progress {
    /// Starts a step of `total` bytes.
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            reported_tenths: 0,
        }
    }

    /// A step that reports nothing (library callers, `--quiet`).
    pub fn hidden() -> Self {
        Progress {
            bar: None,
            label: String::new(),
            total: 0,
            done: 0,
            reported_tenths: 10,
        }
    }

    /// Adds `bytes` done.
    pub fn inc(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        } else if self.total > 0 && self.reported_tenths < 10 {
            let tenths = (self.done * 10 / self.total).min(10);
            if tenths > self.reported_tenths {
                self.reported_tenths = tenths;
                eprintln!(
                    "{}: {}% ({} of {})",
                    self.label,
                    tenths * 10,
                    crate::size::human(self.done),
                    crate::size::human(self.total)
                );
            }
        }
    }

    /// Ends the step (clears the bar).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
