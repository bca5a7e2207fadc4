//! The dashboard's guard rails against a real rota-server: login with an API key gives an
//! HttpOnly SameSite=Strict session cookie; every change needs the session's CSRF token, a
//! same-origin request and the key's role; refused requests change nothing; logout and key
//! revocation end sessions and their event streams; the page ships a strict CSP.
//!
//! The browser-driven half lives in fleet/dashboard-tests (scripts/system-tests/dashboard).

mod common;

use std::io::{BufRead as _, BufReader};
use std::sync::Arc;

use common::robots::{Behaviour, Gate, SimFleet};
use common::{http, Server, ADMIN_KEY, COMPATIBLE};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use serde_json::{json, Value};

/// Simulated robots that stay in trial until `gate` opens. Dropping it opens the gate before
/// the fleet stops, so robots held in trial are let go even when an assertion fails, and the
/// fleet's threads can end.
struct GatedFleet {
    gate: Arc<Gate>,
    _fleet: SimFleet,
}

impl GatedFleet {
    fn start(server: &Server, robots: usize) -> GatedFleet {
        let gate = Arc::new(Gate::default());
        let fleet = SimFleet::start(&server.url, "robot", robots, |_| Behaviour {
            unhealthy_versions: Default::default(),
            gate: Some(gate.clone()),
        });
        GatedFleet {
            gate,
            _fleet: fleet,
        }
    }
}

impl Drop for GatedFleet {
    fn drop(&mut self) {
        self.gate.open();
    }
}

/// A logged-in browser: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
    role: String,
}

/// Sends `request`; panics unless it succeeds. Returns the JSON answer.
fn json_ok(request: RequestBuilder) -> Value {
    let response = request.send().unwrap();
    let status = response.status();
    let body: Value = response.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

fn as_admin(request: RequestBuilder) -> Value {
    json_ok(request.bearer_auth(ADMIN_KEY))
}

fn new_key(server: &Server, name: &str, role: &str) -> (String, String) {
    let created = as_admin(
        http()
            .post(server.api("/api-keys"))
            .json(&json!({"name": name, "role": role})),
    );
    (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    )
}

fn login(server: &Server, key: &str) -> Browser {
    let response = http()
        .post(format!("{}/ui/login", server.url))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "login with {key}");
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let body: Value = response.json().unwrap();
    Browser {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_string(),
        role: body["role"].as_str().unwrap().to_string(),
    }
}

fn ui(server: &Server, path: &str) -> String {
    format!("{}/ui{path}", server.url)
}

fn status_of(request: RequestBuilder) -> u16 {
    request.send().unwrap().status().as_u16()
}

/// A POST as a page at `origin` sends it from `browser`, with `csrf` as its token.
fn post_from(
    origin: &str,
    server: &Server,
    browser: &Browser,
    path: &str,
    csrf: &str,
) -> RequestBuilder {
    http()
        .post(ui(server, path))
        .header(COOKIE, &browser.cookie)
        .header("X-CSRF-Token", csrf)
        .header("Origin", origin)
        .json(&json!({}))
}

/// A POST as the dashboard page sends it, from `browser`, with `csrf` as its token.
fn page_post(server: &Server, browser: &Browser, path: &str, csrf: &str) -> RequestBuilder {
    post_from(&server.url, server, browser, path, csrf)
}

fn publish_over_http(server: &Server, version: &str) -> String {
    let bundle = common::bundle(version, COMPATIBLE, &common::trusted_key(), 8 * 1024);
    let release = as_admin(http().post(server.api("/releases")).body(bundle));
    release["id"].as_str().unwrap().to_string()
}

