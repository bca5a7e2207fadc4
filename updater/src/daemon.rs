//! `rota-updater daemon`: the robot's side of the fleet.
//!
//! One loop, every step of which may fail and is retried with backoff (an unreachable server,
//! a lost answer, a restart in between are all normal):
//! 1. enroll when there is no token (the token is written 0600 on the data partition);
//! 2. act on the local state first: an installed update waiting for its reboot reboots when the
//!    reboot policy allows, whether or not the server answers;
//! 3. send the queued reports ([`crate::outbox`]), then what each slot holds when it changed,
//!    and the inventory ([`crate::inventory`]) at start-up and, looked at again every
//!    `server.inventory_interval`, when it changed;
//! 4. poll (long-poll or interval with jitter) and work on the assignment: record its
//!    deployment id in the state file, download, install through [`crate::install`], report.
//!    When the inactive slot still holds the assigned bundle (a rollback to the release the
//!    robot ran before), it switches to that slot instead: no download, `switched`, reboot.
//!
//! An assignment with an update window is started, and its reboot made, only while the
//! window is open in the robot's local time ([`crate::local_time`]). Outside it the daemon
//! reports `waiting_for_window` with the next opening (once per opening, not per poll), keeps
//! polling as usual and looks at the clock again after every poll. An install that is still
//! running when the window closes finishes (stopping it would only waste the download), and
//! its reboot waits, "reboot pending", until the window opens again; the window is kept in the
//! state file so a restarted daemon respects it too. An install interrupted by a restart
//! resumes only inside the window, like one that has not started. The reboot policy of the config
//! (`server.reboot`) applies on top: both must allow the reboot.
//!
//! The server is not trusted for integrity: the bundle's signature is checked against this
//! robot's keyring by the install path, whatever the server says. Every report is queued
//! durably before it is sent, so none is lost; the server applies repeats idempotently.
//! `rota-updater commit` queues `trial` and `committed` / `rolled_back` after the trial boot
//! ([`queue_commit_reports`]); the daemon sends them once it runs.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rota_bootctl::{BootCtl, SlotState};
use rota_bundle::Keyring;
use rota_protocol::client::{ClientError, Poll, RobotClient};
use rota_protocol::robot::{
    self, Assignment, EventReport, Inventory, RobotEvent, SlotsReport, UpdateWindow,
};

use crate::apps::{AppAssignment, AppError, Handled};
use crate::atomic_file;
use crate::commit::{self, CommitError, CommitOutcome};
use crate::config::{Config, RebootPolicy, ServerConfig};
use crate::install::source::{BundleSource, HttpFetcher, SourceError};
use crate::install::{self, Context, InstallError, InstallOptions};
use crate::inventory::Probe;
use crate::local_time;
use crate::notify::Notifier;
use crate::outbox::{Outbox, OutboxError};
use crate::progress::Progress;
use crate::retry::Backoff;
use crate::state::{Lifecycle, Sha256Digest, State};
use crate::store::{Store, StoreError, StoreLock};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no [server] section in the updater config: the daemon has no fleet to talk to")]
    NoServer,
    #[error("no robot id: set server.robot_id ({0})")]
    NoRobotId(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("boot environment: {0}")]
    Boot(#[from] rota_bootctl::Error),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Reboot(#[from] CommitError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Everything the daemon needs from the outside world.
pub struct DaemonContext<'a> {
    pub config: &'a Config,
    pub bootctl: &'a BootCtl,
    pub keyring: &'a Keyring,
    pub store: &'a Store,
}

/// The robot id: `server.robot_id`, else the host name.
pub fn robot_id(server: &ServerConfig) -> Result<String, DaemonError> {
    let id = match &server.robot_id {
        Some(id) => id.clone(),
        None => fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| fs::read_to_string("/etc/hostname"))
            .map_err(|error| DaemonError::NoRobotId(format!("host name unreadable: {error}")))?
            .trim()
            .to_owned(),
    };
    robot::validate_robot_id(&id).map_err(DaemonError::NoRobotId)?;
    Ok(id)
}

/// A little randomness without a dependency: the clock's nanoseconds mixed with the pid.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(x % (max.as_millis() as u64 + 1))
}

