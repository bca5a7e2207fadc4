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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::HumanBytes;
use rota_bootctl::{BootCtl, Slot};
use rota_bundle::{
    BundleReader, Header, ImageEntry, Keyring, Part, ReadOptions, VerifiedManifest, VerifyPool,
    HEADER_LENGTH,
};

use crate::config::{Config, DownloadConfig};
use crate::failpoint;
use crate::progress::Progress;
use crate::retry::Backoff;
use crate::state::{BundleInfo, InstallPermissions, Lifecycle, Sha256Digest, State};
use crate::store::StoreLock;

mod checkpoint;
mod checks;
mod errors;
mod patch;
pub mod plan;
pub mod sink;
pub mod source;
mod switch;

use checkpoint::{first_unverified_chunk, Checkpointer};
pub use checks::bundle_info;
use checks::{check_bundle, check_length, rootfs_image};
use errors::from_bundle_error;
pub use errors::{FailureKind, InstallError, Refusal, TransportError};
use patch::{Patches, Wanted};
use plan::{ChunkIndex, Plan, Step};
use sink::{Guard, SinkError, SlotWriter};
use source::{BundleSource, HttpFetcher, Opened, SourceError};
use switch::arm_trial;
pub use switch::{arm_installed, switch_to_inactive_slot};

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
    /// Sent as a bearer token to an HTTP(S) source: the robot's token, for a bundle on the
    /// fleet server that issued it (never for another host).
    pub bearer_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Install a lower version than the booted slot runs (never below the security floor).
    pub allow_downgrade: bool,
    /// Install a bundle on the denylist (an operator retrying a rolled-back release on purpose).
    pub allow_denied: bool,
    pub checkpoint_bytes: u64,
    /// Copy chunks the booted slot holds instead of fetching them (a delta install).
    pub reuse_booted_slot: bool,
    /// A precomputed delta (`rota-image delta`) to rebuild missing chunks from, when it is for
    /// this bundle and the booted slot's.
    pub delta: Option<BundleSource>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            allow_downgrade: false,
            allow_denied: false,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            reuse_booted_slot: true,
            delta: None,
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

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub slot: Slot,
    pub bundle: BundleInfo,
    /// First chunk fetched in this run: 0 for a fresh install.
    pub resumed_at_chunk: u64,
    /// Reopens of the source after transport errors.
    pub reconnects: u32,
    /// Stored bytes of the bundle read from the source for the image in this run.
    pub fetched_bytes: u64,
    /// Image bytes copied from the booted slot instead.
    pub reused_bytes: u64,
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
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            last_progress: Instant::now(),
            count: 0,
        }
    }

    /// A chunk was verified since the last failure: the budget starts again.
    fn progressed(&mut self) {
        self.last_progress = Instant::now();
        self.backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
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
    skip(reader, end.saturating_sub(position))?;
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

/// An unranged stream of the bundle (stdin, or a server that ignores Range) and the bundle
/// offset of its next byte: later fetches skip forward in it instead of asking again.
struct Live {
    reader: Box<dyn Read + Send>,
    position: u64,
}

/// The verified manifest, read from the start of the source: for a source that can answer
/// ranges, the 32-byte header and then exactly the manifest and signatures (two requests, no
/// payload bytes in flight); otherwise from a stream that goes on into the payload.
fn open_manifest(
    source: &BundleSource,
    http: Option<&HttpFetcher>,
    keyring: &Keyring,
    reconnects: &mut Reconnects,
    classify: &dyn Fn(rota_bundle::Error) -> InstallError,
) -> Result<(VerifiedManifest, Option<Live>, Option<u64>), InstallError> {
    loop {
        // The first request gets `download.retries` attempts; after a broken one, the budget.
        let until = (reconnects.count > 0).then(|| reconnects.deadline());
        let first = source.open_range(0, Some(HEADER_LENGTH as u64), http, until)?;
        let length = first.length;
        let arrived = Arc::new(AtomicU64::new(0));
        let counted = |reader| Counted {
            inner: reader,
            count: arrived.clone(),
        };
        let result = if first.ranged {
            let mut head = counted(first.reader);
            match Header::read_from(&mut head) {
                Ok((header, bytes)) => {
                    let rest = source.open_range(
                        HEADER_LENGTH as u64,
                        Some(header.payload_start()),
                        http,
                        until,
                    )?;
                    let reader = io::Cursor::new(bytes).chain(counted(rest.reader));
                    BundleReader::open_with(reader, keyring, read_options())
                        .map(|bundle| (bundle.verified_manifest().clone(), None))
                }
                Err(error) => Err(error),
            }
        } else {
            BundleReader::open_with(counted(first.reader), keyring, read_options()).map(|bundle| {
                let verified = bundle.verified_manifest().clone();
                let live = Live {
                    position: verified.payload_start(),
                    reader: Box::new(bundle.into_inner()),
                };
                (verified, Some(live))
            })
        };
        match result {
            Ok((verified, live)) => return Ok((verified, live, length)),
            // All the source said it has arrived, and the bundle's header wants more: the
            // bundle is short, not the transfer.
            Err(rota_bundle::Error::Truncated { part })
                if length == Some(arrived.load(Ordering::Relaxed)) =>
            {
                return Err(Refusal::ShortSource {
                    part,
                    length: arrived.load(Ordering::Relaxed),
                }
                .into());
            }
            Err(error) => reconnects.after(classify(error))?,
        }
    }
}

/// The HTTP client a URL source needs (building one starts reqwest's I/O thread: file installs
/// do without).
fn http_client(ctx: &Context, source: &BundleSource) -> Result<Option<HttpFetcher>, InstallError> {
    Ok(match source {
        BundleSource::Http(_) => {
            Some(HttpFetcher::new(&ctx.config.download)?.with_bearer(ctx.bearer_token.clone()))
        }
        _ => None,
    })
}

/// What the booted slot holds, by content hash: from its chunk index when there is one about the
/// bundle the state file says it runs, else (a slot flashed from a golden image, or one whose
/// index is gone) by reading the slot up to `image_size` bytes, for a bundle that comes over the
/// network: from a file, reading the bundle costs no more than reading the slot would.
fn booted_chunks(
    ctx: &Context,
    source: &BundleSource,
    state: &State,
    booted: Slot,
    image_size: u64,
) -> HashMap<Sha256Digest, u64> {
    let path = ChunkIndex::path(ctx.store.store().path(), booted);
    if let Some(index) = state
        .slot(booted)
        .and_then(|content| ChunkIndex::load(&path, &content.bundle_digest))
    {
        return index.locations();
    }
    if !source.is_network() {
        return HashMap::new();
    }
    let device = ctx.config.slot_device(booted);
    log::info!(
        "no chunk index for slot {booted}: reading it to find chunks to reuse ({})",
        HumanBytes(image_size)
    );
    plan::scan_slot(device, image_size).unwrap_or_else(|error| {
        log::warn!(
            "reading slot {booted} ({}): {error}; nothing reused",
            device.display()
        );
        HashMap::new()
    })
}

/// What an install of a bundle would do, as `rota-updater plan` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRun {
    pub bundle: BundleInfo,
    /// The slot it would be written to.
    pub slot: Slot,
    /// The whole bundle file, for comparison.
    pub bundle_bytes: u64,
    pub image_bytes: u64,
    /// Image bytes that would be copied from the booted slot (each checked as it is read, so
    /// a slot that changed since its index was written costs a download there).
    pub reuse_bytes: u64,
    /// Stored bytes that would be fetched.
    pub fetch_bytes: u64,
    /// Bytes of a delta's patches that would be fetched instead of chunks.
    pub patch_bytes: u64,
    /// Range requests (or reads of a file) for them.
    pub requests: usize,
}

