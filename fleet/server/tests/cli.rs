//! The `rota` CLI as a new user meets it, against a real rota-server: closed pipes, JSON
//! errors, deployments that reached nobody, rollback dry runs and their limits, plain words,
//! empty lists, upload progress; and a table running every command four ways.

mod common;

use std::process::{Command, Output, Stdio};

use common::robots::{Behaviour, SimFleet};
use common::{cli_bin, Server, ADMIN_KEY};
use serde_json::Value;

/// `rota ARGS` against `server` with stdout a pipe whose reader is already gone, as
/// `rota ARGS | head -0` leaves it.
fn rota_into_closed_pipe(server: &str, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let writer = std::fs::File::from(writer);
    Command::new(cli_bin())
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("ROTA_SERVER", server)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `rota ARGS` against any URL (the real server, or one where nothing listens).
fn rota_at(server: &str, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(cli_bin())
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("ROTA_SERVER", server)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Rust debug formatting and raw units that must never reach a person.
fn assert_plain(what: &str, output: &str) {
    for leak in [
        "KeyId(",
        "Some(",
        "None,",
        "(Failed)",
        "(Passed)",
        "unix seconds",
        " 1 robots",
        "Os {",
        "kind:",
        "\u{1b}[",
        "panicked",
        "RUST_BACKTRACE",
    ] {
        assert!(!output.contains(leak), "{what}: {leak:?} in {output}");
    }
}

/// The one JSON error line `--json` puts on stderr.
fn json_error(what: &str, out: &Output) -> Value {
    let stderr = text(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("{what}: stderr is not a JSON error: {stderr}"));
    let error = &value["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {value}"
    );
    assert!(error["code"].as_str().is_some(), "{what}: {value}");
    assert!(error.get("status").is_some(), "{what}: {value}");
    value
}

/// Bug: `rota robots | head -2` panicked with `failed printing to stdout: Broken pipe` and exit
/// 134. Every command ends quietly when its reader goes away.
#[test]
fn a_listing_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 3, |_| Behaviour::default());
    for args in [
        &["robots"][..],
        &["--json", "robots"],
        &["audit"],
        &["--help"],
    ] {
        let out = rota_into_closed_pipe(&server.url, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

/// Bug: `rota --json deploy 2.1.0 --to group:nope` printed plain text. Under --json an error is
/// `{"error": {"message", "status", "code"}}` on stderr, exit 1, nothing on stdout.
#[test]
fn errors_under_json_are_json_with_status_and_code() {
    let server = Server::start();
    server.publish("2.1.0");
    let out = server.rota(
        ADMIN_KEY,
        &["--json", "deploy", "2.1.0", "--to", "group:nope"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let error = json_error("deploy to a missing group", &out);
    assert_eq!(error["error"]["status"], 404);
    assert_eq!(error["error"]["code"], "not_found");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    // Without --json: one plain line.
    let plain = server.rota(ADMIN_KEY, &["deploy", "2.1.0", "--to", "group:nope"]);
    assert_eq!(plain.status.code(), Some(1));
    assert!(
        text(&plain.stderr).starts_with("rota: error: "),
        "{}",
        text(&plain.stderr)
    );
}

/// Bug: a deployment whose only robot was skipped (it had rolled back from that release)
/// ended `succeeded: 0 committed`, exit 0, with a green badge.
#[test]
fn a_deployment_whose_robots_were_all_skipped_is_not_a_success() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 1, |_| Behaviour {
        unhealthy_versions: ["2.1.0".to_string()].into(),
        gate: None,
    });
    server.publish("2.1.0");
    let wait = [
        "deploy",
        "2.1.0",
        "--to",
        "all",
        "--wait",
        "--timeout",
        "120",
    ];
    let first = server.rota(ADMIN_KEY, &wait);
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let again = server.rota(ADMIN_KEY, &wait);
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("robot-001 v2.1.0 skipped"), "{stderr}");
    assert!(stderr.contains("no robot updated"), "{stderr}");
    assert!(!stderr.contains("succeeded"), "{stderr}");
    assert!(stderr.contains("1 robot targeted"), "{stderr}");
    let no_wait = server.rota(ADMIN_KEY, &["deploy", "2.1.0", "--to", "all"]);
    assert_eq!(no_wait.status.code(), Some(5), "{}", text(&no_wait.stderr));
    // Nobody reading stdout any more does not turn it into a success either.
    let piped = rota_into_closed_pipe(&server.url, &["deploy", "2.1.0", "--to", "all"]);
    assert_eq!(piped.status.code(), Some(5), "{}", text(&piped.stderr));
    let id = text(&again.stdout).trim().to_string();
    let deployment = server.get(&format!("/deployments/{id}"));
    assert_eq!(deployment["state"], "no_robot_updated", "{deployment:#}");
    // The dashboard shows it with the badge for bad endings, not the green one.
    let app = http_text(&format!("{}/ui/app.js", server.url));
    let bad = app
        .lines()
        .find(|line| line.contains("return \"bad\""))
        .expect("the dashboard's bad tone");
    assert!(bad.contains("\"no_robot_updated\""), "{bad}");
}

fn http_text(url: &str) -> String {
    common::http().get(url).send().unwrap().text().unwrap()
}

/// Bug: `rota rollback --dry-run` printed exactly what a real rollback prints.
#[test]
fn a_rollback_dry_run_says_it_is_one_and_that_nothing_changed() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 2, |_| Behaviour::default());
    for version in ["2.0.0", "2.1.0"] {
        server.publish(version);
        server.rota_ok(&[
            "deploy",
            version,
            "--to",
            "all",
            "--wait",
            "--timeout",
            "120",
        ]);
    }
    let out = server.rota(ADMIN_KEY, &["rollback", "--dry-run"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.starts_with("dry run: nothing changes"), "{stderr}");
    assert!(stderr.contains("would go back to v2.0.0"), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let json = server.rota_json(&["rollback", "--dry-run"]);
    assert_eq!(json["dry_run"], true, "{json:#}");
    let deployments = server.get("/deployments");
    assert!(
        deployments
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["kind"] != "rollback"),
        "{deployments:#}"
    );
}

/// Bug: plain `rota rollback` moved robots up from 2.0.0 to 2.1.0 after a rollback to 2.0.0:
/// "previous" was the release committed before the current one, which was the newer one.
#[test]
fn plain_rollback_never_moves_a_robot_to_a_newer_release() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 2, |_| Behaviour::default());
    for version in ["1.9.0", "2.0.0", "2.1.0"] {
        server.publish(version);
        server.rota_ok(&[
            "deploy",
            version,
            "--to",
            "all",
            "--wait",
            "--timeout",
            "120",
        ]);
    }
    server.rota_ok(&["rollback", "--to", "v2.0.0", "--wait", "--timeout", "120"]);
    let plan = server.rota_json(&["rollback", "--dry-run"]);
    let versions: Vec<&str> = plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| group["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.9.0"], "{plan:#}");
}

