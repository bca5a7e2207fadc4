//! Simulated robots: each a thread running the protocol as the updater daemon does it, on
//! rota-protocol's client. They download and verify real bundles, report every step (retrying
//! through server outages, so no report is lost), and commit or roll back as told.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rota_bundle::{BundleReader, Keyring};
use rota_protocol::client::{ClientError, Poll, RobotClient};
use rota_protocol::robot::{
    AppInventory, Assignment, Inventory, RobotEvent, Slot, SlotContent, SlotsReport,
};

use super::{trusted_key, COMPATIBLE, ENROLLMENT_KEY};

/// Holds robots in their trial boot until the test opens it.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

#[derive(Clone, Default)]
pub struct Behaviour {
    /// Versions whose health check fails on this robot: it rolls back. An app release's is
    /// `APP@VERSION`.
    pub unhealthy_versions: HashSet<String>,
    /// When set, robots wait in trial until it opens.
    pub gate: Option<Arc<Gate>>,
}

/// What a robot was offered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub deployment_id: String,
    pub version: String,
}

pub struct SimRobot {
    pub id: String,
    pub token: String,
    offers: Arc<Mutex<Vec<Offer>>>,
    thread: Option<JoinHandle<()>>,
}

pub struct SimFleet {
    pub robots: Vec<SimRobot>,
    stop: Arc<AtomicBool>,
}

const LONG_POLL: Duration = Duration::from_secs(3);

impl SimFleet {
    /// Enrolls `count` robots named `{prefix}-001`... and starts their loops.
    pub fn start(
        server_url: &str,
        prefix: &str,
        count: usize,
        behaviour: impl Fn(usize) -> Behaviour,
    ) -> SimFleet {
        let stop = Arc::new(AtomicBool::new(false));
        let robots = (1..=count)
            .map(|n| {
                let id = format!("{prefix}-{n:03}");
                let mut client = RobotClient::new(server_url).unwrap();
                let enrolled = client
                    .enroll(ENROLLMENT_KEY, &id, COMPATIBLE, None)
                    .expect("enroll");
                assert!(enrolled.approved);
                let offers = Arc::new(Mutex::new(Vec::new()));
                let thread = {
                    let (offers, stop, behaviour, id) =
                        (offers.clone(), stop.clone(), behaviour(n), id.clone());
                    std::thread::Builder::new()
                        .name(id.clone())
                        .spawn(move || robot_loop(&id, client, behaviour, &offers, &stop))
                        .unwrap()
                };
                SimRobot {
                    id,
                    token: enrolled.token,
                    offers,
                    thread: Some(thread),
                }
            })
            .collect();
        SimFleet { robots, stop }
    }

