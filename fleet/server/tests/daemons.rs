//! The fleet with real robots' updaters: a real rota-server and 20 `rota-updater daemon`
//! processes on file-backed slots with a real GRUB environment (grub-editenv); and one daemon
//! whose inventory reaches `rota robots show`. The harness is
//! the robots' hardware: when a daemon runs its reboot command (a script that records the
//! request), the harness kills it, boots by grub.cfg's rules (picks the slot, writes the kernel
//! command line), runs `rota-updater commit` as rota-commit.service would, and starts the
//! daemon again.
//!
//! Needs the `rota` CLI and `rota-updater` built into the same target dir:
//! `cargo build -p rota-cli -p rota-updater && cargo test -p rota-server --test daemons`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    app_bundle, app_bundle_checked, server_bin, trusted_key, Server, COMPATIBLE, ENROLLMENT_KEY,
};
use serde_json::Value;

const FLEET_SIZE: usize = 20;
/// The robot whose health check fails on the new release.
const UNHEALTHY: &str = "robot-007";
const SLOT_SIZE: usize = 1 << 20;
/// What a healthy install reports, repeats collapsed.
const HEALTHY_SEQUENCE: [&str; 6] = [
    "downloading",
    "installing",
    "installed",
    "rebooting",
    "trial",
    "committed",
];

fn updater_bin() -> PathBuf {
    let path = server_bin().with_file_name("rota-updater");
    assert!(
        path.exists(),
        "{} is missing: build it into the same target dir first (cargo build -p rota-updater -p rota-cli)",
        path.display()
    );
    path
}

fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// One robot: slots, GRUB env, cmdline, keyring, config, and its daemon process.
struct Robot {
    id: String,
    dir: PathBuf,
    daemon: Option<Child>,
    /// Reboot requests the harness has carried out.
    reboots_done: usize,
}

