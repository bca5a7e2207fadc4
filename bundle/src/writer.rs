//! Building bundles. The header and manifest come first in the file but depend on every
//! chunk, so images are chunked first (compressed chunks into a spool file; uncompressed
//! image files are simply read twice), then the parts are written in order.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::app::AppSpec;
use crate::chunk::ChunkSizes;
use crate::chunk::{prepare_chunk, prepare_prefixed_chunks, PreparedChunk, DEFAULT_ZSTD_LEVEL};
use crate::digest::Sha256Digest;
use crate::error::{Error, Part, Result};
use crate::header::{Header, FORMAT_VERSION, MAX_MANIFEST_LENGTH};
use crate::keys::{KeyId, SigningKey};
use crate::manifest::{Chunk, Compression, ImageEntry, Manifest, SlotClass, SourceInfo};
use crate::signature::{encode_signature_block, signature_block_length, signed_message};

/// Copy buffer for the payload: large, to amortise syscalls.
const COPY_BUFFER_LENGTH: usize = 1 << 20;

enum ImageInput<'a> {
    File(PathBuf),
    Reader(Box<dyn Read + 'a>),
}

struct PendingImage<'a> {
    name: String,
    slot_class: SlotClass,
    input: ImageInput<'a>,
}

/// Builds a bundle. The output depends only on what is set here and on the image bytes
/// (and the zstd library version), so identical inputs give byte-identical bundles:
/// there is no clock, no randomness (Ed25519 signing is deterministic) and chunks are
/// written in image order whatever thread compressed them.
pub struct BundleBuilder<'a> {
    compatible: String,
    version: semver::Version,
    security_version: u32,
    build_time: u64,
    source: Option<SourceInfo>,
    description: String,
    app: Option<AppSpec>,
    compression: Compression,
    zstd_level: i32,
    chunk_sizes: ChunkSizes,
    keys: Vec<SigningKey>,
    images: Vec<PendingImage<'a>>,
    workers: usize,
    spool_dir: Option<PathBuf>,
}

/// What [`BundleBuilder::write_to`] produced.
#[derive(Debug, Clone)]
pub struct BundleSummary {
    pub manifest: Manifest,
    pub signed_by: Vec<KeyId>,
    pub bundle_length: u64,
}

impl<'a> BundleBuilder<'a> {
    /// Defaults: security version 0, build time 0 (callers pass `SOURCE_DATE_EPOCH`), no
    /// source, empty description, no compression, zstd level 3, one worker per core.
    pub fn new(compatible: impl Into<String>, version: semver::Version) -> Self {
        BundleBuilder {
            compatible: compatible.into(),
            version,
            security_version: 0,
            build_time: 0,
            source: None,
            description: String::new(),
            app: None,
            compression: Compression::None,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            chunk_sizes: ChunkSizes::DEFAULT,
            keys: Vec::new(),
            images: Vec::new(),
            workers: default_workers(),
            spool_dir: None,
        }
    }

    pub fn security_version(&mut self, security_version: u32) -> &mut Self {
        self.security_version = security_version;
        self
    }

    /// Unix seconds recorded in the manifest, normally `SOURCE_DATE_EPOCH`.
    pub fn build_time(&mut self, unix_seconds: u64) -> &mut Self {
        self.build_time = unix_seconds;
        self
    }

    pub fn source(&mut self, source: SourceInfo) -> &mut Self {
        self.source = Some(source);
        self
    }

    pub fn description(&mut self, description: impl Into<String>) -> &mut Self {
        self.description = description.into();
        self
    }

    /// Makes the bundle an app release: its one image must have the `app` class and be named
    /// after the app.
    pub fn app(&mut self, spec: AppSpec) -> &mut Self {
        self.app = Some(spec);
        self
    }

    /// Compression of every image.
    pub fn compression(&mut self, compression: Compression) -> &mut Self {
        self.compression = compression;
        self
    }

    pub fn zstd_level(&mut self, level: i32) -> &mut Self {
        self.zstd_level = level;
        self
    }