/// Minutes since midnight, UTC, for the reboot window.
fn utc_minute_of_day() -> u16 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs());
    ((secs % 86_400) / 60) as u16
}

fn to_protocol_slot(slot: rota_bootctl::Slot) -> robot::Slot {
    match slot {
        rota_bootctl::Slot::A => robot::Slot::A,
        rota_bootctl::Slot::B => robot::Slot::B,
    }
}

/// What the slots hold, as the server wants it.
pub fn slots_report(state: &State, bootctl: &BootCtl) -> Result<SlotsReport, DaemonError> {
    let booted = bootctl.booted_slot()?;
    let status = bootctl.status()?;
    let slots = [rota_bootctl::Slot::A, rota_bootctl::Slot::B]
        .into_iter()
        .map(|slot| {
            let content = state.slot(slot);
            robot::SlotContent {
                slot: to_protocol_slot(slot),
                version: content.map(|content| content.version.clone()),
                manifest_hash: content.map(|content| content.bundle_digest.to_hex()),
                state: match status.state(slot) {
                    SlotState::Good => "good",
                    SlotState::Bad => "bad",
                    SlotState::Trial { .. } => "trial",
                }
                .to_owned(),
            }
        })
        .collect();
    Ok(SlotsReport {
        booted: to_protocol_slot(booted),
        slots,
    })
}

/// After `commit` decided a boot: queues what the server must hear about the deployment the
/// state file names (`trial` and `committed`, `trial` alone before the rollback reboot, or
/// `rolled_back` with the reason). The daemon sends them; queuing needs no network, so the
/// boot is never held up by the server.
pub fn queue_commit_reports(
    server: &ServerConfig,
    store: &Store,
    outcome: &CommitOutcome,
) -> Result<usize, DaemonError> {
    let state = store.load()?;
    let Some(deployment_id) = state.deployment_id.clone() else {
        return Ok(0);
    };
    let events = match outcome {
        // The install is resumed and reports on its own.
        CommitOutcome::NothingPending | CommitOutcome::UnverifiedTrial { .. } => Vec::new(),
        CommitOutcome::Committed { .. } => vec![RobotEvent::Trial, RobotEvent::Committed],
        CommitOutcome::TrialFailed { .. } => vec![RobotEvent::Trial],
        CommitOutcome::RolledBack { .. } => vec![RobotEvent::RolledBack {
            reason: rollback_reason(&state.lifecycle),
        }],
    };
    let outbox = Outbox::new(&server.outbox_path);
    for event in &events {
        outbox.push(EventReport {
            deployment_id: deployment_id.clone(),
            event: event.clone(),
        })?;
    }
    Ok(events.len())
}

/// "health check failed: check \"app\": <its output>", for people reading the deployment's
/// status.
fn rollback_reason(lifecycle: &Lifecycle) -> String {
    let Lifecycle::RolledBack {
        reason,
        failed_check,
        output,
        ..
    } = lifecycle
    else {
        return "rolled back".into();
    };
    let mut text = reason.to_string();
    if let Some(check) = failed_check {
        text.push_str(&format!(": check {check:?}"));
    }
    // The check's output on one line, capped: enough to see why, small enough for a table.
    let output: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if !output.is_empty() {
        let joined: String = output.join(" / ").chars().take(300).collect();
        text.push_str(&format!(": {joined}"));
    }
    text
}

/// The event that ends a deployment, when the state says it ended locally.
fn final_event(state: &State) -> Option<RobotEvent> {
    match &state.lifecycle {
        Lifecycle::Committed { .. } => Some(RobotEvent::Committed),
        Lifecycle::RolledBack { .. } => Some(RobotEvent::RolledBack {
            reason: rollback_reason(&state.lifecycle),
        }),
        _ => None,
    }
}

/// Reports download progress in steps of 10 %, queued durably (a sender thread delivers them
/// while the install runs).
struct ReportingProgress<'a> {
    outbox: &'a Outbox,
    deployment_id: &'a str,
    total: u64,
    last_step: u64,
}

