//! The robot API of a fleet server on loopback (tiny_http), holding one assignment the test
//! sets, and recording the events and polls the daemon sends; plus the daemon process and the
//! robot's `[server]` config. The real server is tested against real daemons in
//! fleet/server/tests/daemons.rs; this one lets the updater's tests set any assignment.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rota_protocol::robot::{Assignment, EventReport, Inventory, RobotEvent};
use tiny_http::{Header, Method, Request, Response};

use super::Robot;

#[derive(Default)]
struct Shared {
    assignment: Option<Assignment>,
    /// Bumped with every new assignment; the ETag.
    generation: u64,
    events: Vec<EventReport>,
    polls: usize,
    /// Off: answers the inventory route 404, as a server older than it does.
    inventory_route: bool,
    inventories: Vec<Inventory>,
}

pub struct Fleet {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

/// How long an unchanged poll is held, standing in for a long-poll's wait: it paces the
/// daemon, nothing is measured against it.
const HOLD: Duration = Duration::from_millis(100);

impl Fleet {
    pub fn start() -> Fleet {
        Fleet::start_with(true)
    }

    /// A fleet server from before the inventory route: it answers it 404.
    pub fn start_without_inventory() -> Fleet {
        Fleet::start_with(false)
    }

    fn start_with(inventory_route: bool) -> Fleet {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            inventory_route,
            ..Shared::default()
        }));
        let state = shared.clone();
        thread::spawn(move || {
            for request in server.incoming_requests() {
                let state = state.clone();
                thread::spawn(move || answer(request, &state));
            }
        });
        Fleet { url, shared }
    }

    /// Offers `assignment` from the next poll on.
    pub fn assign(&self, assignment: Assignment) {
        let mut shared = self.shared.lock().unwrap();
        shared.assignment = Some(assignment);
        shared.generation += 1;
    }

    pub fn events(&self) -> Vec<RobotEvent> {
        let shared = self.shared.lock().unwrap();
        shared
            .events
            .iter()
            .map(|report| report.event.clone())
            .collect()
    }

    /// Event names in order, with consecutive `downloading` reports collapsed into one.
    pub fn event_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.events().iter().map(RobotEvent::name).collect();
        names.dedup_by(|next, previous| *next == "downloading" && *previous == "downloading");
        names
    }

    pub fn polls(&self) -> usize {
        self.shared.lock().unwrap().polls
    }

    /// The inventories the daemon sent, in order.
    pub fn inventories(&self) -> Vec<Inventory> {
        self.shared.lock().unwrap().inventories.clone()
    }
}

fn answer(mut request: Request, shared: &Mutex<Shared>) {
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let mut body = String::new();
    let _ = request.as_reader().read_to_string(&mut body);
    let response = match (request.method(), path.as_str()) {
        (Method::Post, "/api/v1/robot/enroll") => {
            Response::from_string(r#"{"robot_id":"robot-1","token":"robot-token","approved":true}"#)
                .with_header(json_header())
        }
        (Method::Post, "/api/v1/robot/events") => {
            let report: EventReport = serde_json::from_str(&body).unwrap();
            let mut shared = shared.lock().unwrap();
            // As the real server does: an assignment the robot is done with is not offered
            // again.
            let done_with = report
                .event
                .state()
                .is_final()
                .then_some(&report.deployment_id);
            if shared.assignment.as_ref().map(|a| &a.deployment_id) == done_with {
                shared.assignment = None;
            }
            shared.events.push(report);
            Response::from_string("").with_status_code(204)
        }
        (Method::Put, "/api/v1/robot/slots") => Response::from_string("").with_status_code(204),
        (Method::Put, "/api/v1/robot/inventory") if shared.lock().unwrap().inventory_route => {
            let inventory: Inventory = serde_json::from_str(&body).unwrap();
            shared.lock().unwrap().inventories.push(inventory);
            Response::from_string("").with_status_code(204)
        }
        (Method::Get, "/api/v1/robot/assignment") => {
            let if_none_match = request
                .headers()
                .iter()
                .find(|header| header.field.equiv("If-None-Match"))
                .map(|header| header.value.as_str().to_owned());
            let (assignment, etag) = {
                let mut shared = shared.lock().unwrap();
                shared.polls += 1;
                (
                    shared.assignment.clone(),
                    format!("\"{}\"", shared.generation),
                )
            };
            match assignment {
                Some(_) if if_none_match.as_deref() == Some(etag.as_str()) => {
                    thread::sleep(HOLD);
                    Response::from_string("").with_status_code(304)
                }
                Some(assignment) => {
                    Response::from_string(serde_json::to_string(&assignment).unwrap())
                        .with_header(json_header())
                        .with_header(Header::from_bytes("ETag", etag).unwrap())
                }
                None => {
                    thread::sleep(HOLD);
                    Response::from_string("").with_status_code(204)
                }
            }
        }
        _ => Response::from_string("not found").with_status_code(404),
    };
    let _ = request.respond(response);
}

fn json_header() -> Header {
    Header::from_bytes("Content-Type", "application/json").unwrap()
}

/// An assignment of the bundle at `bundle` (served at `bundle_url`, without the robot token).
pub fn assignment(
    robot: &Robot,
    deployment_id: &str,
    bundle: &Path,
    bundle_url: &str,
) -> Assignment {
    let info = robot.bundle_info(bundle);
    Assignment {
        deployment_id: deployment_id.into(),
        release_id: format!("rel_{}", info.version),
        version: info.version,
        compatible: info.compatible,
        bundle_url: bundle_url.into(),
        bundle_requires_token: false,
        bundle_size: fs::metadata(bundle).unwrap().len(),
        manifest_hash: info.digest.to_hex(),
        force: false,
        allow_downgrade: false,
        update_window: None,
        app: None,
        env: Default::default(),
    }
}

/// `rota-updater daemon` as a child process, killed when dropped (a power cut, for the
/// updater). Its log goes to `daemon.log` in the robot's directory.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon; `now` is the local time it sees (`ROTA_TEST_NOW`), `None` the clock.
    pub fn start(robot: &Robot, now: Option<&str>) -> Daemon {
        let log = File::options()
            .create(true)
            .append(true)
            .open(robot.path("daemon.log"))
            .unwrap();
        let mut command = robot.updater();
        command
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("ROTA_TEST_NOW");
        if let Some(now) = now {
            command.env("ROTA_TEST_NOW", now);
        }
        Daemon {
            child: command.spawn().unwrap(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Robot {
    /// Points the updater at `fleet` with the reboot policy `reboot`: long-poll, fast retries.
    pub fn join_fleet(&self, fleet: &Fleet, reboot: &str) {
        self.join_fleet_at(&fleet.url, reboot);
    }

    /// The same, at any URL (one where nobody answers, for a fleet out of reach).
    pub fn join_fleet_at(&self, url: &str, reboot: &str) {
        let path = |name: &str| self.path(name).display().to_string();
        fs::write(self.path("enrollment.key"), "fleet-key\n").unwrap();
        self.write_config(&format!(
            r#"[server]
url = "{url}"
robot_id = "robot-1"
enrollment_key_file = "{key}"
token_path = "{token}"
outbox_path = "{outbox}"
long_poll_secs = 1
backoff_initial_ms = 20
backoff_max_ms = 200
reboot = "{reboot}"
"#,
            key = path("enrollment.key"),
            token = path("data/rota/token"),
            outbox = path("data/rota/outbox"),
        ));
    }

    /// Waits until `done` holds, failing with the daemon's log after a minute (a hang guard:
    /// nothing is measured against it).
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < give_up,
                "gave up waiting for {what}; daemon log:\n{}",
                fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}
