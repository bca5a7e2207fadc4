//! Installing a bundle into the inactive slot.
//!
//! Order matters, and is the point of this module:
//! 1. open the bundle and verify its signature (nothing else is read before that);
//! 2. check compatible string, anti-rollback floor, version, denylist, length, slot size;
//! 3. record "installing", then mark the target slot bad: from here on it may hold anything,
//!    and the record claims nothing about it (a trial armed earlier that boots before the
//!    mark is refused by `commit`, never completed);
//! 4. stream source → verify and decompress (rota-bundle, on all cores) → slot, checkpointing
//!    progress after an fsync every `checkpoint_bytes`, and reopening the source at the first
//!    chunk that did not arrive whole (HTTP Range) after a transport error, for as long as
//!    `download.retry_budget_secs` since the last verified chunk allows; a source that cannot
//!    tell its length up front (stdin) is checked for bytes after the bundle's end;
//! 5. fsync, record "installed" (every chunk verified and durable), and only then set the
//!    one-shot trial and record "reboot pending".
//!
//! All of it under the state's lock ([`StoreLock`]): one process at a time. A bundle refused
//! in 1–2 never touches the slot or the boot environment. When the inactive slot still holds
//! the bundle, [`switch_to_inactive_slot`] records "installed" and takes step 5's last two
//! steps alone.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rota_bootctl::{BootCtl, Slot, SlotState};
use rota_bundle::{
    BundleReader, ImageEntry, Keyring, Manifest, Part, ReadOptions, SlotClass, VerifiedManifest,
};

use crate::config::{Config, DownloadConfig};
use crate::failpoint;
use crate::progress::Progress;
use crate::sink::{Guard, SinkError, SlotWriter};
use crate::source::{error_chain, is_timeout, Backoff, BundleSource, HttpFetcher, SourceError};
use crate::state::{
    BundleInfo, InstallPermissions, InstallProgress, Lifecycle, Sha256Digest, State,
    TransitionError,
};
use crate::store::{StoreError, StoreLock};

/// Default bytes between durable progress checkpoints (each costs an fsync of the slot).
/// A resume also finds chunks written after the last checkpoint, so checkpoints only bound the
/// re-download after a power cut; each costs the medium a flush (it runs beside the
/// verification, not in its way): 128 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 128 << 20;

/// Bytes of chunks verified and written per worker hand-off: enough chunks that wake-ups and
/// the slot file's write lock cost little next to hashing (1 MiB installed a raw 1 GiB image
/// ~10% faster than 256 KiB here), while what is in flight stays a few MiB.
const RUN_BYTES: usize = 1 << 20;

/// A compressed run holds a stored and a decompressed buffer, and decompression, not the
/// hand-offs, is what takes the time: smaller runs keep its peak memory down (1 MiB runs took
/// 13 MiB peak RSS here, 256 KiB 8.6 MiB, at a 10% difference in time).
const COMPRESSED_RUN_BYTES: usize = 256 << 10;

/// What `install` needs from the outside world; the caller holds the state's lock.
pub struct Context<'a> {
    pub config: &'a Config,
    pub bootctl: &'a BootCtl,
    pub keyring: &'a Keyring,
    pub store: &'a StoreLock,
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Install a lower version than the booted slot runs (never below the security floor).
    pub allow_downgrade: bool,
    /// Install a bundle on the denylist (an operator retrying a rolled-back release on purpose).
    pub allow_denied: bool,
    pub checkpoint_bytes: u64,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            allow_downgrade: false,
            allow_denied: false,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

impl InstallOptions {
    /// The options an interrupted install was started with, as its state recorded them.
    pub fn resuming(state: &State) -> InstallOptions {
        InstallOptions {
            allow_downgrade: state.permissions.allow_downgrade,
            allow_denied: state.permissions.allow_denied,
            ..InstallOptions::default()
        }
    }

