//! The one backoff policy for every network retry on the robot: the fleet poll, opening a
//! bundle source, and reconnecting in the middle of an install.

use std::thread;
use std::time::Duration;

/// Exponential backoff: starts at `initial`, doubles per wait, capped at `max`; `reset` after a
/// success starts it again.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            next: initial.min(max),
            max,
        }
    }

    /// The next wait starts from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }

    /// What [`Self::wait`] would sleep: the current delay, or `hint` (a server's Retry-After)
    /// when there is one, capped.
    pub fn delay(&self, hint: Option<Duration>) -> Duration {
        hint.map_or(self.next, |hint| hint.min(self.max))
    }

    /// Sleeps for [`Self::delay`] and doubles the delay.
    pub fn wait(&mut self, hint: Option<Duration>) {
        thread::sleep(self.delay(hint));
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(1), ms(3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(backoff.delay(None));
            backoff.wait(None);
        }
        assert_eq!(seen, [ms(1), ms(2), ms(3), ms(3)]);
        assert_eq!(backoff.delay(Some(ms(10))), ms(3), "a hint is capped too");
        assert_eq!(backoff.delay(Some(ms(2))), ms(2));
        backoff.reset();
        assert_eq!(backoff.delay(None), ms(1));
    }
}