/// Plans an install of `source` without writing anything: reads and verifies the manifest,
/// applies every check that could refuse the bundle, and plans against the booted slot.
pub fn dry_run(
    ctx: &Context,
    source: &BundleSource,
    delta: Option<&BundleSource>,
) -> Result<DryRun, InstallError> {
    let state = ctx.store.load()?;
    let booted = ctx.bootctl.booted_slot()?;
    let http = http_client(ctx, source)?;
    let download = &ctx.config.download;
    let classify = |error| from_bundle_error(error, source, download.timeout);
    let mut reconnects = Reconnects::new(download, source);
    let (verified, live, source_length) = open_manifest(
        source,
        http.as_ref(),
        ctx.keyring,
        &mut reconnects,
        &classify,
    )?;
    let info = bundle_info(&verified);
    check_bundle(
        ctx.config,
        &state,
        booted,
        &info,
        &InstallOptions::default(),
    )?;
    check_length(source_length, &verified)?;
    let entry = verified.image(rootfs_image(verified.manifest())?)?;
    let (have, patches) = match live {
        None => (
            booted_chunks(ctx, source, &state, booted, entry.size),
            open_patches(ctx, delta, http.as_ref(), &state, booted, &info, entry),
        ),
        Some(_) => (HashMap::new(), None),
    };
    let plan = plan_with(entry, 0, &have, patches.as_ref());
    Ok(DryRun {
        bundle: info,
        slot: booted.other(),
        bundle_bytes: verified.bundle_length(),
        image_bytes: entry.size,
        reuse_bytes: plan.reuse_bytes,
        fetch_bytes: plan.fetch_bytes,
        patch_bytes: plan.patch_bytes,
        requests: plan.requests,
    })
}

