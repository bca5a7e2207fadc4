//! The CLI without a server: help, usage errors, exit codes, where credentials go. The
//! commands against a live server are tested in rota-server's integration tests.

use std::process::{Command, Output};

fn rota(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("ROTA_SERVER")
        .env_remove("ROTA_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn help_teaches_exit_codes_and_targets() {
    let home = tempfile::tempdir().unwrap();
    let help = rota(home.path(), &["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(
        text.contains("Exit codes") && text.contains("3 `--wait` ended with robots rolled back"),
        "{text}"
    );
    let deploy = String::from_utf8(rota(home.path(), &["deploy", "--help"]).stdout).unwrap();
    assert!(
        deploy.contains("group:NAME") && deploy.contains("[default: 1800]"),
        "{deploy}"
    );
}

#[test]
fn usage_errors_exit_2_and_missing_login_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let bad_target = rota(home.path(), &["deploy", "2.0.0", "--to", "everyone"]);
    assert_eq!(bad_target.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad_target.stderr).contains("all, group:NAME, env:NAME, robot:ID")
    );
    let no_login = rota(home.path(), &["robots"]);
    assert_eq!(no_login.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_login.stderr).contains("rota login"));
    assert!(no_login.stdout.is_empty());
}

#[test]
fn unreachable_server_is_an_error_naming_it() {
    let home = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--server", "http://127.0.0.1:9", "status"])
        .env("HOME", home.path())
        .env("ROTA_API_KEY", "rota_op_x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach http://127.0.0.1:9"));
}