    fn permissions(&self) -> InstallPermissions {
        InstallPermissions {
            allow_downgrade: self.allow_downgrade,
            allow_denied: self.allow_denied,
        }
    }
}

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

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub slot: Slot,
    pub bundle: BundleInfo,
    /// First chunk fetched in this run: 0 for a fresh install.
    pub resumed_at_chunk: u64,
    /// Reopens of the source after transport errors.
    pub reconnects: u32,
}

/// A bundle error as what it means for this source: a read error or a truncation is the
/// transport failing for a stream (network, stdin), an I/O error or a truncated bundle for a
/// file.
fn from_bundle_error(
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

/// Reconnecting after transport errors, for as long as the retry budget lasts: counted from
/// the last verified chunk, so a link that breaks often but passes whole chunks in between
/// gets there.
struct Reconnects<'a> {
    config: &'a DownloadConfig,
    network: bool,
    backoff: Backoff,
    last_progress: Instant,
    count: u32,
}

impl<'a> Reconnects<'a> {
    fn new(config: &'a DownloadConfig, source: &BundleSource) -> Self {
        Reconnects {
            config,
            network: source.is_network(),
            backoff: Backoff::new(config),
            last_progress: Instant::now(),
            count: 0,
        }
    }

    /// A chunk was verified since the last failure: the budget starts again.
    fn progressed(&mut self) {
        self.last_progress = Instant::now();
        self.backoff = Backoff::new(self.config);
    }

    /// Until when reopening the source may go on.
    fn deadline(&self) -> Instant {
        self.last_progress + self.config.retry_budget
    }

    /// `Ok` after waiting when `error` is worth another attempt; the error to return otherwise.
    fn after(&mut self, error: InstallError) -> Result<(), InstallError> {
        let transport = match error {
            InstallError::Transport(transport) if self.network => transport,
            other => return Err(other),
        };
        let waited = self.last_progress.elapsed();
        let delay = self.backoff.delay(None);
        if waited + delay >= self.config.retry_budget {
            return Err(InstallError::GaveUp {
                last: transport,
                reconnects: self.count,
                waited,
                budget: self.config.retry_budget,
            });
        }
        self.count += 1;
        log::warn!(
            "{transport}; reconnecting from there in {} ms ({} s of the retry budget left)",
            delay.as_millis(),
            (self.config.retry_budget - waited).as_secs()
        );
        self.backoff.wait(None);
        Ok(())
    }
}

/// Counts the bytes read through it (for a reader handed away).
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// After the last chunk of the image at `position`: skips to the bundle's `end` and checks
/// that the stream ends there (for a source that cannot tell its length up front).
fn expect_end(reader: &mut dyn Read, position: u64, end: u64) -> Result<(), rota_bundle::Error> {
    let gap = end.saturating_sub(position);
    let skipped = io::copy(&mut reader.take(gap), &mut io::sink()).map_err(|source| {
        rota_bundle::Error::Read {
            part: Part::Payload,
            source,
        }
    })?;
    if skipped != gap {
        return Err(rota_bundle::Error::Truncated {
            part: Part::Payload,
        });
    }
    let mut probe = [0u8; 1];
    loop {
        match reader.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(rota_bundle::Error::TrailingData),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(rota_bundle::Error::Read {
                    part: Part::Payload,
                    source,
                })
            }
        }
    }
}

/// What the state file and denylist record of a bundle; its identity is the digest of the
/// signed manifest ([`VerifiedManifest::digest`]).
pub fn bundle_info(verified: &VerifiedManifest) -> BundleInfo {
    let manifest = verified.manifest();
    BundleInfo {
        digest: verified.digest(),
        version: manifest.version.to_string(),
        compatible: manifest.compatible.clone(),
        security_version: manifest.security_version,
    }
}