impl ReportingProgress<'_> {
    fn queue(&self, done: u64) {
        self.queue_event(RobotEvent::Downloading {
            bytes_done: done,
            bytes_total: self.total,
        });
        // Downloading and writing are one step; "installing" is what follows the last byte
        // (fsync, trial set).
        if done >= self.total {
            self.queue_event(RobotEvent::Installing);
        }
    }

    fn queue_event(&self, event: RobotEvent) {
        let report = EventReport {
            deployment_id: self.deployment_id.to_owned(),
            event,
        };
        if let Err(error) = self.outbox.push(report) {
            log::warn!("progress report not queued: {error}");
        }
    }
}

impl Progress for ReportingProgress<'_> {
    fn start(&mut self, total: u64, already_done: u64) {
        self.total = total;
        self.last_step = already_done * 10 / total.max(1);
        self.queue(already_done);
    }

    fn advance(&mut self, done: u64) {
        let step = done * 10 / self.total.max(1);
        if step > self.last_step {
            self.last_step = step;
            self.queue(done);
        }
    }

    fn finish(&mut self) {}
}

/// How one assignment ended in this run of the daemon.
enum Worked {
    /// Installed, reported, or nothing to do for it now.
    Done,
    /// Try again later (the download broke): poll without the ETag so it is offered again.
    Retry(DaemonError),
}

pub struct Daemon<'a> {
    ctx: DaemonContext<'a>,
    server: &'a ServerConfig,
    robot_id: String,
    client: RobotClient,
    outbox: Outbox,
    etag: Option<String>,
    /// The last slots report the server acknowledged.
    slots_sent: Option<SlotsReport>,
    /// When the inventory was last collected; `None` until the first round.
    inventory_checked: Option<Instant>,
    /// The last inventory the server took (or refused for good: sent again only once changed).
    inventory_sent: Option<Inventory>,
    /// A collected inventory that differs from the one sent and is not delivered yet.
    inventory_pending: Option<Inventory>,
    /// The deployment this process already asked to reboot for (the reboot is on its way).
    reboot_requested_for: Option<String>,
    window_logged: bool,
    /// An assignment outside its update window: looked at again after every poll, since an
    /// unchanged assignment is not sent again.
    waiting: Option<Assignment>,
    /// The deployment and opening last reported as `waiting_for_window`.
    window_reported: Option<(String, String)>,
}