    /// Threads that hash and compress chunks; 0 does it all on the calling thread.
    /// Chunk sizes other than [`ChunkSizes::DEFAULT`].
    pub fn chunk_sizes(&mut self, sizes: ChunkSizes) -> &mut Self {
        self.chunk_sizes = sizes;
        self
    }

    pub fn workers(&mut self, workers: usize) -> &mut Self {
        self.workers = workers;
        self
    }

    /// Directory for the temporary payload spool (default: the system's temp directory).
    pub fn spool_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Adds a signer; signatures appear in the order keys were added.
    pub fn sign_with(&mut self, key: &SigningKey) -> &mut Self {
        self.keys.push(key.clone());
        self
    }

    /// Adds an image read from `reader` when the bundle is written. Images appear in the
    /// payload in the order they were added.
    pub fn add_image(
        &mut self,
        name: impl Into<String>,
        slot_class: SlotClass,
        reader: impl Read + 'a,
    ) -> &mut Self {
        self.images.push(PendingImage {
            name: name.into(),
            slot_class,
            input: ImageInput::Reader(Box::new(reader)),
        });
        self
    }

    /// Adds an image read from the file at `path` when the bundle is written.
    pub fn add_image_file(
        &mut self,
        name: impl Into<String>,
        slot_class: SlotClass,
        path: impl Into<PathBuf>,
    ) -> &mut Self {
        self.images.push(PendingImage {
            name: name.into(),
            slot_class,
            input: ImageInput::File(path.into()),
        });
        self
    }

    /// Chunks, hashes, compresses and signs everything and writes the bundle to `out`.
    pub fn write_to(self, out: &mut dyn Write) -> Result<BundleSummary> {
        if self.keys.is_empty() {
            return Err(Error::NoSigningKey);
        }
        let mut spool = match &self.spool_dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
        .map_err(Error::Spool)?;
        let mut entries = Vec::with_capacity(self.images.len());
        let mut sources = Vec::with_capacity(self.images.len());
        let mut payload_length = 0u64;
        for pending in self.images {
            let mut spool_writer = io::BufWriter::with_capacity(COPY_BUFFER_LENGTH, &mut spool);
            let (entry, source) = chunk_image(
                pending,
                payload_length,
                self.compression,
                self.zstd_level,
                self.chunk_sizes,
                self.workers,
                &mut spool_writer,
            )?;
            spool_writer.flush().map_err(Error::Spool)?;
            payload_length += entry.payload_length;
            entries.push(entry);
            sources.push(source);
        }
        let manifest = Manifest {
            compatible: self.compatible,
            version: self.version,
            security_version: self.security_version,
            build_time: self.build_time,
            source: self.source,
            description: self.description,
            images: entries,
            app: self.app,
        };
        manifest.validate(payload_length, FORMAT_VERSION)?;
        spool.rewind().map_err(Error::Spool)?;
        let mut payload = PayloadReader::new(&spool, &sources, &manifest.images)?;
        let bundle_length =
            write_bundle_parts(&manifest, &self.keys, payload_length, &mut payload, out)?;
        for (source, image) in sources.iter().zip(&manifest.images) {
            source.check_unchanged(&image.name)?;
        }
        Ok(BundleSummary {
            manifest,
            signed_by: self.keys.iter().map(SigningKey::key_id).collect(),
            bundle_length,
        })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where an image's stored bytes come from when the payload is written.
enum StoredBytes {
    /// The next `length` bytes of the spool file.
    Spool { length: u64 },
    /// An uncompressed image file: its bytes are its stored bytes, so it is read a second
    /// time instead of being copied to the spool (which would double the bytes written).
    File {
        file: File,
        path: PathBuf,
        fingerprint: FileFingerprint,
    },
}

/// Size and modification time: how a change between the two reads of a file is noticed.
#[derive(PartialEq, Eq)]
struct FileFingerprint(u64, Option<std::time::SystemTime>);

impl FileFingerprint {
    fn of(file: &File) -> io::Result<FileFingerprint> {
        let metadata = file.metadata()?;
        Ok(FileFingerprint(metadata.len(), metadata.modified().ok()))
    }
}

impl StoredBytes {
    fn check_unchanged(&self, image: &str) -> Result<()> {
        let StoredBytes::File {
            file,
            path,
            fingerprint,
        } = self
        else {
            return Ok(());
        };
        let error = |source| Error::ImageInput {
            image: image.to_owned(),
            path: Some(path.clone()),
            source,
        };
        if FileFingerprint::of(file).map_err(error)? != *fingerprint {
            return Err(error(io::Error::other(
                "the file changed while the bundle was written; the output is invalid",
            )));
        }
        Ok(())
    }
}

/// The payload, read image after image from the spool or the image files.
struct PayloadReader<'s> {
    segments: std::collections::VecDeque<Box<dyn Read + 's>>,
}

impl<'s> PayloadReader<'s> {
    fn new(spool: &'s File, sources: &'s [StoredBytes], images: &[ImageEntry]) -> Result<Self> {
        let mut segments: std::collections::VecDeque<Box<dyn Read + 's>> = Default::default();
        for (source, image) in sources.iter().zip(images) {
            match source {
                StoredBytes::Spool { length } => segments.push_back(Box::new(spool.take(*length))),
                StoredBytes::File { file, path, .. } => {
                    let mut file: &File = file;
                    file.rewind().map_err(|source| Error::ImageInput {
                        image: image.name.clone(),
                        path: Some(path.clone()),
                        source,
                    })?;
                    segments.push_back(Box::new(file.take(image.payload_length)));
                }
            }
        }
        Ok(PayloadReader { segments })
    }
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.segments.front_mut() {
            match segment.read(buf)? {
                0 if !buf.is_empty() => {
                    self.segments.pop_front();
                }
                got => return Ok(got),
            }
        }
        Ok(0)
    }
}