/// The delta at `delta` when there is one and it applies to this install (see [`Patches`]).
fn open_patches(
    ctx: &Context,
    delta: Option<&BundleSource>,
    bundle_http: Option<&HttpFetcher>,
    state: &State,
    booted: Slot,
    info: &BundleInfo,
    entry: &ImageEntry,
) -> Option<Patches> {
    let download = &ctx.config.download;
    let wanted = Wanted {
        target: &info.digest,
        booted: state.slot(booted).map(|content| &content.bundle_digest),
        image: &entry.name,
    };
    // The retry budget every network read of an install gets (see `Reconnects`).
    let until = Instant::now() + download.retry_budget;
    Patches::open(delta?, download, bundle_http, ctx.keyring, &wanted, until)
}

/// Chunks from `first` on: reused from `have`, rebuilt from `patches`, or fetched.
fn plan_with(
    entry: &ImageEntry,
    first: usize,
    have: &HashMap<Sha256Digest, u64>,
    patches: Option<&Patches>,
) -> Plan {
    let plan = Plan::new(entry, first, have);
    match patches {
        Some(patches) => plan.with_patches(entry, |index| patches.patch_bytes(index)),
        None => plan,
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
    let http = http_client(ctx, source)?;

    // 1. Signature first: BundleReader decodes nothing it has not verified.
    let download = &ctx.config.download;
    let classify = |error| from_bundle_error(error, source, download.timeout);
    let mut reconnects = Reconnects::new(download, source);
    let (verified, mut live, source_length) = open_manifest(
        source,
        http.as_ref(),
        ctx.keyring,
        &mut reconnects,
        &classify,
    )?;
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
                fetched_bytes: 0,
                reused_bytes: 0,
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
    let target_index = ChunkIndex::path(ctx.store.store().path(), target);
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
    // The slot's old contents are going: so is their index (it is only a hint, checked chunk
    // by chunk, but a stale one would only cost reads).
    plan::forget(&target_index).map_err(|source| SinkError::Io {
        op: "remove",
        path: target_index.clone(),
        source,
    })?;
    // Also on resume: the env may have been rewritten since (a trial set just before a crash).
    ctx.bootctl.mark_bad(target)?;
    failpoint::hit("after-mark-bad");

    // 4. Plan: a stream that cannot skip without reading (stdin, a server ignoring Range)
    // gains nothing from the booted slot.
    let have = match (&live, options.reuse_booted_slot) {
        (None, true) => booted_chunks(ctx, source, &state, booted, entry.size),
        _ => HashMap::new(),
    };
    let patches = match (&live, options.reuse_booted_slot) {
        (None, true) => open_patches(
            ctx,
            options.delta.as_ref(),
            http.as_ref(),
            &state,
            booted,
            &info,
            entry,
        ),
        _ => None,
    };
    let plan = plan_with(entry, first_chunk as usize, &have, patches.as_ref());
    log::info!(
        "plan: {} from slot {booted}, {} to fetch ({} of image) and {} of patches in {} request(s)",
        HumanBytes(plan.reuse_bytes),
        HumanBytes(plan.fetch_bytes),
        HumanBytes(plan.fetch_image_bytes),
        HumanBytes(plan.patch_bytes),
        plan.requests
    );
    let (zeros, booted_device) = match plan.reuse_bytes + plan.patch_bytes {
        0 => (HashMap::new(), None),
        _ => {
            let path = ctx.config.slot_device(booted);
            let device = File::open(path).map_err(|source| SinkError::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            })?;
            (zero_digests(entry), Some(device))
        }
    };

    // 5. Copy, fetch, verify, write.
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
    let reclassify = |error| match error {
        InstallError::Bundle(rota_bundle::Error::TrailingData) => {
            InstallError::from(Refusal::TrailingBytes {
                length: bundle_length,
            })
        }
        InstallError::Bundle(error) => classify(error),
        other => other,
    };
    let mut fetch = Fetcher {
        source,
        http: http.as_ref(),
        verified: &verified,
        image,
        fetched: 0,
        prefetch: None,
        workers: VerifyPool::new(read_options().workers),
    };
    let mut reused = 0u64;
    let mut steps: VecDeque<Step> = plan.steps.into();
    while let Some(step) = steps.pop_front() {
        if live.is_none() {
            fetch.prefetch_next(&steps, reconnects.deadline());
        }
        match step {
            Step::Reuse(chunks) => {
                let booted_device = booted_device
                    .as_ref()
                    .expect("opened for a plan that reuses");
                let copied = copy_from_booted(
                    booted_device,
                    &have,
                    &zeros,
                    entry,
                    chunks.clone(),
                    &mut checkpoint,
                    progress,
                )?;
                reused += entry.chunks[chunks.start..copied]
                    .iter()
                    .map(|chunk| u64::from(chunk.length))
                    .sum::<u64>();
                if copied < chunks.end {
                    log::warn!("chunk {copied} in slot {booted} is not what its index says: fetching it instead");
                    if copied + 1 < chunks.end {
                        steps.push_front(Step::Reuse(copied + 1..chunks.end));
                    }
                    steps.push_front(Step::Fetch(copied..copied + 1));
                }
            }
            Step::Patch(chunks) => {
                let (next, arrived) = patches.as_ref().expect("planned with a delta").rebuild(
                    chunks.clone(),
                    entry,
                    booted_device
                        .as_ref()
                        .expect("opened for a plan that patches"),
                    fetch.workers.spare_window(),
                    &mut checkpoint,
                    progress,
                    reconnects.deadline(),
                )?;
                fetch.fetched += arrived;
                if next < chunks.end {
                    steps.push_front(Step::Fetch(next..chunks.end));
                }
            }
            Step::Fetch(chunks) => {
                let started_at = checkpoint.next_chunk;
                let result = fetch.run(
                    chunks.clone(),
                    &mut live,
                    reconnects.deadline(),
                    &mut checkpoint,
                    progress,
                );
                if checkpoint.next_chunk > started_at {
                    reconnects.progressed();
                }
                if let Err(error) = result.map_err(reclassify) {
                    reconnects.after(error)?;
                    // Reopened at the first chunk that did not arrive whole.
                    live = None;
                    steps.push_front(Step::Fetch(checkpoint.next_chunk as usize..chunks.end));
                }
            }
        }
    }
    // A source that could not tell its length: nothing may follow the bundle's end.
    if let (None, Some(mut live)) = (source_length, live.take()) {
        expect_end(&mut live.reader, live.position, bundle_length)
            .map_err(|error| reclassify(error.into()))?;
    }

    // 6. Durable, recorded, then bootable.
    checkpoint.sync_all()?;
    if let Err(error) = ChunkIndex::of_image(info.digest, entry).save(&target_index) {
        // Costs the next update its delta, nothing else.
        log::warn!("chunk index {}: {error}", target_index.display());
    }
    let mut state = checkpoint.state;
    state.finish_writing()?;
    ctx.store.save(&state)?;
    arm_trial(ctx, &mut state, target)?;
    progress.finish();
    log::info!(
        "installed {} into slot {target} ({} fetched, {} reused from slot {booted}); it boots next, {}",
        info.version,
        HumanBytes(fetch.fetched),
        HumanBytes(reused),
        rota_bootctl::slot::attempts_text(ctx.config.trial_attempts)
    );
    Ok(InstallReport {
        slot: target,
        bundle: info,
        resumed_at_chunk: first_chunk,
        reconnects: reconnects.count,
        fetched_bytes: fetch.fetched,
        reused_bytes: reused,
    })
}

