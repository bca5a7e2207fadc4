//! Where bundle bytes come from: a file, stdin, or HTTP(S).
//!
//! A source is opened at a byte range: the header, the manifest, and then each run of chunks the
//! plan fetches (an HTTP Range request, or a seek in a file). A source that cannot seek (stdin,
//! a server that ignores Range) answers with the rest of the bundle from the start asked for,
//! and says so ([`Opened::ranged`]). Opening retries transport errors and
//! 408/429/5xx answers with exponential backoff (`download.retries` times, or until a deadline);
//! errors in the middle of a body are retried by the installer, which reopens at the first
//! chunk that did not arrive whole, within `download.retry_budget_secs` of the last verified
//! one. An opened source also tells the bundle's length when it knows it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER};
use reqwest::StatusCode;

use crate::config::DownloadConfig;
use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // The message carries the cause, so it is not `#[source]`: an error chain would print the
    // OS error twice.
    #[error("open {}: {cause}", path.display())]
    File { path: PathBuf, cause: io::Error },
    #[error("{} is a directory, not a bundle file", path.display())]
    IsDirectory { path: PathBuf },
    #[error("stdin can only be read once from the start (asked for offset {offset})")]
    StdinNotSeekable { offset: u64 },
    #[error("HTTP client setup: {0}")]
    Client(String),
    #[error("GET {url} from byte {offset}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        offset: u64,
        attempts: u32,
        last: String,
    },
    #[error("GET {url} from byte {offset}: {status} (not retried)")]
    Status {
        url: String,
        offset: u64,
        status: StatusCode,
    },
    #[error(
        "GET {url}: asked for bytes from {offset}, server sent Content-Range {content_range:?}"
    )]
    WrongRange {
        url: String,
        offset: u64,
        content_range: String,
    },
}

/// A source opened at an offset, and the length of the whole bundle as the source tells it:
/// the file's size, an HTTP answer's Content-Length or Content-Range total; `None` when it
/// cannot say (stdin, a chunked HTTP answer).
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
    /// The reader ends at the end asked for; otherwise it goes on to the end of the bundle.
    pub ranged: bool,
}

/// A bundle location as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    File(PathBuf),
    Stdin,
    Http(String),
}

impl BundleSource {
    /// `-` is stdin, `http://` and `https://` are URLs, anything else a file path.
    pub fn parse(arg: &str) -> BundleSource {
        if arg == "-" {
            BundleSource::Stdin
        } else if arg.starts_with("http://") || arg.starts_with("https://") {
            BundleSource::Http(arg.to_owned())
        } else {
            BundleSource::File(PathBuf::from(arg))
        }
    }

    /// The form stored in the state file, which [`Self::parse`] reads back.
    pub fn describe(&self) -> String {
        match self {
            BundleSource::File(path) => path.display().to_string(),
            BundleSource::Stdin => "-".into(),
            BundleSource::Http(url) => url.clone(),
        }
    }

    /// Whether an interrupted install can continue from this source.
    pub fn can_reopen(&self) -> bool {
        !matches!(self, BundleSource::Stdin)
    }

    /// Whether a read error mid-stream is worth reopening for (network) or final (local I/O).
    pub fn is_network(&self) -> bool {
        matches!(self, BundleSource::Http(_))
    }

    /// A reader positioned at byte `offset` of the bundle, which ends at `end` when the source
    /// can tell ranges apart ([`Opened::ranged`]). `http` is needed for URLs only (building it
    /// starts reqwest's I/O thread, so file installs do without). A URL is asked again after
    /// errors worth retrying up to `download.retries` times, or, with `until`, until then.
    pub fn open_range(
        &self,
        offset: u64,
        end: Option<u64>,
        http: Option<&HttpFetcher>,
        until: Option<Instant>,
    ) -> Result<Opened, SourceError> {
        match self {
            BundleSource::File(path) => {
                let file_error = |cause| SourceError::File {
                    path: path.clone(),
                    cause,
                };
                let mut file = File::open(path).map_err(file_error)?;
                let metadata = file.metadata().map_err(file_error)?;
                if metadata.is_dir() {
                    return Err(SourceError::IsDirectory { path: path.clone() });
                }
                file.seek(SeekFrom::Start(offset)).map_err(file_error)?;
                let length = metadata.is_file().then_some(metadata.len());
                Ok(match end {
                    Some(end) => Opened {
                        reader: Box::new(file.take(end.saturating_sub(offset))),
                        length,
                        ranged: true,
                    },
                    None => Opened {
                        reader: Box::new(file),
                        length,
                        ranged: false,
                    },
                })
            }
            BundleSource::Stdin if offset == 0 => Ok(Opened {
                reader: Box::new(io::stdin()),
                length: None,
                ranged: false,
            }),
            BundleSource::Stdin => Err(SourceError::StdinNotSeekable { offset }),
            BundleSource::Http(url) => match http {
                Some(http) => http.get_range(url, offset, end, until),
                None => Err(SourceError::Client(
                    "no HTTP client for a URL source".into(),
                )),
            },
        }
    }
}

/// HTTP(S) client: rustls with the system's CA store (plus an optional extra CA), blocking.
/// Clones share the connection pool.
#[derive(Clone)]
pub struct HttpFetcher {
    client: reqwest::blocking::Client,
    config: DownloadConfig,
    /// Sent with every request (the robot's token, for a bundle the fleet server hosts).
    bearer: Option<String>,
}

