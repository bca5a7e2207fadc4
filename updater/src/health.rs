//! Health checks of a trial boot: systemd units that must become active, HTTP endpoints that
//! must answer with an expected status, commands that must exit 0, plus the units that
//! `boot-complete.target` requires (health checks written the systemd way).
//!
//! Every check polls in small steps under one deadline and feeds the watchdog between steps, so
//! a check that hangs starves the watchdog instead of hiding behind a helper thread.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::config::{CheckKind, HealthCheck, HealthConfig};
use crate::notify::Notifier;

/// How often a pending check is asked again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Output kept per check: enough for a message and a traceback's tail, small for the state file.
const OUTPUT_LIMIT: usize = 4096;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub name: String,
    pub required: bool,
    pub verdict: Verdict,
    /// Command output, HTTP status or unit state: what a person needs to see why.
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    /// Still pending when the deadline passed.
    TimedOut,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::TimedOut => "timed out",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub outcomes: Vec<CheckOutcome>,
}

impl HealthReport {
    /// The first required check that did not pass: the one a rollback names.
    pub fn first_required_failure(&self) -> Option<&CheckOutcome> {
        self.outcomes
            .iter()
            .find(|outcome| outcome.required && outcome.verdict != Verdict::Passed)
    }

    pub fn passed(&self) -> bool {
        self.first_required_failure().is_none()
    }
}

/// One step of a check: done with a verdict, or ask again later.
enum Poll {
    Done(Verdict, String),
    Pending(String),
}

/// Runs every configured check (and the boot-complete units) under the deadline.
pub fn run_checks(config: &HealthConfig, notifier: &Notifier) -> HealthReport {
    let deadline = Instant::now() + config.deadline;
    let mut checks = Vec::new();
    if config.boot_complete_units {
        match boot_complete_requirements(config) {
            Ok(units) => checks.extend(units.into_iter().map(|unit| HealthCheck {
                name: format!("boot-complete: {unit}"),
                required: true,
                kind: CheckKind::Unit(unit),
            })),
            Err(output) => {
                return HealthReport {
                    outcomes: vec![CheckOutcome {
                        name: "boot-complete.target requirements".into(),
                        required: true,
                        verdict: Verdict::Failed,
                        output,
                    }],
                }
            }
        }
    }
    checks.extend(config.checks.iter().cloned());

    let mut outcomes = Vec::new();
    for (index, check) in checks.iter().enumerate() {
        notifier.status(&format!(
            "health check {}/{}: {}",
            index + 1,
            checks.len(),
            check.name
        ));
        let (verdict, output) = run_one(check, config, deadline, notifier);
        let outcome = CheckOutcome {
            name: check.name.clone(),
            required: check.required,
            verdict,
            output,
        };
        match (verdict, check.required) {
            (Verdict::Passed, _) => log::info!("health check {:?} passed", check.name),
            (_, false) => log::warn!(
                "optional health check {:?} did not pass ({verdict}): {}",
                check.name,
                outcome.output
            ),
            (_, true) => log::error!(
                "required health check {:?} did not pass ({verdict}): {}",
                check.name,
                outcome.output
            ),
        }
        let stop = check.required && verdict != Verdict::Passed;
        outcomes.push(outcome);
        if stop {
            // The verdict is in; waiting for the rest would only delay the rollback.
            break;
        }
    }
    HealthReport { outcomes }
}

