//! The fleet end to end: a real rota-server, the real rota CLI, 20 simulated robots.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use common::robots::{Behaviour, Gate, SimFleet};
use common::{Server, ADMIN_KEY};
use rota_protocol::client::{Poll, RobotClient};
use serde_json::Value;

const FLEET_SIZE: usize = 20;

fn events_of(server: &Server, robot: &str) -> Vec<String> {
    let history = server.get(&format!("/history?robot={robot}&limit=1000"));
    let mut events: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    events.reverse();
    events
}

/// The event sequence a healthy install reports, downloads collapsed.
fn collapsed(events: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if out.last() != Some(e) {
            out.push(e.clone());
        }
    }
    out
}

const HEALTHY_SEQUENCE: [&str; 6] = [
    "downloading",
    "installing",
    "installed",
    "rebooting",
    "trial",
    "committed",
];

#[test]
fn enrolled_fleet_deploys_to_all_and_every_robot_commits() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |_| Behaviour::default());

    let robots = server.rota_json(&["robots"]);
    assert_eq!(robots.as_array().unwrap().len(), FLEET_SIZE);
    assert!(robots
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["compatible"] == common::COMPATIBLE && r["approved"] == true));

    let release = server.publish("2.0.0");
    assert!(release.starts_with("rel_"), "{release}");
    let listed = server.rota_json(&["release", "list"]);
    assert_eq!(listed[0]["version"], "2.0.0");
    assert_eq!(listed[0]["branch"], "main");
    assert_eq!(listed[0]["commit"], "c0ffee200");

    let out = server.rota(ADMIN_KEY, &["deploy", "2.0.0", "--to", "all", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy --wait failed: {stderr}");
    let deployment_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        deployment_id.starts_with("dep_"),
        "stdout must be only the id: {deployment_id:?}"
    );
    for id in fleet.ids() {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("✓ {id} v2.0.0 committed ")) && l.ends_with('s')),
            "no commit line for {id} in:\n{stderr}"
        );
    }

    let deployment = server.get(&format!("/deployments/{deployment_id}"));
    assert_eq!(deployment["state"], "succeeded");
    assert_eq!(deployment["counts"]["committed"], FLEET_SIZE as u64);
    for id in fleet.ids() {
        assert_eq!(
            collapsed(&events_of(&server, &id)),
            HEALTHY_SEQUENCE,
            "{id}"
        );
        assert_eq!(
            fleet.offers(&id).len(),
            1,
            "{id} was offered the release more than once"
        );
    }
    // A robot reports its slots after its `committed` went through, so the last one's report
    // may still be on its way when the deployment is seen to succeed.
    server.wait_for("/robots", "every robot's slot report", |robots| {
        robots
            .as_array()
            .unwrap()
            .iter()
            .all(|robot| robot["slots"]["booted"] == "B")
    });
    let robots = server.rota_json(&["robots"]);
    for robot in robots.as_array().unwrap() {
        assert_eq!(robot["version"], "2.0.0");
        assert_eq!(robot["state"], "idle");
        assert_eq!(robot["slots"]["booted"], "B");
    }
    let status = server.rota_json(&["status"]);
    assert_eq!(status["robots"], FLEET_SIZE as u64);
    assert_eq!(status["robots_by_version"]["2.0.0"], FLEET_SIZE as u64);

    let actions = server.audit_actions();
    let audit = server.rota_json(&["audit", "--limit", "100"]);
    assert_eq!(
        actions.iter().filter(|a| *a == "robot.enroll").count(),
        FLEET_SIZE
    );
    let deploy_entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deployment.create")
        .unwrap();
    assert_eq!(
        deploy_entry["target"],
        format!("deployment:{deployment_id}")
    );
    assert!(deploy_entry["actor"]
        .as_str()
        .unwrap()
        .contains("bootstrap admin"));
    assert_eq!(deploy_entry["source_ip"], "127.0.0.1");
    assert!(actions.iter().any(|a| a == "release.publish"));

    let metrics = metrics(&server);
    assert!(
        metrics.contains(&format!(
            "rota_robots_by_version{{version=\"2.0.0\"}} {FLEET_SIZE}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("rota_deployments{state=\"succeeded\"} 1"));
    assert!(metrics.contains("rota_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/robot/assignment\""));
    assert!(metrics.contains(&format!(
        "rota_robot_events_total{{event=\"committed\"}} {FLEET_SIZE}"
    )));
}

fn metrics(server: &Server) -> String {
    common::http()
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// What Prometheus gets beyond request latency: each release's outcomes on robots, how long
/// deployments took, and the robots of an environment behind its current release.
#[test]
fn metrics_count_release_outcomes_deployment_durations_and_robots_behind() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 3, |n| Behaviour {
        unhealthy_versions: match n {
            2 => HashSet::from(["2.0.0".to_string()]),
            _ => HashSet::new(),
        },
        gate: None,
    });
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-001", "robot-003"]);
    server.rota_ok(&["env", "set", "lab", "--groups", "lab"]);
    server.publish("2.0.0");
    server.publish("2.1.0");
    let failed = server.rota(ADMIN_KEY, &["deploy", "2.0.0", "--to", "all", "--wait"]);
    assert_eq!(failed.status.code(), Some(3));
    let out = server.rota(ADMIN_KEY, &["deploy", "2.1.0", "--to", "env:lab", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = metrics(&server);
    for line in [
        r#"rota_release_outcomes_total{release="v2.0.0",outcome="committed"} 2"#,
        r#"rota_release_outcomes_total{release="v2.0.0",outcome="rolled_back"} 1"#,
        r#"rota_release_outcomes_total{release="v2.1.0",outcome="committed"} 2"#,
        r#"rota_deployment_duration_seconds_count{state="failed"} 1"#,
        r#"rota_deployment_duration_seconds_count{state="succeeded"} 1"#,
        r#"rota_deployment_duration_seconds_bucket{state="succeeded",le="+Inf"} 1"#,
        r#"rota_robots_behind{environment="lab",release="v2.1.0"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // robot-002 (on 1.0.0 after its rollback) joins lab: one robot behind.
    server.rota_ok(&["groups", "add", "lab", "robot-002"]);
    let text = metrics(&server);
    assert!(
        text.contains(r#"rota_robots_behind{environment="lab",release="v2.1.0"} 1"#),
        "{text}"
    );
}

#[test]
fn a_robot_that_rolled_back_is_not_offered_that_release_again_unless_forced() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |n| Behaviour {
        unhealthy_versions: if n == 7 {
            HashSet::from(["2.0.0".to_string()])
        } else {
            HashSet::new()
        },
        gate: None,
    });
    server.publish("2.0.0");

    let out = server.rota(ADMIN_KEY, &["deploy", "2.0.0", "--to", "all", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a rollback must give exit code 3: {stderr}"
    );
    assert!(
        stderr.contains("✗ robot-007 v2.0.0 rolled back") && stderr.contains("health check failed"),
        "{stderr}"
    );
    let deployment_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let deployment = server.get(&format!("/deployments/{deployment_id}"));
    assert_eq!(deployment["state"], "failed");
    assert_eq!(deployment["counts"]["committed"], (FLEET_SIZE - 1) as u64);
    let seven = deployment["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["robot_id"] == "robot-007")
        .unwrap();
    assert_eq!(seven["state"], "rolled_back");
    assert!(seven["detail"]
        .as_str()
        .unwrap()
        .contains("robot-app.service"));

    // Deploying the same release to it again: skipped, with the reason, and polls say nothing.
    let out = server.rota(
        ADMIN_KEY,
        &["--json", "deploy", "2.0.0", "--to", "robot:robot-007"],
    );
    assert_eq!(out.status.code(), Some(5), "reached no robot: exit 5");
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["robots"][0]["state"], "skipped");
    assert!(again["robots"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("rolled back from this release before"));
    // It reached nobody: no success.
    assert_eq!(again["state"], "no_robot_updated");
    let robot7 = fleet.robots.iter().find(|r| r.id == "robot-007").unwrap();
    let client = RobotClient::new(&server.url)
        .unwrap()
        .with_token(&robot7.token);
    assert_eq!(client.poll(None, None).unwrap(), Poll::Nothing);
    assert_eq!(fleet.offers("robot-007").len(), 1);

    // A group deployment skips it the same way and reaches only the group.
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-007", "robot-008"]);
    server.publish("2.1.0");
    let group = server.rota_json(&["deploy", "2.0.0", "--to", "group:lab"]);
    let states: Vec<(&str, &str)> = group["robots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["robot_id"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
            )
        })
        .collect();
    // robot-008 long-polls: it may take the offer and report before the reply is composed.
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[0], ("robot-007", "skipped"));
    assert_eq!(states[1].0, "robot-008");
    assert!(
        [
            "pending",
            "downloading",
            "installing",
            "installed",
            "rebooting",
            "trial",
            "committed"
        ]
        .contains(&states[1].1),
        "{states:?}"
    );

    // Forced, it is offered again (and this robot rolls back again).
    let out = server.rota(
        ADMIN_KEY,
        &[
            "deploy",
            "2.0.0",
            "--to",
            "robot:robot-007",
            "--force",
            "--wait",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fleet.offers("robot-007").len(), 2);
    let history = server.rota_json(&["history", "--events", "--robot", "robot-007"]);
    assert_eq!(
        history
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "rolled_back")
            .count(),
        2
    );
}

#[test]
fn a_server_crash_mid_deployment_loses_nothing() {
    let mut server = Server::start();
    let gate = Arc::new(Gate::default());
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |_| Behaviour {
        unhealthy_versions: HashSet::new(),
        gate: Some(gate.clone()),
    });
    server.publish("2.0.0");
    let deployment_id = server
        .rota_ok(&["deploy", "2.0.0", "--to", "all"])
        .trim()
        .to_string();
    let path = format!("/deployments/{deployment_id}");

    // Every robot is installed and in its trial boot: that is not success yet.
    let held = server.wait_for(&path, "all robots in trial", |d| {
        d["counts"]["trial"] == FLEET_SIZE as u64
    });
    assert_eq!(held["state"], "running");

    server.crash_and_restart();
    let after = server.get(&path);
    assert_eq!(after["state"], "running");
    assert_eq!(
        after["counts"]["trial"], FLEET_SIZE as u64,
        "assignments lost in the crash: {after:#}"
    );

    gate.open();
    let done = server.wait_for(&path, "all robots committed", |d| d["state"] != "running");
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["committed"], FLEET_SIZE as u64);
    for id in fleet.ids() {
        assert_eq!(
            collapsed(&events_of(&server, &id)),
            HEALTHY_SEQUENCE,
            "{id}"
        );
    }
    let actions = server.audit_actions();
    assert!(actions.iter().any(|a| a == "deployment.create"));
    assert!(actions.iter().any(|a| a == "release.publish"));
}

