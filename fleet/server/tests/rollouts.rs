//! Rollouts end to end: a real rota-server (and a second replica on PostgreSQL), the real
//! `rota` CLI, 20 simulated robots. Staged and canary rollouts, halts, auto-rollback, late
//! joiners, approval, update windows, every rollback form, and the deployment verbs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::robots::{Behaviour, Gate, SimFleet};
use common::{Server, ADMIN_KEY, COMPATIBLE, ENROLLMENT_KEY};
use rota_protocol::client::{Poll, RobotClient};
use serde_json::Value;

const FLEET_SIZE: usize = 20;

fn unhealthy_for(version: &str) -> Behaviour {
    Behaviour {
        unhealthy_versions: [version.to_string()].into(),
        gate: None,
    }
}

/// `rota --json ARGS` as `key`, with its exit code.
fn rota_exit(server: &Server, key: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = server.rota(key, &all);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// Stages the engine started, in log order.
fn stage_starts(deployment: &Value) -> Vec<u64> {
    deployment["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "stage_started")
        .map(|entry| entry["stage"].as_u64().unwrap())
        .collect()
}

fn log_time(deployment: &Value, action: &str, stage: u64) -> String {
    deployment["log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == action && entry["stage"] == stage)
        .unwrap_or_else(|| panic!("no {action} of stage {stage}: {deployment:#}"))["at"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Robot ids per stage.
fn robots_by_stage(deployment: &Value) -> BTreeMap<u64, Vec<String>> {
    let mut stages: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for robot in deployment["robots"].as_array().unwrap() {
        stages
            .entry(robot["stage"].as_u64().unwrap())
            .or_default()
            .push(robot["robot_id"].as_str().unwrap().to_string());
    }
    stages
}

fn robot_state<'a>(deployment: &'a Value, robot: &str) -> &'a str {
    deployment["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["robot_id"] == robot)
        .unwrap_or_else(|| panic!("{robot} not in {deployment:#}"))["state"]
        .as_str()
        .unwrap()
}

/// `rota deploy RELEASE --to all --wait` plus `extra`: (exit code, JSON, stderr).
fn deploy_to_all(server: &Server, release: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "deploy",
        release,
        "--to",
        "all",
        "--wait",
        "--timeout",
        "300",
    ];
    args.extend_from_slice(extra);
    rota_exit(server, ADMIN_KEY, &args)
}

fn deploy_all(server: &Server, version: &str) -> Value {
    server.publish(version);
    let (code, deployment, stderr) = deploy_to_all(server, version, &[]);
    assert_eq!(code, 0, "{stderr}");
    deployment
}

#[test]
fn staged_rollout_offers_each_stage_after_the_one_before_committed() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |_| Behaviour::default());
    server.publish("2.0.0");
    let done = server.rota_json(&[
        "deploy",
        "2.0.0",
        "--to",
        "all",
        "--staged",
        "10,50,100",
        "--max-failures",
        "10%",
        "--wait",
        "--timeout",
        "300",
    ]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["committed"], FLEET_SIZE as u64);
    assert_eq!(done["strategy"]["kind"], "staged");
    let stages = robots_by_stage(&done);
    let sizes: Vec<usize> = stages.values().map(Vec::len).collect();
    assert_eq!(sizes, [2, 8, 10], "{stages:?}");
    assert_eq!(stage_starts(&done), [0, 1, 2], "each stage starts once");

    // No robot of a stage got the release before every robot of the stage before committed.
    for stage in 1..=2u64 {
        let started = log_time(&done, "stage_started", stage);
        for robot in done["robots"].as_array().unwrap() {
            if robot["stage"] == stage - 1 {
                let committed = robot["updated_at"].as_str().unwrap();
                assert!(committed <= started.as_str(), "{robot} after {started}");
            }
        }
    }
    for id in fleet.ids() {
        assert_eq!(fleet.offers(&id).len(), 1, "{id} offered once");
    }
}

#[test]
fn a_release_failing_its_health_check_on_the_first_stage_halts_before_the_second() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |_| unhealthy_for("2.0.0"));
    server.publish("2.0.0");
    let (code, halted, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &[
            "deploy",
            "2.0.0",
            "--to",
            "all",
            "--staged",
            "10,50,100",
            "--wait",
        ],
    );
    assert_eq!(code, 3, "halted rollouts exit 3: {stderr}");
    assert!(stderr.contains("halted:"), "{stderr}");
    assert_eq!(halted["state"], "halted", "{halted:#}");
    assert!(
        halted["halt_reason"]
            .as_str()
            .unwrap()
            .contains("more than the 0 allowed"),
        "{halted:#}"
    );
    assert_eq!(stage_starts(&halted), [0]);
    let stages = robots_by_stage(&halted);
    for later in stages[&1].iter().chain(&stages[&2]) {
        assert_eq!(robot_state(&halted, later), "cancelled");
        assert!(fleet.offers(later).is_empty(), "{later} was offered 2.0.0");
    }
    // The halt holds: the engine's ticks start nothing later.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let id = halted["id"].as_str().unwrap();
    let later = server.get(&format!("/deployments/{id}"));
    assert_eq!(stage_starts(&later), [0]);
    assert_eq!(later["state"], "halted");
}

