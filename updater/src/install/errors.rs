//! How an install fails, and what each failure means for a retry.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rota_bundle::Part;

use super::sink::SinkError;
use super::source::{error_chain, is_timeout, BundleSource, SourceError};
use crate::state::{Sha256Digest, TransitionError};
use crate::store::StoreError;

/// Why a bundle is not installed although its bytes may be fine.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("built for {found:?}, this robot is {expected:?}")]
    WrongCompatible { expected: String, found: String },
    #[error("security version {bundle} is below this robot's floor {floor} (anti-rollback)")]
    BelowSecurityFloor { bundle: u32, floor: u32 },
    #[error("version {bundle} is older than the running {running} (use --allow-downgrade)")]
    Downgrade { bundle: String, running: String },
    #[error("bundle {digest} (version {version}) rolled back before ({reason}); it is on the denylist (use --allow-denied)")]
    Denied {
        digest: Sha256Digest,
        version: String,
        reason: String,
    },
    #[error("the bundle has no rootfs image")]
    NoRootfsImage,
    #[error("this is a release of app {0:?}: install it with `rota-updater app install`")]
    AppRelease(String),
    #[error("OS {os} does not run the current release of {}; install app releases that support it first", describe_apps(.apps))]
    AppsUnsupported {
        os: String,
        /// (app, release id, requirement)
        apps: Vec<(String, String, String)>,
    },
    #[error("the bundle has {0} rootfs images; exactly one is supported")]
    SeveralRootfsImages(usize),
    #[error(
        "the bundle should be {expected} bytes long, the source has {actual} (truncated or padded)"
    )]
    WrongLength { expected: u64, actual: u64 },
    #[error("the input goes on after the bundle's end (its signed length is {length} bytes)")]
    TrailingBytes { length: u64 },
    #[error("the source has {length} bytes and ends inside the bundle's {part} (truncated)")]
    ShortSource { part: Part, length: u64 },
    #[error("{0}")]
    TooBig(SinkError),
    #[error("a trial is in progress ({0}); run `rota-updater commit` (at boot) first")]
    TrialInProgress(&'static str),
}

/// Bytes of the bundle that did not arrive, as opposed to arriving wrong: retrying later may
/// help.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out: no data for {} s while receiving the bundle's {part}", .timeout.as_secs())]
    TimedOut { part: Part, timeout: Duration },
    #[error("the connection broke while receiving the bundle's {part}: {cause}")]
    Broken { part: Part, cause: String },
    #[error("the input ended early, in the bundle's {part}")]
    InputEnded { part: Part },
    #[error("reading the input failed in the bundle's {part}: {cause}")]
    InputFailed { part: Part, cause: String },
}

/// What kind of failure an install error is; the CLI's exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The bundle is bad or refused: retrying the same bundle cannot help.
    BadBundle,
    /// The source is unreachable, timed out, or broke (after the retry budget), or stdin
    /// ended early: retrying later may help.
    Transport,
    /// The source named on the command line is no bundle file (missing, a directory).
    Usage,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    // The message carries the cause, so these are not `#[source]`: an error chain would
    // print the cause twice.
    #[error("bundle refused: {0}")]
    Refused(Refusal),
    #[error("bundle rejected: {0}")]
    Bundle(rota_bundle::Error),
    #[error("{0}")]
    Transport(TransportError),
    #[error("{last}; gave up after {reconnects} reconnect(s) and {} s without a new verified chunk (download.retry_budget_secs = {})", .waited.as_secs(), .budget.as_secs())]
    GaveUp {
        last: TransportError,
        reconnects: u32,
        waited: Duration,
        budget: Duration,
    },
    #[error("reading the bundle's {part} from {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        part: Part,
        cause: io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("boot environment: {0}")]
    Boot(#[from] rota_bootctl::Error),
}

impl From<Refusal> for InstallError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl From<rota_bundle::Error> for InstallError {
    fn from(error: rota_bundle::Error) -> Self {
        Self::Bundle(error)
    }
}

impl InstallError {
    /// The bundle itself is the problem (bad signature, damaged, not for us): retrying the same
    /// bundle cannot help. The CLI gives these their own exit code.
    pub fn is_bad_bundle(&self) -> bool {
        match self {
            InstallError::Refused(Refusal::TrialInProgress(_)) => false,
            InstallError::Refused(_) => true,
            InstallError::Bundle(error) => !matches!(
                error,
                rota_bundle::Error::Read { .. }
                    | rota_bundle::Error::Write(_)
                    | rota_bundle::Error::Spool(_)
                    | rota_bundle::Error::ImageInput { .. }
                    | rota_bundle::Error::WorkerLost
            ),
            _ => false,
        }
    }

    /// The bytes did not arrive (network, stdin): retrying later may help.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            InstallError::Transport(_)
                | InstallError::GaveUp { .. }
                | InstallError::Source(
                    SourceError::GaveUp { .. }
                        | SourceError::Status { .. }
                        | SourceError::WrongRange { .. }
                )
        )
    }

    pub fn kind(&self) -> FailureKind {
        if self.is_bad_bundle() {
            FailureKind::BadBundle
        } else if self.is_transport() {
            FailureKind::Transport
        } else if matches!(
            self,
            InstallError::Source(SourceError::File { .. } | SourceError::IsDirectory { .. })
        ) {
            FailureKind::Usage
        } else {
            FailureKind::Other
        }
    }
}

/// A bundle error as what it means for this source: a read error or a truncation is the
/// transport failing for a stream (network, stdin), an I/O error or a truncated bundle for a
/// file.
pub(super) fn from_bundle_error(
    error: rota_bundle::Error,
    source: &BundleSource,
    timeout: Duration,
) -> InstallError {
    use rota_bundle::Error as E;
    let transport = match (source, error) {
        (BundleSource::File(path), E::Read { part, source }) => {
            return InstallError::Read {
                path: path.clone(),
                part,
                cause: source,
            }
        }
        (BundleSource::Stdin, E::Truncated { part }) => TransportError::InputEnded { part },
        (BundleSource::Stdin, E::Read { part, source }) => TransportError::InputFailed {
            part,
            cause: source.to_string(),
        },
        (BundleSource::Http(_), E::Truncated { part }) => TransportError::Broken {
            part,
            cause: "the server closed the connection early".into(),
        },
        (BundleSource::Http(_), E::Read { part, source }) if is_timeout(&source) => {
            TransportError::TimedOut { part, timeout }
        }
        (BundleSource::Http(_), E::Read { part, source }) => TransportError::Broken {
            part,
            cause: error_chain(&source),
        },
        (_, error) => return InstallError::Bundle(error),
    };
    InstallError::Transport(transport)
}

fn describe_apps(apps: &[(String, String, String)]) -> String {
    apps.iter()
        .map(|(app, release, requirement)| format!("app {app} ({release} needs OS {requirement})"))
        .collect::<Vec<_>>()
        .join(", ")
}
