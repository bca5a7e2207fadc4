//! Times are stored as unix milliseconds and shown as RFC 3339 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Unix milliseconds of an RFC 3339 UTC time (`2024-05-01T10:00:00Z`, fractions allowed).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text.trim()).map_err(|err| {
        format!("{text:?} is not an RFC 3339 UTC time like 2024-05-01T10:00:00Z: {err}")
    })?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// A point in time as operators write it: RFC 3339 (`2026-11-24T10:00:00Z`) or an age
/// (`2-hours-ago`, `90m`, `1day`), relative to `now_ms`.
pub fn parse_point(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(ms) = parse_rfc3339_ms(text) {
        return Ok(ms);
    }
    let age = text
        .strip_suffix("-ago")
        .unwrap_or(text)
        .replace(['-', ' '], "");
    let age = humantime::parse_duration(&age).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor an age like 2-hours-ago or 90m")
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_formats() {
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339_ms(&rfc3339(42)), Ok(42));
        assert!(parse_rfc3339_ms("2 hours ago")
            .unwrap_err()
            .contains("RFC 3339"));
    }

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn points_are_times_or_ages() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_point("2-hours-ago", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_point("90m", now).unwrap(), now - 5_400_000);
        assert_eq!(parse_point("1day", now).unwrap(), now - 86_400_000);
        assert_eq!(
            parse_point("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_point("yesterday-ish", now).is_err());
    }
}