/// Chunks one image, writing its stored bytes to `spool` unless they can be read again
/// from the input file, and returns its manifest entry.
fn chunk_image(
    pending: PendingImage<'_>,
    payload_offset: u64,
    compression: Compression,
    zstd_level: i32,
    sizes: ChunkSizes,
    workers: usize,
    spool: &mut dyn Write,
) -> Result<(ImageEntry, StoredBytes)> {
    let PendingImage {
        name,
        slot_class,
        input,
    } = pending;
    let input_error = |path: &Option<PathBuf>, source: io::Error| Error::ImageInput {
        image: name.clone(),
        path: path.clone(),
        source,
    };
    let mut reread = None;
    let (reader, path): (Box<dyn Read + '_>, Option<PathBuf>) = match input {
        ImageInput::File(path) => {
            let path = Some(path);
            let file =
                File::open(path.as_ref().expect("set")).map_err(|e| input_error(&path, e))?;
            let reader = file.try_clone().map_err(|e| input_error(&path, e))?;
            if compression == Compression::None {
                let fingerprint = FileFingerprint::of(&file).map_err(|e| input_error(&path, e))?;
                reread = Some((file, fingerprint));
            }
            (Box::new(reader), path)
        }
        ImageInput::Reader(reader) => (reader, None),
    };
    let mut sink = io::sink();
    let spool: &mut dyn Write = if reread.is_some() { &mut sink } else { spool };
    let mut pool = OrderedChunks::new(workers, compression, zstd_level);
    let mut entry = ImageEntry {
        name: name.clone(),
        slot_class,
        size: 0,
        sha256: Sha256Digest::default(),
        compression,
        payload_offset,
        payload_length: 0,
        chunks: Vec::new(),
    };
    let mut image_hasher = Sha256::new();
    let in_flight = 4 * workers.max(1);
    let mut blocks = PrefixedBlocks::new(compression.prefix_window());
    let chunker = fastcdc::v2020::StreamCDC::new(reader, sizes.min, sizes.average, sizes.max);
    for piece in chunker {
        let piece = piece.map_err(|e| input_error(&path, cdc_error_to_io(e)))?;
        image_hasher.update(&piece.data);
        match &mut blocks {
            None => pool.pool.submit(ChunkJob::Alone(piece.data)),
            Some(blocks) => {
                for job in blocks.push(&piece.data) {
                    pool.pool.submit(job);
                }
            }
        }
        while pool.pool.in_flight() >= in_flight {
            pool.take_one(&mut entry, spool)?;
        }
    }
    if let Some(job) = blocks.as_mut().and_then(PrefixedBlocks::finish) {
        pool.pool.submit(job);
    }
    while pool.pool.in_flight() > 0 {
        pool.take_one(&mut entry, spool)?;
    }
    entry.sha256 = Sha256Digest::from_hasher(image_hasher);
    let stored = match (reread, path) {
        (Some((file, fingerprint)), Some(path)) => StoredBytes::File {
            file,
            path,
            fingerprint,
        },
        _ => StoredBytes::Spool {
            length: entry.payload_length,
        },
    };
    Ok((entry, stored))
}