fn run_one(
    check: &HealthCheck,
    config: &HealthConfig,
    deadline: Instant,
    notifier: &Notifier,
) -> (Verdict, String) {
    // One client per check: building one starts reqwest's I/O thread.
    let mut http_client = None;
    loop {
        notifier.keepalive();
        let step = match &check.kind {
            CheckKind::Unit(unit) => poll_unit(&config.systemctl, unit),
            CheckKind::Http {
                url,
                expect_status,
                body_contains,
                timeout,
            } => poll_http(
                &mut http_client,
                url,
                *expect_status,
                body_contains.as_deref(),
                bounded(*timeout, deadline),
            ),
            CheckKind::Command { argv, timeout } => {
                run_command(argv, bounded(*timeout, deadline), notifier)
            }
        };
        let (last, failed) = match step {
            // An attempt that failed or ran past its own timeout is tried again.
            Poll::Done(Verdict::Failed | Verdict::TimedOut, output) if config.retry_failures => {
                (output, true)
            }
            Poll::Done(verdict, output) => return (verdict, output),
            Poll::Pending(output) => (output, false),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            // A check that kept answering wrong failed; one that never answered timed out.
            return match failed {
                true => (
                    Verdict::Failed,
                    format!("still failing at the deadline: {last}"),
                ),
                false => (Verdict::TimedOut, format!("deadline passed: {last}")),
            };
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn bounded(timeout: Duration, deadline: Instant) -> Duration {
    timeout
        .min(deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(100))
}

/// The units `boot-complete.target` requires, except our own unit (which is one of them).
fn boot_complete_requirements(config: &HealthConfig) -> Result<Vec<String>, String> {
    let output = Command::new(&config.systemctl)
        .args([
            "show",
            "--property=Requires",
            "--value",
            "boot-complete.target",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| {
            format!(
                "run {} show boot-complete.target: {error}",
                config.systemctl
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "{} show boot-complete.target: {}: {}",
            config.systemctl,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|unit| *unit != config.self_unit)
        .map(str::to_owned)
        .collect())
}

/// A unit passes when active, or when it is a oneshot that already exited successfully; it fails
/// when systemd says failed; anything else (activating, not started yet) is asked again.
fn poll_unit(systemctl: &str, unit: &str) -> Poll {
    let output = match Command::new(systemctl)
        .args([
            "show",
            "--property=ActiveState",
            "--property=Result",
            "--property=ExecMainExitTimestampMonotonic",
            unit,
        ])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(error) => return Poll::Done(Verdict::Failed, format!("run {systemctl}: {error}")),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let property = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    let (state, result) = (property("ActiveState"), property("Result"));
    let exited = !matches!(
        property("ExecMainExitTimestampMonotonic").as_str(),
        "" | "0"
    );
    let summary = format!("{unit}: ActiveState={state} Result={result}");
    match state.as_str() {
        "active" => Poll::Done(Verdict::Passed, summary),
        "failed" => Poll::Done(Verdict::Failed, summary),
        "inactive" if exited && result == "success" => Poll::Done(Verdict::Passed, summary),
        "inactive" if exited => Poll::Done(Verdict::Failed, summary),
        _ => Poll::Pending(summary),
    }
}

/// Connection errors are asked again (the service may not listen yet); an answer is final
/// unless the config retries failures.
fn poll_http(
    client: &mut Option<reqwest::blocking::Client>,
    url: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    timeout: Duration,
) -> Poll {
    if client.is_none() {
        match reqwest::blocking::Client::builder().build() {
            Ok(built) => *client = Some(built),
            Err(error) => return Poll::Done(Verdict::Failed, format!("HTTP client: {error}")),
        }
    }
    let Some(client) = client.as_ref() else {
        return Poll::Done(Verdict::Failed, "HTTP client missing".into());
    };
    match client.get(url).timeout(timeout).send() {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = String::new();
            // The body is evidence only; a read error just leaves it short.
            let _ = response.take(OUTPUT_LIMIT as u64).read_to_string(&mut body);
            let expected = match body_contains {
                Some(text) => format!("{expect_status} with {text:?} in the body"),
                None => expect_status.to_string(),
            };
            let output = format!("GET {url}: {status} (expected {expected}) {}", body.trim());
            let body_matches = body_contains.is_none_or(|text| body.contains(text));
            let verdict = if status == expect_status && body_matches {
                Verdict::Passed
            } else {
                Verdict::Failed
            };
            Poll::Done(verdict, output)
        }
        Err(error) => Poll::Pending(format!("GET {url}: {error}")),
    }
}

/// Runs the command once; its exit status is the verdict, its output the evidence.
fn run_command(argv: &[String], timeout: Duration, notifier: &Notifier) -> Poll {
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        // Its own process group, so a timeout kills the whole tree and the pipes close.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return Poll::Done(Verdict::Failed, format!("run {}: {error}", argv[0])),
    };
    let readers = [
        capture(
            child
                .stdout
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        ),
        capture(
            child
                .stderr
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        ),
    ];
    let started = Instant::now();
    let status = loop {
        notifier.keepalive();
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                kill(&mut child);
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(error) => {
                kill(&mut child);
                return Poll::Done(Verdict::Failed, format!("wait for {}: {error}", argv[0]));
            }
        }
    };
    let mut output = String::new();
    for reader in readers {
        if let Some(text) = reader.and_then(|handle| handle.join().ok()) {
            output.push_str(&text);
        }
    }
    let output = tail(output.trim());
    match status {
        Some(status) if status.success() => Poll::Done(Verdict::Passed, output),
        Some(status) => Poll::Done(Verdict::Failed, format!("{}: {status}\n{output}", argv[0])),
        None => Poll::Done(
            Verdict::TimedOut,
            format!(
                "{}: killed after {} s\n{output}",
                argv[0],
                timeout.as_secs_f32()
            ),
        ),
    }
}

fn kill(child: &mut Child) {
    // Already exited between try_wait and kill is fine; reaping it is what matters.
    if let Some(group) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn capture(pipe: Option<Box<dyn Read + Send>>) -> Option<thread::JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(thread::spawn(move || {
        let mut bytes = Vec::new();
        // Output is evidence only; a read error leaves what was read so far.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }))
}

/// The last [`OUTPUT_LIMIT`] bytes, cut at a character boundary: errors come at the end.
fn tail(text: &str) -> String {
    if text.len() <= OUTPUT_LIMIT {
        return text.to_owned();
    }
    let mut start = text.len() - OUTPUT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The log said `did not pass (Failed)`: Rust debug text in a message for people.
    #[test]
    fn verdicts_read_as_words_not_debug_text() {
        let words: Vec<String> = [Verdict::Passed, Verdict::Failed, Verdict::TimedOut]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(words, ["passed", "failed", "timed out"]);
    }
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;

    fn config(checks: Vec<HealthCheck>) -> HealthConfig {
        HealthConfig {
            deadline: Duration::from_secs(30),
            boot_complete_units: false,
            self_unit: "rota-commit.service".into(),
            systemctl: "systemctl".into(),
            checks,
            retry_failures: false,
        }
    }

    fn command(name: &str, required: bool, script: &str) -> HealthCheck {
        HealthCheck {
            name: name.into(),
            required,
            kind: CheckKind::Command {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                timeout: Duration::from_secs(20),
            },
        }
    }

    /// Answers every connection with `status` and closes.
    fn http_server(status: u16) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        url
    }

    fn http(name: &str, url: String, expect_status: u16) -> HealthCheck {
        http_with_body(name, url, expect_status, None)
    }

    fn http_with_body(
        name: &str,
        url: String,
        expect_status: u16,
        body_contains: Option<&str>,
    ) -> HealthCheck {
        HealthCheck {
            name: name.into(),
            required: true,
            kind: CheckKind::Http {
                url,
                expect_status,
                body_contains: body_contains.map(str::to_owned),
                timeout: Duration::from_secs(5),
            },
        }
    }

    #[test]
    fn verdicts_by_check_kind() {
        let cases: Vec<(&str, Vec<HealthCheck>, Option<&str>, &str)> = vec![
            (
                "all pass",
                vec![command("a", true, "true"), command("b", true, "exit 0")],
                None,
                "",
            ),
            (
                "required command fails with its output",
                vec![
                    command("ok", true, "true"),
                    command("disk", true, "echo disk full >&2; exit 3"),
                ],
                Some("disk"),
                "disk full",
            ),
            (
                "optional failure is only logged",
                vec![command("opt", false, "exit 1")],
                None,
                "",
            ),
            (
                "missing program",
                vec![HealthCheck {
                    name: "ghost".into(),
                    required: true,
                    kind: CheckKind::Command {
                        argv: vec!["/nonexistent/prog".into()],
                        timeout: Duration::from_secs(1),
                    },
                }],
                Some("ghost"),
                "/nonexistent/prog",
            ),
            (
                "http expected status",
                vec![http("api", http_server(200), 200)],
                None,
                "",
            ),
            (
                "http wrong status",
                vec![http("api", http_server(503), 200)],
                Some("api"),
                "503",
            ),
            (
                "http body has the text",
                vec![http_with_body("api", http_server(200), 200, Some("ok"))],
                None,
                "",
            ),
            (
                "http body lacks the text",
                vec![http_with_body(
                    "api",
                    http_server(200),
                    200,
                    Some("healthy"),
                )],
                Some("api"),
                "\"healthy\" in the body",
            ),
        ];
        for (name, checks, failing, needle) in cases {
            let report = run_checks(&config(checks), &Notifier::disabled());
            let failure = report.first_required_failure();
            assert_eq!(
                failure.map(|outcome| outcome.name.as_str()),
                failing,
                "{name}: {report:?}"
            );
            if let Some(failure) = failure {
                assert!(
                    failure.output.contains(needle),
                    "{name}: {:?}",
                    failure.output
                );
            }
        }
    }

    /// An app's HTTP check used to fail on the first wrong answer, so a service that answered
    /// 503 while it warmed up was rolled back although it was healthy a moment later.
    #[test]
    fn http_wrong_answers_are_asked_again_until_the_deadline_when_failures_retry() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        thread::spawn(move || {
            for (n, stream) in listener.incoming().flatten().enumerate() {
                let mut stream = stream;
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = if n < 3 {
                    "{\"status\":\"starting\"}"
                } else {
                    "{\"status\":\"healthy\"}"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    if n < 2 { 503 } else { 200 },
                    body.len()
                );
            }
        });
        let check = http_with_body("ready", url, 200, Some("healthy"));
        let mut once = config(vec![check.clone()]);
        let first = run_checks(&once, &Notifier::disabled());
        assert_eq!(first.outcomes[0].verdict, Verdict::Failed, "{first:?}");
        assert!(first.outcomes[0].output.contains("503"), "{first:?}");

        once.retry_failures = true;
        let retried = run_checks(&once, &Notifier::disabled());
        assert!(retried.passed(), "{retried:?}");

        // Wrong to the end: failed (not timed out), with the last answer as evidence.
        let mut never = config(vec![http("never", http_server(500), 200)]);
        never.retry_failures = true;
        never.deadline = Duration::from_secs(1);
        let report = run_checks(&never, &Notifier::disabled());
        let failure = report.first_required_failure().expect("failed");
        assert_eq!(failure.verdict, Verdict::Failed);
        assert!(
            failure.output.contains("still failing at the deadline")
                && failure.output.contains("500"),
            "{failure:?}"
        );
    }

    /// With failures retried, a command attempt that ran past its own timeout used to end the
    /// check at once, although the deadline left time for more attempts.
    #[test]
    fn a_command_attempt_that_times_out_is_tried_again_when_failures_retry() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        // The first attempt hangs past its 1 s timeout; the next one passes.
        let script = format!(
            "if [ -e {0} ]; then exit 0; fi; touch {0}; sleep 30",
            first.display()
        );
        let mut check = command("slow start", true, &script);
        if let CheckKind::Command { timeout, .. } = &mut check.kind {
            *timeout = Duration::from_secs(1);
        }
        let mut config = config(vec![check]);
        config.deadline = Duration::from_secs(10);
        config.retry_failures = true;
        let report = run_checks(&config, &Notifier::disabled());
        assert!(report.passed(), "{report:?}");
    }

    #[test]
    fn a_check_still_pending_at_the_deadline_times_out() {
        let mut config = config(vec![command("slow", true, "sleep 30")]);
        config.deadline = Duration::from_secs(1);
        let report = run_checks(&config, &Notifier::disabled());
        let failure = report.first_required_failure().expect("timed out");
        assert_eq!(failure.verdict, Verdict::TimedOut);
        assert!(failure.output.contains("killed"), "{failure:?}");
    }

    #[test]
    fn units_are_read_from_systemctl_including_boot_complete_requirements() {
        let dir = tempfile::tempdir().unwrap();
        let systemctl = dir.path().join("systemctl");
        // Stands in for systemctl where no systemd runs: answers `show` like systemd does.
        std::fs::write(
            &systemctl,
            r#"#!/bin/sh
case "$*" in
  *"--value boot-complete.target") echo "rota-commit.service good.service oneshot-ok.service" ;;
  *good.service) printf 'ActiveState=active\nResult=success\nExecMainExitTimestampMonotonic=0\n' ;;
  *oneshot-ok.service) printf 'ActiveState=inactive\nResult=success\nExecMainExitTimestampMonotonic=5\n' ;;
  *bad.service) printf 'ActiveState=failed\nResult=exit-code\nExecMainExitTimestampMonotonic=5\n' ;;
  *) printf 'ActiveState=activating\nResult=success\nExecMainExitTimestampMonotonic=0\n' ;;
esac
"#,
        )
        .unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unit = |name: &str| HealthCheck {
            name: name.into(),
            required: true,
            kind: CheckKind::Unit(name.into()),
        };
        let mut health = config(vec![unit("good.service"), unit("bad.service")]);
        health.systemctl = systemctl.display().to_string();
        health.boot_complete_units = true;
        let report = run_checks(&health, &Notifier::disabled());
        let names: Vec<_> = report
            .outcomes
            .iter()
            .map(|outcome| outcome.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "boot-complete: good.service",
                "boot-complete: oneshot-ok.service",
                "good.service",
                "bad.service"
            ]
        );
        let failure = report.first_required_failure().unwrap();
        assert_eq!(failure.name, "bad.service");
        assert!(failure.output.contains("ActiveState=failed"));

        health.checks = vec![unit("starting.service")];
        health.boot_complete_units = false;
        health.deadline = Duration::from_secs(1);
        let report = run_checks(&health, &Notifier::disabled());
        let failure = report.first_required_failure().unwrap();
        assert_eq!(failure.verdict, Verdict::TimedOut);
        assert!(failure.output.contains("activating"), "{failure:?}");
    }
}