/// Chunk hashing and decompression on every core; a read-ahead window of one run more than
/// there are workers keeps each worker busy while the oldest result is reported, and keeps
/// memory small: every run in the window holds its buffers (one of up to 1 MiB uncompressed,
/// a stored and a decoded one of up to 256 KiB compressed), and the reader keeps that many
/// spare buffers besides.
///
/// The whole-image SHA-256 is not recomputed: every byte written belongs to a chunk whose
/// digest matched the signed chunk table, and the reader checked that the table tiles the
/// image exactly; a second, serial hash of the image would cap the install at one core's
/// SHA-256 speed.
fn read_options() -> ReadOptions {
    let workers = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    ReadOptions {
        workers,
        read_ahead: workers + 1,
        run_bytes: RUN_BYTES,
        compressed_run_bytes: Some(COMPRESSED_RUN_BYTES),
        check_image_sha256: false,
        // The stored bytes are checked against the signed chunk table before decompression;
        // hashing the output again would cost a SHA-256 pass over the image on the robot.
        check_decompressed_sha256: false,
    }
}

/// Everything decided from the verified manifest and the state, before a byte is written.
fn check_bundle(
    config: &Config,
    state: &State,
    booted: Slot,
    info: &BundleInfo,
    options: &InstallOptions,
) -> Result<(), Refusal> {
    if info.compatible != config.compatible {
        return Err(Refusal::WrongCompatible {
            expected: config.compatible.clone(),
            found: info.compatible.clone(),
        });
    }
    if info.security_version < state.security_floor {
        return Err(Refusal::BelowSecurityFloor {
            bundle: info.security_version,
            floor: state.security_floor,
        });
    }
    if let Some(running) = state.slot(booted) {
        let newer_or_same = match (
            semver::Version::parse(&info.version),
            semver::Version::parse(&running.version),
        ) {
            (Ok(bundle), Ok(running)) => bundle >= running,
            // An unparsable recorded version cannot prove a downgrade.
            _ => true,
        };
        if !newer_or_same && !options.allow_downgrade {
            return Err(Refusal::Downgrade {
                bundle: info.version.clone(),
                running: running.version.clone(),
            });
        }
    } else {
        log::info!("no record of what slot {booted} runs: version check skipped");
    }
    if let Some(denied) = state.is_denied(&info.digest) {
        if !options.allow_denied {
            return Err(Refusal::Denied {
                digest: info.digest,
                version: info.version.clone(),
                reason: denied.reason.to_string(),
            });
        }
        log::warn!("installing denied bundle {} on request", info.digest);
    }
    Ok(())
}

fn rootfs_image(manifest: &Manifest) -> Result<usize, Refusal> {
    let rootfs: Vec<usize> = manifest
        .images
        .iter()
        .enumerate()
        .filter(|(_, image)| image.slot_class == SlotClass::Rootfs)
        .map(|(index, _)| index)
        .collect();
    for image in manifest
        .images
        .iter()
        .filter(|image| image.slot_class != SlotClass::Rootfs)
    {
        log::warn!(
            "image {:?} ({:?}) skipped: only rootfs images are installed",
            image.name,
            image.slot_class
        );
    }
    match rootfs.as_slice() {
        [] => Err(Refusal::NoRootfsImage),
        [index] => Ok(*index),
        several => Err(Refusal::SeveralRootfsImages(several.len())),
    }
}

/// The first chunk whose bytes in the slot do not match the chunk table. Chunks written before
/// a restart are trusted only after reading them back; the scan goes past the last checkpoint
/// (`checkpointed`, a hint) because chunks written after it often survived too.
fn first_unverified_chunk(writer: &SlotWriter, entry: &ImageEntry, checkpointed: u64) -> u64 {
    for (index, chunk) in entry.chunks.iter().enumerate() {
        let intact = writer
            .read_at(chunk.offset, chunk.length as usize)
            .is_ok_and(|data| Sha256Digest::of(&data) == chunk.sha256);
        if !intact {
            if (index as u64) < checkpointed {
                log::warn!(
                    "chunk {index} in the slot changed since it was written: resuming from there"
                );
            }
            return index as u64;
        }
    }
    entry.chunks.len() as u64
}