/// Image bytes copied from the booted slot per hand-off to the checkpoint: each batch is split
/// among the workers, so reading, hashing and writing run on every core.
const REUSE_BATCH_BYTES: u64 = 8 << 20;

/// The digests of all-zero chunks of the lengths free space comes in: lengths that at least 8
/// chunks of the image share (content-defined chunking cuts zeros at one length), so that
/// checking a chunk for zeros costs a lookup, not a hash.
fn zero_digests(entry: &ImageEntry) -> HashMap<u32, Sha256Digest> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for chunk in &entry.chunks {
        *counts.entry(chunk.length).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|&(_, count)| count >= 8)
        .map(|(length, _)| (length, Sha256Digest::of(&vec![0u8; length as usize])))
        .collect()
}

/// What copying one chunk from the booted slot came to.
enum Copied {
    Written,
    /// Unreadable, or not what the index says: fetch it instead.
    Mismatch,
}

/// Copies chunks `chunks` from the booted slot (each from where `have` says its content is),
/// checking each against the signed chunk table before writing it; returns the first chunk not
/// copied (`chunks.end` when all were). A chunk whose signed hash is that of zeros (free space)
/// is written without reading: its content is known from the manifest alone.
fn copy_from_booted(
    booted: &File,
    have: &HashMap<Sha256Digest, u64>,
    zeros: &HashMap<u32, Sha256Digest>,
    entry: &ImageEntry,
    chunks: Range<usize>,
    checkpoint: &mut Checkpointer,
    progress: &mut dyn Progress,
) -> Result<usize, InstallError> {
    let workers = std::thread::available_parallelism().map_or(1, |cores| cores.get().min(4));
    let slot = checkpoint.slot.clone();
    let copy_one = |index: usize, buffer: &mut Vec<u8>| -> io::Result<Copied> {
        let chunk = &entry.chunks[index];
        let Some(&from) = have.get(&chunk.sha256) else {
            return Ok(Copied::Mismatch);
        };
        buffer.resize(chunk.length as usize, 0);
        if zeros.get(&chunk.length) == Some(&chunk.sha256) {
            buffer.fill(0);
        } else {
            if let Err(error) = booted.read_exact_at(buffer, from) {
                log::warn!("reading chunk {index} from the booted slot: {error}");
                return Ok(Copied::Mismatch);
            }
            if Sha256Digest::of(buffer) != chunk.sha256 {
                return Ok(Copied::Mismatch);
            }
        }
        slot.write_all_at(buffer, chunk.offset)?;
        Ok(Copied::Written)
    };
    // One buffer per worker for the whole step: allocating per batch made the allocator keep
    // freed buffers around (peak RSS 6.2 MiB against 5.2 MiB).
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); workers];
    let mut start = chunks.start;
    while start < chunks.end {
        let mut end = start;
        let mut bytes = 0u64;
        while end < chunks.end && (end == start || bytes < REUSE_BATCH_BYTES) {
            bytes += u64::from(entry.chunks[end].length);
            end += 1;
        }
        // Worker `w` copies chunks start + w, start + w + workers, ...; each stops at its
        // first mismatch. Chunks after a mismatch may be written too: they were verified.
        let outcomes: Vec<io::Result<Option<usize>>> = std::thread::scope(|scope| {
            let copy_one = &copy_one;
            let handles: Vec<_> = buffers
                .iter_mut()
                .enumerate()
                .map(|(worker, buffer)| {
                    scope.spawn(move || {
                        for index in (start + worker..end).step_by(workers) {
                            if let Copied::Mismatch = copy_one(index, buffer)? {
                                return Ok(Some(index));
                            }
                        }
                        Ok(None)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("a copy thread panicked")))
                })
                .collect()
        });
        let mut first_mismatch = end;
        for outcome in outcomes {
            match outcome {
                Ok(Some(index)) => first_mismatch = first_mismatch.min(index),
                Ok(None) => {}
                Err(source) => return Err(checkpoint.slot_error("write", source).into()),
            }
        }
        if first_mismatch > start {
            let last = &entry.chunks[first_mismatch - 1];
            let done = last.offset + u64::from(last.length);
            checkpoint.run_written(first_mismatch, done)?;
            progress.advance(done);
        }
        if first_mismatch < end {
            return Ok(first_mismatch);
        }
        start = end;
    }
    Ok(chunks.end)
}