impl<'a> Daemon<'a> {
    pub fn new(ctx: DaemonContext<'a>) -> Result<Daemon<'a>, DaemonError> {
        let server = ctx.config.server.as_ref().ok_or(DaemonError::NoServer)?;
        let robot_id = robot_id(server)?;
        let client = RobotClient::new(&server.url)?;
        Ok(Daemon {
            ctx,
            server,
            robot_id,
            client,
            outbox: Outbox::new(&server.outbox_path),
            etag: None,
            slots_sent: None,
            inventory_checked: None,
            inventory_sent: None,
            inventory_pending: None,
            reboot_requested_for: None,
            window_logged: false,
            waiting: None,
            window_reported: None,
        })
    }

    /// Runs until the process is stopped. Every failure is logged and retried with backoff.
    pub fn run(&mut self) -> ! {
        log::info!(
            "robot {} polling {} ({})",
            self.robot_id,
            self.server.url,
            if self.server.long_poll.is_zero() {
                format!("every {:?}", self.server.poll_interval)
            } else {
                format!("long-poll {:?}", self.server.long_poll)
            }
        );
        let mut backoff = Backoff::new(self.server.backoff_initial, self.server.backoff_max);
        loop {
            match self.step() {
                Ok(()) => {
                    backoff.reset();
                    if self.server.long_poll.is_zero() {
                        thread::sleep(self.server.poll_interval + jitter(self.server.poll_jitter));
                    }
                }
                Err(error) => {
                    log::warn!("{error}; retrying in {:?}", backoff.delay(None));
                    self.etag = None;
                    backoff.wait(None);
                }
            }
        }
    }

    /// One round: enroll, local duties, reports, one poll and what it asks for.
    pub fn step(&mut self) -> Result<(), DaemonError> {
        self.ensure_enrolled()?;
        self.reboot_if_due()?;
        self.flush()?;
        self.send_slots()?;
        self.send_inventory();
        let wait = (!self.server.long_poll.is_zero()).then_some(self.server.long_poll);
        let poll = match self.client.poll(self.etag.as_deref(), wait) {
            Err(error) if error.is_unauthorized() => {
                log::warn!("the server does not know this robot's token: enrolling again");
                self.forget_token()?;
                return Err(error.into());
            }
            other => other?,
        };
        let assignment = match poll {
            Poll::Nothing => {
                self.etag = None;
                self.waiting = None;
                return Ok(());
            }
            Poll::NotModified => match self.waiting.take() {
                Some(waiting) => waiting,
                None => return Ok(()),
            },
            Poll::Assignment { assignment, etag } => {
                self.etag = etag;
                assignment
            }
        };
        if let Worked::Retry(error) = self.work_on(&assignment)? {
            return Err(error);
        }
        self.flush()?;
        self.send_slots()?;
        Ok(())
    }

    fn ensure_enrolled(&mut self) -> Result<(), DaemonError> {
        if self.client.token().is_some() {
            return Ok(());
        }
        let token_path = &self.server.token_path;
        match fs::read_to_string(token_path) {
            Ok(token) if !token.trim().is_empty() => {
                self.client = self.client.clone().with_token(token.trim());
                return Ok(());
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("read", token_path)(error)),
        }
        let key_path = &self.server.enrollment_key_file;
        let key = fs::read_to_string(key_path).map_err(io_error("read", key_path))?;
        let nonce = enrollment_nonce(token_path)?;
        let enrolled = self.client.enroll(
            key.trim(),
            &self.robot_id,
            &self.ctx.config.compatible,
            Some(&nonce),
        )?;
        atomic_file::replace(token_path, enrolled.token.as_bytes(), 0o600)
            .map_err(io_error("write", token_path))?;
        log::info!(
            "enrolled as {}{}",
            enrolled.robot_id,
            if enrolled.approved {
                ""
            } else {
                " (waiting for an admin's approval)"
            }
        );
        Ok(())
    }

    fn forget_token(&mut self) -> Result<(), DaemonError> {
        self.client = RobotClient::new(&self.server.url)?;
        // A server that forgot the robot forgot its inventory too.
        self.inventory_pending = self.inventory_sent.take().or(self.inventory_pending.take());
        match fs::remove_file(&self.server.token_path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(io_error("remove", &self.server.token_path)(error))
            }
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), DaemonError> {
        let (flushed, stopped_by) = self.outbox.flush(&self.client)?;
        if flushed.sent + flushed.dropped > 0 {
            log::debug!(
                "reports: {} sent, {} dropped, {} left",
                flushed.sent,
                flushed.dropped,
                flushed.left
            );
        }
        match stopped_by {
            Some(error) if error.is_unauthorized() => {
                self.forget_token()?;
                Err(error.into())
            }
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    fn send_slots(&mut self) -> Result<(), DaemonError> {
        let state = self.ctx.store.load()?;
        let report = slots_report(&state, self.ctx.bootctl)?;
        if self.slots_sent.as_ref() != Some(&report) {
            self.client.report_slots(&report)?;
            self.slots_sent = Some(report);
        }
        Ok(())
    }

    /// Collects the inventory when due and sends it when it changed. Never fails the round:
    /// polling for updates matters more, and a server older than the inventory route says 404.
    fn send_inventory(&mut self) {
        let interval = self.server.inventory_interval;
        let due = self
            .inventory_checked
            .is_none_or(|at| !interval.is_zero() && at.elapsed() >= interval);
        if due {
            let inventory = Probe::default().collect(self.ctx.config);
            self.inventory_checked = Some(Instant::now());
            if self.inventory_sent.as_ref() != Some(&inventory) {
                self.inventory_pending = Some(inventory);
            }
        }
        let Some(inventory) = self.inventory_pending.take() else {
            return;
        };
        match self.client.report_inventory(&inventory) {
            Ok(()) => {
                log::debug!("inventory sent");
                self.inventory_sent = Some(inventory);
            }
            Err(error) if error.is_retryable() || error.is_unauthorized() => {
                log::debug!("inventory not sent yet: {error}");
                self.inventory_pending = Some(inventory);
            }
            Err(error) => {
                log::warn!(
                    "the server did not take the inventory (sent again once it changes): {error}"
                );
                self.inventory_sent = Some(inventory);
            }
        }
    }

    fn queue(&self, deployment_id: &str, event: RobotEvent) -> Result<(), DaemonError> {
        log::info!("deployment {deployment_id}: {}", event.name());
        self.outbox.push(EventReport {
            deployment_id: deployment_id.to_owned(),
            event,
        })?;
        Ok(())
    }

    /// An installed update waits for its reboot: reboot when the policy allows.
    fn reboot_if_due(&mut self) -> Result<(), DaemonError> {
        let state = self.ctx.store.load()?;
        let (Lifecycle::RebootPending { .. }, Some(deployment_id)) =
            (&state.lifecycle, &state.deployment_id)
        else {
            return Ok(());
        };
        if self.reboot_requested_for.as_ref() == Some(deployment_id) {
            return Ok(());
        }
        if let Some(opens_at) = window_closed_until(state.update_window.as_deref()) {
            if !self.window_logged {
                log::info!(
                    "update installed; rebooting when the update window opens at {opens_at}"
                );
                self.window_logged = true;
            }
            return Ok(());
        }
        if !self.server.reboot.allows(utc_minute_of_day()) {
            if !self.window_logged {
                log::info!(
                    "update installed; rebooting {}",
                    match self.server.reboot {
                        RebootPolicy::Manual => "is left to someone else (reboot = manual)",
                        _ => "inside the reboot window",
                    }
                );
                self.window_logged = true;
            }
            return Ok(());
        }
        self.queue(deployment_id, RobotEvent::Rebooting)?;
        // Best effort: whatever is not sent now goes out after the reboot.
        if let Err(error) = self.flush() {
            log::info!("reports wait for after the reboot: {error}");
        }
        // A failed reboot command is retried by the next round (with backoff).
        commit::request_reboot(self.ctx.config)?;
        self.reboot_requested_for = Some(deployment_id.clone());
        Ok(())
    }

    fn work_on(&mut self, assignment: &Assignment) -> Result<Worked, DaemonError> {
        let deployment_id = assignment.deployment_id.as_str();
        // Held until the assignment is handled: an install by hand must not interleave.
        let lock = match self.ctx.store.lock() {
            Ok(lock) => lock,
            Err(busy @ StoreError::Busy { .. }) => {
                log::info!("deployment {deployment_id} waits: {busy}");
                return Ok(Worked::Retry(busy.into()));
            }
            Err(error) => return Err(error.into()),
        };
        if let Some(app) = &assignment.app {
            return self.work_on_app(&lock, assignment, app);
        }
        let mut state = lock.load()?;
        let digest = Sha256Digest::from_hex(&assignment.manifest_hash);
        let new_deployment = state.deployment_id.as_deref() != Some(deployment_id);

        if !new_deployment {
            match &state.lifecycle {
                // Interrupted (or failed for want of network): continue, resuming.
                Lifecycle::Installing { .. } | Lifecycle::Installed { .. } | Lifecycle::Idle => {}
                Lifecycle::RebootPending { .. } => return Ok(Worked::Done),
                Lifecycle::Trial { .. } | Lifecycle::TrialFailed { .. } => {
                    log::info!("deployment {deployment_id}: trial boot in progress");
                    return Ok(Worked::Done);
                }
                // Ended here; the server still offers it, so it did not hear the end yet.
                Lifecycle::Committed { .. } | Lifecycle::RolledBack { .. } => {
                    let already_queued = self
                        .outbox
                        .pending()?
                        .iter()
                        .any(|report| report.deployment_id == deployment_id);
                    if !already_queued {
                        if let Some(event) = final_event(&state) {
                            self.queue(deployment_id, event)?;
                        }
                    }
                    return Ok(Worked::Done);
                }
            }
        } else {
            if matches!(
                state.lifecycle,
                Lifecycle::Trial { .. } | Lifecycle::TrialFailed { .. }
            ) {
                log::info!("deployment {deployment_id} waits: a trial boot is in progress");
                return Ok(Worked::Done);
            }
            if let Some(digest) = digest {
                let booted = self.ctx.bootctl.booted_slot()?;
                let running = state
                    .slot(booted)
                    .is_some_and(|content| content.bundle_digest == digest);
                if running && state.lifecycle.is_settled() {
                    log::info!("deployment {deployment_id}: this bundle is running already");
                    self.queue(deployment_id, RobotEvent::Committed)?;
                    return Ok(Worked::Done);
                }
                if let (Some(denied), false) = (state.is_denied(&digest), assignment.force) {
                    let error = format!(
                        "bundle {} (version {}) rolled back on this robot before ({}); deploy with force to retry",
                        digest, denied.bundle.version, denied.reason
                    );
                    self.queue(deployment_id, RobotEvent::Failed { error })?;
                    return Ok(Worked::Done);
                }
            }
        }
        if self.outside_window(assignment)? {
            return Ok(Worked::Done);
        }
        if new_deployment {
            // Remembered before anything else, so every later report names this deployment.
            state.deployment_id = Some(deployment_id.to_owned());
            state.update_window = assignment.update_window.as_ref().map(ToString::to_string);
            lock.save(&state)?;
        }
        if let Some(digest) = digest {
            if let Some(worked) = self.switch_if_held(&lock, assignment, &digest)? {
                return Ok(worked);
            }
        }
        self.install(&lock, assignment)
    }

    /// An app release: installed beside the OS (or switched to when kept), its units restarted
    /// and its checks run, all now: no reboot, and the OS lifecycle is not touched.
    fn work_on_app(
        &mut self,
        lock: &StoreLock,
        assignment: &Assignment,
        app: &str,
    ) -> Result<Worked, DaemonError> {
        let deployment_id = assignment.deployment_id.as_str();
        if self.outside_window(assignment)? {
            return Ok(Worked::Done);
        }
        let state = lock.load()?;
        let os_version = self
            .ctx
            .bootctl
            .booted_slot()
            .ok()
            .and_then(|slot| state.slot(slot))
            .map(|content| content.version.clone());
        let token = assignment
            .bundle_requires_token
            .then(|| bearer_for(self.server, self.client.token(), &assignment.bundle_url))
            .flatten();
        let http = HttpFetcher::new(&self.ctx.config.download)?.with_bearer(token);
        let notifier = Notifier::from_env();
        log::info!(
            "deployment {deployment_id}: app {app} {} from {}",
            assignment.version,
            assignment.bundle_url
        );
        let handled = self.while_sending_reports(|| {
            AppAssignment {
                config: self.ctx.config,
                keyring: self.ctx.keyring,
                http: &http,
                os_version: os_version.as_deref(),
                notifier: &notifier,
            }
            .handle(assignment, app)
        });
        match handled {
            Handled::Report(events) => {
                for event in events {
                    self.queue(deployment_id, event)?;
                }
                if let Err(error) = self.flush() {
                    log::info!("reports queued: {error}");
                }
                Ok(Worked::Done)
            }
            Handled::Retry(error) => {
                log::warn!("deployment {deployment_id}: app {app}: {error}; trying again");
                Ok(Worked::Retry(error.into()))
            }
        }
    }

    /// Whether the assignment's update window is closed now: then it waits (reported once), or
    /// a window that cannot be read is reported as the assignment's failure.
    fn outside_window(&mut self, assignment: &Assignment) -> Result<bool, DaemonError> {
        let Some(window) = &assignment.update_window else {
            return Ok(false);
        };
        match local_time::next_opening(window, local_time::now()) {
            Ok(None) => Ok(false),
            Ok(Some(opens_at)) => {
                self.wait_for_window(assignment, local_time::format_minute(opens_at))?;
                Ok(true)
            }
            Err(error) => {
                self.queue(&assignment.deployment_id, RobotEvent::Failed { error })?;
                Ok(true)
            }
        }
    }

    /// Reports `waiting_for_window` when the opening is news, and keeps the assignment to
    /// look at again after the next poll.
    fn wait_for_window(
        &mut self,
        assignment: &Assignment,
        opens_at: String,
    ) -> Result<(), DaemonError> {
        let reported = (assignment.deployment_id.clone(), opens_at);
        if self.window_reported.as_ref() != Some(&reported) {
            self.queue(
                &assignment.deployment_id,
                RobotEvent::WaitingForWindow {
                    opens_at: reported.1.clone(),
                },
            )?;
            self.window_reported = Some(reported);
        }
        self.waiting = Some(assignment.clone());
        Ok(())
    }

    /// The inactive slot still holds the bundle: boot it on trial instead of downloading it.
    /// `None` when it does not (or cannot be trusted to): install as usual.
    fn switch_if_held(
        &mut self,
        lock: &StoreLock,
        assignment: &Assignment,
        digest: &Sha256Digest,
    ) -> Result<Option<Worked>, DaemonError> {
        let deployment_id = assignment.deployment_id.as_str();
        let context = self.install_context(lock);
        match install::switch_to_inactive_slot(&context, digest, &install_options(assignment)) {
            Ok(None) => Ok(None),
            Ok(Some(report)) => {
                log::info!(
                    "deployment {deployment_id}: slot {} already held {}: switching, no download",
                    report.slot,
                    report.bundle.version
                );
                self.queue(
                    deployment_id,
                    RobotEvent::Switched {
                        slot: to_protocol_slot(report.slot),
                    },
                )?;
                if let Err(error) = self.flush() {
                    log::info!("reports queued: {error}");
                }
                self.reboot_if_due()?;
                Ok(Some(Worked::Done))
            }
            Err(error) if error.is_bad_bundle() => {
                log::error!("deployment {deployment_id}: switch refused: {error}");
                self.queue(
                    deployment_id,
                    RobotEvent::Failed {
                        error: error.to_string(),
                    },
                )?;
                Ok(Some(Worked::Done))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn install_context<'l>(&self, lock: &'l StoreLock) -> Context<'l>
    where
        'a: 'l,
    {
        Context {
            config: self.ctx.config,
            bootctl: self.ctx.bootctl,
            keyring: self.ctx.keyring,
            store: lock,
            bearer_token: None,
        }
    }

    fn install(
        &mut self,
        lock: &StoreLock,
        assignment: &Assignment,
    ) -> Result<Worked, DaemonError> {
        let deployment_id = assignment.deployment_id.as_str();
        log::info!(
            "deployment {deployment_id}: installing {} from {}",
            assignment.version,
            assignment.bundle_url
        );
        // A bundle the fleet server hosts streams with the robot's token, exactly like a CDN
        // URL without one: one route for the bytes, and no copy of the bundle on /data.
        let source = BundleSource::Http(assignment.bundle_url.clone());
        let options = install_options(assignment);
        let mut context = self.install_context(lock);
        if assignment.bundle_requires_token {
            context.bearer_token =
                bearer_for(self.server, self.client.token(), &assignment.bundle_url);
            if context.bearer_token.is_none() {
                log::warn!(
                    "{} is not on the fleet server {}: fetched without the robot's token",
                    assignment.bundle_url,
                    self.server.url
                );
            }
        }
        let mut progress = ReportingProgress {
            outbox: &self.outbox,
            deployment_id,
            total: assignment.bundle_size,
            last_step: 0,
        };
        let result = self
            .while_sending_reports(|| install::install(&context, &source, &options, &mut progress));
        match result {
            Ok(report) => {
                log::info!(
                    "deployment {deployment_id}: {} installed into slot {}",
                    report.bundle.version,
                    report.slot
                );
                self.queue(
                    deployment_id,
                    RobotEvent::Installed {
                        fetched_bytes: Some(report.fetched_bytes),
                        reused_bytes: Some(report.reused_bytes),
                    },
                )?;
                if let Err(error) = self.flush() {
                    log::info!("reports queued: {error}");
                }
                self.reboot_if_due()?;
                Ok(Worked::Done)
            }
            Err(error) if is_worth_retrying(&error) => Ok(Worked::Retry(error.into())),
            Err(error) => {
                log::error!("deployment {deployment_id}: install failed: {error}");
                self.queue(
                    deployment_id,
                    RobotEvent::Failed {
                        error: error.to_string(),
                    },
                )?;
                Ok(Worked::Done)
            }
        }
    }

    /// Runs `work` while a thread delivers queued reports (progress) every half second.
    fn while_sending_reports<T>(&self, work: impl FnOnce() -> T) -> T {
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Err(error) = self.outbox.flush(&self.client) {
                        log::debug!("progress reports: {error}");
                    }
                    for _ in 0..5 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            });
            let result = work();
            done.store(true, Ordering::Relaxed);
            result
        })
    }
}

/// A rollback assignment may install a lower version (never below the security floor); a
/// forced one may install a bundle this robot rolled back from.
fn install_options(assignment: &Assignment) -> InstallOptions {
    InstallOptions {
        allow_downgrade: assignment.allow_downgrade,
        allow_denied: assignment.force,
        ..InstallOptions::default()
    }
}

/// When the stored update window of the deployment in flight opens next, while it is closed.
/// A window this daemon stored but cannot read again does not hold the reboot up forever.
fn window_closed_until(stored: Option<&str>) -> Option<String> {
    let window = match UpdateWindow::parse(stored?) {
        Ok(window) => window,
        Err(error) => {
            log::warn!("stored update window ignored: {error}");
            return None;
        }
    };
    match local_time::next_opening(&window, local_time::now()) {
        Ok(opens_at) => opens_at.map(local_time::format_minute),
        Err(error) => {
            log::warn!("stored update window ignored: {error}");
            None
        }
    }
}

/// The robot's token, for a bundle URL on the fleet server that issued it; `None` for any
/// other origin (a CDN, another host), which must never see the token.
pub fn bearer_for(server: &ServerConfig, token: Option<&str>, bundle_url: &str) -> Option<String> {
    let origin = |url: &str| reqwest::Url::parse(url).ok().map(|url| url.origin());
    match (origin(&server.url), origin(bundle_url)) {
        (Some(server), Some(bundle)) if server == bundle => token.map(str::to_owned),
        _ => None,
    }
}

/// The bytes did not arrive (network), as opposed to arriving wrong: the same assignment is
/// tried again later rather than reported failed.
fn is_worth_retrying(error: &InstallError) -> bool {
    match error {
        InstallError::Source(SourceError::GaveUp { .. })
        | InstallError::Transport(_)
        | InstallError::GaveUp { .. }
        | InstallError::Read { .. } => true,
        InstallError::Bundle(_) => !error.is_bad_bundle(),
        _ => false,
    }
}

/// The secret that lets this robot repeat an enrollment whose answer it lost. Stored next to
/// the token before the first attempt, so a power cut after the server enrolled the robot but
/// before the token reached the disk does not lock the robot out.
fn enrollment_nonce(token_path: &Path) -> Result<String, DaemonError> {
    let path = token_path.with_extension("enroll-nonce");
    match fs::read_to_string(&path) {
        Ok(nonce) if !nonce.trim().is_empty() => return Ok(nonce.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("read", &path)(error)),
    }
    let mut random = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut random))
        .map_err(io_error("read", Path::new("/dev/urandom")))?;
    let nonce: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    atomic_file::replace(&path, nonce.as_bytes(), 0o600).map_err(io_error("write", &path))?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BundleInfo, RollbackReason};
    use rota_bootctl::Slot;

    #[test]
    fn rollback_reasons_name_the_check_and_its_output() {
        let bundle = BundleInfo {
            digest: Sha256Digest([1; 32]),
            version: "2.0.0".into(),
            compatible: "board".into(),
            security_version: 1,
        };
        let lifecycle = |failed_check: Option<&str>, output: &str| Lifecycle::RolledBack {
            slot: Slot::B,
            bundle: bundle.clone(),
            reason: if failed_check.is_some() {
                RollbackReason::HealthCheckFailed
            } else {
                RollbackReason::AttemptsExhausted
            },
            failed_check: failed_check.map(str::to_owned),
            output: output.into(),
            at: 0,
        };
        assert_eq!(
            rollback_reason(&lifecycle(Some("app"), "exit status 1\nmore\n")),
            "health check failed: check \"app\": exit status 1 / more"
        );
        assert_eq!(
            rollback_reason(&lifecycle(None, "")),
            "attempts exhausted (panic/hang/watchdog)"
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