/// Where the stream stands and how to save it.
struct Checkpointer<'a> {
    store: &'a StoreLock,
    state: State,
    slot: Arc<File>,
    slot_path: PathBuf,
    image: u32,
    every: u64,
    since_last: u64,
    next_chunk: u64,
    done: u64,
    /// The fsync in flight on its own thread, and the progress it makes durable: the workers
    /// go on verifying and writing while the medium catches up.
    syncing: Option<(JoinHandle<io::Result<()>>, InstallProgress)>,
}

impl Checkpointer<'_> {
    /// Chunks before `next_chunk` (image bytes before `end`) are verified and written: every
    /// `every` bytes, an fsync starts, and the progress it covers is recorded once it is done.
    fn run_written(&mut self, next_chunk: usize, end: u64) -> Result<(), InstallError> {
        self.next_chunk = next_chunk as u64;
        self.since_last += end - self.done.min(end);
        self.done = end;
        failpoint::hit("after-run-written");
        let finished = self
            .syncing
            .as_ref()
            .is_some_and(|(sync, _)| sync.is_finished());
        let due = self.since_last >= self.every;
        if finished || due {
            // Due with the previous fsync still running: wait for it (with checkpoints this
            // far apart it finished long ago; only tiny test checkpoints ever wait).
            self.record_sync()?;
        }
        if due {
            let slot = self.slot.clone();
            let sync = std::thread::spawn(move || slot.sync_data());
            self.syncing = Some((sync, self.progress()));
            self.since_last = 0;
        }
        Ok(())
    }

    fn progress(&self) -> InstallProgress {
        InstallProgress {
            image: self.image,
            next_chunk: self.next_chunk,
            bytes_done: self.done,
        }
    }

    /// Waits for the fsync in flight, then records its progress: durable data first, then the
    /// record that points at it.
    fn record_sync(&mut self) -> Result<(), InstallError> {
        if let Some(progress) = self.wait_for_sync()? {
            self.state.record_progress(progress)?;
            self.store.save(&self.state)?;
            failpoint::hit("after-progress-saved");
        }
        Ok(())
    }

    /// The fsync in flight, finished. Its error counts: Linux reports a failed writeback to
    /// one fsync only, so a later one may succeed over lost data.
    fn wait_for_sync(&mut self) -> Result<Option<InstallProgress>, SinkError> {
        let Some((sync, progress)) = self.syncing.take() else {
            return Ok(None);
        };
        sync.join()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")))
            .map_err(|source| self.slot_error("fsync", source))?;
        Ok(Some(progress))
    }

    /// Every byte written so far is durable.
    fn sync_all(&mut self) -> Result<(), InstallError> {
        // Its progress is not recorded: the state saved after this supersedes it at once.
        self.wait_for_sync()?;
        self.slot
            .sync_data()
            .map_err(|source| self.slot_error("fsync", source))?;
        Ok(())
    }

    fn slot_error(&self, op: &'static str, source: io::Error) -> SinkError {
        SinkError::Io {
            op,
            path: self.slot_path.clone(),
            source,
        }
    }
}

