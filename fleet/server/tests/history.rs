//! `rota history` and `rota audit` against a real server and simulated robots: which releases
//! each robot ran and how each run ended, and the audit log filtered by time, actor and action.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::robots::{Behaviour, SimFleet};
use common::{Server, ADMIN_KEY};
use serde_json::Value;

/// Now as RFC 3339, with a pause on each side so that no server timestamp taken before or
/// after can fall in the same millisecond.
fn instant_between() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(20));
    now
}

fn deploy(server: &Server, version: &str, target: &str) -> (Option<i32>, String) {
    let out = server.rota(ADMIN_KEY, &["deploy", version, "--to", target, "--wait"]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (out.status.code(), id)
}

/// (version, origin kind, end kind) of each run of `robot` in a history answer.
fn runs_of(histories: &Value, robot: &str) -> Vec<(String, String, String)> {
    let history = histories
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["robot_id"] == robot)
        .unwrap_or_else(|| panic!("{robot} missing from {histories:#}"));
    history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["version"].as_str().unwrap().to_string(),
                run["origin"]["kind"].as_str().unwrap().to_string(),
                run["end"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn run(version: &str, origin: &str, end: &str) -> (String, String, String) {
    (version.into(), origin.into(), end.into())
}

/// `field` of every entry of a JSON array.
fn each<'a>(entries: &'a Value, field: &str) -> Vec<&'a str> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry[field].as_str().unwrap())
        .collect()
}

fn robot_ids(histories: &Value) -> Vec<&str> {
    each(histories, "robot_id")
}