/// Bug: `--to 2-hours-ago` before any history answered with one robot's name and not where
/// its history starts, and a time in the future was accepted.
#[test]
fn rollback_to_a_time_refuses_the_future_and_says_where_history_starts() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 2, |_| Behaviour::default());
    server.publish("2.0.0");
    server.rota_ok(&[
        "deploy",
        "2.0.0",
        "--to",
        "all",
        "--wait",
        "--timeout",
        "120",
    ]);

    let future = server.rota(
        ADMIN_KEY,
        &["--json", "rollback", "--to", "2999-01-01T00:00:00Z"],
    );
    assert_eq!(future.status.code(), Some(1));
    let error = json_error("future", &future);
    assert_eq!(error["error"]["status"], 422, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in the future"),
        "{error}"
    );

    let before = server.rota(ADMIN_KEY, &["rollback", "--to", "2-hours-ago", "--dry-run"]);
    let stderr = text(&before.stderr);
    assert_eq!(before.status.code(), Some(1), "{stderr}");
    for robot in ["robot-001", "robot-002"] {
        assert!(stderr.contains(robot), "{robot}: {stderr}");
    }
    assert_eq!(
        stderr.matches("history starts later, at 20").count(),
        2,
        "{stderr}"
    );
}

/// Bug: `[KeyId(e2656e1d39878b4f)]`, `1 robots`, sizes in bytes and Rust slot names reached
/// people; the server's log had ANSI colour codes in a file.
#[test]
fn text_output_has_plain_words_human_sizes_and_no_colour_in_files() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 1, |_| Behaviour::default());
    server.publish("2.0.0");
    let deploy = server.rota(ADMIN_KEY, &["deploy", "2.0.0", "--to", "all", "--wait"]);
    assert_plain("deploy", &text(&deploy.stderr));
    assert!(
        text(&deploy.stderr).contains("1 robot targeted"),
        "{}",
        text(&deploy.stderr)
    );
    let releases = server.rota_ok(&["release", "list"]);
    assert!(releases.contains(" KiB"), "{releases}");
    let json = server.rota_json(&["release", "list"]);
    assert!(json[0]["size"].is_u64(), "exact bytes in JSON: {json:#}");
    let show = server.rota_ok(&["robots", "show", "robot-001"]);
    assert_plain("robots show", &show);

    let stranger = server.write_bundle(
        "stranger",
        &common::bundle("9.9.9", common::COMPATIBLE, &common::stranger_key(), 4096),
    );
    let refused = server.rota(
        ADMIN_KEY,
        &["release", "publish", stranger.to_str().unwrap()],
    );
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no signature by a trusted key: signed by key id "),
        "{stderr}"
    );
    assert_plain("untrusted bundle", &stderr);

    // The server's own log, written to a file, has no colour codes.
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let mut child = Command::new(common::server_bin())
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("ROTA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("ROTA_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("ROTA_DATABASE")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut url,
    )
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.is_empty(), "the server logged nothing at info");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in the log file: {log:?}"
    );
}