fn audit_actions(server: &Server) -> Vec<String> {
    server
        .get("/audit?limit=1000")
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn login_gives_a_strict_http_only_cookie_that_reads_like_the_key() {
    let server = Server::start();
    let response = http()
        .post(ui(&server, "/login"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let session: Value = response.json().unwrap();
    assert_eq!(session["role"], "admin");
    let csrf = session["csrf_token"].as_str().unwrap();
    assert_eq!(csrf.len(), 64, "{session}");
    assert!(
        !set_cookie.contains(csrf),
        "the CSRF token is not the cookie"
    );
    let cookie = set_cookie.split(';').next().unwrap();

    let again: Value = http()
        .get(ui(&server, "/session"))
        .header(COOKIE, cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again["csrf_token"], csrf);

    let through_page = json_ok(
        http()
            .get(ui(&server, "/api/status"))
            .header(COOKIE, cookie),
    );
    assert_eq!(through_page, server.get("/status"));

    // No cookie, or one the server never issued: not logged in.
    assert_eq!(status_of(http().get(ui(&server, "/api/status"))), 401);
    let forged = format!("rota_session={}", "0".repeat(64));
    assert_eq!(
        status_of(
            http()
                .get(ui(&server, "/api/status"))
                .header(COOKIE, forged)
        ),
        401
    );
    // The page's API takes sessions, not bearer keys.
    assert_eq!(
        status_of(
            http()
                .get(ui(&server, "/api/status"))
                .bearer_auth(ADMIN_KEY)
        ),
        401
    );

    // Logging in takes a live operator key, nothing else.
    assert_eq!(
        status_of(
            http()
                .post(ui(&server, "/login"))
                .bearer_auth("rota_op_nope")
        ),
        401
    );
    assert_eq!(
        status_of(
            http()
                .post(ui(&server, "/login"))
                .bearer_auth("rota_rb_robot_token")
        ),
        403
    );
    assert_eq!(status_of(http().post(ui(&server, "/login"))), 401);
    let foreign = http()
        .post(ui(&server, "/login"))
        .bearer_auth(ADMIN_KEY)
        .header("Origin", "http://evil.example");
    assert_eq!(status_of(foreign), 403);
    assert!(audit_actions(&server).contains(&"dashboard.login".to_string()));
}

#[test]
fn forged_or_under_privileged_actions_are_refused_and_change_nothing() {
    let server = Server::start();
    let _fleet = GatedFleet::start(&server, 2);
    let release = publish_over_http(&server, "2.0.0");
    let created = as_admin(
        http()
            .post(server.api("/deployments"))
            .json(&json!({"release": release, "target": "all"})),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let pause = format!("/api/deployments/{id}/pause");

    let (deployer_id, deployer_key) = new_key(&server, "dash deployer", "deployer");
    let (_, viewer_key) = new_key(&server, "dash viewer", "viewer");
    let deployer = login(&server, &deployer_key);
    let other_deployer = login(&server, &deployer_key);
    let viewer = login(&server, &viewer_key);
    assert_eq!(
        (deployer.role.as_str(), viewer.role.as_str()),
        ("deployer", "viewer")
    );
    let audit_before = audit_actions(&server);

    let refusals: Vec<(&str, RequestBuilder, u16)> = vec![
        (
            "no CSRF token",
            http()
                .post(ui(&server, &pause))
                .header(COOKIE, &deployer.cookie)
                .json(&json!({})),
            403,
        ),
        (
            "a wrong CSRF token",
            page_post(&server, &deployer, &pause, "0123abcd"),
            403,
        ),
        (
            "another session's CSRF token",
            page_post(&server, &deployer, &pause, &other_deployer.csrf),
            403,
        ),
        (
            "a page on another origin",
            post_from(
                "http://evil.example",
                &server,
                &deployer,
                &pause,
                &deployer.csrf,
            ),
            403,
        ),
        (
            "a viewer's session with its own token",
            page_post(&server, &viewer, &pause, &viewer.csrf),
            403,
        ),
        (
            "a cross-site form post (no cookie, no token)",
            http()
                .post(ui(&server, &pause))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body("x=1"),
            401,
        ),
        (
            "a bearer key instead of a session",
            http()
                .post(ui(&server, &pause))
                .bearer_auth(ADMIN_KEY)
                .header("X-CSRF-Token", &deployer.csrf),
            401,
        ),
        (
            "a viewer's rollback",
            page_post(&server, &viewer, "/api/rollbacks", &viewer.csrf)
                .json(&json!({"target": "all"})),
            403,
        ),
        (
            "a rollback without a token",
            http()
                .post(ui(&server, "/api/rollbacks"))
                .header(COOKIE, &deployer.cookie)
                .json(&json!({"target": "all"})),
            403,
        ),
        (
            "a viewer's deployment",
            page_post(&server, &viewer, "/api/deployments", &viewer.csrf)
                .json(&json!({"release": release, "target": "all"})),
            403,
        ),
    ];
    for (what, request, expected) in refusals {
        let response: Response = request.send().unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or(Value::Null);
        assert_eq!(status, expected, "{what}: {body}");
        let deployment = server.get(&format!("/deployments/{id}"));
        assert_eq!(
            deployment["state"], "running",
            "{what} changed the deployment"
        );
    }
    assert_eq!(
        audit_actions(&server),
        audit_before,
        "refusals wrote no audit entry"
    );
    assert_eq!(server.get("/deployments").as_array().unwrap().len(), 1);

    // The same request with the session's own token, from the page, by a deployer: done, and
    // audited under the deployer's key.
    let response = page_post(&server, &deployer, &pause, &deployer.csrf)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let paused: Value = response.json().unwrap();
    assert_eq!(paused["state"], "paused");
    let newest = &server.get("/audit?limit=1")[0];
    assert_eq!(newest["action"], "deployment.pause");
    assert!(
        newest["actor"].as_str().unwrap().contains(&deployer_id),
        "{newest}"
    );
}

/// The deployments list (what the page's list and fleet overview read) says when a running
/// canary waits for an approve; before, only the deployment's own page could tell, from its
/// robots, so Approve was offered nowhere else.
#[test]
fn the_deployments_list_says_when_a_canary_waits_for_approval() {
    let server = Server::start();
    let fleet = GatedFleet::start(&server, 4);
    let release = publish_over_http(&server, "2.0.0");
    let created = as_admin(http().post(server.api("/deployments")).json(&json!({
        "release": release, "target": "all",
        "strategy": {"kind": "canary", "count": 2},
    })));
    let id = created["id"].as_str().unwrap().to_string();
    let (_, deployer_key) = new_key(&server, "dash deployer", "deployer");
    let deployer = login(&server, &deployer_key);
    let listed = || {
        let list = json_ok(
            http()
                .get(ui(&server, "/api/deployments"))
                .header(COOKIE, &deployer.cookie),
        );
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            entry["stage_awaits_approval"],
            server.get(&format!("/deployments/{id}"))["stage_awaits_approval"],
            "the list and the deployment's own page agree"
        );
        entry
    };

    server.wait_for(&format!("/deployments/{id}"), "canaries in trial", |d| {
        d["counts"]["trial"] == 2
    });
    assert_eq!(
        listed()["stage_awaits_approval"],
        false,
        "canaries still in trial"
    );

    fleet.gate.open();
    server.wait_for(&format!("/deployments/{id}"), "canaries committed", |d| {
        d["counts"]["committed"] == 2
    });
    // The engine marks the stage done in the same step as the last canary's commit.
    let waiting = listed();
    assert_eq!(waiting["state"], "running");
    assert_eq!(waiting["stage_awaits_approval"], true, "{waiting:#}");

    let approve = format!("/api/deployments/{id}/approve");
    let approved = json_ok(page_post(&server, &deployer, &approve, &deployer.csrf));
    assert_eq!(approved["current_stage"], 1);
    assert_eq!(listed()["stage_awaits_approval"], false, "approved");
    let done = server.wait_for(&format!("/deployments/{id}"), "the rest", |d| {
        d["state"] != "running"
    });
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["stage_awaits_approval"], false);
}

#[test]
fn logout_and_key_revocation_end_sessions_and_their_event_streams() {
    let server = Server::start();
    let (key_id, key) = new_key(&server, "dash", "viewer");
    let browser = login(&server, &key);

    // The stream needs a session, says "change" first, and again after a change.
    assert_eq!(status_of(http().get(ui(&server, "/events"))), 401);
    let stream = http()
        .get(ui(&server, "/events"))
        .header(COOKIE, &browser.cookie)
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut lines = BufReader::new(stream).lines();
    let mut next_change = || loop {
        let line = lines.next().expect("the stream goes on").unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            return data.to_string();
        }
    };
    let first = next_change();
    let group = http()
        .put(server.api("/groups/lab"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(group.status(), 201);
    let second = next_change();
    assert_ne!(first, second);

    // Logout needs the CSRF token too, then the cookie opens nothing.
    let logout = |csrf: &str| {
        http()
            .post(ui(&server, "/logout"))
            .header(COOKIE, &browser.cookie)
            .header("X-CSRF-Token", csrf)
            .send()
            .unwrap()
    };
    assert_eq!(logout("wrong").status(), 403);
    let out = logout(&browser.csrf);
    assert_eq!(out.status(), 204);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let session = http()
        .get(ui(&server, "/session"))
        .header(COOKIE, &browser.cookie);
    assert_eq!(status_of(session), 401);

    // Revoking the key ends its sessions, and their streams end.
    let browser = login(&server, &key);
    let stream = http()
        .get(ui(&server, "/events"))
        .header(COOKIE, &browser.cookie)
        .send()
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    assert!(lines.next().is_some());
    let revoked = http()
        .delete(server.api(&format!("/api-keys/{key_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let robots = http()
        .get(ui(&server, "/api/robots"))
        .header(COOKIE, &browser.cookie);
    assert_eq!(status_of(robots), 401);
    // Reading on until the server closes the stream (the client's timeout guards a hang).
    for line in lines {
        line.expect("the stream ends cleanly");
    }
    let actions = audit_actions(&server);
    assert!(
        actions.contains(&"dashboard.logout".to_string()),
        "{actions:?}"
    );
}

#[test]
fn the_page_is_served_whole_from_the_binary_under_a_strict_policy() {
    let server = Server::start();
    let page = http().get(format!("{}/", server.url)).send().unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().unwrap();
    for asset in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        assert!(html.contains(asset));
        let response = http().get(format!("{}{asset}", server.url)).send().unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(!response.bytes().unwrap().is_empty());
    }
}

/// Open pages share one poller per replica: each used to poll the database on its own, so the
/// cost grew with every browser tab. Every stream still hears each change.
#[test]
fn open_pages_share_one_change_poller() {
    let server = Server::start();
    let (_, key) = new_key(&server, "dash", "viewer");
    let browser = login(&server, &key);
    let polls = || -> u64 {
        let text = http()
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("rota_dashboard_change_polls_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut streams: Vec<_> = (0..6)
        .map(|_| {
            let stream = http()
                .get(ui(&server, "/events"))
                .header(COOKIE, &browser.cookie)
                .send()
                .unwrap();
            assert_eq!(stream.status(), 200);
            BufReader::new(stream).lines()
        })
        .collect();
    let mut next_change = |n: usize| loop {
        let line = streams[n].next().expect("the stream goes on").unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            return data.to_string();
        }
    };
    let first: Vec<String> = (0..6).map(&mut next_change).collect();
    let before = polls();
    let started = std::time::Instant::now();
    as_admin(http().put(server.api("/groups/lab")));
    for (n, seen) in first.iter().enumerate() {
        assert_ne!(&next_change(n), seen, "stream {n} missed the change");
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let looked = polls() - before;
    let seconds = started.elapsed().as_secs() + 1;
    // One look a second for all six pages (six pollers would make it six a second).
    assert!(
        looked <= seconds + 1,
        "{looked} looks in {seconds} s for 6 pages"
    );
}

/// The person's view, in a real headless Chromium driven by playwright-core
/// (fleet/dashboard-tests/dashboard.test.mjs): 20 simulated robots, releases 1.0.0 (what the
/// robots run), 2.0.0, 3.0.0 (whose health check fails on robot-001, a canary), 4.0.0 and
/// 5.0.0 (for the approval steps, which need versions no robot ran yet), groups
/// `canary` (robot-001..003, environment staging) and `fleet` (the rest, production), and a
/// deployer and a viewer key, and two releases of app `nav`. The browser does the rest: log in,
/// deploy, watch, roll back.
#[test]
#[ignore = "needs Chromium, node and npm packages: scripts/system-tests/dashboard runs it"]
fn in_a_real_browser() {
    let tests_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard-tests");
    assert!(
        tests_dir.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules: run scripts/system-tests/dashboard",
        tests_dir.display()
    );
    let server = Server::start();
    // 1.0.0 first: the robots report running it when they start, and the server links that
    // report to the release, so rolling a robot back to 1.0.0 is possible.
    for version in ["1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"] {
        publish_over_http(&server, version);
    }
    for version in ["0.4.0", "0.5.0"] {
        let bundle = common::app_bundle("nav", version, COMPATIBLE, &common::trusted_key());
        as_admin(http().post(server.api("/releases")).body(bundle));
    }
    let _fleet = SimFleet::start(&server.url, "robot", 20, |n| Behaviour {
        unhealthy_versions: match n {
            1 => ["3.0.0".to_string()].into(),
            _ => Default::default(),
        },
        gate: None,
    });
    for (group, environment, robots) in [
        ("canary", "staging", 1..=3),
        ("fleet", "production", 4..=20),
    ] {
        as_admin(http().put(server.api(&format!("/groups/{group}"))));
        for n in robots {
            as_admin(http().put(server.api(&format!("/groups/{group}/robots/robot-{n:03}"))));
        }
        as_admin(
            http()
                .put(server.api(&format!("/environments/{environment}")))
                .json(&json!({"groups": [group]})),
        );
    }
    // robot-010 reports its inventory as a daemon does, and an operator tags it.
    let robot_010 = &_fleet.robots[9];
    rota_protocol::client::RobotClient::new(&server.url)
        .unwrap()
        .with_token(&robot_010.token)
        .report_inventory(&rota_protocol::robot::Inventory {
            board: Some("Raspberry Pi 5 Model B Rev 1.0".into()),
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            kernel: Some("6.6.31+rpt-rpi-2712".into()),
            addresses: vec!["10.0.4.10".into()],
            tags: [("arm".to_string(), "so-100".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
    as_admin(
        http()
            .patch(server.api("/robots/robot-010/tags"))
            .json(&json!({"set": {"site": "lab"}})),
    );
    let (_, deployer_key) = new_key(&server, "alice", "deployer");
    let (_, viewer_key) = new_key(&server, "victor", "viewer");
    // A notification channel whose receiver answers every POST with 200.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in receiver.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(value) = line.to_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = std::io::Write::write_all(
                reader.get_mut(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    as_admin(
        http().put(server.api("/notifications/channels/ops")).json(
            &json!({"kind": "webhook", "url": hook, "secret": "a-secret-of-16-chars-or-more"}),
        ),
    );

    let status = std::process::Command::new("node")
        .args(["--test", "--test-concurrency=1", "dashboard.test.mjs"])
        .current_dir(&tests_dir)
        .env("ROTA_URL", &server.url)
        .env("ROTA_ADMIN_KEY", ADMIN_KEY)
        .env("ROTA_DEPLOYER_KEY", &deployer_key)
        .env("ROTA_VIEWER_KEY", &viewer_key)
        .status()
        .expect("run node");
    assert!(status.success(), "the browser tests failed: {status}");
}