#[test]
fn cli_login_stores_the_key_owner_only_and_later_commands_use_it() {
    let server = Server::start();
    let home = server.dir.path().join("login-home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(common::cli_bin())
            .args(args)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("ROTA_API_KEY")
            .env_remove("ROTA_SERVER")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = run(
        &["login", "--server", &server.url],
        Some("rota_op_not_a_real_key\n"),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("401"));

    let good = run(
        &["login", "--server", &server.url],
        Some(&format!("{ADMIN_KEY}\n")),
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8(good.stdout)
        .unwrap()
        .trim()
        .starts_with("key_"));
    let file = home.join(".config/rota/config.toml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config = std::fs::read_to_string(&file).unwrap();
    assert!(
        config.contains(ADMIN_KEY) && config.contains("current = \"default\""),
        "{config}"
    );

    // A second profile for the same server under another name becomes the current one.
    let lab = run(
        &["login", "--server", &server.url, "--profile", "lab"],
        Some(&format!("{ADMIN_KEY}\n")),
    );
    assert!(
        lab.status.success(),
        "{}",
        String::from_utf8_lossy(&lab.stderr)
    );
    let profiles = run(&["profiles", "--json"], None);
    let profiles: Value = serde_json::from_slice(&profiles.stdout).unwrap();
    let names: Vec<(&str, bool)> = profiles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["current"] == true))
        .collect();
    assert_eq!(names, [("default", false), ("lab", true)]);

    let me = run(&["whoami", "--json"], None);
    assert!(
        me.status.success(),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    let me: Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["role"], "admin");
}

