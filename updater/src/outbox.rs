//! Reports the fleet server has not acknowledged yet, kept on the data partition so none is
//! lost to a restart, a reboot or an unreachable server.
//!
//! One JSON file holding the queue in order, replaced atomically on every change (temp file,
//! fsync, rename, fsync the directory). `rota-updater commit` and the daemon both append, so
//! every read-modify-write holds an exclusive `flock` on a lock file beside it. Sending happens
//! without the lock: only entries still at the front and unchanged are removed afterwards.
//! Progress reports of one deployment collapse into the latest, so the queue stays short.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rota_protocol::client::{ClientError, RobotClient};
use rota_protocol::robot::{EventReport, RobotEvent};

use crate::atomic_file;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outbox {}: not a JSON list of reports: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What one [`Outbox::flush`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Refused by the server for good (for example 409: the assignment already ended); logged.
    pub dropped: usize,
    /// Still queued because the server is unreachable or asked for a retry.
    pub left: usize,
}

/// The durable queue of event reports.
#[derive(Debug, Clone)]
pub struct Outbox {
    path: PathBuf,
    lock_path: PathBuf,
}

impl Outbox {
    pub fn new(path: impl Into<PathBuf>) -> Outbox {
        let path = path.into();
        let mut lock_name = path.file_name().unwrap_or_default().to_owned();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        Outbox { path, lock_path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The queued reports, oldest first.
    pub fn pending(&self) -> Result<Vec<EventReport>, OutboxError> {
        let _lock = self.lock()?;
        self.read()
    }

    /// Queues `report` durably. A progress report replaces a progress report of the same
    /// deployment at the end of the queue.
    pub fn push(&self, report: EventReport) -> Result<(), OutboxError> {
        let _lock = self.lock()?;
        let mut queue = self.read()?;
        let replaces_progress = queue.last().is_some_and(|last| {
            last.deployment_id == report.deployment_id
                && matches!(last.event, RobotEvent::Downloading { .. })
                && matches!(report.event, RobotEvent::Downloading { .. })
        });
        if replaces_progress {
            queue.pop();
        }
        queue.push(report);
        self.write(&queue)
    }

    /// Sends queued reports in order until one cannot be sent now. Errors that retrying cannot
    /// fix drop that report (logged); anything else stops the flush and keeps the rest.
    /// Returns the client error that stopped it, if any, with the counts.
    pub fn flush(
        &self,
        client: &RobotClient,
    ) -> Result<(Flushed, Option<ClientError>), OutboxError> {
        let queue = self.pending()?;
        let mut done = Vec::new();
        let mut flushed = Flushed::default();
        let mut stopped_by = None;
        for report in &queue {
            match client.report(&report.deployment_id, report.event.clone()) {
                Ok(()) => {
                    flushed.sent += 1;
                    done.push(report.clone());
                }
                Err(error) if is_final_refusal(&error) => {
                    log::warn!(
                        "server refused report {} for deployment {}: {error}; dropping it",
                        report.event.name(),
                        report.deployment_id
                    );
                    flushed.dropped += 1;
                    done.push(report.clone());
                }
                Err(error) => {
                    stopped_by = Some(error);
                    break;
                }
            }
        }
        if !done.is_empty() {
            let _lock = self.lock()?;
            let mut current = self.read()?;
            // Only what is still at the front and unchanged was sent: a progress report may have
            // been replaced meanwhile, and that newer one still has to go.
            let matching = current
                .iter()
                .zip(&done)
                .take_while(|(now, sent)| now == sent)
                .count();
            current.drain(..matching);
            self.write(&current)?;
            flushed.left = current.len();
        } else {
            flushed.left = queue.len();
        }
        Ok((flushed, stopped_by))
    }

    fn read(&self) -> Result<Vec<EventReport>, OutboxError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| OutboxError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(io_error("read", &self.path)(error)),
        }
    }

    /// Atomic replace: a power cut leaves the old queue or the new one.
    fn write(&self, queue: &[EventReport]) -> Result<(), OutboxError> {
        let bytes = serde_json::to_vec_pretty(queue).expect("reports serialise");
        atomic_file::replace(&self.path, &bytes, 0o600).map_err(io_error("replace", &self.path))
    }

    /// Exclusive lock for a read-modify-write; released when the returned file is dropped.
    fn lock(&self) -> Result<File, OutboxError> {
        let dir = parent_dir(&self.path);
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_error("open", &self.lock_path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|errno| io_error("lock", &self.lock_path)(errno.into()))?;
        Ok(file)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The server understood the report and will never take it: an unknown deployment (404), an
/// assignment that already ended differently (409), a report it cannot parse (400, 422).
/// Not 401 (enroll again, then resend) nor 403 (waiting for approval) nor 408/429/5xx.
pub fn is_final_refusal(error: &ClientError) -> bool {
    match error.status() {
        Some(status) => (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 429),
        None => matches!(error, ClientError::Protocol { .. }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(deployment: &str, event: RobotEvent) -> EventReport {
        EventReport {
            deployment_id: deployment.into(),
            event,
        }
    }

    fn downloading(done: u64) -> RobotEvent {
        RobotEvent::Downloading {
            bytes_done: done,
            bytes_total: 100,
        }
    }

    #[test]
    fn queue_survives_reopening_and_progress_collapses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/outbox.json");
        let outbox = Outbox::new(&path);
        assert!(outbox.pending().unwrap().is_empty());
        outbox.push(report("d1", downloading(0))).unwrap();
        outbox.push(report("d1", downloading(50))).unwrap();
        outbox.push(report("d1", RobotEvent::Installing)).unwrap();
        outbox.push(report("d1", downloading(60))).unwrap();
        outbox.push(report("d2", downloading(1))).unwrap();
        let reopened = Outbox::new(&path);
        assert_eq!(
            reopened.pending().unwrap(),
            vec![
                report("d1", downloading(50)),
                report("d1", RobotEvent::Installing),
                report("d1", downloading(60)),
                report("d2", downloading(1)),
            ]
        );
        assert!(!dir.path().join("data/outbox.json.tmp").exists());
    }

    #[test]
    fn flush_to_an_unreachable_server_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path().join("outbox.json"));
        outbox.push(report("d1", RobotEvent::Committed)).unwrap();
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let client = RobotClient::new("http://127.0.0.1:1")
            .unwrap()
            .with_token("rota_rb_x");
        let (flushed, error) = outbox.flush(&client).unwrap();
        assert_eq!(
            flushed,
            Flushed {
                sent: 0,
                dropped: 0,
                left: 1
            }
        );
        assert!(error.unwrap().is_retryable());
        assert_eq!(outbox.pending().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_outbox_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.json");
        fs::write(&path, "not json").unwrap();
        let error = Outbox::new(&path).pending().unwrap_err().to_string();
        assert!(error.contains("outbox.json"), "{error}");
    }
}