/// Bug: empty `rota env` and `rota groups` printed only a header.
#[test]
fn empty_lists_say_there_are_none_and_how_to_create_one() {
    let server = Server::start();
    for (args, how) in [
        (&["env"][..], "rota env set"),
        (&["groups"], "rota groups create"),
        (&["robots"], "enroll"),
        (&["deployments"], "rota deploy"),
        (&["release", "list"], "rota release publish"),
    ] {
        let out = server.rota(ADMIN_KEY, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("no "), "{args:?}: {stderr}");
        assert!(stderr.contains(how), "{args:?}: {stderr}");
        // JSON stays an empty list.
        assert_eq!(server.rota_json(args), Value::Array(Vec::new()), "{args:?}");
    }
}

/// Bug: publishing printed ten `uploading: 10% of 3214648 bytes` lines into pipes and logs.
#[test]
fn publish_progress_piped_is_one_parseable_line() {
    let server = Server::start();
    let path = server.write_bundle(
        "big",
        &common::bundle("3.0.0", common::COMPATIBLE, &common::trusted_key(), 2 << 20),
    );
    let out = server.rota(ADMIN_KEY, &["release", "publish", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("uploading"), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("published rel_"), "{stderr}");
    assert!(stderr.contains(" MiB"), "{stderr}");
    assert!(text(&out.stdout).trim().starts_with("rel_"));
}

/// The subcommands `rota ARGS --help` lists under `Commands:` (without `help`).
fn subcommands(server: &str, args: &[&str]) -> Vec<String> {
    let mut help = args.to_vec();
    help.push("--help");
    let out = text(&rota_at(server, &help).stdout);
    out.lines()
        .skip_while(|line| line.trim_end() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// On a terminal the upload is one redrawn bar, not a line per 10%. Runs `rota` on a pseudo
/// terminal through util-linux `script` (skipped where there is none).
#[test]
fn publish_progress_on_a_terminal_is_a_single_redrawn_bar() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to give rota a terminal");
        return;
    }
    let server = Server::start();
    let path = server.write_bundle(
        "big",
        &common::bundle("3.0.0", common::COMPATIBLE, &common::trusted_key(), 2 << 20),
    );
    let home = tempfile::tempdir().unwrap();
    let command = format!("{} release publish {}", cli_bin().display(), path.display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("HOME", home.path())
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let terminal = text(&out.stdout);
    assert!(out.status.success(), "{terminal}");
    assert!(terminal.contains("uploading ["), "{terminal:?}");
    assert!(!terminal.contains("10%"), "{terminal:?}");
    assert!(terminal.contains("published rel_"), "{terminal:?}");
}

/// Every command four ways: `--help`; against the real server with `--json` (results JSON on
/// stdout, or a JSON error on stderr); into a closed pipe; against a server that is not there.
/// None panics, none leaks debug text, every exit code is a documented one.
#[test]
fn every_command_with_help_json_a_closed_pipe_and_an_unreachable_server() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 2, |_| Behaviour::default());
    server.publish("1.0.0");
    let bundle = server.write_bundle(
        "1.1.0",
        &common::bundle("1.1.0", common::COMPATIBLE, &common::trusted_key(), 4096),
    );
    let bundle = bundle.to_str().unwrap().to_string();
    let deployment = server.rota_json(&["deploy", "1.0.0", "--to", "all", "--wait"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dep = deployment.as_str();
    let unreachable = "http://127.0.0.1:9";
    let commands: Vec<Vec<&str>> = vec![
        vec!["login", "--key", ADMIN_KEY],
        vec!["whoami"],
        vec!["release", "publish", &bundle],
        vec!["release", "list"],
        vec!["deploy", "1.0.0", "--to", "all"],
        vec!["pause", dep],
        vec!["resume", dep],
        vec!["abort", dep],
        vec!["approve", dep],
        vec!["retry", dep],
        vec!["rollback", "--dry-run"],
        vec!["rollback", "--to", "v1.0.0", "--dry-run"],
        vec!["promote", "staging", "production"],
        vec!["env"],
        vec!["env", "list"],
        vec!["env", "set", "staging", "--groups", "lab"],
        vec!["env", "var", "set", "staging", "API_URL=http://10.0.0.1"],
        vec!["env", "var", "list", "staging"],
        vec!["env", "var", "unset", "staging", "API_URL"],
        vec!["status"],
        vec!["deployments"],
        vec!["deployments", dep],
        vec!["robots"],
        vec!["robots", "show", "robot-001"],
        vec!["robots", "tag", "robot-001", "site=lab", "--remove", "room"],
        vec!["robots", "approve", "robot-002"],
        vec!["robots", "remove", "robot-nobody"],
        vec!["groups"],
        vec!["groups", "create", "lab"],
        vec![
            "groups",
            "create",
            "lab-pis",
            "--query",
            r#"tag.site = "lab""#,
        ],
        vec!["groups", "show", "lab-pis"],
        vec!["groups", "add", "lab", "robot-001"],
        vec!["groups", "remove", "lab", "robot-001"],
        vec!["groups", "delete", "nothing-here"],
        vec!["history"],
        vec!["history", "--events"],
        vec!["audit"],
        vec![
            "notify",
            "set",
            "ops",
            "--webhook",
            "http://127.0.0.1:9/hook",
        ],
        vec!["notify", "list"],
        vec!["notify", "deliveries"],
        vec!["notify", "remove", "nothing-here"],
        vec!["notify", "test", "nothing-here"],
        vec!["keys", "list"],
        vec!["keys", "create", "ci", "--role", "deployer"],
        vec!["keys", "revoke", "key_nobody"],
        vec!["profiles"],
        vec!["profiles", "use", "nope"],
        vec!["profiles", "remove", "nope"],
        vec!["open", "--print"],
        vec!["completions", "bash"],
    ];
    // Commands that never call the server: an unreachable one changes nothing for them.
    let local = |args: &[&str]| {
        matches!(
            args.first(),
            Some(&"profiles") | Some(&"open") | Some(&"completions")
        )
    };
    // The table covers every command `rota --help` lists, nested ones included.
    let mut listed = Vec::new();
    for top in subcommands(&server.url, &[]) {
        let nested = subcommands(&server.url, &[top.as_str()]);
        if nested.is_empty() {
            listed.push(top);
        } else {
            listed.extend(nested.into_iter().map(|sub| format!("{top} {sub}")));
        }
    }
    assert!(listed.len() >= 28, "only {listed:?} in rota --help");
    for command in &listed {
        assert!(
            commands
                .iter()
                .any(|args| args.join(" ").starts_with(command.as_str())),
            "`rota {command}` is missing from the table"
        );
    }
    let documented = [0, 1, 2, 3, 4, 5];
    for args in &commands {
        let name = args.join(" ");
        // --help: exit 0, usage on stdout; also into a closed pipe.
        let mut help = args.clone();
        help.push("--help");
        let out = rota_at(&server.url, &help);
        assert_eq!(out.status.code(), Some(0), "{name} --help");
        assert!(text(&out.stdout).contains("Usage: rota"), "{name} --help");
        let out = rota_into_closed_pipe(&server.url, &help);
        assert_eq!(out.status.code(), Some(0), "{name} --help | head -0");
        assert_eq!(text(&out.stderr), "", "{name} --help | head -0");

        // --json against the real server.
        let mut json = vec!["--json"];
        json.extend(args.iter().copied());
        let out = rota_at(&server.url, &json);
        let code = out.status.code().unwrap_or(-1);
        assert!(documented.contains(&code), "{name}: exit {code}");
        assert_plain(&name, &text(&out.stderr));
        if code == 0 {
            let stdout = text(&out.stdout);
            if !stdout.is_empty() {
                serde_json::from_str::<Value>(&stdout)
                    .unwrap_or_else(|_| panic!("--json {name}: not JSON: {stdout}"));
            }
        } else {
            json_error(&format!("--json {name}"), &out);
        }

        // Into a closed pipe: no panic, the same documented codes.
        let out = rota_into_closed_pipe(&server.url, args);
        let code = out.status.code().unwrap_or(-1);
        let stderr = text(&out.stderr);
        assert!(
            documented.contains(&code),
            "{name} | head -0: exit {code}: {stderr}"
        );
        assert!(
            !stderr.contains("Broken pipe"),
            "{name} | head -0: {stderr}"
        );
        assert_plain(&format!("{name} | head -0"), &stderr);

        // A server that is not there: exit 1, one clear line naming it once; JSON under --json.
        let out = rota_at(unreachable, args);
        if local(args) {
            let code = out.status.code().unwrap_or(-1);
            assert!(
                documented.contains(&code),
                "{name} unreachable: exit {code}"
            );
            assert!(!text(&out.stderr).contains("cannot reach"), "{name}");
            continue;
        }
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} unreachable: {stderr}");
        assert!(out.stdout.is_empty(), "{name} unreachable");
        assert_eq!(stderr.matches(unreachable).count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("cannot reach"), "{name}: {stderr}");
        assert_plain(&format!("{name} unreachable"), &stderr);
        let out = rota_at(unreachable, &json);
        assert_eq!(out.status.code(), Some(1), "--json {name} unreachable");
        let error = json_error(&format!("--json {name} unreachable"), &out);
        assert_eq!(error["error"]["code"], "unreachable", "{name}: {error}");
        assert!(error["error"]["status"].is_null(), "{name}: {error}");
    }
}

#[test]
fn status_watch_prints_again_when_the_fleet_changes() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let mut watch = Command::new(cli_bin())
        .args(["--json", "status", "--watch", "--interval", "1s"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let before = next();
    assert_eq!(before["releases"], 0);
    server.publish("1.0.0");
    // Unchanged polls print nothing, so the next line is the change.
    let after = next();
    assert_eq!(after["releases"], 1, "{after}");

    // `rota status --watch | head -1`: once the reader is gone the watch ends, exit 0, even
    // though a quiet fleet gives it nothing more to write (it ran on forever).
    drop(lines);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            watch.kill().unwrap();
            panic!("status --watch kept running after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}