#[test]
fn robots_wait_for_approval_when_the_fleet_requires_it() {
    let server = Server::start_with(&[("ROTA_REQUIRE_APPROVAL", "true")]);
    let mut client = RobotClient::new(&server.url).unwrap();
    let enrolled = client
        .enroll(common::ENROLLMENT_KEY, "newbie", common::COMPATIBLE, None)
        .unwrap();
    assert!(!enrolled.approved);
    let err = client.poll(None, None).unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("not_approved"))
    );
    let robots = server.rota_json(&["robots"]);
    assert_eq!(robots[0]["state"], "pending_approval");

    server.rota_ok(&["robots", "approve", "newbie"]);
    assert_eq!(client.poll(None, None).unwrap(), Poll::Nothing);

    // Enrolling the same id again is refused until an admin removes it.
    let mut twin = RobotClient::new(&server.url).unwrap();
    let err = twin
        .enroll(common::ENROLLMENT_KEY, "newbie", common::COMPATIBLE, None)
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    server.rota_ok(&["robots", "remove", "newbie"]);
    assert!(client.poll(None, None).unwrap_err().is_unauthorized());
    twin.enroll(common::ENROLLMENT_KEY, "newbie", common::COMPATIBLE, None)
        .unwrap();

    let mut stranger = RobotClient::new(&server.url).unwrap();
    let err = stranger
        .enroll(
            "rota_en_wrong_key_0000000000",
            "intruder",
            common::COMPATIBLE,
            None,
        )
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
}