#[test]
fn a_failing_canary_halts_the_rollout_and_auto_rollback_returns_the_other_canaries() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |n| match n {
        1 => unhealthy_for("2.0.0"),
        _ => Behaviour::default(),
    });
    let first = deploy_all(&server, "1.1.0");
    assert_eq!(first["state"], "succeeded");
    server.rota_ok(&["groups", "create", "canary"]);
    server.rota_ok(&["groups", "add", "canary", "robot-001", "robot-002"]);

    server.publish("2.0.0");
    let (code, halted, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &[
            "deploy",
            "2.0.0",
            "--to",
            "all",
            "--canary",
            "canary",
            "--stage-wait",
            "0",
            "--auto-rollback",
            "--wait",
        ],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(halted["state"], "halted", "{halted:#}");
    assert_eq!(robots_by_stage(&halted)[&0], ["robot-001", "robot-002"]);
    let id = halted["id"].as_str().unwrap();

    // robot-001 rolled back on its own; robot-002 took 2.0.0 and is sent back to 1.1.0.
    let fleet_back = server.wait_for("/robots", "every robot on 1.1.0", |robots| {
        robots
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["version"] == "1.1.0")
    });
    assert_eq!(fleet_back.as_array().unwrap().len(), FLEET_SIZE);
    let deployments = server.rota_json(&["deployments"]);
    let rollback = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "rollback")
        .unwrap_or_else(|| panic!("no rollback deployment: {deployments:#}"));
    assert_eq!(rollback["parent_id"], id);
    assert_eq!(rollback["version"], "1.1.0");
    assert_eq!(rollback["target"], "robots:robot-002");
    let rollback = server.wait_for(
        &format!("/deployments/{}", rollback["id"].as_str().unwrap()),
        "the rollback to succeed",
        |d| d["state"] == "succeeded",
    );
    assert_eq!(rollback["counts"]["committed"], 1);
    let offered: Vec<String> = fleet
        .offers("robot-002")
        .iter()
        .map(|o| o.version.clone())
        .collect();
    assert_eq!(offered, ["1.1.0", "2.0.0", "1.1.0"]);
    for n in 3..=FLEET_SIZE {
        let robot = format!("robot-{n:03}");
        assert_eq!(fleet.offers(&robot).len(), 1, "{robot} saw only 1.1.0");
    }
    let halted = server.get(&format!("/deployments/{id}"));
    let actions: Vec<&str> = halted["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "stage_started", "halted", "rollback_created"]
    );
}

