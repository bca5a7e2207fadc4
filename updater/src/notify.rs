//! systemd notifications: READY, STATUS, and the keep-alive that tells systemd the health checks
//! are still making progress.
//!
//! `rota-commit.service` is `Type=notify` and ordered before `boot-complete.target`, so READY is
//! sent once the verdict is in: the target (and whatever waits for it, like
//! `systemd-bless-boot.service`) is reached only after a commit. While the checks run, a
//! polling loop sends `WATCHDOG=1` and `EXTEND_TIMEOUT_USEC`, so a hung updater is killed
//! by systemd (and the unit's `FailureAction=reboot` falls back) instead of blocking the boot.

use std::cell::Cell;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends notifications when started by systemd (`$NOTIFY_SOCKET` set); does nothing otherwise.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    last_keepalive: Cell<Option<Instant>>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            last_keepalive: Cell::new(None),
        }
    }

    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            last_keepalive: Cell::new(None),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // Losing a notification must not fail a health check; systemd's timeouts cover it.
        if let Err(error) = sd_notify::notify(false, states) {
            log::warn!("sd_notify: {error}");
        }
    }

    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The interval between keep-alives: half of `WatchdogSec=` when systemd set one, else 5 s.
    pub fn keepalive_interval(&self) -> Duration {
        let mut usec = 0u64;
        if self.enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            Duration::from_micros(usec / 2)
        } else {
            Duration::from_secs(5)
        }
    }

    /// Says "still making progress", at most once per interval. Called from the checks' own
    /// polling loop, never from a helper thread: a hung check must starve the watchdog.
    pub fn keepalive(&self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let interval = self.keepalive_interval();
        if self
            .last_keepalive
            .get()
            .is_some_and(|last| now - last < interval)
        {
            return;
        }
        self.last_keepalive.set(Some(now));
        // Start-up timeout extension: a little over two intervals, so one late ping is fine.
        let extend_usec = u32::try_from(interval.as_micros() * 5 / 2).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::Watchdog,
            NotifyState::ExtendTimeoutUsec(extend_usec),
        ]);
    }
}
