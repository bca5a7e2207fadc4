//! The robot's local wall-clock time, for the update windows of fleet assignments.
//!
//! Local time is the system time zone as jiff finds it (`TZ`, else `/etc/localtime`; UTC when
//! neither names one). Windows are wall-clock times: `02:00-04:00` means 02:00 on the robot's
//! clock, whatever its offset from UTC that day.
//!
//! For tests only: `ROTA_TEST_NOW=2026-11-24T23:30` replaces the clock with that local time, so
//! a test can put a robot inside or outside a window without waiting for one.

use jiff::civil::DateTime;
use jiff::{Span, ZonedDateTime};
use rota_protocol::robot::UpdateWindow;

/// Test hook: a local `YYYY-MM-DDTHH:MM[:SS]` used instead of the clock.
pub const TEST_NOW_ENV: &str = "ROTA_TEST_NOW";

/// The local wall-clock time now (or [`TEST_NOW_ENV`]'s).
pub fn now() -> DateTime {
    if let Ok(text) = std::env::var(TEST_NOW_ENV) {
        match text.parse::<DateTime>() {
            Ok(now) => return now,
            Err(error) => log::warn!("{TEST_NOW_ENV}={text:?} ignored: {error}"),
        }
    }
    ZonedDateTime::now().datetime()
}

/// When `window` opens next after local time `now`: `None` while it is open. `Err` names a
/// window the robot cannot read (the server validates them, so this is a server bug).
pub fn next_opening(window: &UpdateWindow, now: DateTime) -> Result<Option<DateTime>, String> {
    let weekday = now.weekday().to_monday_zero_offset() as u32;
    let minute = now.hour() as u32 * 60 + now.minute() as u32;
    let wait = window
        .minutes_until_open(weekday, minute)
        .map_err(|error| format!("update window {window}: {error}"))?;
    if wait == 0 {
        return Ok(None);
    }
    // Wall-clock arithmetic: the window opens at its HH:MM even across a DST change.
    let this_minute = DateTime::new(
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        0,
        0,
    )
    .and_then(|minute| minute.checked_add(Span::new().minutes(wait)))
    .map_err(|error| format!("update window {window} from {now}: {error}"))?;
    Ok(Some(this_minute))
}

/// `YYYY-MM-DD HH:MM`, as `RobotEvent::WaitingForWindow` carries it.
pub fn format_minute(time: DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime {
        text.parse().unwrap()
    }

    #[test]
    fn next_opening_is_the_window_start_in_wall_clock_time() {
        let nightly = UpdateWindow::parse("02:00-04:00").unwrap();
        let weekdays = UpdateWindow::parse("mon,tue 22:00-01:00").unwrap();
        // 2026-11-24 is a Tuesday.
        let cases = [
            (&nightly, "2026-11-24T23:30:59", Some("2026-11-25 02:00")),
            (&nightly, "2026-11-24T02:00", None),
            (&nightly, "2026-11-24T03:59:59", None),
            (&nightly, "2026-11-24T04:00", Some("2026-11-25 02:00")),
            (&nightly, "2026-12-31T12:00", Some("2027-01-01 02:00")),
            (&weekdays, "2026-11-24T23:30", None),
            // Tuesday's window runs into Wednesday 01:00, then Monday is next.
            (&weekdays, "2026-11-25T00:59", None),
            (&weekdays, "2026-11-25T01:00", Some("2026-11-30 22:00")),
        ];
        for (window, now, expected) in cases {
            let opening = next_opening(window, at(now)).unwrap().map(format_minute);
            assert_eq!(opening.as_deref(), expected, "{window} at {now}");
        }
    }

    #[test]
    fn an_unreadable_window_is_an_error_naming_it() {
        let broken = UpdateWindow {
            start: "25:00".into(),
            end: "04:00".into(),
            days: Vec::new(),
        };
        let error = next_opening(&broken, at("2026-11-24T12:00")).unwrap_err();
        assert!(error.contains("25:00"), "{error}");
    }
}