/// Installs the bundle at `source` into the slot that is not booted.
pub fn install(
    ctx: &Context,
    source: &BundleSource,
    options: &InstallOptions,
    progress: &mut dyn Progress,
) -> Result<InstallReport, InstallError> {
    let mut state = ctx.store.load()?;
    if let Lifecycle::Trial { .. } | Lifecycle::TrialFailed { .. } = state.lifecycle {
        return Err(Refusal::TrialInProgress(state.lifecycle.name()).into());
    }
    let booted = ctx.bootctl.booted_slot()?;
    let target = booted.other();
    let http = match source {
        BundleSource::Http(_) => Some(HttpFetcher::new(&ctx.config.download)?),
        _ => None,
    };

    // 1. Signature first: BundleReader decodes nothing it has not verified.
    let download = &ctx.config.download;
    let classify = |error| from_bundle_error(error, source, download.timeout);
    let mut reconnects = Reconnects::new(download, source);
    let (bundle, source_length) = loop {
        // The first request gets `download.retries` attempts; after a broken one, the budget.
        let until = (reconnects.count > 0).then(|| reconnects.deadline());
        let opened = source.open_at(0, http.as_ref(), until)?;
        let arrived = Arc::new(AtomicU64::new(0));
        let reader = Counted {
            inner: opened.reader,
            count: arrived.clone(),
        };
        match BundleReader::open_with(reader, ctx.keyring, read_options()) {
            Ok(bundle) => break (bundle, opened.length),
            // All the source said it has arrived, and the bundle's header wants more: the
            // bundle is short, not the transfer.
            Err(rota_bundle::Error::Truncated { part })
                if opened.length == Some(arrived.load(Ordering::Relaxed)) =>
            {
                return Err(Refusal::ShortSource {
                    part,
                    length: arrived.load(Ordering::Relaxed),
                }
                .into());
            }
            Err(error) => reconnects.after(classify(error))?,
        }
    };
    let verified: VerifiedManifest = bundle.verified_manifest().clone();
    let info = bundle_info(&verified);
    let signers: Vec<String> = verified
        .signed_by()
        .iter()
        .map(|id| id.to_string())
        .collect();
    log::info!(
        "bundle {} version {} for {:?}, signed by {}",
        info.digest,
        info.version,
        info.compatible,
        signers.join(", ")
    );

    // 2. Everything that can refuse the bundle without reading the payload.
    check_bundle(ctx.config, &state, booted, &info, options)?;
    let image = rootfs_image(verified.manifest())?;
    // Borrowed, not cloned: the chunk table is about 1 MiB per GiB of image.
    let entry = verified.image(image)?;
    // A file's size or an HTTP Content-Length; a source that cannot tell (stdin) is checked
    // for bytes after the bundle's end once the image is in, before the trial is armed.
    check_length(source_length, &verified)?;
    let guard = Guard::new(ctx.config.slot_device(booted));
    let slot = SlotWriter::open(ctx.config.slot_device(target), &guard)?;
    slot.check_fits(entry.size).map_err(Refusal::TooBig)?;

    // Written and verified before a power cut cut the arming short: arm it.
    if let Lifecycle::Installed { slot, bundle } = &state.lifecycle {
        if *slot == target && bundle.digest == info.digest {
            log::info!("slot {target} already holds the verified bundle: setting its trial");
            arm_trial(ctx, &mut state, target)?;
            return Ok(InstallReport {
                slot: target,
                bundle: info,
                resumed_at_chunk: entry.chunks.len() as u64,
                reconnects: 0,
            });
        }
    }

    // 3. Resume the same bundle into the same slot, or start over.
    let resume = match &state.lifecycle {
        Lifecycle::Installing {
            slot,
            bundle,
            progress,
            ..
        } if *slot == target
            && bundle.digest == info.digest
            && progress.image as usize == image
            && source.can_reopen() =>
        {
            Some(progress.next_chunk)
        }
        _ => None,
    };
    let first_chunk = match resume {
        Some(next_chunk) => {
            let first = first_unverified_chunk(&slot, entry, next_chunk);
            log::info!(
                "resuming the install into slot {target} at chunk {first} of {}",
                entry.chunks.len()
            );
            first
        }
        None => {
            state.begin_install(
                target,
                info.clone(),
                source.describe(),
                options.permissions(),
            )?;
            ctx.store.save(&state)?;
            0
        }
    };
    // Also on resume: the env may have been rewritten since (a trial set just before a crash).
    ctx.bootctl.mark_bad(target)?;
    failpoint::hit("after-mark-bad");

    // 4. Stream, verify, write.
    let chunk_count = entry.chunks.len() as u64;
    let offset_of = |chunk: u64| {
        entry
            .chunks
            .get(chunk as usize)
            .map_or(entry.size, |chunk| chunk.offset)
    };
    let mut checkpoint = Checkpointer {
        store: ctx.store,
        state,
        slot: Arc::new(slot.try_clone_file()?),
        slot_path: slot.path().to_owned(),
        syncing: None,
        image: image as u32,
        every: options.checkpoint_bytes.max(1),
        since_last: 0,
        next_chunk: first_chunk,
        done: offset_of(first_chunk),
    };
    progress.start(entry.size, checkpoint.done);
    let bundle_length = verified.bundle_length();
    let image_end = verified.image_file_range(image)?.end;
    let reclassify = |error| match error {
        InstallError::Bundle(rota_bundle::Error::TrailingData) => {
            InstallError::from(Refusal::TrailingBytes {
                length: bundle_length,
            })
        }
        InstallError::Bundle(error) => classify(error),
        other => other,
    };
    let mut opened = Some(bundle);
    let mut streamed = false;
    while !streamed {
        let started_at = checkpoint.next_chunk;
        let result = match opened.take() {
            // The stream we verified the signature on is already at the payload.
            Some(mut fresh) if started_at == 0 => {
                let pumped = match fresh.image(&entry.name) {
                    Ok(mut image_reader) => pump(&mut image_reader, &mut checkpoint, progress),
                    Err(error) => Err(error.into()),
                };
                match pumped {
                    Ok(()) if source_length.is_none() => {
                        fresh.finish().map(drop).map_err(InstallError::from)
                    }
                    other => other,
                }
            }
            _ if started_at == chunk_count && source_length.is_some() => Ok(()),
            _ => {
                let offset = match verified.chunk_file_range(image, started_at as usize) {
                    Ok(range) => range.start,
                    // Every chunk is in (a resume): only the end is left to check.
                    Err(_) => image_end,
                };
                let opened = source.open_at(offset, http.as_ref(), Some(reconnects.deadline()))?;
                // The same file as the one verified, or none of it is.
                check_length(opened.length, &verified)?;
                let mut reader = opened.reader;
                let pumped = match verified.image_reader(
                    image,
                    started_at as usize,
                    &mut reader,
                    &read_options(),
                ) {
                    Ok(mut image_reader) => pump(&mut image_reader, &mut checkpoint, progress),
                    Err(error) => Err(error.into()),
                };
                match pumped {
                    Ok(()) if opened.length.is_none() => {
                        expect_end(&mut reader, image_end, bundle_length)
                            .map_err(InstallError::from)
                    }
                    other => other,
                }
            }
        };
        if checkpoint.next_chunk > started_at {
            reconnects.progressed();
        }
        match result.map_err(reclassify) {
            Ok(()) => streamed = true,
            Err(error) => reconnects.after(error)?,
        }
    }
    // bundle (and its stream) are dropped here at the latest.
    drop(opened);

    // 5. Durable, recorded, then bootable.
    checkpoint.sync_all()?;
    let mut state = checkpoint.state;
    state.finish_writing()?;
    ctx.store.save(&state)?;
    arm_trial(ctx, &mut state, target)?;
    progress.finish();
    log::info!(
        "installed {} into slot {target}; it boots next, {}",
        info.version,
        rota_bootctl::slot::attempts_text(ctx.config.trial_attempts)
    );
    Ok(InstallReport {
        slot: target,
        bundle: info,
        resumed_at_chunk: first_chunk,
        reconnects: reconnects.count,
    })
}

