//! Results on stdout: aligned tables for people, JSON for scripts; human messages on stderr.
//!
//! Every write to stdout goes through [`line`] (the `outln!` macro): when the reader closed the
//! pipe early (`rota robots | head -2`), it returns [`StdoutClosed`] and `main` exits 0 without
//! a word. Messages on stderr go through `note!`, which never fails the command.

use std::io::{IsTerminal as _, Write as _};

use serde::Serialize;

/// The reader of stdout went away (`| head`): nothing more to say, and nothing went wrong.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line to stdout; [`StdoutClosed`] when the pipe is gone.
pub fn line(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(err) => Err(anyhow::Error::new(err).context("writing to stdout")),
    }
}

/// One line on stdout (a result); `?`s out with [`StdoutClosed`] when the pipe is gone.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))?
    };
}

/// One line on stderr (progress, messages for people); a closed stderr is not an error.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Runs `print`; a closed stdout is no error here (the caller's exit code still stands).
pub fn unless_closed(print: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    match print() {
        Err(err) if err.is::<StdoutClosed>() => Ok(()),
        other => other,
    }
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `rows` under `headers`, each column as wide as its widest cell; with no rows, only
/// `empty` (which says there are none and how to make one).
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: Option<&str>) -> anyhow::Result<()> {
    if rows.is_empty() {
        if let Some(empty) = empty {
            note!("{empty}");
            return Ok(());
        }
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    outln!("{}", line(&headers));
    for row in rows {
        outln!("{}", line(row));
    }
    Ok(())
}

pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// `1 robot`, `3 robots`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Bytes for people: `812 B`, `3.1 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An RFC 3339 time from the server, shorter for people: `2026-11-24 10:00:03Z` (UTC, to the
/// second). Anything else comes back unchanged.
pub fn time(rfc3339: &str) -> String {
    match humantime::parse_rfc3339_weak(rfc3339) {
        Ok(at) => humantime::format_rfc3339_seconds(at)
            .to_string()
            .replacen('T', " ", 1),
        Err(_) => rfc3339.to_string(),
    }
}

/// How long before now an RFC 3339 time from the server was, for lists people scan: `45 s
/// ago`, `12 min ago`, `3 h ago`, `2 days ago`; a week or more back it is the date and time
/// (as [`time`]). Clock skew of a few seconds reads `just now`. Anything else comes back
/// unchanged; `--json` keeps the exact value.
pub fn ago(rfc3339: &str) -> String {
    ago_from(rfc3339, std::time::SystemTime::now())
}

fn ago_from(rfc3339: &str, now: std::time::SystemTime) -> String {
    let Ok(at) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_string();
    };
    let (secs, future) = match now.duration_since(at) {
        Ok(past) => (past.as_secs(), false),
        Err(ahead) => (ahead.duration().as_secs(), true),
    };
    if secs < 5 {
        return "just now".into();
    }
    let span = match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h", secs / 3600),
        86_400..604_800 => count((secs / 86_400) as usize, "day", "days"),
        _ => return time(rfc3339),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// The time now in UTC to the second, for a watch's header.
pub fn now_text() -> String {
    time(&humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
}

/// A duration for people: `2s`, `1m 30s`.
pub fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// Redrawn progress only on a terminal: pipes and log files get no control characters.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_like_people_write_them() {
        assert_eq!(size(812), "812 B");
        assert_eq!(size(3_214_648), "3.1 MiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(time("2026-11-24T10:00:03.250Z"), "2026-11-24 10:00:03Z");
        assert_eq!(time("-"), "-");
        let now = humantime::parse_rfc3339("2026-11-24T12:00:00Z").unwrap();
        let table = [
            ("2026-11-24T11:59:58Z", "just now"),
            ("2026-11-24T11:59:15Z", "45 s ago"),
            ("2026-11-24T11:48:00.500Z", "11 min ago"),
            ("2026-11-24T09:00:00Z", "3 h ago"),
            ("2026-11-23T11:00:00Z", "1 day ago"),
            ("2026-11-21T12:00:00Z", "3 days ago"),
            ("2026-11-01T10:00:03Z", "2026-11-01 10:00:03Z"),
            ("2026-11-24T12:00:30Z", "in 30 s"),
            ("never", "never"),
        ];
        for (at, expected) in table {
            assert_eq!(ago_from(at, now), expected, "{at}");
        }
        assert_eq!(count(1, "robot", "robots"), "1 robot");
        assert_eq!(count(0, "robot", "robots"), "0 robots");
    }
}