/// Bug: the error said the URL three times (`GET http://…/api/v1/status: cannot reach
/// http://…: error sending request for url (http://…/api/v1/status)`) and no hint.
#[test]
fn an_unreachable_server_is_named_once_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--server", "http://127.0.0.1:9", "robots"])
        .env("HOME", home.path())
        .env("ROTA_API_KEY", "rota_op_x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("127.0.0.1:9").count(), 1, "{stderr}");
    assert!(stderr.contains("rota-server running"), "{stderr}");
    assert!(stderr.contains("ROTA_SERVER"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Bug: uploading a bundle of a few MiB to a server that is not there ended `request or
/// response body error: send failed because receiver is gone`, not naming the server.
#[test]
fn publishing_to_an_unreachable_server_says_it_cannot_reach_it() {
    let home = tempfile::tempdir().unwrap();
    let bundle = home.path().join("big.rota");
    std::fs::write(&bundle, vec![7u8; 3 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--server", "http://127.0.0.1:9", "release", "publish"])
        .arg(&bundle)
        .env("HOME", home.path())
        .env("ROTA_API_KEY", "rota_op_x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("127.0.0.1:9").count(), 1, "{stderr}");
    assert!(!stderr.contains("receiver is gone"), "{stderr}");
}

/// Every subcommand, however deep, with its path (`["env", "set"]`).
fn every_command() -> Vec<(Vec<String>, clap::Command)> {
    fn walk(path: Vec<String>, cmd: &clap::Command, out: &mut Vec<(Vec<String>, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = path.clone();
            path.push(sub.get_name().to_string());
            walk(path, sub, out);
        }
    }
    let mut cmd = <rota_cli::cli::Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut out = Vec::new();
    walk(Vec::new(), &cmd, &mut out);
    out
}

/// Splits an example command line as a POSIX shell would (quotes, no expansions).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The command lines under `Examples:` in a help text, continuation lines joined.
fn examples(help: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_examples = false;
    let mut pending = String::new();
    for line in help.lines() {
        if line.trim_end() == "Examples:" {
            in_examples = true;
            continue;
        }
        if !in_examples {
            continue;
        }
        if line.trim().is_empty() && pending.is_empty() {
            in_examples = false;
            continue;
        }
        let text = line.trim();
        match text.strip_suffix('\\') {
            Some(start) => {
                pending.push_str(start);
                pending.push(' ');
            }
            None => {
                pending.push_str(text);
                found.push(std::mem::take(&mut pending));
            }
        }
    }
    found
}

/// Bug: `deploy --help` showed `rota deploy 2.1.0 --to group:lab --canary 2 --manual`, and
/// there is no `--manual`. Every example of every help parses with the real definition.
#[test]
fn every_help_example_parses_with_the_real_clap_definition() {
    let mut checked = 0;
    for (path, mut cmd) in every_command() {
        let help = cmd.render_long_help().to_string();
        for example in examples(&help) {
            let words = shell_words(&example);
            assert_eq!(words.first().map(String::as_str), Some("rota"), "{example}");
            let expected: Vec<&str> = path.iter().map(String::as_str).collect();
            assert!(
                words[1..].starts_with(&path),
                "an example of `rota {}` runs another command: {example}",
                expected.join(" ")
            );
            if let Err(err) = <rota_cli::cli::Cli as clap::Parser>::try_parse_from(words.iter()) {
                panic!(
                    "`rota {}` --help example does not parse: {example}\n{err}",
                    expected.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} examples found");
}

/// Bug: examples ran into one line, `--timeout` showed `[default: 1800] [default: 1800]`,
/// positional arguments had no description, and `env set --immediate` spoke of one deployment.
#[test]
fn help_describes_every_argument_once_and_keeps_examples_on_their_own_lines() {
    for (path, mut cmd) in every_command() {
        let name = format!("rota {}", path.join(" "));
        let help = cmd.render_long_help().to_string();
        for line in help.lines() {
            assert!(
                line.matches("[default:").count() <= 1,
                "{name}: a default twice: {line}"
            );
            assert!(
                path.is_empty() || line.matches(&format!("{name} ")).count() <= 1,
                "{name}: examples run into one line: {line}"
            );
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "{name}: <{id}> has no description"
            );
        }
    }
    let home = tempfile::tempdir().unwrap();
    let deploy = String::from_utf8(rota(home.path(), &["deploy", "--help"]).stdout).unwrap();
    assert_eq!(deploy.matches("[default: 1800]").count(), 1, "{deploy}");
    assert!(
        deploy.contains("\n  rota deploy 2.1.0 --to env:production\n"),
        "{deploy}"
    );
    let env_set = String::from_utf8(rota(home.path(), &["env", "set", "--help"]).stdout).unwrap();
    assert!(
        env_set.contains("The environment's deployments go to every robot at once"),
        "{env_set}"
    );
    assert!(
        !env_set.contains("even where the environment says otherwise"),
        "{env_set}"
    );
}

/// Bug: `rota --json deploy ... --to everyone` answered in plain text. Under --json a usage
/// error is one JSON line on stderr, exit 2.
#[test]
fn usage_errors_under_json_are_json() {
    let home = tempfile::tempdir().unwrap();
    let out = rota(
        home.path(),
        &["--json", "deploy", "2.1.0", "--to", "everyone"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let error: serde_json::Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(error["error"]["code"], "usage");
    assert!(error["error"]["status"].is_null());
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("everyone"));
}

fn write_config(home: &std::path::Path, text: &str) {
    let dir = home.join(".config/rota");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

const TWO_PROFILES: &str = r#"current = "prod"
[profiles.prod]
server = "http://127.0.0.1:9"
key = "rota_op_prod_secret"
[profiles.lab]
server = "http://127.0.0.1:7"
key = "rota_op_lab_secret"
"#;

#[test]
fn profiles_list_switch_and_pick_a_server_without_showing_keys() {
    let home = tempfile::tempdir().unwrap();
    write_config(home.path(), TWO_PROFILES);
    let list = rota(home.path(), &["profiles", "--json"]);
    assert!(list.status.success());
    let stdout = String::from_utf8(list.stdout).unwrap();
    assert!(!stdout.contains("secret"), "{stdout}");
    let entries: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let current: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["current"] == true)
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["prod"]);

    let open = rota(home.path(), &["open", "--print"]);
    assert_eq!(
        String::from_utf8(open.stdout).unwrap().trim(),
        "http://127.0.0.1:9/#/fleet"
    );
    assert!(rota(home.path(), &["profiles", "use", "lab"])
        .status
        .success());
    let open = rota(home.path(), &["open", "dep_12", "--print"]);
    assert_eq!(
        String::from_utf8(open.stdout).unwrap().trim(),
        "http://127.0.0.1:7/#/deployments/dep_12"
    );
    let with_flag = rota(home.path(), &["--profile", "prod", "open", "--print"]);
    assert!(String::from_utf8(with_flag.stdout)
        .unwrap()
        .starts_with("http://127.0.0.1:9/"));

    let unknown = rota(home.path(), &["--profile", "nope", "status"]);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no profile named \"nope\" (profiles: lab, prod)"),
        "{stderr}"
    );
    assert!(rota(home.path(), &["profiles", "remove", "lab"])
        .status
        .success());
    let config = std::fs::read_to_string(home.path().join(".config/rota/config.toml")).unwrap();
    assert!(
        !config.contains("lab") && config.contains("prod"),
        "{config}"
    );
}

#[test]
fn a_stored_key_is_never_sent_to_a_server_given_by_flag() {
    let home = tempfile::tempdir().unwrap();
    write_config(home.path(), TWO_PROFILES);
    // Nothing listens on port 5: had the key been used, the error would be "cannot reach".
    let out = rota(home.path(), &["--server", "http://127.0.0.1:5", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no API key for http://127.0.0.1:5"),
        "{stderr}"
    );
    // The profile whose server it is lends its key: the call is made (and fails to connect).
    let out = rota(home.path(), &["--server", "http://127.0.0.1:7/", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn credentials_from_an_earlier_login_are_the_default_profile() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/rota");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("credentials.toml"),
        "server = \"http://127.0.0.1:9\"\nkey = \"rota_op_old\"\n",
    )
    .unwrap();
    let list = rota(home.path(), &["profiles"]);
    let stdout = String::from_utf8(list.stdout).unwrap();
    assert!(
        stdout.contains("*  default  http://127.0.0.1:9  stored"),
        "{stdout}"
    );
}

#[test]
fn a_named_profile_beats_rota_server_left_in_the_shell() {
    // ROTA_SERVER pointing at lab sent `rota --profile prod ...` to lab, with lab's key.
    let home = tempfile::tempdir().unwrap();
    write_config(home.path(), TWO_PROFILES);
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--profile", "prod", "open", "--print"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("ROTA_SERVER", "http://127.0.0.1:7")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "http://127.0.0.1:9/#/fleet"
    );
}

#[test]
fn without_a_home_the_environment_is_enough() {
    // "neither XDG_CONFIG_HOME nor HOME is set" stopped every command, even with ROTA_SERVER
    // and ROTA_API_KEY given (a systemd unit, `env -i`).
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["status"])
        .env_clear()
        .env("ROTA_SERVER", "http://127.0.0.1:9")
        .env("ROTA_KEY", "rota_op_x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn completions_cover_every_subcommand_and_bash_parses_them() {
    let home = tempfile::tempdir().unwrap();
    let bash = rota(home.path(), &["completions", "bash"]);
    assert!(bash.status.success(), "{bash:?}");
    let script = String::from_utf8(bash.stdout).unwrap();
    for sub in ["deploy", "rollback", "release", "completions", "keys"] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    let path = home.path().join("rota.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    for shell in ["zsh", "fish"] {
        let out = rota(home.path(), &["completions", shell]);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{shell}: {out:?}"
        );
    }
    assert_eq!(
        rota(home.path(), &["completions", "tcsh"]).status.code(),
        Some(2)
    );
}