/// The last step of every install: `state` records `target` as installed (complete, verified
/// and durable). Sets the one-shot trial, then records "reboot pending"; a power cut between
/// the two is completed by the next boot's `commit`, which completes only an `Installed`
/// record.
fn arm_trial(ctx: &Context, state: &mut State, target: Slot) -> Result<(), InstallError> {
    failpoint::hit("before-begin-trial");
    ctx.bootctl.begin_trial(target, ctx.config.trial_attempts)?;
    failpoint::hit("after-begin-trial");
    state.finish_install()?;
    ctx.store.save(state)?;
    Ok(())
}

/// Boots the inactive slot on trial without writing a byte when it still holds the bundle
/// `digest` (a rollback to the release the robot ran before): recorded exactly as an install
/// that finished, so the next boot's `commit` health-checks it and commits or rolls back as
/// usual. Refused for the reasons an install of that bundle would be (downgrade without
/// `allow_downgrade`, below the security floor, on the denylist).
///
/// `Ok(None)` when the slot is no usable copy, and the bundle must be installed instead: it
/// holds something else or nothing the state file knows of (a slot the robot rolled back from
/// is forgotten), its security version was not recorded (state format before 3), or the boot
/// environment marks it bad and `allow_denied` (force) is not set.
pub fn switch_to_inactive_slot(
    ctx: &Context,
    digest: &Sha256Digest,
    options: &InstallOptions,
) -> Result<Option<InstallReport>, InstallError> {
    let mut state = ctx.store.load()?;
    if let Lifecycle::Trial { .. } | Lifecycle::TrialFailed { .. } = state.lifecycle {
        return Err(Refusal::TrialInProgress(state.lifecycle.name()).into());
    }
    let booted = ctx.bootctl.booted_slot()?;
    let target = booted.other();
    let Some(content) = state
        .slot(target)
        .filter(|content| content.bundle_digest == *digest)
    else {
        return Ok(None);
    };
    let Some(security_version) = content.security_version else {
        log::info!("slot {target} holds bundle {digest}, but its security version was not recorded: installing it again");
        return Ok(None);
    };
    if ctx.bootctl.status()?.state(target) == SlotState::Bad && !options.allow_denied {
        log::info!("slot {target} holds bundle {digest}, but the boot environment marks it bad: installing it again");
        return Ok(None);
    }
    let info = BundleInfo {
        digest: *digest,
        version: content.version.clone(),
        // This updater wrote the slot, and refuses bundles for any other compatible string.
        compatible: ctx.config.compatible.clone(),
        security_version,
    };
    check_bundle(ctx.config, &state, booted, &info, options)?;
    state.begin_switch(target, info.clone(), options.permissions())?;
    ctx.store.save(&state)?;
    arm_trial(ctx, &mut state, target)?;
    log::info!(
        "slot {target} already held {}: it boots next, {}, nothing downloaded",
        info.version,
        rota_bootctl::slot::attempts_text(ctx.config.trial_attempts)
    );
    Ok(Some(InstallReport {
        slot: target,
        bundle: info,
        resumed_at_chunk: 0,
        reconnects: 0,
    }))
}