    pub fn offers(&self, robot_id: &str) -> Vec<Offer> {
        let robot = self
            .robots
            .iter()
            .find(|r| r.id == robot_id)
            .expect("known robot");
        robot.offers.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.robots.iter().map(|r| r.id.clone()).collect()
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for robot in &mut self.robots {
            if let Some(thread) = robot.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Repeats a call through transport errors and 5xx, as the daemon's outbox does.
fn retry<T>(
    stop: &AtomicBool,
    mut call: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    loop {
        match call() {
            Err(err) if err.is_retryable() && !stop.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The robot's two slots: the booted one and the other, by version.
struct Disk {
    booted: Slot,
    running: String,
    other: Option<String>,
}

impl Disk {
    fn report(&self) -> SlotsReport {
        let content = |slot, version: Option<&String>| SlotContent {
            slot,
            version: version.cloned(),
            manifest_hash: None,
            state: "good".into(),
        };
        let other_slot = match self.booted {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        };
        SlotsReport {
            booted: self.booted,
            slots: vec![
                content(self.booted, Some(&self.running)),
                content(other_slot, self.other.as_ref()),
            ],
        }
    }

    /// A committed install: the other slot now holds `version` and boots.
    fn commit(&mut self, version: &str) {
        self.booted = match self.booted {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        };
        self.other = Some(std::mem::replace(&mut self.running, version.to_string()));
    }

    /// A rolled-back install: the other slot holds `version`, the robot runs what it ran.
    fn roll_back(&mut self, version: &str) {
        self.other = Some(version.to_string());
    }
}

/// The robot's apps as the updater keeps them: the current release and every one installed
/// (a rollback to a kept one needs no download).
#[derive(Default)]
struct Apps(BTreeMap<String, (Option<String>, Vec<String>)>);

impl Apps {
    fn keeps(&self, app: &str, version: &str) -> bool {
        self.0
            .get(app)
            .is_some_and(|(_, kept)| kept.iter().any(|v| v == version))
    }

    fn installed(&mut self, app: &str, version: &str, committed: bool) {
        let (current, kept) = self.0.entry(app.to_string()).or_default();
        if !kept.iter().any(|v| v == version) {
            kept.push(version.to_string());
        }
        if committed {
            *current = Some(version.to_string());
        }
    }

    fn inventory(&self) -> Inventory {
        Inventory {
            apps: self
                .0
                .iter()
                .map(|(name, (current, kept))| AppInventory {
                    name: name.clone(),
                    version: current.clone(),
                    kept: kept.clone(),
                    ..AppInventory::default()
                })
                .collect(),
            ..Inventory::default()
        }
    }
}

fn robot_loop(
    id: &str,
    client: RobotClient,
    behaviour: Behaviour,
    offers: &Mutex<Vec<Offer>>,
    stop: &AtomicBool,
) {
    let keyring = Keyring::from_keys([trusted_key().public_key()]);
    let mut disk = Disk {
        booted: Slot::A,
        running: "1.0.0".into(),
        other: None,
    };
    retry(stop, || client.report_slots(&disk.report())).expect("report slots");
    let mut etag: Option<String> = None;
    let mut finished: HashMap<String, RobotEvent> = HashMap::new();
    let mut apps = Apps::default();
    while !stop.load(Ordering::SeqCst) {
        let poll = match client.poll(etag.as_deref(), Some(LONG_POLL)) {
            Ok(poll) => poll,
            Err(err) if err.is_retryable() => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(err) => panic!("{id}: poll failed: {err}"),
        };
        let (assignment, new_etag) = match poll {
            Poll::Nothing => {
                etag = None;
                continue;
            }
            Poll::NotModified => continue,
            Poll::Assignment { assignment, etag } => (assignment, etag),
        };
        etag = new_etag;
        if let Some(end) = finished.get(&assignment.deployment_id) {
            // Our final report was lost in a server crash: say it again.
            retry(stop, || {
                client.report(&assignment.deployment_id, end.clone())
            })
            .expect("re-report");
            continue;
        }
        offers.lock().unwrap().push(Offer {
            deployment_id: assignment.deployment_id.clone(),
            version: assignment.version.clone(),
        });
        if let Some(app) = &assignment.app {
            let end = install_app(&client, &assignment, app, &apps, &behaviour, &keyring, stop);
            if !matches!(end, RobotEvent::Failed { .. }) {
                apps.installed(app, &assignment.version, end == RobotEvent::Committed);
            }
            retry(stop, || client.report_inventory(&apps.inventory())).expect("report apps");
            finished.insert(assignment.deployment_id.clone(), end);
            continue;
        }
        let end = install(&client, &assignment, &behaviour, &keyring, stop);
        match end {
            RobotEvent::Committed => disk.commit(&assignment.version),
            RobotEvent::RolledBack { .. } => disk.roll_back(&assignment.version),
            _ => {}
        }
        retry(stop, || client.report_slots(&disk.report())).expect("report slots");
        finished.insert(assignment.deployment_id.clone(), end);
    }
}

/// Reports events about `a`, retrying as the daemon's outbox does.
fn reporter<'a>(
    client: &'a RobotClient,
    a: &'a Assignment,
    stop: &'a AtomicBool,
) -> impl Fn(RobotEvent) + 'a {
    move |event| {
        retry(stop, || client.report(&a.deployment_id, event.clone())).expect("report event");
    }
}

/// An app release: switched to when kept, else downloaded and verified; its checks decide.
/// No reboot, no slot.
fn install_app(
    client: &RobotClient,
    a: &Assignment,
    app: &str,
    apps: &Apps,
    behaviour: &Behaviour,
    keyring: &Keyring,
    stop: &AtomicBool,
) -> RobotEvent {
    let report = reporter(client, a, stop);
    report(RobotEvent::Installing);
    if !apps.keeps(app, &a.version) {
        // As the updater: an app install reports no download progress.
        if let Err(failed) = download_verified(client, a, keyring, stop, |_| {}) {
            report(failed.clone());
            return failed;
        }
        report(RobotEvent::Installed {
            fetched_bytes: Some(a.bundle_size),
            reused_bytes: None,
        });
    }
    if let Some(gate) = &behaviour.gate {
        gate.pass();
    }
    let end = if behaviour
        .unhealthy_versions
        .contains(&format!("{app}@{}", a.version))
    {
        RobotEvent::RolledBack {
            reason: format!("app {app}: check \"answers\" failed: GET /health: 503"),
        }
    } else {
        RobotEvent::Committed
    };
    report(end.clone());
    end
}

/// Downloads the bundle in two halves, the second with a Range request as a resumed download
/// does, telling `progress` the bytes done before and after each, and verifies it against the
/// robot's keyring; `Err` is the `failed` event to report.
fn download_verified(
    client: &RobotClient,
    a: &Assignment,
    keyring: &Keyring,
    stop: &AtomicBool,
    progress: impl Fn(u64),
) -> Result<(), RobotEvent> {
    progress(0);
    // Download in two halves, the second with a Range request, as a resumed download does.
    let half = a.bundle_size / 2;
    let mut bundle = Vec::new();
    let first = retry(stop, || client.open_bundle(a, 0)).expect("open bundle");
    first
        .take(half)
        .read_to_end(&mut bundle)
        .expect("download first half");
    progress(half);
    let mut rest = retry(stop, || client.open_bundle(a, half)).expect("resume bundle");
    assert_eq!(rest.total_size, Some(a.bundle_size));
    rest.read_to_end(&mut bundle).expect("download rest");
    progress(a.bundle_size);
    // The robot trusts its keyring, not the server.
    BundleReader::open(&bundle[..], keyring)
        .and_then(|b| b.verify_all())
        .map(drop)
        .map_err(|err| RobotEvent::Failed {
            error: format!("bundle rejected: {err}"),
        })
}

fn install(
    client: &RobotClient,
    a: &Assignment,
    behaviour: &Behaviour,
    keyring: &Keyring,
    stop: &AtomicBool,
) -> RobotEvent {
    let report = reporter(client, a, stop);
    let progress = |bytes_done| {
        report(RobotEvent::Downloading {
            bytes_done,
            bytes_total: a.bundle_size,
        })
    };
    if let Err(failed) = download_verified(client, a, keyring, stop, progress) {
        report(failed.clone());
        return failed;
    }
    report(RobotEvent::Installing);
    report(RobotEvent::Installed {
        fetched_bytes: None,
        reused_bytes: None,
    });
    report(RobotEvent::Rebooting);
    report(RobotEvent::Trial);
    if let Some(gate) = &behaviour.gate {
        gate.pass();
    }
    let end = if behaviour.unhealthy_versions.contains(&a.version) {
        RobotEvent::RolledBack {
            reason: "health check failed: robot-app.service is not active".into(),
        }
    } else {
        RobotEvent::Committed
    };
    report(end.clone());
    end
}