#[test]
fn history_shows_every_release_each_robot_ran_how_it_got_there_and_how_it_ended() {
    let server = Server::start();
    // Every robot starts on 1.0.0, which no deployment gave it; robot-002 fails 2.0.0's check.
    let fleet = SimFleet::start(&server.url, "robot", 3, |n| Behaviour {
        unhealthy_versions: if n == 2 {
            HashSet::from(["2.0.0".to_string()])
        } else {
            HashSet::new()
        },
        ..Behaviour::default()
    });
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-001", "robot-002"]);
    server.publish("2.0.0");
    server.publish("3.0.0");

    let (code, first) = deploy(&server, "2.0.0", "all");
    assert_eq!(code, Some(3), "robot-002 rolls back, so --wait exits 3");
    let between = instant_between();
    let (code, second) = deploy(&server, "3.0.0", "robot:robot-001");
    assert_eq!(code, Some(0));
    assert_eq!(fleet.offers("robot-001").len(), 2);

    let all = server.rota_json(&["history"]);
    assert_eq!(robot_ids(&all), ["robot-001", "robot-002", "robot-003"]);
    assert_eq!(
        runs_of(&all, "robot-001"),
        [
            run("1.0.0", "local_install", "replaced"),
            run("2.0.0", "deployment", "replaced"),
            run("3.0.0", "deployment", "running"),
        ]
    );
    assert_eq!(
        runs_of(&all, "robot-002"),
        [
            run("1.0.0", "local_install", "replaced"),
            run("2.0.0", "deployment", "rolled_back"),
            run("1.0.0", "robot_rollback", "running"),
        ]
    );
    assert_eq!(
        runs_of(&all, "robot-003"),
        [
            run("1.0.0", "local_install", "replaced"),
            run("2.0.0", "deployment", "running"),
        ]
    );

    // The details: which deployment and kind, when it was replaced and by what, why it rolled
    // back.
    let robot_2 = server.rota_json(&["history", "--robot", "robot-002"]);
    assert_eq!(robot_ids(&robot_2), ["robot-002"]);
    let runs = &robot_2[0]["runs"];
    assert_eq!(runs[0]["end"]["by_version"], "2.0.0");
    assert_eq!(runs[0]["end"]["at"], runs[1]["started_at"]);
    assert_eq!(runs[1]["origin"]["deployment_id"], first.as_str());
    assert_eq!(runs[1]["origin"]["deployment_kind"], "deploy");
    assert!(runs[1]["origin"]["created_by"]
        .as_str()
        .unwrap()
        .starts_with("key:"));
    assert!(runs[1]["committed_at"].is_null());
    assert!(runs[1]["end"]["reason"]
        .as_str()
        .unwrap()
        .contains("health check failed"));
    assert_eq!(runs[2]["origin"]["from_version"], "2.0.0");
    assert_eq!(runs[2]["origin"]["deployment_id"], first.as_str());
    let robot_1 = server.rota_json(&["history", "--robot", "robot-001"]);
    let runs = &robot_1[0]["runs"];
    assert!(runs[2]["committed_at"].is_string());
    assert_eq!(runs[2]["origin"]["deployment_id"], second.as_str());
    assert_eq!(runs[1]["end"]["by_version"], "3.0.0");

    // A group selects its robots.
    let lab = server.rota_json(&["history", "--group", "lab"]);
    assert_eq!(robot_ids(&lab), ["robot-001", "robot-002"]);

    // Time ranges keep the runs that overlap them.
    let since = server.rota_json(&["history", "--robot", "robot-001", "--since", &between]);
    assert_eq!(
        runs_of(&since, "robot-001"),
        [
            run("2.0.0", "deployment", "replaced"),
            run("3.0.0", "deployment", "running"),
        ]
    );
    let until = server.rota_json(&["history", "--robot", "robot-001", "--until", &between]);
    assert_eq!(
        runs_of(&until, "robot-001"),
        [
            run("1.0.0", "local_install", "replaced"),
            run("2.0.0", "deployment", "replaced"),
        ]
    );
    let recent = server.rota_json(&["history", "--since", "1-hour-ago"]);
    assert_eq!(recent, all);
    let future = server.rota_json(&["history", "--robot", "robot-003", "--until", "2000-01-01"]);
    assert_eq!(runs_of(&future, "robot-003"), []);

    // The table says the same for people.
    let table = server.rota_ok(&["history", "--robot", "robot-002"]);
    assert!(table.starts_with("ROBOT"), "{table}");
    for expected in [
        "local install",
        &format!("deploy {first}"),
        "rolled back at",
        "health check failed",
        "robot rolled back from v2.0.0",
        "running",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from:\n{table}"
        );
    }

    // The event list is still there.
    let events = server.rota_json(&["history", "--events", "--robot", "robot-002"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "rolled_back"));

    // Unknown robots and groups are errors naming them.
    for (args, named) in [
        (["history", "--robot", "robot-404"], "robot-404"),
        (["history", "--group", "nowhere"], "nowhere"),
    ] {
        let out = server.rota(ADMIN_KEY, &args);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(named));
    }
}

fn actions(entries: &Value) -> Vec<&str> {
    each(entries, "action")
}