#[test]
fn a_robot_that_lost_its_enrollment_answer_enrolls_again_with_its_nonce_and_nobody_else_can() {
    let server = Server::start_with(&[("ROTA_REQUIRE_APPROVAL", "true")]);
    let enroll = |nonce: Option<&str>| {
        let mut client = RobotClient::new(&server.url).unwrap();
        let answer = client.enroll(common::ENROLLMENT_KEY, "flaky", common::COMPATIBLE, nonce);
        (client, answer)
    };
    let nonce = Some("5f1e0c2a9b7d4e3f8a6c1b2d3e4f5a6b");
    let (first, lost) = enroll(nonce);
    let lost = lost.unwrap();
    server.rota_ok(&["robots", "approve", "flaky"]);

    // Without the nonce, or with another one, the id stays taken.
    for other in [None, Some("0000000000000000ffffffffffffffff")] {
        let err = enroll(other).1.unwrap_err();
        assert_eq!(err.status(), Some(409), "{other:?}");
    }
    assert_eq!(first.poll(None, None).unwrap(), Poll::Nothing);

    // The robot repeats the request: a new token, the approval kept, the lost token dead.
    let (again, renewed) = enroll(nonce);
    let renewed = renewed.unwrap();
    assert_ne!(renewed.token, lost.token);
    assert!(renewed.approved);
    assert_eq!(again.poll(None, None).unwrap(), Poll::Nothing);
    assert!(first.poll(None, None).unwrap_err().is_unauthorized());
    let robots = server.rota_json(&["robots"]);
    assert_eq!(robots.as_array().unwrap().len(), 1);
    let audit = server.rota_json(&["audit", "--limit", "100"]);
    assert!(audit.to_string().contains("robot.reenroll"), "{audit:#}");
}
