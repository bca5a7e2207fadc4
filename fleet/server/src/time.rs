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
}