/// Work for a chunk-preparing thread.
enum ChunkJob {
    /// A chunk that is stored alone: uncompressed, or its own zstd frame.
    Alone(Vec<u8>),
    /// Chunks of a block of image bytes, each compressed against the bytes before it.
    Prefixed {
        block: Arc<Vec<u8>>,
        chunks: Vec<Range<usize>>,
    },
}

/// Image bytes gathered into blocks that start with what the first chunk's prefix reaches, so
/// that the jobs of a block need nothing else; consecutive blocks overlap by one window.
struct PrefixedBlocks {
    window: usize,
    block: Vec<u8>,
    chunks: Vec<Range<usize>>,
    /// Bytes of `block` that are the previous block's tail.
    history: usize,
}

/// New image bytes per block, and per job (a compression context is set up per job).
const PREFIXED_BLOCK_BYTES: usize = 8 << 20;
const PREFIXED_JOB_BYTES: usize = 1 << 20;

impl PrefixedBlocks {
    fn new(window: usize) -> Option<PrefixedBlocks> {
        (window > 0).then(|| PrefixedBlocks {
            window,
            block: Vec::new(),
            chunks: Vec::new(),
            history: 0,
        })
    }

    /// Adds a chunk; returns the jobs of the block it completed, if it did.
    fn push(&mut self, chunk: &[u8]) -> Vec<ChunkJob> {
        let start = self.block.len();
        self.block.extend_from_slice(chunk);
        self.chunks.push(start..self.block.len());
        if self.block.len() - self.history < PREFIXED_BLOCK_BYTES {
            return Vec::new();
        }
        let tail = self.block.len().saturating_sub(self.window);
        let next = self.block[tail..].to_vec();
        let block = Arc::new(std::mem::replace(&mut self.block, next));
        self.history = self.block.len();
        let mut jobs = Vec::new();
        let mut chunks = Vec::new();
        let mut bytes = 0;
        for chunk in self.chunks.drain(..) {
            bytes += chunk.len();
            chunks.push(chunk);
            if bytes >= PREFIXED_JOB_BYTES {
                jobs.push(ChunkJob::Prefixed {
                    block: block.clone(),
                    chunks: std::mem::take(&mut chunks),
                });
                bytes = 0;
            }
        }
        if !chunks.is_empty() {
            jobs.push(ChunkJob::Prefixed { block, chunks });
        }
        jobs
    }

    /// The job of the chunks not yet in one.
    fn finish(&mut self) -> Option<ChunkJob> {
        (!self.chunks.is_empty()).then(|| ChunkJob::Prefixed {
            block: Arc::new(std::mem::take(&mut self.block)),
            chunks: std::mem::take(&mut self.chunks),
        })
    }
}

struct OrderedChunks {
    pool: crate::pool::OrderedPool<ChunkJob, io::Result<Vec<PreparedChunk>>>,
}