/// Fetches runs of chunks from the source, each in one request (or from the unranged stream
/// already open), verifying and writing them.
struct Fetcher<'a> {
    source: &'a BundleSource,
    http: Option<&'a HttpFetcher>,
    verified: &'a VerifiedManifest,
    image: usize,
    /// Stored bytes that arrived and were verified.
    fetched: u64,
    prefetch: Option<Prefetch>,
    /// One set of verifying workers for every request of the install.
    workers: VerifyPool,
}

/// The next fetch's request, sent while the current step runs, so that its round trip and the
/// server's first bytes overlap this step's work: two requests in flight, at no cost in memory
/// (what arrives early waits in the socket's buffer).
struct Prefetch {
    chunks: Range<usize>,
    opened: std::thread::JoinHandle<Result<Opened, SourceError>>,
}

impl Fetcher<'_> {
    /// Sends the request of the first fetch in `steps` ahead, unless one is in flight already
    /// (network sources only: a file needs no head start).
    fn prefetch_next(&mut self, steps: &VecDeque<Step>, until: Instant) {
        if self.prefetch.is_some() || !self.source.is_network() {
            return;
        }
        let Some(chunks) = steps.iter().find_map(|step| match step {
            Step::Fetch(chunks) if !chunks.is_empty() => Some(chunks.clone()),
            _ => None,
        }) else {
            return;
        };
        let (Ok(first), Ok(last)) = (
            self.verified.chunk_file_range(self.image, chunks.start),
            self.verified.chunk_file_range(self.image, chunks.end - 1),
        ) else {
            return;
        };
        let source = self.source.clone();
        let http = self.http.cloned();
        let opened = std::thread::spawn(move || {
            source.open_range(first.start, Some(last.end), http.as_ref(), Some(until))
        });
        self.prefetch = Some(Prefetch { chunks, opened });
    }

    /// The prefetched request for `chunks`, if that is what is in flight.
    fn take_prefetched(&mut self, chunks: &Range<usize>) -> Option<Result<Opened, SourceError>> {
        if self.prefetch.as_ref()?.chunks != *chunks {
            return None;
        }
        let prefetch = self.prefetch.take()?;
        Some(
            prefetch
                .opened
                .join()
                .unwrap_or_else(|_| Err(SourceError::Client("the request thread panicked".into()))),
        )
    }

    fn run(
        &mut self,
        chunks: Range<usize>,
        live: &mut Option<Live>,
        until: Instant,
        checkpoint: &mut Checkpointer,
        progress: &mut dyn Progress,
    ) -> Result<(), InstallError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let start = self
            .verified
            .chunk_file_range(self.image, chunks.start)?
            .start;
        let end = self
            .verified
            .chunk_file_range(self.image, chunks.end - 1)?
            .end;
        let (mut reader, ranged) = match live.take() {
            Some(mut stream) if stream.position <= start => {
                skip(&mut stream.reader, start - stream.position)?;
                (stream.reader, false)
            }
            _ => {
                let opened = match self.take_prefetched(&chunks) {
                    Some(opened) => opened?,
                    None => self
                        .source
                        .open_range(start, Some(end), self.http, Some(until))?,
                };
                // The same file as the one verified, or none of it is.
                check_length(opened.length, self.verified)?;
                if !opened.ranged && self.source.is_network() {
                    log::warn!(
                        "the server ignores Range requests: the rest of the bundle streams in full"
                    );
                }
                (opened.reader, opened.ranged)
            }
        };
        let result = {
            let mut image_reader = self.verified.image_range_reader_in(
                self.image,
                chunks.clone(),
                &mut reader,
                &read_options(),
                &mut self.workers,
            )?;
            give_history(&mut image_reader, checkpoint)?;
            pump(&mut image_reader, checkpoint, progress)
        };
        let done = (checkpoint.next_chunk as usize).clamp(chunks.start, chunks.end);
        self.fetched += self.verified.image(self.image)?.chunks[chunks.start..done]
            .iter()
            .map(|chunk| u64::from(chunk.stored_length))
            .sum::<u64>();
        result?;
        if !ranged {
            *live = Some(Live {
                reader,
                position: end,
            });
        }
        Ok(())
    }
}

/// A range of prefixed zstd frames decompresses against the image bytes before it: they are in
/// the target slot already (every step before this one wrote its chunks, in image order, and
/// a resumed install verified them), and the reader checks them against the manifest.
fn give_history(
    image: &mut rota_bundle::ImageReader<'_>,
    checkpoint: &Checkpointer,
) -> Result<(), InstallError> {
    if image.history_chunks().is_empty() {
        return Ok(());
    }
    image
        .read_history(&mut |buffer, offset| checkpoint.slot.read_exact_at(buffer, offset))
        .map_err(|error| checkpoint.slot_error("read back", io::Error::other(error.to_string())))?;
    Ok(())
}

/// Reads and drops `count` bytes of a stream.
fn skip(reader: &mut dyn Read, count: u64) -> Result<(), rota_bundle::Error> {
    let skipped = io::copy(&mut reader.take(count), &mut io::sink()).map_err(|source| {
        rota_bundle::Error::Read {
            part: Part::Payload,
            source,
        }
    })?;
    if skipped != count {
        return Err(rota_bundle::Error::Truncated {
            part: Part::Payload,
        });
    }
    Ok(())
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