/// Sets the trial of a slot recorded as installed (written, verified and durable) when a power
/// cut came before its trial was set: `resume` after such a cut. Needs no bundle.
pub fn arm_installed(ctx: &Context) -> Result<InstallReport, InstallError> {
    let mut state = ctx.store.load()?;
    let Lifecycle::Installed { slot, bundle } = state.lifecycle.clone() else {
        return Err(TransitionError {
            transition: "set the trial of an installed slot",
            from: state.lifecycle.name(),
        }
        .into());
    };
    arm_trial(ctx, &mut state, slot)?;
    Ok(InstallReport {
        slot,
        bundle,
        resumed_at_chunk: 0,
        reconnects: 0,
    })
}

/// Refuses a source whose length (when it tells one) is not the signed bundle length.
fn check_length(length: Option<u64>, verified: &VerifiedManifest) -> Result<(), Refusal> {
    match length {
        Some(actual) if actual != verified.bundle_length() => Err(Refusal::WrongLength {
            expected: verified.bundle_length(),
            actual,
        }),
        _ => Ok(()),
    }
}

/// Lets the workers verify and write the image into the slot until it ends or an error,
/// checkpointing as runs complete in order.
fn pump(
    image: &mut rota_bundle::ImageReader<'_>,
    checkpoint: &mut Checkpointer,
    progress: &mut dyn Progress,
) -> Result<(), InstallError> {
    image.write_to(checkpoint.slot.clone());
    loop {
        let run = match image.next_written_run() {
            Ok(Some(run)) => run,
            Ok(None) => return Ok(()),
            Err(rota_bundle::Error::Write(source)) => {
                return Err(checkpoint.slot_error("write", source).into())
            }
            Err(error) => return Err(error.into()),
        };
        checkpoint.run_written(run.chunks.end, run.end)?;
        progress.advance(run.end);
    }
}
