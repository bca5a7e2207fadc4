//! Robot inventory, operator tags and dynamic groups against a real rota-server and the real
//! `rota` CLI: what robots report shows in `rota robots show`, operator tags win over the
//! robot's own, a dynamic group's robots are whoever its query matches when asked, a
//! deployment to it reaches those, and bad input is refused with the reason (a query's with
//! its column).

mod common;

use std::collections::BTreeMap;

use common::robots::{Behaviour, SimFleet};
use common::{http, Server, ADMIN_KEY};
use reqwest::StatusCode;
use rota_protocol::client::RobotClient;
use rota_protocol::robot::{DiskInfo, Inventory};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

fn inventory(board: &str, os: &str, tags: &[(&str, &str)]) -> Inventory {
    Inventory {
        board: Some(board.into()),
        os: Some(os.into()),
        os_version: Some("12".into()),
        kernel: Some("6.6.31+rpt-rpi-2712".into()),
        addresses: vec!["10.0.4.17".into(), "fd00::17".into()],
        disk: Some(DiskInfo {
            slot_a_bytes: Some(4 * GIB),
            slot_b_bytes: Some(4 * GIB),
            data_bytes: Some(20 * GIB),
            data_free_bytes: Some(12 * GIB),
        }),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        apps: Vec::new(),
    }
}

/// Three robots: two Pi 5s (one the robot itself says is in the warehouse, one in the lab)
/// and a PC, each reporting through the protocol client as the daemon does.
fn fleet_with_inventory(server: &Server) -> SimFleet {
    let fleet = SimFleet::start(&server.url, "robot", 3, |_| Behaviour::default());
    let reports = [
        inventory(
            "Raspberry Pi 5 Model B Rev 1.0",
            "Debian GNU/Linux 12 (bookworm)",
            &[("site", "warehouse")],
        ),
        inventory(
            "Raspberry Pi 5 Model B Rev 1.0",
            "Debian GNU/Linux 12 (bookworm)",
            &[("site", "lab")],
        ),
        inventory("Standard PC (Q35 + ICH9, 2009)", "Rota OS 2.1", &[]),
    ];
    for (robot, report) in fleet.robots.iter().zip(&reports) {
        robot_client(server, &robot.token)
            .report_inventory(report)
            .unwrap();
    }
    fleet
}

fn robot_client(server: &Server, token: &str) -> RobotClient {
    RobotClient::new(&server.url).unwrap().with_token(token)
}

fn ids(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect()
}

/// `key` of every object in the array `value`.
fn column<'a>(value: &'a Value, key: &str) -> Vec<&'a str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap())
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inventory_and_tags_show_and_dynamic_groups_select_by_them_at_deploy_time() {
    let server = Server::start();
    let fleet = fleet_with_inventory(&server);

    // The operator moves robot-001 to the lab: its own tag says warehouse, the operator's wins.
    let tagged = server.rota_json(&["robots", "tag", "robot-001", "site=lab", "arm=so-100"]);
    assert_eq!(tagged["tags"], json!({"arm": "so-100", "site": "lab"}));
    let shown = server.rota_json(&["robots", "show", "robot-001"]);
    assert_eq!(
        shown["inventory"]["board"],
        "Raspberry Pi 5 Model B Rev 1.0"
    );
    assert_eq!(shown["inventory"]["kernel"], "6.6.31+rpt-rpi-2712");
    assert_eq!(shown["inventory"]["tags"], json!({"site": "warehouse"}));
    assert_eq!(shown["inventory"]["disk"]["data_free_bytes"], 12 * GIB);
    assert!(shown["inventory_at"].is_string(), "{shown}");
    let text_view = server.rota_ok(&["robots", "show", "robot-001"]);
    for line in [
        "health: ok",
        "board: Raspberry Pi 5 Model B Rev 1.0",
        "os: Debian GNU/Linux 12 (bookworm)\n",
        "kernel: 6.6.31+rpt-rpi-2712",
        "addresses: 10.0.4.17, fd00::17",
        "disk: slot A 4.0 GiB, slot B 4.0 GiB, data 20.0 GiB (12.0 GiB free)",
        "tags: arm=so-100 (operator), site=lab (operator), site=warehouse (robot, overridden)",
    ] {
        assert!(
            text_view.contains(line),
            "{line:?} missing in:\n{text_view}"
        );
    }
    let listing = server.rota_ok(&["robots"]);
    assert!(
        listing.lines().next().unwrap().contains("BOARD"),
        "{listing}"
    );
    assert!(listing.contains("Debian 12"), "{listing}");
    // An operator tag removed: the robot's own shows through again.
    let untagged = server.rota_json(&["robots", "tag", "robot-001", "--remove", "arm"]);
    assert_eq!(untagged["tags"], json!({"site": "lab"}));

    let created = server.rota_json(&[
        "groups",
        "create",
        "lab-pis",
        "--query",
        r#"board ~ "raspberry pi 5" and tag.site = "lab""#,
    ]);
    assert_eq!(ids(&created["robots"]), ["robot-001", "robot-002"]);
    let group = server.rota_json(&["groups", "show", "lab-pis"]);
    assert_eq!(
        group["query"],
        r#"board ~ "raspberry pi 5" and tag.site = "lab""#
    );
    let show = server.rota_ok(&["groups", "show", "lab-pis"]);
    assert!(show.starts_with("lab-pis (dynamic): board ~"), "{show}");
    assert!(show.contains("2 robots matching now"), "{show}");

    // Membership follows the facts: robot-002 is moved to the office by an operator tag.
    server.rota_ok(&["robots", "tag", "robot-002", "site=office"]);
    let group = server.rota_json(&["groups", "show", "lab-pis"]);
    assert_eq!(ids(&group["robots"]), ["robot-001"]);
    let robots = server.rota_json(&["robots", "--group", "lab-pis"]);
    assert_eq!(column(&robots, "id"), ["robot-001"]);
    assert_eq!(
        server.get("/robots/robot-001")["groups"],
        json!(["lab-pis"])
    );

    // A deployment to it reaches the robots matching at deploy time, and only them.
    server.publish("2.1.0");
    let deployment = server.rota_json(&["deploy", "2.1.0", "--to", "group:lab-pis"]);
    let id = deployment["id"].as_str().unwrap();
    let read = server.get(&format!("/deployments/{id}"));
    assert_eq!(column(&read["robots"], "robot_id"), ["robot-001"]);
    server.wait_for(&format!("/deployments/{id}"), "the deployment", |d| {
        d["state"] == "succeeded"
    });
    assert!(fleet.offers("robot-002").is_empty());
    assert!(fleet.offers("robot-003").is_empty());
    // History by a dynamic group covers the robots it matches now.
    let events = server.rota_json(&["history", "--events", "--group", "lab-pis"]);
    let robots = column(&events, "robot_id");
    assert!(!robots.is_empty() && robots.iter().all(|r| *r == "robot-001"));
    let runs = server.rota_json(&["history", "--group", "lab-pis"]);
    assert_eq!(column(&runs, "robot_id"), ["robot-001"]);

    // The same inventory again is no change: the time it changed stays.
    let before = server.get("/robots/robot-003")["inventory_at"].clone();
    std::thread::sleep(std::time::Duration::from_millis(20));
    robot_client(&server, &fleet.robots[2].token)
        .report_inventory(&inventory(
            "Standard PC (Q35 + ICH9, 2009)",
            "Rota OS 2.1",
            &[],
        ))
        .unwrap();
    assert_eq!(server.get("/robots/robot-003")["inventory_at"], before);

    let actions = server.audit_actions();
    assert!(actions.contains(&"robot.tag".to_string()), "{actions:?}");
    assert!(
        actions.contains(&"group.set_query".to_string()),
        "{actions:?}"
    );
}