impl HttpFetcher {
    pub fn new(config: &DownloadConfig) -> Result<HttpFetcher, SourceError> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(config.timeout)
            // Per read, not per request: a 1 GiB body takes longer than any sane timeout.
            .timeout(config.timeout)
            .user_agent(concat!("rota-updater/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &config.ca_file {
            let pem = std::fs::read(ca_file).map_err(|error| {
                SourceError::Client(format!("read {}: {error}", ca_file.display()))
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|error| SourceError::Client(format!("{}: {error}", ca_file.display())))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder
            .build()
            .map_err(|error| SourceError::Client(error.to_string()))?;
        Ok(HttpFetcher {
            client,
            config: config.clone(),
            bearer: None,
        })
    }

    /// Sends `token` as a bearer token with every request. Only for URLs of the server that
    /// issued it: the caller checks the origin.
    pub fn with_bearer(mut self, token: Option<String>) -> HttpFetcher {
        self.bearer = token;
        self
    }

    /// GET `url` from byte `offset` to `end` (a Range request unless that is the whole file),
    /// retrying what may pass: `download.retries` times, or with `until`, as long as the next
    /// attempt starts before it.
    pub fn get_range(
        &self,
        url: &str,
        offset: u64,
        end: Option<u64>,
        until: Option<Instant>,
    ) -> Result<Opened, SourceError> {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut request = self.client.get(url);
            if let Some(token) = &self.bearer {
                request = request.bearer_auth(token);
            }
            match end {
                Some(end) if end > offset => {
                    request = request.header(RANGE, format!("bytes={offset}-{}", end - 1));
                }
                _ if offset > 0 => request = request.header(RANGE, format!("bytes={offset}-")),
                _ => {}
            }
            let (last, hint) = match request.send() {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return self.positioned(url, offset, end, response);
                    }
                    if !retryable(status) {
                        return Err(SourceError::Status {
                            url: url.into(),
                            offset,
                            status,
                        });
                    }
                    let hint = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
                        .map(Duration::from_secs);
                    (format!("{status}"), hint)
                }
                Err(error) => (error_chain(&error), None),
            };
            let give_up = match until {
                Some(until) => Instant::now() + backoff.delay(hint) >= until,
                None => attempts > self.config.retries,
            };
            if give_up {
                return Err(SourceError::GaveUp {
                    url: url.into(),
                    offset,
                    attempts,
                    last,
                });
            }
            log::warn!("GET {url} from byte {offset}: {last}; retrying (attempt {attempts})");
            backoff.wait(hint);
        }
    }

    /// Checks the answer starts where asked; a server that ignores Range (200 for a Range
    /// request) is read past the bytes we already have.
    fn positioned(
        &self,
        url: &str,
        offset: u64,
        end: Option<u64>,
        response: reqwest::blocking::Response,
    ) -> Result<Opened, SourceError> {
        if response.status() != StatusCode::PARTIAL_CONTENT {
            // The whole file: its length is the Content-Length (absent when chunked).
            let length = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok());
            if offset == 0 {
                return Ok(Opened {
                    reader: Box::new(response),
                    length,
                    ranged: false,
                });
            }
            return self.skip_ignored_range(url, offset, response, length);
        }
        {
            let content_range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let bounds = content_range
                .strip_prefix("bytes ")
                .and_then(|range| range.split('/').next())
                .and_then(|range| range.split_once('-'))
                .and_then(|(start, last)| {
                    Some((start.parse::<u64>().ok()?, last.parse::<u64>().ok()?))
                });
            // A server may answer a shorter range than asked, never another start or more.
            let wrong = match (bounds, end) {
                (Some((start, _)), _) if start != offset => true,
                (Some((_, last)), Some(end)) => last >= end,
                (Some(_), None) => false,
                (None, _) => true,
            };
            if wrong {
                return Err(SourceError::WrongRange {
                    url: url.into(),
                    offset,
                    content_range,
                });
            }
            // `bytes START-END/TOTAL`; `*` for an unknown total.
            let length = content_range
                .rsplit('/')
                .next()
                .and_then(|total| total.trim().parse::<u64>().ok());
            Ok(Opened {
                reader: Box::new(response),
                length,
                ranged: end.is_some(),
            })
        }
    }

    /// A 200 answer to a Range request: read past the bytes we already have.
    fn skip_ignored_range(
        &self,
        url: &str,
        offset: u64,
        response: reqwest::blocking::Response,
        length: Option<u64>,
    ) -> Result<Opened, SourceError> {
        log::warn!("{url} ignores Range requests: skipping {offset} bytes of the full body");
        let mut response = response;
        let skipped = io::copy(&mut (&mut response).take(offset), &mut io::sink()).unwrap_or(0);
        if skipped != offset {
            return Err(SourceError::WrongRange {
                url: url.into(),
                offset,
                content_range: format!("full body ended after {skipped} bytes"),
            });
        }
        Ok(Opened {
            reader: Box::new(response),
            length,
            ranged: false,
        })
    }
}

/// Statuses worth asking again: timeouts, rate limits, server trouble.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Whether a read error is a timeout (reqwest's per-read timeout, or the OS's).
pub fn is_timeout(error: &io::Error) -> bool {
    if matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return true;
    }
    // An io::Error's `source()` skips the error it wraps: start from that one.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(error) = cause {
        if error
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || error
                .downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what broke.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(BundleSource::parse("-"), BundleSource::Stdin);
        assert_eq!(
            BundleSource::parse("https://cdn/x.rota"),
            BundleSource::Http("https://cdn/x.rota".into())
        );
        assert_eq!(
            BundleSource::parse("x.rota"),
            BundleSource::File("x.rota".into())
        );
        for arg in ["-", "https://cdn/x.rota", "/data/x.rota"] {
            assert_eq!(BundleSource::parse(arg).describe(), arg);
        }
    }

    #[test]
    fn retryable_statuses() {
        for (status, retry) in [
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (404, false),
            (403, false),
        ] {
            assert_eq!(
                retryable(StatusCode::from_u16(status).unwrap()),
                retry,
                "{status}"
            );
        }
    }
}