impl OrderedChunks {
    fn new(workers: usize, compression: Compression, level: i32) -> Self {
        let window = compression.prefix_window();
        OrderedChunks {
            pool: crate::pool::OrderedPool::new(workers, move |job| match job {
                ChunkJob::Alone(data) => prepare_chunk(data, compression, level).map(|c| vec![c]),
                ChunkJob::Prefixed { block, chunks } => {
                    prepare_prefixed_chunks(&block, &chunks, window, level)
                }
            }),
        }
    }

    /// Appends the next prepared chunks (in image order) to the spool and the chunk table.
    fn take_one(&mut self, entry: &mut ImageEntry, spool: &mut dyn Write) -> Result<()> {
        let prepared = match self.pool.next() {
            Some(Ok(prepared)) => prepared.map_err(|source| Error::ImageInput {
                image: entry.name.clone(),
                path: None,
                source,
            })?,
            Some(Err(())) | None => return Err(Error::WorkerLost),
        };
        for prepared in prepared {
            append_chunk(entry, prepared, spool)?;
        }
        Ok(())
    }
}

fn append_chunk(
    entry: &mut ImageEntry,
    prepared: PreparedChunk,
    spool: &mut dyn Write,
) -> Result<()> {
    spool.write_all(&prepared.stored).map_err(Error::Spool)?;
    let stored_length = u32::try_from(prepared.stored.len()).expect("chunk fits u32");
    entry.chunks.push(Chunk {
        offset: entry.size,
        length: prepared.length,
        sha256: prepared.sha256,
        stored_offset: entry.payload_offset + entry.payload_length,
        stored_length,
        stored_sha256: prepared.stored_sha256,
    });
    entry.size += u64::from(prepared.length);
    entry.payload_length += u64::from(stored_length);
    Ok(())
}

pub(crate) fn cdc_error_to_io(error: fastcdc::v2020::Error) -> io::Error {
    match error {
        fastcdc::v2020::Error::IoError(error) => error,
        other => io::Error::other(other.to_string()),
    }
}

/// Writes a bundle from its parts exactly as given: header, `manifest`, one signature per
/// key (none makes an unsigned bundle, which readers refuse), then `payload_length` bytes
/// copied from `payload`. Nothing is validated: tools (and tests building damaged bundles)
/// use this; [`BundleBuilder`] is the way to make a correct bundle. Returns the bundle length.
pub fn write_bundle_parts(
    manifest: &Manifest,
    keys: &[SigningKey],
    payload_length: u64,
    payload: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<u64> {
    let manifest_bytes = manifest.to_bytes();
    let manifest_length = u32::try_from(manifest_bytes.len())
        .ok()
        .filter(|length| *length <= MAX_MANIFEST_LENGTH)
        .ok_or(Error::LengthLimit {
            what: "manifest",
            length: manifest_bytes.len() as u64,
            limit: MAX_MANIFEST_LENGTH.into(),
        })?;
    let header = Header {
        version: manifest.format_version(),
        payload_length,
        manifest_length,
        signature_block_length: u32::try_from(signature_block_length(keys.len()))
            .expect("a handful of signers"),
    };
    let header_bytes = header.encode();
    let signatures = encode_signature_block(keys, &signed_message(&header_bytes, &manifest_bytes));
    out.write_all(&header_bytes).map_err(Error::Write)?;
    out.write_all(&manifest_bytes).map_err(Error::Write)?;
    out.write_all(&signatures).map_err(Error::Write)?;
    let copied = copy_exactly(payload, out, payload_length)?;
    Ok(header.payload_start() + copied)
}

fn copy_exactly(from: &mut dyn Read, to: &mut dyn Write, length: u64) -> Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER_LENGTH];
    let mut left = length;
    while left > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = match from.read(&mut buffer[..want]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    part: Part::Payload,
                })
            }
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Spool(e)),
        };
        to.write_all(&buffer[..got]).map_err(Error::Write)?;
        left -= got as u64;
    }
    Ok(length)
}
