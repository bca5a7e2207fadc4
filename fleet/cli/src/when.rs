//! Points in time on the command line (`--since`, `--until`): RFC 3339 with any offset, a
//! date, or a time ago (`2-hours-ago`, `30m`, `1d12h`). The server is sent RFC 3339 UTC.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `--help` says the flags take.
pub const FORMS: &str =
    "RFC 3339 (2024-05-01T10:00:00Z or +02:00), a date (2024-05-01, midnight UTC), or a time ago (2-hours-ago, 30m, 1d12h)";

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When(pub SystemTime);

impl When {
    /// RFC 3339 UTC with milliseconds, as the server takes it.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.0).to_string()
    }
}

impl FromStr for When {
    type Err = String;
    fn from_str(text: &str) -> Result<When, String> {
        parse(text, SystemTime::now()).map(When)
    }
}

/// `text` as a point in time, relative forms counted back from `now`.
pub fn parse(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    let starts_with_date = text.len() >= 10
        && text.as_bytes()[4] == b'-'
        && text.as_bytes()[7] == b'-'
        && text[..4].bytes().all(|b| b.is_ascii_digit());
    if starts_with_date {
        return parse_absolute(text);
    }
    let ago = parse_ago(text).ok_or_else(|| format!("{text:?} is not a time: use {FORMS}"))?;
    now.checked_sub(ago)
        .ok_or_else(|| format!("{text:?} is before 1970"))
}

/// `2-hours-ago`, `2 hours ago`, `2h`, `1d12h`, `90s`, `1week`.
fn parse_ago(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    let span = lower
        .strip_suffix("ago")
        .map(|rest| rest.trim_end_matches(['-', ' ']))
        .unwrap_or(&lower);
    // humantime reads `2h 30min` and `2hours`; let `2-hours` and `2 hours` mean the same.
    let mut compact = String::with_capacity(span.len());
    let mut previous_was_digit = false;
    for c in span.chars() {
        match c {
            '-' | ' ' if previous_was_digit => continue,
            '-' => compact.push(' '),
            other => compact.push(other),
        }
        previous_was_digit = c.is_ascii_digit();
    }
    if compact.is_empty() || !compact.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(&compact).ok()
}

/// RFC 3339 with `Z` or an offset, or a bare date (midnight UTC).
fn parse_absolute(text: &str) -> Result<SystemTime, String> {
    let invalid = |why: &str| format!("{text:?} is not a time ({why}): use {FORMS}");
    if text.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z"))
            .map_err(|err| invalid(&err.to_string()));
    }
    let (local, offset_secs) = split_offset(text)
        .ok_or_else(|| invalid("it needs a time zone: Z for UTC, or an offset like +02:00"))?;
    let local = humantime::parse_rfc3339_weak(local).map_err(|err| invalid(&err.to_string()))?;
    // The local time is `offset` ahead of UTC.
    let utc = if offset_secs >= 0 {
        local.checked_sub(Duration::from_secs(offset_secs.unsigned_abs()))
    } else {
        local.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    };
    utc.filter(|t| *t >= UNIX_EPOCH)
        .ok_or_else(|| invalid("out of range"))
}

/// Splits `...Z` or `...+HH:MM` / `...-HH:MM` into the time and the offset in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(time) = text.strip_suffix(['Z', 'z']) {
        return Some((time, 0));
    }
    let split = text.len().checked_sub(6)?;
    let (time, offset) = text.split_at_checked(split)?;
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = offset[1..].split_once(':')?;
    let hours: i64 = hours.parse().ok()?;
    let minutes: i64 = minutes.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((time, sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn every_form_lands_on_the_right_instant() {
        let now = at("2024-05-01T12:00:00Z");
        let cases = [
            ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
            ("2024-05-01T10:00:00.250Z", "2024-05-01T10:00:00.250Z"),
            ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
            ("2024-05-01T05:30:00-04:30", "2024-05-01T10:00:00Z"),
            ("2024-05-01 10:00:00Z", "2024-05-01T10:00:00Z"),
            ("2024-04-30", "2024-04-30T00:00:00Z"),
            ("2-hours-ago", "2024-05-01T10:00:00Z"),
            ("2 hours ago", "2024-05-01T10:00:00Z"),
            ("2hours", "2024-05-01T10:00:00Z"),
            ("30m", "2024-05-01T11:30:00Z"),
            ("30-minutes-ago", "2024-05-01T11:30:00Z"),
            ("1d12h", "2024-04-30T00:00:00Z"),
            ("1-week-ago", "2024-04-24T12:00:00Z"),
            ("90s", "2024-05-01T11:58:30Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text, now), Ok(at(expected)), "{text}");
        }
    }

    #[test]
    fn nonsense_and_missing_zones_are_refused_with_the_forms() {
        let now = at("2024-05-01T12:00:00Z");
        for bad in [
            "",
            "yesterday",
            "ago",
            "hours-ago",
            "2-parsecs-ago",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:00+25:00",
            "2024-13-01T10:00:00Z",
        ] {
            let err = parse(bad, now).unwrap_err();
            assert!(
                err.contains("RFC 3339") && err.contains("2-hours-ago"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sent_to_the_server_as_utc() {
        let when: When = "2024-05-01T12:00:00+02:00".parse().unwrap();
        assert_eq!(when.rfc3339(), "2024-05-01T10:00:00.000Z");
    }
}