impl Robot {
    fn new(root: &Path, id: &str, server_url: &str, healthy: bool) -> Robot {
        let dir = root.join(id);
        fs::create_dir_all(dir.join("keys")).unwrap();
        let robot = Robot {
            id: id.into(),
            dir,
            daemon: None,
            reboots_done: 0,
        };
        let path = |name: &str| robot.path(name).display().to_string();
        fs::write(robot.path("slot-a"), vec![0xa5; SLOT_SIZE]).unwrap();
        fs::write(robot.path("slot-b"), vec![0x5a; SLOT_SIZE]).unwrap();
        trusted_key()
            .public_key()
            .write_new(&robot.path("keys/fleet.pub"))
            .unwrap();
        fs::write(robot.path("enrollment-key"), format!("{ENROLLMENT_KEY}\n")).unwrap();
        let grubenv = robot.path("grubenv");
        run_ok(Command::new("grub-editenv").arg(&grubenv).arg("create"));
        run_ok(Command::new("grub-editenv").arg(&grubenv).args([
            "set",
            "ORDER=A B",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=1",
            "B_TRY=0",
        ]));
        fs::write(
            robot.path("bootctl.toml"),
            format!(
                "backend = \"grub\"\ngrubenv = \"{}\"\ncmdline = \"{}\"\n",
                path("grubenv"),
                path("cmdline")
            ),
        )
        .unwrap();
        let reboot_script = robot.path("reboot");
        fs::write(
            &reboot_script,
            format!("#!/bin/sh\necho reboot >> '{}'\n", path("reboots")),
        )
        .unwrap();
        fs::set_permissions(&reboot_script, fs::Permissions::from_mode(0o755)).unwrap();
        // The app fails while the file `broken` exists (a bug the next release fixes).
        if !healthy {
            fs::write(robot.path("broken"), "").unwrap();
        }
        let check = format!(
            "if [ -e '{}' ]; then echo 'robot-app: cannot open /dev/ttyACM0' >&2; exit 1; fi",
            path("broken")
        );
        fs::write(
            robot.path("updater.toml"),
            format!(
                r#"compatible = "{COMPATIBLE}"
keyring_dir = "{keys}"
state_path = "{data}/state"
bootctl_config = "{bootctl}"
reboot_command = ["{reboot}"]

[slots]
A = "{a}"
B = "{b}"

[health]
deadline_secs = 30
boot_complete_units = false

[[health.checks]]
name = "robot-app"
command = ["sh", "-c", "{check}"]

[download]
retries = 8
backoff_initial_ms = 50
backoff_max_ms = 500
timeout_secs = 10

[apps]
dir = "{data}/apps"

[server]
url = "{server_url}"
robot_id = "{id}"
enrollment_key_file = "{key}"
token_path = "{data}/token"
outbox_path = "{data}/outbox.json"
long_poll_secs = 10
backoff_initial_ms = 100
backoff_max_ms = 1000
reboot = "now"
"#,
                keys = path("keys"),
                data = path("data"),
                bootctl = path("bootctl.toml"),
                reboot = path("reboot"),
                a = path("slot-a"),
                b = path("slot-b"),
                key = path("enrollment-key"),
            ),
        )
        .unwrap();
        // Power-on of the factory image: GRUB picks A, rota-commit.service confirms it.
        assert_eq!(robot.boot(), "A");
        robot.commit();
        robot
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn updater(&self) -> Command {
        let mut command = Command::new(updater_bin());
        command
            .arg("--config")
            .arg(self.path("updater.toml"))
            .env_remove("ROTA_FAILPOINT")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("ROTA_UPDATER_CONFIG")
            .env("ROTA_LOG", "info");
        command
    }

    fn commit(&self) -> Output {
        let output = self.updater().arg("commit").output().unwrap();
        assert!(
            matches!(output.status.code(), Some(0 | 2)),
            "{}: commit failed ({}): {}",
            self.id,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn start_daemon(&mut self) {
        self.start_daemon_with_failpoint(None);
    }

    /// `failpoint`: the daemon stops there as if the power went (ROTA_FAILPOINT).
    fn start_daemon_with_failpoint(&mut self, failpoint: Option<&str>) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let mut command = self.updater();
        if let Some(failpoint) = failpoint {
            command.env("ROTA_FAILPOINT", failpoint);
        }
        let child = command
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rota-updater daemon");
        self.daemon = Some(child);
    }

    /// Power off: the process dies without a chance to clean up.
    fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// systemd's Restart=on-failure: a daemon that died is started again.
    fn restart_if_died(&mut self) {
        let died = match self.daemon.as_mut() {
            Some(child) => child.try_wait().unwrap().is_some(),
            None => false,
        };
        if died {
            self.daemon = None;
            self.start_daemon();
        }
    }

    fn reboot_requests(&self) -> usize {
        fs::read_to_string(self.path("reboots")).map_or(0, |text| text.lines().count())
    }

    /// Carries out every reboot asked for since the last call (the commit after a failed
    /// trial asks for another one); restarts the daemon afterwards. Returns whether it did.
    fn carry_out_reboots(&mut self) -> bool {
        if self.reboot_requests() == self.reboots_done {
            return false;
        }
        self.kill_daemon();
        while self.reboot_requests() > self.reboots_done {
            self.reboots_done += 1;
            self.boot();
            self.commit();
        }
        self.start_daemon();
        true
    }

    fn grub_var(&self, name: &str) -> Option<String> {
        let listed = run_ok(
            Command::new("grub-editenv")
                .arg(self.path("grubenv"))
                .arg("list"),
        );
        listed
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    fn set_grub_var(&self, name: &str, value: &str) {
        run_ok(
            Command::new("grub-editenv")
                .arg(self.path("grubenv"))
                .arg("set")
                .arg(format!("{name}={value}")),
        );
    }

    /// grub.cfg's rule: the first slot in ORDER with OK=1 and TRY=0 boots and gets TRY=1; when
    /// none qualifies, TRY of the good slots is cleared and the rule runs again. Writes the
    /// kernel command line the booted slot sees.
    fn boot(&self) -> String {
        let order = self.grub_var("ORDER").unwrap_or_else(|| "A B".into());
        let chosen = order.split_whitespace().find(|slot| {
            self.grub_var(&format!("{slot}_OK")).as_deref() == Some("1")
                && self.grub_var(&format!("{slot}_TRY")).as_deref() != Some("1")
        });
        let slot = match chosen {
            Some(slot) => slot.to_owned(),
            None => {
                for slot in order.split_whitespace() {
                    if self.grub_var(&format!("{slot}_OK")).as_deref() == Some("1") {
                        self.set_grub_var(&format!("{slot}_TRY"), "0");
                    }
                }
                return self.boot();
            }
        };
        self.set_grub_var(&format!("{slot}_TRY"), "1");
        fs::write(
            self.path("cmdline"),
            format!(
                "console=ttyS0 root=PARTLABEL=rootfs-{} rota.slot={slot} quiet\n",
                slot.to_lowercase()
            ),
        )
        .unwrap();
        slot
    }

    fn status(&self) -> Value {
        let stdout = run_ok(self.updater().args(["status", "--json"]));
        serde_json::from_str(&stdout).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Robot {
    fn drop(&mut self) {
        self.kill_daemon();
    }
}

/// Runs the robots' hardware until `done` holds for the server's view of the deployment.
fn simulate_until(
    server: &Server,
    robots: &mut [Robot],
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        for robot in robots.iter_mut() {
            robot.restart_if_died();
            robot.carry_out_reboots();
        }
        let value = server.get(path);
        if done(&value) {
            return value;
        }
        if started.elapsed() > Duration::from_secs(240) {
            let logs: String = robots
                .iter()
                .take(3)
                .map(|robot| format!("--- {} ---\n{}", robot.id, robot.log()))
                .collect();
            panic!("gave up waiting for {what}; last: {value:#}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// rota-server started again on the data and port of a `Server` that was stopped: the same
/// arguments as the harness's own start. Killed on drop.
struct Restarted(Child);

impl Restarted {
    fn start(server: &Server) -> Restarted {
        Restarted::start_with(server, &[])
    }

    fn start_with(server: &Server, extra_env: &[(&str, &str)]) -> Restarted {
        let port = server.url.rsplit(':').next().unwrap().parse().unwrap();
        let env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let (child, url) =
            common::spawn_server(&server.data_dir(), port, server.database_url(), &env);
        assert_eq!(url, server.url, "restarted on another address");
        Restarted(child)
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rota deploy VERSION --to all`, then the robots' hardware runs until the deployment ends.
fn deploy_to_all(server: &Server, robots: &mut [Robot], version: &str) -> Value {
    let deployment_id = server
        .rota_ok(&["deploy", version, "--to", "all"])
        .trim()
        .to_string();
    let path = format!("/deployments/{deployment_id}");
    simulate_until(server, robots, &path, "every robot done", |d| {
        d["state"] != "running"
    })
}

/// Robots `{prefix}-NNN`, numbered from 1, their daemons started.
fn start_fleet(
    root: &Path,
    server: &Server,
    prefix: &str,
    count: usize,
    unhealthy: &str,
) -> Vec<Robot> {
    let mut robots: Vec<Robot> = (1..=count)
        .map(|n| {
            let id = format!("{prefix}-{n:03}");
            let healthy = id != unhealthy;
            Robot::new(root, &id, &server.url, healthy)
        })
        .collect();
    for robot in &mut robots {
        robot.start_daemon();
    }
    robots
}

/// The size of the largest file under `dir`, at any depth.
fn largest_file(dir: &Path) -> u64 {
    let mut largest = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let metadata = entry.metadata().unwrap();
        largest = largest.max(if metadata.is_dir() {
            largest_file(&entry.path())
        } else {
            metadata.len()
        });
    }
    largest
}

fn outbox_events(robot: &Robot) -> Vec<String> {
    let text = fs::read_to_string(robot.path("data/outbox.json")).unwrap_or_default();
    let queue: Value = serde_json::from_str(&text).unwrap_or(Value::Array(Vec::new()));
    queue
        .as_array()
        .unwrap()
        .iter()
        .map(|report| report["event"].as_str().unwrap().to_string())
        .collect()
}

fn events_of(server: &Server, robot: &str) -> Vec<String> {
    let history = server.get(&format!("/history?robot={robot}&limit=1000"));
    let mut events: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_string())
        .collect();
    events.reverse();
    events.dedup();
    events
}

#[test]
fn twenty_updater_daemons_enroll_install_reboot_and_commit_and_a_failed_check_rolls_back() {
    let server = Server::start();
    let root = tempfile::tempdir().unwrap();
    let mut robots = start_fleet(root.path(), &server, "robot", FLEET_SIZE, UNHEALTHY);
    // robot-003's power goes after the first run of chunks reached its slot.
    robots[2].kill_daemon();
    robots[2].start_daemon_with_failpoint(Some("after-run-written@1"));

    // Enrollment: every daemon got a token, stored owner-only, and the server lists them all.
    let listed = server.wait_for("/robots", "every robot enrolled", |robots| {
        robots.as_array().unwrap().len() == FLEET_SIZE
    });
    assert_eq!(listed.as_array().unwrap().len(), FLEET_SIZE);
    for robot in &robots {
        let token = robot.path("data/token");
        let started = Instant::now();
        while !token.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                robot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mode = fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}: token mode {mode:o}", robot.id);
    }

    server.publish("2.0.0");
    let deployment = deploy_to_all(&server, &mut robots, "2.0.0");

    // Every healthy robot committed on the server, after the whole sequence of reports.
    assert_eq!(deployment["state"], "failed", "{deployment:#}");
    assert_eq!(
        deployment["counts"]["committed"],
        (FLEET_SIZE - 1) as u64,
        "{deployment:#}"
    );
    for entry in deployment["robots"].as_array().unwrap() {
        let id = entry["robot_id"].as_str().unwrap();
        if id == UNHEALTHY {
            continue;
        }
        assert_eq!(entry["state"], "committed", "{id}");
        assert_eq!(events_of(&server, id), HEALTHY_SEQUENCE, "{id}");
        // How the image arrived reaches the robot's history (the dashboard's robot page):
        // slot A was never installed by the updater, so nothing was there to reuse.
        let history = server.get(&format!("/history?robot={id}&limit=1000"));
        let installed = history
            .as_array()
            .unwrap()
            .iter()
            .find(|event| event["event"] == "installed")
            .unwrap();
        let detail = installed["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("MiB fetched, 0.0 MiB reused from the booted slot"),
            "{id}: {installed}"
        );
    }
    assert!(
        robots[2].log().contains("resuming the install"),
        "{}",
        robots[2].log()
    );
    // The bundle behind the robot token streamed into the slot: nothing of its size was
    // ever written to the data partition.
    let bundle = largest_file(&server.data_dir().join("bundles"));
    for robot in &robots {
        let written = largest_file(&robot.path("data"));
        assert!(
            written < bundle / 2,
            "{}: a {written}-byte file on /data (the bundle is {bundle} bytes)",
            robot.id
        );
    }
    for robot in robots.iter().filter(|robot| robot.id != UNHEALTHY) {
        let status = robot.status();
        assert_eq!(status["booted"], "B", "{}", robot.id);
        assert_eq!(status["state"], "committed", "{}", robot.id);
    }

    // The unhealthy robot rolled back, said why, and runs its old slot.
    let seven = deployment["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["robot_id"] == UNHEALTHY)
        .unwrap();
    assert_eq!(seven["state"], "rolled_back");
    let detail = seven["detail"].as_str().unwrap();
    assert!(
        detail.contains("health check failed")
            && detail.contains("robot-app")
            && detail.contains("cannot open /dev/ttyACM0"),
        "{detail}"
    );
    assert_eq!(
        events_of(&server, UNHEALTHY),
        [
            "downloading",
            "installing",
            "installed",
            "rebooting",
            "trial",
            "rolled_back"
        ]
    );
    let unhealthy = robots.iter().find(|robot| robot.id == UNHEALTHY).unwrap();
    let status = unhealthy.status();
    assert_eq!(status["booted"], "A");
    assert_eq!(status["state"], "rolled-back");

    // The same release again: the server skips the robot, so it is never offered.
    let target = format!("robot:{UNHEALTHY}");
    let out = server.rota(
        common::ADMIN_KEY,
        &["--json", "deploy", "2.0.0", "--to", &target],
    );
    // It reached no robot: exit 5, and the deployment as JSON on stdout all the same.
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["robots"][0]["state"], "skipped", "{again:#}");
    let reboots_before = unhealthy.reboot_requests();
    let token = fs::read_to_string(unhealthy.path("data/token")).unwrap();
    let answer = common::http()
        .get(server.api("/robot/assignment"))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    assert_eq!(unhealthy.reboot_requests(), reboots_before);

    // The slots the robots reported: the healthy ones run 2.0.0 from B.
    let robot_one = server.get("/robots/robot-001");
    assert!(
        robot_one.to_string().contains("2.0.0"),
        "robot-001 as the server sees it: {robot_one:#}"
    );

    // The server goes away while the next release is on its way: the robots install, reboot and
    // decide their trial without it, keep their reports, and deliver every one when it is back.
    fs::remove_file(unhealthy.path("broken")).unwrap();
    server.publish("2.1.0");
    let deployment_id = server
        .rota_ok(&["deploy", "2.1.0", "--to", "all"])
        .trim()
        .to_string();
    let started = Instant::now();
    while robots
        .iter()
        .any(|robot| robot.reboot_requests() == robot.reboots_done)
    {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not every robot installed 2.1.0"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut server = server;
    assert!(server.stop().success());
    for robot in &mut robots {
        assert!(robot.carry_out_reboots());
    }
    for robot in &robots {
        assert_eq!(robot.status()["state"], "committed", "{}", robot.id);
        let queued = outbox_events(robot);
        assert!(
            queued.ends_with(&["trial".to_string(), "committed".to_string()]),
            "{}: outbox {queued:?}",
            robot.id
        );
    }
    let _restarted = Restarted::start(&server);
    let path = format!("/deployments/{deployment_id}");
    let deployment = simulate_until(&server, &mut robots, &path, "2.1.0 everywhere", |d| {
        d["state"] != "running"
    });
    assert_eq!(deployment["state"], "succeeded", "{deployment:#}");
    assert_eq!(deployment["counts"]["committed"], FLEET_SIZE as u64);
    for robot in &robots {
        let events = events_of(&server, &robot.id);
        let tail = &events[events.len() - 6..];
        assert_eq!(tail, HEALTHY_SEQUENCE, "{}: {events:?}", robot.id);
    }
    // The release history keeps 2.0.0's rollback on the unhealthy robot, whatever order the
    // real updater's slot reports and events arrived in.
    let history = server.rota_json(&["history", "--robot", UNHEALTHY]);
    let runs: Vec<(&str, &str)> = history[0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["version"].as_str().unwrap(),
                run["end"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [("2.0.0", "rolled_back"), ("2.1.0", "running")],
        "{history:#}"
    );

    // One command back to 2.0.0: the robots whose other slot still holds it switch and reboot
    // without a download; the one that never kept 2.0.0 downloads it (it is healthy now).
    let rollback = server.rota_json(&["rollback", "--to", "v2.0.0"]);
    let deployment_id = rollback["deployments"][0]["id"].as_str().unwrap();
    let back = simulate_until(
        &server,
        &mut robots,
        &format!("/deployments/{deployment_id}"),
        "everyone back on 2.0.0",
        |d| d["state"] != "running",
    );
    assert_eq!(back["state"], "succeeded", "{back:#}");
    assert_eq!(back["kind"], "rollback");
    assert_eq!(back["counts"]["committed"], FLEET_SIZE as u64);
    for robot in &robots {
        let events = events_of(&server, &robot.id);
        let how = if robot.id == UNHEALTHY {
            &HEALTHY_SEQUENCE[..]
        } else {
            &["switched", "rebooting", "trial", "committed"][..]
        };
        let tail: Vec<&str> = events[events.len() - how.len()..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(tail, how, "{}: {events:?}", robot.id);
        assert_eq!(robot.status()["state"], "committed", "{}", robot.id);
    }
}

/// A CDN in front of the bundle store: a plain static file server (Python's) on the server's
/// bundle directory. Killed on drop.
struct Cdn {
    child: Child,
    url: String,
}

impl Cdn {
    fn start(dir: &Path) -> Cdn {
        fs::create_dir_all(dir).unwrap();
        // A port that was free a moment ago; the file server binds it next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "CDN did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Cdn {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Cdn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bundles_on_a_cdn_stream_straight_into_the_slot_without_the_robot_token() {
    // The bundle store is DATA/bundles; the server is restarted with the CDN's URL once the
    // CDN serves that directory.
    let server = Server::start();
    let cdn = Cdn::start(&server.data_dir().join("bundles"));
    let mut server = server;
    assert!(server.stop().success());
    let _restarted = Restarted::start_with(&server, &[("ROTA_BUNDLE_BASE_URL", &cdn.url)]);

    let root = tempfile::tempdir().unwrap();
    let mut robots = start_fleet(root.path(), &server, "cdn", 3, "");
    server.publish("2.0.0");
    let deployment = deploy_to_all(&server, &mut robots, "2.0.0");
    assert_eq!(deployment["state"], "succeeded", "{deployment:#}");
    for robot in &robots {
        assert_eq!(events_of(&server, &robot.id), HEALTHY_SEQUENCE);
        assert!(
            robot.log().contains(&cdn.url),
            "{}: installed from the CDN: {}",
            robot.id,
            robot.log()
        );
        let bundle = largest_file(&server.data_dir().join("bundles"));
        assert!(
            largest_file(&robot.path("data")) < bundle / 2,
            "{}: streamed, not downloaded to a file first",
            robot.id
        );
        assert_eq!(robot.status()["booted"], "B");
    }
}

/// The second release a robot gets from rota-server (behind the robot token) is a delta: the
/// daemon copies what its booted slot holds and fetches only the changed chunks by Range.
#[test]
fn a_second_release_from_the_server_is_a_delta_install() {
    let server = Server::start();
    let root = tempfile::tempdir().unwrap();
    let mut robots = start_fleet(root.path(), &server, "delta", 1, "");
    let old = common::random_image("2.0.0", 960 << 10);
    let mut new = old.clone();
    new[512 << 10..(512 << 10) + 4096].fill(0x42);
    for (version, image) in [("2.0.0", old), ("2.1.0", new.clone())] {
        let bytes = common::bundle_of(version, common::COMPATIBLE, &common::trusted_key(), image);
        let path = server.write_bundle(version, &bytes);
        server.rota_ok(&["release", "publish", path.to_str().unwrap()]);
        let deployment = deploy_to_all(&server, &mut robots, version);
        assert_eq!(
            deployment["state"], "succeeded",
            "{version}: {deployment:#}"
        );
    }
    let robot = &robots[0];
    assert_eq!(robot.status()["booted"], "A");
    assert_eq!(
        &fs::read(robot.path("slot-a")).unwrap()[..new.len()],
        &new[..]
    );
    let history = server.get(&format!("/history?robot={}&limit=1000", robot.id));
    let details: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["event"] == "installed")
        .filter_map(|event| event["detail"].as_str())
        .collect();
    // Newest first: 2.1.0 reused most of 2.0.0's 960 KiB from slot B.
    assert_eq!(details.len(), 2, "{history:#}");
    let reused: f64 = details[0]
        .split(" MiB reused")
        .next()
        .and_then(|text| text.rsplit(' ').next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_default();
    assert!(reused >= 0.5, "{}", details[0]);
    assert!(details[1].contains("0.0 MiB reused"), "{}", details[1]);
}

/// What a real daemon says about its robot reaches `rota robots show --json`, and a dynamic
/// group selects the robot by it: its config's tags, the kernel it runs, its slot sizes.
#[test]
fn a_daemons_inventory_reaches_robots_show_and_dynamic_groups() {
    let server = Server::start();
    let root = tempfile::tempdir().unwrap();
    let mut robot = Robot::new(root.path(), "robot-001", &server.url, true);
    // [server] is the config's last section.
    let mut config = fs::read_to_string(robot.path("updater.toml")).unwrap();
    config.push_str("tags = { site = \"lab\", arm = \"so-100\" }\n");
    fs::write(robot.path("updater.toml"), config).unwrap();
    // Two releases of an app installed by hand: the inventory names the current one and both
    // kept ones.
    for version in ["1.0.0", "1.1.0"] {
        let bundle = robot.path(&format!("nav-{version}.rota"));
        fs::write(
            &bundle,
            app_bundle("nav", version, COMPATIBLE, &trusted_key()),
        )
        .unwrap();
        run_ok(robot.updater().args(["app", "install"]).arg(&bundle));
    }
    robot.start_daemon();

    // The list, not the robot: it is 404 until the daemon enrolled.
    let listed = server.wait_for("/robots", "the inventory", |robots| {
        robots[0]["inventory"].is_object()
    });
    let via_cli = server.rota_json(&["robots", "show", "robot-001"]);
    assert_eq!(via_cli["inventory"], listed[0]["inventory"]);
    let inventory = &via_cli["inventory"];
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(inventory["kernel"], kernel.trim());
    assert_eq!(
        inventory["tags"],
        serde_json::json!({"arm": "so-100", "site": "lab"})
    );
    assert_eq!(inventory["disk"]["slot_a_bytes"], SLOT_SIZE as u64);
    assert_eq!(inventory["disk"]["slot_b_bytes"], SLOT_SIZE as u64);
    assert!(inventory["disk"]["data_bytes"].as_u64().unwrap() > 0);
    let nav = &inventory["apps"][0];
    assert_eq!(nav["name"], "nav");
    assert_eq!(nav["version"], "1.1.0");
    assert_eq!(nav["git_commit"], "a99110");
    assert_eq!(nav["kept"], serde_json::json!(["1.0.0", "1.1.0"]));
    assert!(
        nav["last"]
            .as_str()
            .unwrap()
            .starts_with("activated 1.1.0-"),
        "{nav}"
    );
    // Whatever this machine is, the board is named: device tree, DMI, or the compatible.
    let board = inventory["board"].as_str().unwrap();
    let host_board = ["/proc/device-tree/model", "/sys/class/dmi/id/product_name"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .map(|text| {
            text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
        .find(|text| !text.is_empty())
        .unwrap_or_else(|| COMPATIBLE.to_string());
    assert_eq!(board, host_board);

    let query = format!(
        "tag.site = \"lab\" and kernel = \"{}\" and compatible = \"{COMPATIBLE}\"",
        kernel.trim()
    );
    let group = server.rota_json(&["groups", "create", "lab", "--query", &query]);
    assert_eq!(group["robots"], serde_json::json!(["robot-001"]));
    let text = server.rota_ok(&["robots", "show", "robot-001"]);
    assert!(text.contains("groups: lab"), "{text}");
    assert!(
        text.contains("apps: nav 1.1.0 (a99110; kept 1.0.0 1.1.0)"),
        "{text}"
    );
    assert!(
        text.contains("tags: arm=so-100 (robot), site=lab (robot)"),
        "{text}"
    );
    robot.kill_daemon();
}

/// App releases through the fleet: published beside OS releases (the same version number
/// too), deployed as `APP@VERSION` to daemons that install them with no reboot, without
/// touching the robots' OS version; a release whose check fails on the canary halts the
/// rollout and the other robots never get it.
#[test]
fn app_releases_deploy_beside_the_os_and_a_failing_canary_halts_the_rollout() {
    let server = Server::start();
    let root = tempfile::tempdir().unwrap();
    let mut robots = start_fleet(root.path(), &server, "app", 3, "");
    server.publish("1.0.0");
    let check = |name: &str, argv: &[&str]| rota_bundle::AppCheck {
        name: name.into(),
        probe: rota_bundle::AppProbe::Command(argv.iter().map(|a| a.to_string()).collect()),
        attempt_timeout_secs: 5,
    };
    let publish = |version: &str, checks| {
        let path = root.path().join(format!("nav-{version}.rota"));
        let bytes = app_bundle_checked("nav", version, COMPATIBLE, &trusted_key(), checks);
        fs::write(&path, bytes).unwrap();
        server.rota_json(&["release", "publish", path.to_str().unwrap()])
    };
    let one = publish("1.0.0", vec![check("self-test", &["true"])]);
    assert_eq!(one["app"], "nav");
    publish("2.0.0", vec![check("self-test", &["false"])]);
    let listed = server.rota_ok(&["release", "list"]);
    assert!(listed.contains("nav"), "{listed}");
    let versions_before: Vec<Value> = robots
        .iter()
        .map(|robot| server.get(&format!("/robots/{}", robot.id))["version"].clone())
        .collect();

    // The robots' environment, with a variable and a secret for the app.
    server.rota_ok(&["env", "set", "lab", "--groups", "lab"]);
    for robot in &robots {
        server.rota_ok(&["groups", "add", "lab", &robot.id]);
    }
    server.rota_ok(&["env", "var", "set", "lab", "API_URL=http://10.0.0.1:8080"]);
    let secret = "s3cr3t \"quoted\" $value";
    let mut set_secret = Command::new(common::cli_bin());
    set_secret
        .args(["env", "var", "set", "lab", "API_KEY=-", "--secret"])
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", common::ADMIN_KEY)
        .env("HOME", root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = set_secret.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{secret}\n").as_bytes(),
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let vars = server.rota_json(&["env", "var", "list", "lab"]);
    assert_eq!(vars[0]["name"], "API_KEY");
    assert!(vars[0].get("value").is_none(), "{vars:#}");
    assert_eq!(vars[1]["value"], "http://10.0.0.1:8080");

    let deployment = deploy_to_all(&server, &mut robots, "nav@1.0.0");
    assert_eq!(deployment["state"], "succeeded", "{deployment:#}");
    for robot in &robots {
        let path = robot.path("data/apps/nav/environment");
        let environment = fs::read_to_string(&path).unwrap();
        assert!(
            environment.contains("API_KEY=\"s3cr3t \\\"quoted\\\" \\$value\"\n")
                && environment.contains("API_URL=\"http://10.0.0.1:8080\"\n"),
            "{environment}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !robot.log().contains("s3cr3t"),
            "{}: the secret in its log",
            robot.id
        );
    }
    let audit = server.rota_ok(&["--json", "audit"]);
    assert!(
        audit.contains("environment.var.set") && !audit.contains("s3cr3t"),
        "{audit}"
    );
    for (robot, version) in robots.iter().zip(&versions_before) {
        let current = fs::read_to_string(robot.path("data/apps/nav/current/VERSION")).unwrap();
        assert_eq!(current, "1.0.0", "{}", robot.id);
        assert_eq!(robot.reboot_requests(), 0, "{}", robot.id);
        let seen = server.get(&format!("/robots/{}", robot.id));
        assert_eq!(&seen["version"], version, "{}: {seen:#}", robot.id);
        assert_eq!(
            events_of(&server, &robot.id),
            ["installing", "installed", "committed"],
            "{}",
            robot.id
        );
    }

    let canary = server
        .rota_ok(&["deploy", "nav@2.0.0", "--to", "all", "--canary", "1"])
        .trim()
        .to_string();
    let path = format!("/deployments/{canary}");
    let halted = simulate_until(&server, &mut robots, &path, "the halt", |d| {
        d["state"] != "running"
    });
    assert_eq!(halted["state"], "halted", "{halted:#}");
    let rolled_back: Vec<&Robot> = robots
        .iter()
        .filter(|robot| events_of(&server, &robot.id).contains(&"rolled_back".to_string()))
        .collect();
    assert_eq!(rolled_back.len(), 1, "{halted:#}");
    for robot in &robots {
        let current = fs::read_to_string(robot.path("data/apps/nav/current/VERSION")).unwrap();
        assert_eq!(current, "1.0.0", "{}", robot.id);
    }

    // 3.0.0 everywhere, then `rota rollback --app nav`: back to the release each robot
    // committed before (1.0.0; 2.0.0 never committed), which it keeps: no download.
    // A bundle file is published and deployed in one command.
    let three_path = root.path().join("nav-3.0.0.rota");
    let bytes = app_bundle_checked(
        "nav",
        "3.0.0",
        COMPATIBLE,
        &trusted_key(),
        vec![check("self-test", &["true"])],
    );
    fs::write(&three_path, bytes).unwrap();
    let three = deploy_to_all(&server, &mut robots, three_path.to_str().unwrap());
    assert_eq!(three["state"], "succeeded", "{three:#}");
    assert_eq!(three["version"], "3.0.0", "{three:#}");
    let rollback = server.rota_json(&["rollback", "--app", "nav", "--immediate"]);
    let back_id = rollback["deployments"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{rollback:#}"))
        .to_string();
    assert_eq!(rollback["plan"][0]["version"], "1.0.0", "{rollback:#}");
    let path = format!("/deployments/{back_id}");
    let back = simulate_until(&server, &mut robots, &path, "the app rollback", |d| {
        d["state"] != "running"
    });
    assert_eq!(back["state"], "succeeded", "{back:#}");
    for robot in &robots {
        let current = fs::read_to_string(robot.path("data/apps/nav/current/VERSION")).unwrap();
        assert_eq!(current, "1.0.0", "{}", robot.id);
        let events = server.get(&format!("/history?robot={}&limit=1000", robot.id));
        let of_rollback: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["deployment_id"] == back_id.as_str())
            .map(|event| event["event"].as_str().unwrap())
            .collect();
        // Newest first; no `installed`: the release was switched to, not downloaded.
        assert_eq!(of_rollback, ["committed", "installing"], "{}", robot.id);
    }

    // Promote moves an environment's OS release: the app releases the robots committed are
    // not it (it promoted the newest app release instead).
    server.rota_ok(&["env", "set", "field", "--groups", "field"]);
    let promote = server.rota(common::ADMIN_KEY, &["promote", "lab", "field"]);
    let said = String::from_utf8_lossy(&promote.stderr);
    assert!(!promote.status.success(), "{said}");
    assert!(said.contains("nothing to promote"), "{said}");

    // By commit (3.0.0's), then by version: each a kept release again.
    for (to, version) in [("commit:a99300", "3.0.0"), ("v1.0.0", "1.0.0")] {
        let outcome = server.rota_json(&["rollback", "--app", "nav", "--to", to, "--immediate"]);
        assert_eq!(outcome["plan"][0]["version"], version, "{outcome:#}");
        let path = format!(
            "/deployments/{}",
            outcome["deployments"][0]["id"].as_str().unwrap()
        );
        let done = simulate_until(&server, &mut robots, &path, to, |d| d["state"] != "running");
        assert_eq!(done["state"], "succeeded", "{to}: {done:#}");
        for robot in &robots {
            let current = fs::read_to_string(robot.path("data/apps/nav/current/VERSION")).unwrap();
            assert_eq!(current, version, "{to}: {}", robot.id);
        }
    }
}