/// App releases ride the same rollout machinery: a canary of 20 robots halts on an app check
/// failing, auto-rollback returns the other canary to the app release it ran, the rest never
/// see the bad release, and rollbacks to a point in time and to a deployment bring back the app
/// release of then and the one that deployment gave, and promote carries an environment's app
/// release to another.
/// The robots' OS version never moves.
#[test]
fn app_releases_on_twenty_robots_roll_out_in_stages_halt_roll_back_and_promote() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |n| Behaviour {
        unhealthy_versions: match n {
            1 => ["nav@1.6.0".to_string()].into(),
            _ => Default::default(),
        },
        gate: None,
    });
    for version in ["1.4.0", "1.5.0", "1.6.0"] {
        server.publish_app("nav", version);
    }
    let app_versions = |server: &Server| -> Vec<String> {
        let robots = server.get("/robots");
        robots
            .as_array()
            .unwrap()
            .iter()
            .map(|robot| {
                let apps = &robot["inventory"]["apps"];
                assert_eq!(robot["version"], "1.0.0", "the OS moved: {robot:#}");
                apps[0]["version"].as_str().unwrap_or("none").to_string()
            })
            .collect()
    };
    let deploy = |release: &str, extra: &[&str]| deploy_to_all(&server, release, extra);
    let (code, first, stderr) = deploy("nav@1.4.0", &[]);
    assert_eq!(
        (code, &first["state"]),
        (0, &Value::from("succeeded")),
        "{stderr}"
    );
    let before_1_5 = server.wait_for("/robots", "every robot's inventory", |_| {
        app_versions(&server).iter().all(|v| v == "1.4.0")
    });
    assert_eq!(before_1_5.as_array().unwrap().len(), FLEET_SIZE);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let then = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, one_five, stderr) = deploy("nav@1.5.0", &["--immediate"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(one_five["app"], "nav", "{one_five:#}");

    server.rota_ok(&["groups", "create", "canary"]);
    server.rota_ok(&["groups", "add", "canary", "robot-001", "robot-002"]);
    let (code, halted, stderr) = deploy(
        "nav@1.6.0",
        &["--canary", "canary", "--stage-wait", "0", "--auto-rollback"],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(halted["state"], "halted", "{halted:#}");
    assert_eq!(robots_by_stage(&halted)[&0], ["robot-001", "robot-002"]);
    assert_eq!(robot_state(&halted, "robot-001"), "rolled_back");
    let back = server.wait_for("/robots", "robot-002 back on nav 1.5.0", |_| {
        app_versions(&server).iter().all(|v| v == "1.5.0")
    });
    assert_eq!(back.as_array().unwrap().len(), FLEET_SIZE);
    let offered = |robot: &str| -> Vec<String> {
        fleet.offers(robot).into_iter().map(|o| o.version).collect()
    };
    assert_eq!(offered("robot-002"), ["1.4.0", "1.5.0", "1.6.0", "1.5.0"]);
    for n in 3..=FLEET_SIZE {
        let robot = format!("robot-{n:03}");
        assert_eq!(offered(&robot), ["1.4.0", "1.5.0"], "{robot}");
    }

    // What every robot ran at `then`: nav 1.4.0, which each keeps.
    let (code, rollback, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &[
            "rollback",
            "--app",
            "nav",
            "--to",
            &then,
            "--immediate",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rollback["plan"][0]["version"], "1.4.0", "{rollback:#}");
    assert_eq!(
        rollback["plan"][0]["robots"].as_array().unwrap().len(),
        FLEET_SIZE
    );
    server.wait_for("/robots", "every robot back on nav 1.4.0", |_| {
        app_versions(&server).iter().all(|v| v == "1.4.0")
    });

    // What a deployment gave: nav 1.5.0 again.
    let to = one_five["id"].as_str().unwrap();
    let (code, rollback, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &[
            "rollback",
            "--app",
            "nav",
            "--to",
            to,
            "--immediate",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rollback["plan"][0]["version"], "1.5.0", "{rollback:#}");
    server.wait_for("/robots", "every robot on nav 1.5.0 again", |_| {
        app_versions(&server).iter().all(|v| v == "1.5.0")
    });

    // Promote carries the app release staging runs to production, under production's rules.
    let rest: Vec<String> = (3..=FLEET_SIZE).map(|n| format!("robot-{n:03}")).collect();
    let mut add = vec!["groups", "add", "rest"];
    add.extend(rest.iter().map(String::as_str));
    server.rota_ok(&["groups", "create", "rest"]);
    server.rota_ok(&add);
    server.rota_ok(&["env", "set", "staging", "--groups", "canary"]);
    server.rota_ok(&["env", "set", "production", "--groups", "rest"]);
    let (code, _, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &["deploy", "nav@1.4.0", "--to", "env:staging", "--wait"],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, promoted, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &["promote", "staging", "production", "--app", "nav", "--wait"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&promoted["kind"], &promoted["app"], &promoted["version"]),
        (
            &Value::from("promote"),
            &Value::from("nav"),
            &Value::from("1.4.0")
        ),
        "{promoted:#}"
    );
    assert_eq!(promoted["counts"]["committed"], rest.len(), "{promoted:#}");
    server.wait_for("/robots", "every robot on nav 1.4.0 again", |_| {
        app_versions(&server).iter().all(|v| v == "1.4.0")
    });
}

#[test]
fn a_robot_enrolling_mid_rollout_joins_its_stage_and_approve_starts_the_next() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", FLEET_SIZE, |_| Behaviour::default());
    server.publish("2.0.0");
    let created = server.rota_json(&["deploy", "2.0.0", "--to", "all", "--canary", "2"]);
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/deployments/{id}");
    let canaries_done = server.wait_for(&path, "both canaries committed", |d| {
        d["counts"]["committed"] == 2
    });
    assert_eq!(canaries_done["state"], "running");
    assert_eq!(canaries_done["counts"]["waiting"], (FLEET_SIZE - 2) as u64);

    // A manual canary waits: the engine's ticks do not start stage 1 on their own.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(stage_starts(&server.get(&path)), [0]);

    let late = SimFleet::start(&server.url, "late", 1, |_| Behaviour::default());
    let joined = server.get(&path);
    assert_eq!(robot_state(&joined, "late-001"), "waiting");
    let entry = joined["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["robot_id"] == "late-001")
        .unwrap();
    assert_eq!(
        entry["stage"], 1,
        "counted canaries were chosen at the start"
    );

    let approved = server.rota_json(&["approve", &id]);
    assert_eq!(approved["current_stage"], 1);
    let done = server.wait_for(&path, "the rollout to finish", |d| d["state"] != "running");
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["committed"], (FLEET_SIZE + 1) as u64);
    assert_eq!(late.offers("late-001").len(), 1);
    assert!(done["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "robot_joined" && e["detail"] == "late-001 joined stage 1"));
}

fn create_key(server: &Server, name: &str, role: &str) -> String {
    let created = server.rota_json(&["keys", "create", name, "--role", role]);
    created["key"].as_str().unwrap().to_string()
}

#[test]
fn production_waits_for_an_approver_who_is_not_the_creator() {
    let server = Server::start();
    let fleet = SimFleet::start(&server.url, "robot", 4, |_| Behaviour::default());
    let env = server.rota_json(&[
        "env",
        "set",
        "production",
        "--groups",
        "prod",
        "--approval-required",
    ]);
    assert_eq!(env["approval_required"], true);
    server.rota_ok(&[
        "groups",
        "add",
        "prod",
        "robot-001",
        "robot-002",
        "robot-003",
    ]);
    let alice = create_key(&server, "alice", "deployer");
    let bob = create_key(&server, "bob", "deployer");
    let viewer = create_key(&server, "vic", "viewer");
    server.publish("2.0.0");

    let (code, created, stderr) = rota_exit(
        &server,
        &alice,
        &["deploy", "2.0.0", "--to", "env:production"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(created["state"], "awaiting_approval");
    assert_eq!(created["environment"], "production");
    assert_eq!(created["counts"]["waiting"], 3);
    let id = created["id"].as_str().unwrap();

    let (code, _, stderr) = rota_exit(&server, &alice, &["approve", id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot also approve"), "{stderr}");
    let (code, _, stderr) = rota_exit(&server, &viewer, &["approve", id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("deployer"), "{stderr}");
    let waiting = server.get(&format!("/deployments/{id}"));
    assert_eq!(waiting["state"], "awaiting_approval");
    assert!(fleet.offers("robot-001").is_empty());

    let (code, approved, stderr) = rota_exit(&server, &bob, &["approve", id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(approved["approved_by"].as_str().unwrap().contains("bob"));
    let done = server.wait_for(&format!("/deployments/{id}"), "production done", |d| {
        d["state"] == "succeeded"
    });
    assert_eq!(done["counts"]["committed"], 3);
    assert!(fleet.offers("robot-004").is_empty(), "not in production");
    assert!(server
        .audit_actions()
        .contains(&"deployment.approve".to_string()));
}

#[test]
fn assignments_carry_the_update_window_and_rollbacks_allow_downgrades() {
    let server = Server::start();
    server.rota_ok(&[
        "env",
        "set",
        "field",
        "--groups",
        "field",
        "--window",
        "mon,tue 22:00-04:00",
    ]);
    let mut robot = RobotClient::new(&server.url).unwrap();
    robot
        .enroll(ENROLLMENT_KEY, "field-1", COMPATIBLE, None)
        .unwrap();
    server.rota_ok(&["groups", "add", "field", "field-1"]);
    server.publish("2.0.0");
    server.rota_ok(&["deploy", "2.0.0", "--to", "env:field"]);
    let Poll::Assignment { assignment, .. } = robot.poll(None, None).unwrap() else {
        panic!("no assignment")
    };
    let window = assignment.update_window.expect("the environment's window");
    assert_eq!(window.to_string(), "mon,tue 22:00-04:00");
    assert!(!assignment.allow_downgrade);

    let bad = server.rota(ADMIN_KEY, &["env", "set", "x", "--window", "25:00-01:00"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HH:MM"));
}

#[test]
fn every_rollback_form_resolves_to_the_release_that_ran_then() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 4, |_| Behaviour::default());
    // The test bundles' manifests name commits c0ffee110, c0ffee120, c0ffee130.
    let v11 = deploy_all(&server, "1.1.0");
    let between = v11["robots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["updated_at"].as_str().unwrap())
        .max()
        .unwrap()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let v12 = deploy_all(&server, "1.2.0");
    deploy_all(&server, "1.3.0");

    let v12_id = v12["id"].as_str().unwrap();
    let table: [(Option<&str>, Result<&str, &str>); 9] = [
        (None, Ok("1.2.0")),
        (Some("v1.1.0"), Ok("1.1.0")),
        (Some("1.2.0"), Ok("1.2.0")),
        (Some("commit:c0ffee110"), Ok("1.1.0")),
        (Some("commit:C0FFEE120"), Ok("1.2.0")),
        (Some(v12_id), Ok("1.2.0")),
        (Some(&between), Ok("1.1.0")),
        (Some("1.3.0"), Err("already run that release")),
        (Some("v9.9.9"), Err("no release 9.9.9")),
    ];
    for (to, expected) in table {
        let mut args = vec!["rollback", "--dry-run"];
        if let Some(to) = to {
            args.extend(["--to", to]);
        }
        let (code, outcome, stderr) = rota_exit(&server, ADMIN_KEY, &args);
        match expected {
            Ok(version) => {
                assert_eq!(code, 0, "{to:?}: {stderr}");
                let plan = outcome["plan"].as_array().unwrap();
                assert_eq!(plan.len(), 1, "{to:?}: {outcome:#}");
                assert_eq!(plan[0]["version"], version, "{to:?}");
                assert_eq!(plan[0]["robots"].as_array().unwrap().len(), 4, "{to:?}");
                assert!(outcome["deployments"].as_array().unwrap().is_empty());
            }
            Err(reason) => {
                assert_eq!(code, 1, "{to:?}: {outcome:#}");
                assert!(stderr.contains(reason), "{to:?}: {stderr}");
            }
        }
    }
    let (code, _, stderr) = rota_exit(&server, ADMIN_KEY, &["rollback", "--to", "last tuesday"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a version"), "{stderr}");

    // A real one: the whole fleet back to 1.1.0; then "previous" means a release older than
    // 1.1.0, never 1.3.0 again, and there is none.
    let (code, outcome, stderr) = rota_exit(
        &server,
        ADMIN_KEY,
        &["rollback", "--to", "v1.1.0", "--wait"],
    );
    assert_eq!(code, 0, "{stderr}");
    let deployment = &outcome["deployments"][0];
    assert_eq!(deployment["kind"], "rollback");
    assert_eq!(deployment["state"], "succeeded");
    assert_eq!(deployment["counts"]["committed"], 4);
    let (code, _, stderr) = rota_exit(&server, ADMIN_KEY, &["rollback", "--dry-run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no release older than v1.1.0"), "{stderr}");
    assert!(server
        .audit_actions()
        .contains(&"rollback.create".to_string()));
}

#[test]
fn pause_holds_the_next_stage_resume_releases_it_abort_and_retry() {
    let server = Server::start();
    let gate = Arc::new(Gate::default());
    let _fleet = SimFleet::start(&server.url, "robot", 10, |n| Behaviour {
        unhealthy_versions: if n == 1 {
            ["3.0.0".to_string()].into()
        } else {
            Default::default()
        },
        gate: Some(gate.clone()),
    });
    server.publish("2.0.0");
    let created = server.rota_json(&["deploy", "2.0.0", "--to", "all", "--staged", "50,100"]);
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/deployments/{id}");
    server.wait_for(&path, "stage 0 in trial", |d| d["counts"]["trial"] == 5);
    let paused = server.rota_json(&["pause", &id]);
    assert_eq!(paused["state"], "paused");
    gate.open();
    let held = server.wait_for(&path, "stage 0 committed", |d| {
        d["counts"]["committed"] == 5
    });
    assert_eq!(held["state"], "paused");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        stage_starts(&server.get(&path)),
        [0],
        "paused: no new stage"
    );
    let (code, _, stderr) = rota_exit(&server, ADMIN_KEY, &["pause", &id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot pause"), "{stderr}");

    server.rota_ok(&["resume", &id]);
    let done = server.wait_for(&path, "finished", |d| d["state"] != "running");
    assert_eq!(done["state"], "succeeded");
    assert_eq!(stage_starts(&done), [0, 1]);

    // Abort: the canaries finish, the rest never start.
    server.publish("2.1.0");
    let canary = server.rota_json(&["deploy", "2.1.0", "--to", "all", "--canary", "2"]);
    let canary_id = canary["id"].as_str().unwrap().to_string();
    server.wait_for(&format!("/deployments/{canary_id}"), "canaries", |d| {
        d["counts"]["committed"] == 2
    });
    let aborted = server.rota_json(&["abort", &canary_id]);
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["counts"]["cancelled"], 8);

    // Retry: robot-001 rolled back from 3.0.0; retrying offers it again.
    server.publish("3.0.0");
    let (code, failed, _) = rota_exit(
        &server,
        ADMIN_KEY,
        &["deploy", "3.0.0", "--to", "robot:robot-001", "--wait"],
    );
    assert_eq!((code, &failed["state"]), (3, &Value::from("failed")));
    let retried = server.rota_json(&["retry", failed["id"].as_str().unwrap()]);
    assert_eq!(retried["force"], true);
    let again = server.wait_for(
        &format!("/deployments/{}", failed["id"].as_str().unwrap()),
        "the retry to end",
        |d| d["state"] == "failed",
    );
    assert!(again["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "retried"));
    let failed_id = failed["id"].as_str().unwrap();
    let history = server.get(&format!("/history?robot=robot-001&deployment={failed_id}"));
    let rollbacks = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "rolled_back")
        .count();
    assert_eq!(rollbacks, 2, "offered again after the retry: {history:#}");
    for action in [
        "deployment.pause",
        "deployment.resume",
        "deployment.abort",
        "deployment.retry",
    ] {
        assert!(
            server.audit_actions().contains(&action.to_string()),
            "{action}"
        );
    }
}

#[test]
fn two_replicas_on_one_postgres_never_start_a_stage_twice() {
    if std::env::var("ROTA_TEST_DATABASE_URL").map_or(true, |url| url.is_empty()) {
        eprintln!("needs PostgreSQL: runs in scripts/system-tests/fleet-postgres");
        return;
    }
    // Both replicas look at running deployments every 5 ms: they race for every decision.
    let server = Server::start_with(&[("ROTA_ROLLOUT_TICK_MS", "5")]);
    let replica = server.replica();
    let _on_first = SimFleet::start(&server.url, "one", FLEET_SIZE / 2, |_| Behaviour::default());
    let _on_second = SimFleet::start(&replica.url, "two", FLEET_SIZE / 2, |_| {
        Behaviour::default()
    });
    server.publish("2.0.0");
    let done = server.rota_json(&[
        "deploy",
        "2.0.0",
        "--to",
        "all",
        "--staged",
        "10,30,60,100",
        "--wait",
        "--timeout",
        "300",
    ]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["counts"]["committed"], FLEET_SIZE as u64);
    assert_eq!(stage_starts(&done), [0, 1, 2, 3], "{:#}", done["log"]);
    let finished = done["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "finished")
        .count();
    assert_eq!(finished, 1);
}

#[test]
fn a_robot_that_goes_silent_counts_as_failed_and_halts_the_rollout() {
    let server = Server::start();
    let mut quiet = RobotClient::new(&server.url).unwrap();
    quiet
        .enroll(ENROLLMENT_KEY, "quiet-1", COMPATIBLE, None)
        .unwrap();
    server.publish("2.0.0");
    let created = server.rota_json(&[
        "deploy",
        "2.0.0",
        "--to",
        "all",
        "--staged",
        "100",
        "--silence-timeout",
        "1",
    ]);
    let id = created["id"].as_str().unwrap();
    // The robot never polls or reports: the engine's tick finds it silent.
    let halted = server.wait_for(&format!("/deployments/{id}"), "the halt", |d| {
        d["state"] == "halted"
    });
    assert_eq!(robot_state(&halted, "quiet-1"), "failed");
    let detail = halted["robots"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("silent for more than 1 s"), "{detail}");
}

#[test]
fn a_release_from_a_mapped_branch_deploys_itself_and_promote_carries_it_on() {
    // The test bundles are built from branch main.
    let server = Server::start_with(&[(
        "ROTA_BRANCH_ENVIRONMENTS",
        "main=staging,release/*=production",
    )]);
    let fleet = SimFleet::start(&server.url, "robot", 6, |_| Behaviour::default());
    server.rota_ok(&[
        "env",
        "set",
        "staging",
        "--groups",
        "lab",
        "--auto-deploy",
        "--canary",
        "1",
        "--stage-wait",
        "0",
    ]);
    server.rota_ok(&[
        "env",
        "set",
        "production",
        "--groups",
        "prod",
        "--approval-required",
    ]);
    server.rota_ok(&[
        "groups",
        "add",
        "lab",
        "robot-001",
        "robot-002",
        "robot-003",
    ]);
    server.rota_ok(&[
        "groups",
        "add",
        "prod",
        "robot-004",
        "robot-005",
        "robot-006",
    ]);

    server.publish("2.0.0");
    let deployments = server.wait_for("/deployments", "staging's auto-deploy", |list| {
        list.as_array()
            .unwrap()
            .iter()
            .any(|d| d["state"] == "succeeded")
    });
    let auto = &deployments[0];
    assert_eq!(auto["kind"], "auto", "{auto:#}");
    assert_eq!(auto["environment"], "staging");
    assert_eq!(auto["created_by"], "auto-deploy:main");
    assert_eq!(
        auto["strategy"]["kind"], "canary",
        "the environment's strategy"
    );
    assert_eq!(auto["counts"]["committed"], 3);
    assert!(fleet.offers("robot-004").is_empty(), "production untouched");

    let promoted = server.rota_json(&["promote", "staging", "production"]);
    assert_eq!(promoted["kind"], "promote");
    assert_eq!(promoted["version"], "2.0.0");
    assert_eq!(promoted["state"], "awaiting_approval", "production's rules");
    let bob = create_key(&server, "bob", "deployer");
    let (code, _, stderr) = rota_exit(
        &server,
        &bob,
        &["approve", promoted["id"].as_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let done = server.wait_for(
        &format!("/deployments/{}", promoted["id"].as_str().unwrap()),
        "production done",
        |d| d["state"] == "succeeded",
    );
    assert_eq!(done["counts"]["committed"], 3);
    assert_eq!(fleet.offers("robot-005").len(), 1);

    let (code, _, stderr) = rota_exit(&server, ADMIN_KEY, &["promote", "nowhere", "production"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no environment named"), "{stderr}");
}

#[test]
fn a_deployment_made_on_one_replica_wakes_a_robot_long_polling_the_other() {
    if std::env::var("ROTA_TEST_DATABASE_URL").map_or(true, |url| url.is_empty()) {
        eprintln!("needs PostgreSQL: runs in scripts/system-tests/fleet-postgres");
        return;
    }
    let server = Server::start();
    let replica = server.replica();
    let mut robot = RobotClient::new(&replica.url).unwrap();
    let token = robot
        .enroll(ENROLLMENT_KEY, "far-1", COMPATIBLE, None)
        .unwrap()
        .token;
    server.publish("2.0.0");
    // Held by the replica for up to 60 s; the client gives up after 30 s, so only a wake-up
    // from the other replica's deployment can answer it in time.
    let poll = std::thread::spawn(move || {
        common::http()
            .get(format!("{}/api/v1/robot/assignment?wait=60", replica.url))
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .map(|answer| answer.status().as_u16())
    });
    // The replica must hold the poll before the deployment: wait until it registered.
    std::thread::sleep(std::time::Duration::from_secs(1));
    server.rota_ok(&["deploy", "2.0.0", "--to", "robot:far-1"]);
    let status = poll.join().unwrap().expect("the long-poll was answered");
    assert_eq!(status, 200, "the replica offered the new assignment");
}