#[test]
fn an_environment_reaches_the_robots_its_dynamic_groups_match() {
    let server = Server::start();
    let _fleet = fleet_with_inventory(&server);
    server.rota_json(&[
        "groups",
        "create",
        "pis",
        "--query",
        r#"board ~ "raspberry pi 5""#,
    ]);
    // robot-002 matches both groups: it is offered once.
    server.rota_json(&["groups", "create", "lab", "--query", r#"tag.site = "lab""#]);
    server.rota_ok(&["env", "set", "field", "--groups", "pis,lab"]);
    server.publish("2.1.0");
    let deployment = server.rota_json(&["deploy", "2.1.0", "--to", "env:field"]);
    let read = server.get(&format!(
        "/deployments/{}",
        deployment["id"].as_str().unwrap()
    ));
    let mut robots = column(&read["robots"], "robot_id");
    robots.sort();
    assert_eq!(robots, ["robot-001", "robot-002"]);
}

#[test]
fn bad_queries_bad_tags_and_hand_picked_members_of_dynamic_groups_are_refused() {
    let server = Server::start();
    let fleet = fleet_with_inventory(&server);
    let client = http();
    let put_query = |name: &str, query: &str| {
        client
            .put(server.api(&format!("/groups/{name}/query")))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "query": query }))
            .send()
            .unwrap()
    };
    let refused = put_query("lab", r#"board ~ "Pi" and"#);
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = refused.json().unwrap();
    assert_eq!(
        body["reason"],
        "query: column 17: expected a field (id, compatible, version, state, board, os, \
         os_version, kernel, address or tag.NAME), found the end of the query"
    );
    assert!(server.get("/groups").as_array().unwrap().is_empty());
    let out = server.rota(
        ADMIN_KEY,
        &["groups", "create", "lab", "--query", "bored = \"x\""],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("column 1: unknown field `bored`"),
        "{stderr}"
    );

    // Dynamic groups take no hand-picked robots, and a hand-picked group cannot turn dynamic.
    assert_eq!(
        put_query("pis", r#"board ~ "Pi""#).status(),
        StatusCode::CREATED
    );
    assert_eq!(put_query("pis", r#"board ~ "PC""#).status(), StatusCode::OK);
    let out = server.rota(ADMIN_KEY, &["groups", "add", "pis", "robot-001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is dynamic"),
        "{}",
        text(&out.stderr)
    );
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-001"]);
    let conflict = put_query("lab", r#"board ~ "Pi""#);
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let list = server.rota_ok(&["groups"]);
    assert!(list.contains(r#"board ~ "PC""#), "{list}");

    // Tags: names that a query could not name are refused by the CLI and the server alike.
    let out = server.rota(ADMIN_KEY, &["robots", "tag", "robot-001", "a b=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let patched = client
        .patch(server.api("/robots/robot-001/tags"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"set": {"a=b": "x"}}))
        .send()
        .unwrap();
    assert_eq!(patched.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let missing = client
        .patch(server.api("/robots/ghost/tags"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"set": {"site": "lab"}}))
        .send()
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let robot = robot_client(&server, &fleet.robots[0].token);
    let error = robot
        .report_inventory(&inventory("x", "y", &[("bad tag", "z")]))
        .unwrap_err();
    assert_eq!(error.status(), Some(422), "{error}");
}