#[test]
fn audit_filters_by_time_actor_and_action() {
    let server = Server::start();
    let created = server.rota_json(&["keys", "create", "ci-robot-builds", "--role", "deployer"]);
    let ci_key = created["key"].as_str().unwrap().to_string();
    server.publish("1.0.0");
    let between = instant_between();
    let path = server.write_bundle(
        "2.0.0",
        &common::bundle("2.0.0", common::COMPATIBLE, &common::trusted_key(), 4096),
    );
    let out = server.rota(&ci_key, &["release", "publish", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let everything = server.rota_json(&["audit"]);
    assert_eq!(
        actions(&everything),
        [
            "release.publish",
            "release.publish",
            "api_key.create",
            "api_key.bootstrap"
        ]
    );
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["--until", &between],
            &["release.publish", "api_key.create", "api_key.bootstrap"],
        ),
        (&["--since", &between], &["release.publish"]),
        (&["--actor", "CI-ROBOT"], &["release.publish"]),
        (
            &["--actor", "bootstrap admin"],
            &["release.publish", "api_key.create"],
        ),
        (
            &["--action", "release"],
            &["release.publish", "release.publish"],
        ),
        (
            &["--action", "api_key.create", "--since", "1-hour-ago"],
            &["api_key.create"],
        ),
        (&["--action", "api_key.cr"], &[]),
        (&["--until", "1-hour-ago"], &[]),
    ];
    for (filters, expected) in cases {
        let mut args = vec!["audit"];
        args.extend_from_slice(filters);
        assert_eq!(actions(&server.rota_json(&args)), expected, "{filters:?}");
    }
    let by_ci = server.rota_json(&["audit", "--actor", "ci-robot"]);
    assert!(by_ci[0]["actor"]
        .as_str()
        .unwrap()
        .ends_with("(ci-robot-builds)"));

    // The table for people, and refusals of times nobody can read.
    let table = server.rota_ok(&["audit", "--action", "release"]);
    assert!(
        table.starts_with("AT") && table.contains("release.publish"),
        "{table}"
    );
    let out = server.rota(ADMIN_KEY, &["audit", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2-hours-ago"));
    let answer = common::http()
        .get(server.api("/audit?since=yesterday"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().unwrap();
    assert!(
        body["reason"].as_str().unwrap().starts_with("since:"),
        "{body}"
    );
}

/// `keep_deployments`: per environment the newest N stay, older finished ones are deleted
/// unless a robot still runs (or would roll back to) the release one gave it; the robots'
/// own history and the audit log stay whole.
#[test]
fn old_deployments_are_pruned_per_environment_except_those_robots_still_reference() {
    let mut server = Server::start_with(&[("ROTA_KEEP_DEPLOYMENTS", "2")]);
    // robot-001 is in environment lab; robot-002 in none and fails every release after 2.0.0.
    let _fleet = SimFleet::start(&server.url, "robot", 2, |n| Behaviour {
        unhealthy_versions: match n {
            2 => ["3.0.0", "4.0.0", "5.0.0"].map(String::from).into(),
            _ => HashSet::new(),
        },
        ..Behaviour::default()
    });
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-001"]);
    server.rota_ok(&["env", "set", "lab", "--groups", "lab"]);
    let mut lab = Vec::new();
    let mut none = Vec::new();
    let mut after_two = String::new();
    for version in ["2.0.0", "3.0.0", "4.0.0", "5.0.0"] {
        server.publish(version);
        lab.push(deploy(&server, version, "robot:robot-001").1);
        none.push(deploy(&server, version, "robot:robot-002").1);
        if version == "2.0.0" {
            after_two = instant_between();
        }
    }
    let environments: Vec<Value> = lab
        .iter()
        .chain(&none)
        .map(|id| server.get(&format!("/deployments/{id}"))["environment"].clone())
        .collect();
    assert!(
        environments[..4].iter().all(|env| env == "lab"),
        "{environments:?}"
    );
    assert!(
        environments[4..].iter().all(Value::is_null),
        "{environments:?}"
    );

    // Pruning runs at start (then every ten minutes).
    server.crash_and_restart();
    let expected: HashSet<&str> = [&lab[2], &lab[3], &none[0], &none[2], &none[3]]
        .into_iter()
        .map(String::as_str)
        .collect();
    let left = server.wait_for("/deployments?limit=100", "the retention", |list| {
        list.as_array().unwrap().len() == expected.len()
    });
    // lab: its newest two; robot-001 runs 5.0.0 and would roll back to 4.0.0, both in them.
    // none: its newest two, and the deployment that gave robot-002 the 2.0.0 it still runs.
    assert_eq!(
        each(&left, "id").into_iter().collect::<HashSet<_>>(),
        expected
    );
    for pruned in [&lab[0], &lab[1], &none[1]] {
        let answer = common::http()
            .get(server.api(&format!("/deployments/{pruned}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .unwrap();
        assert_eq!(answer.status().as_u16(), 404, "{pruned}");
    }

    // What the robots ran is still all there, and a rollback still finds the release before.
    let versions: Vec<String> = runs_of(&server.rota_json(&["history"]), "robot-001")
        .into_iter()
        .map(|(version, _, _)| version)
        .collect();
    assert_eq!(versions, ["1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"]);
    let plan = server.rota_json(&["rollback", "--robot", "robot-001", "--dry-run"]);
    assert_eq!(plan["plan"][0]["version"], "4.0.0", "{plan:#}");
    // Rollbacks read the robots' own commits, which retention keeps: what robot-001 ran right
    // after 2.0.0's (pruned) deployment is still found. They used to read the deployments'
    // assignments, so a pruned deployment silently fell out of `--to TIME` and "previous".
    let plan = server.rota_json(&[
        "rollback",
        "--robot",
        "robot-001",
        "--to",
        &after_two,
        "--dry-run",
    ]);
    assert_eq!(plan["plan"][0]["version"], "2.0.0", "{plan:#}");
    let audit = server.rota_json(&["audit", "--action", "deployment.create"]);
    assert_eq!(audit.as_array().unwrap().len(), 8, "{audit:#}");
}

/// An app release's commit used to enter the robot's one release history as if it replaced the
/// OS release ("2.0.0 replaced by nav 0.4.0"), and the dashboard offered app versions as OS
/// rollback targets. Each app now has its own history beside the OS's.
#[test]
fn app_releases_have_their_own_history_and_never_replace_the_os_release() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 1, |_| Behaviour {
        unhealthy_versions: ["nav@0.6.0".to_string()].into(),
        ..Behaviour::default()
    });
    server.publish("2.0.0");
    assert_eq!(deploy(&server, "2.0.0", "all").0, Some(0));
    for version in ["0.4.0", "0.5.0", "0.6.0"] {
        server.publish_app("nav", version);
        let healthy = version != "0.6.0";
        let code = deploy(&server, &format!("nav@{version}"), "all").0;
        assert_eq!(code, Some(if healthy { 0 } else { 3 }), "{version}");
    }

    let histories = server.rota_json(&["history"]);
    assert_eq!(
        histories
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["app"].as_str().unwrap_or("(os)"))
            .collect::<Vec<_>>(),
        ["(os)", "nav"],
        "{histories:#}"
    );
    assert_eq!(
        runs_of(&histories, "robot-001"),
        [
            run("1.0.0", "local_install", "replaced"),
            run("2.0.0", "deployment", "running"),
        ]
    );
    let nav = server.rota_json(&["history", "--app", "nav"]);
    assert_eq!(nav.as_array().unwrap().len(), 1, "{nav:#}");
    assert_eq!(nav[0]["app"], "nav");
    // 0.6.0 failed its check: it ran from its activation until then, and the robot switched
    // back to 0.5.0 by itself (app releases report no trial boot, only the outcome).
    assert_eq!(
        runs_of(&nav, "robot-001"),
        [
            run("0.4.0", "deployment", "replaced"),
            run("0.5.0", "deployment", "replaced"),
            run("0.6.0", "deployment", "rolled_back"),
            run("0.5.0", "robot_rollback", "running"),
        ]
    );
    let table = server.rota_ok(&["history", "--app", "nav"]);
    assert!(
        table.contains("nav@0.4.0")
            && table.contains("replaced by nav@0.5.0")
            && table.contains("robot rolled back from nav@0.6.0"),
        "{table}"
    );
    let deployments = server.rota_ok(&["deployments"]);
    assert!(deployments.contains("nav@0.6.0"), "{deployments}");
    // A plain OS rollback looks at the OS track only: nav 0.5.0 and 0.4.0 are lower versions,
    // and still no OS release older than 2.0.0 was committed through Rota.
    let refused = server.rota(
        ADMIN_KEY,
        &["rollback", "--robot", "robot-001", "--dry-run"],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("no release older than v2.0.0"),
        "{said}"
    );
}
