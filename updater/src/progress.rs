//! Install progress for people: a redrawn bar on a terminal, otherwise a plain line per quarter
//! (or per 30 s on a slow link): the journal keeps every line, so a bar's redraws or a line per
//! few percent would flood it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives the bytes verified and written so far.
pub trait Progress {
    fn start(&mut self, total: u64, already_done: u64);
    fn advance(&mut self, done: u64);
    fn finish(&mut self);
}

/// Picks the bar on a terminal, lines otherwise.
pub fn for_stderr(label: &str) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::new(label))
    } else {
        Box::new(Lines::new(label, 25, Duration::from_secs(30)))
    }
}

pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(label: &str) -> Bar {
        // Hidden until the size is known, so no empty "0 B/0 B" bar flashes up first.
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64, already_done: u64) {
        self.bar.set_length(total);
        self.bar.set_position(already_done);
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    fn advance(&mut self, done: u64) {
        self.bar.set_position(done);
    }
    fn finish(&mut self) {
        self.bar.finish();
    }
}

/// Logs a line each time another `step_percent` of the image is done, or `every` passed since
/// the last line (a slow link still shows it is moving), whichever comes first.
pub struct Lines {
    label: String,
    total: u64,
    step_percent: u64,
    next_percent: u64,
    every: Duration,
    last_line: Instant,
}

impl Lines {
    pub fn new(label: &str, step_percent: u64, every: Duration) -> Lines {
        Lines {
            label: label.to_owned(),
            total: 0,
            step_percent: step_percent.max(1),
            next_percent: 0,
            every,
            last_line: Instant::now(),
        }
    }

    fn percent(&self, done: u64) -> u64 {
        if self.total == 0 {
            100
        } else {
            (u128::from(done) * 100 / u128::from(self.total)) as u64
        }
    }

    fn next_step(&self, percent: u64) -> u64 {
        percent - percent % self.step_percent + self.step_percent
    }
}

impl Progress for Lines {
    fn start(&mut self, total: u64, already_done: u64) {
        self.total = total;
        let percent = self.percent(already_done);
        self.next_percent = self.next_step(percent);
        self.last_line = Instant::now();
        if already_done > 0 {
            log::info!(
                "{}: resuming at {percent}% ({} of {})",
                self.label,
                HumanBytes(already_done),
                HumanBytes(total)
            );
        }
    }
    fn advance(&mut self, done: u64) {
        let percent = self.percent(done);
        let due = percent >= self.next_percent || self.last_line.elapsed() >= self.every;
        if due && percent < 100 {
            log::info!(
                "{}: {percent}% ({} of {})",
                self.label,
                HumanBytes(done),
                HumanBytes(self.total)
            );
            self.next_percent = self.next_step(percent);
            self.last_line = Instant::now();
        }
    }
    fn finish(&mut self) {
        log::info!("{}: 100% ({})", self.label, HumanBytes(self.total));
    }
}

/// For library callers that want no output.
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}
