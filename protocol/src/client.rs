//! Blocking client for the robot side of the protocol (feature `client`).
//!
//! One [`RobotClient`] per robot. It keeps no state besides the server URL and the token, so the
//! daemon can persist the token in its own state file and rebuild a client after any restart.
//!
//! How a daemon uses it (what the fleet tests' simulated robots do):
//! 1. No token in the state file: [`RobotClient::enroll`], store the token. A 409 means the id
//!    is enrolled already (an admin must remove it first); a 401 means a wrong fleet key.
//! 2. Loop: [`RobotClient::poll`] with the last ETag and a long-poll wait (30 s is a good
//!    default), or with a jittered interval. A 403 `not_approved` (see [`ClientError::code`])
//!    means wait for an admin; 401 means the server forgot the robot: enroll again.
//! 3. For an [`Assignment`]: persist its `deployment_id` first, then report each step with
//!    [`RobotClient::report`]. Keep unsent reports across restarts and retry those whose error
//!    [`ClientError::is_retryable`]; any other error is final for that report (a 409 says the
//!    assignment already ended differently). Reports are idempotent, so resending is safe.
//! 4. After a reboot, report `trial`, then `committed` or `rolled_back { reason }` for the same
//!    `deployment_id`, and [`RobotClient::report_slots`].
//! 5. At start-up and whenever it changed, [`RobotClient::report_inventory`]; not on every poll.
//!
//! Downloads: [`RobotClient::open_bundle`] from offset 0, or from the bytes already on disk to
//! resume; it sends the token only when the assignment says the URL wants it.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ETAG, IF_NONE_MATCH, RANGE};
use reqwest::StatusCode;

use crate::operator::ErrorBody;
use crate::robot::{
    Assignment, EnrollRequest, EnrollResponse, EventReport, Inventory, RobotEvent, SlotsReport,
};

/// How long a request without long-poll may take before it counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of a long-poll's wait before the client gives up on the server.
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke: retry with backoff.
    #[error("{method} {url}: {source}")]
    Transport {
        method: &'static str,
        url: String,
        source: reqwest::Error,
    },
    /// The server answered with an error status and, usually, an [`ErrorBody`].
    #[error("{method} {url}: HTTP {status}: {error}: {reason}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        error: String,
        reason: String,
    },
    /// The server answered 2xx with something that is not what the protocol promises.
    #[error("{method} {url}: unexpected answer: {what}")]
    Protocol {
        method: &'static str,
        url: String,
        what: String,
    },
    #[error("no robot token: enroll first")]
    NotEnrolled,
}

impl ClientError {
    /// Worth retrying later: network trouble, a server error or overload.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status >= 500 || *status == 429,
            ClientError::Protocol { .. } | ClientError::NotEnrolled => false,
        }
    }

    /// The server does not know this token (deleted robot, wiped server): enroll again.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Status { status: 401, .. })
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's stable error code (`not_approved`, `conflict`, ...), when it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Result of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
// One value per poll, moved once: boxing the assignment would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Poll {
    /// Install this (or keep going with it). Send `etag` with the next poll.
    Assignment {
        assignment: Assignment,
        etag: Option<String>,
    },
    /// The assignment matching the `etag` sent is still current.
    NotModified,
    /// Nothing to do.
    Nothing,
}

/// A bundle download in progress: read it like a file.
pub struct BundleStream {
    response: Response,
    /// Offset of the first byte this stream yields.
    pub offset: u64,
    /// Size of the whole bundle, when the server said.
    pub total_size: Option<u64>,
}

impl Read for BundleStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.response.read(buf)
    }
}

/// Talks to the fleet server for one robot.
#[derive(Debug, Clone)]
pub struct RobotClient {
    base_url: String,
    token: Option<String>,
    http: Client,
}

impl RobotClient {
    /// `base_url` is the server root, for example `https://fleet.example.com`.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("rota-robot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Transport {
                method: "INIT",
                url: base_url.to_string(),
                source,
            })?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: None,
            http,
        })
    }

    /// A client for a robot that enrolled before.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Enrolls with the fleet key; keeps the returned token for later calls.
    pub fn enroll(
        &mut self,
        enrollment_key: &str,
        robot_id: &str,
        compatible: &str,
        enrollment_nonce: Option<&str>,
    ) -> Result<EnrollResponse, ClientError> {
        let url = self.url("/api/v1/robot/enroll");
        let body = EnrollRequest {
            enrollment_key: enrollment_key.into(),
            robot_id: robot_id.into(),
            compatible: compatible.into(),
            enrollment_nonce: enrollment_nonce.map(Into::into),
        };
        let response = send("POST", &url, self.http.post(&url).json(&body))?;
        let enrolled: EnrollResponse = json("POST", &url, response)?;
        self.token = Some(enrolled.token.clone());
        Ok(enrolled)
    }

    /// Asks for the current assignment. With `etag` from the last answer, the server says
    /// [`Poll::NotModified`] cheaply; with `wait`, it holds the request until something changes
    /// or the wait ends (long-poll, at most [`crate::robot::MAX_WAIT_SECS`]).
    pub fn poll(&self, etag: Option<&str>, wait: Option<Duration>) -> Result<Poll, ClientError> {
        let mut url = self.url("/api/v1/robot/assignment");
        let mut request_timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait {
            url.push_str(&format!("?wait={}", wait.as_secs()));
            request_timeout = wait + LONG_POLL_SLACK;
        }
        let mut request = self.authed(self.http.get(&url))?.timeout(request_timeout);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = send("GET", &url, request)?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(Poll::Nothing),
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified),
            _ => {
                let etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string);
                let assignment = json("GET", &url, response)?;
                Ok(Poll::Assignment { assignment, etag })
            }
        }
    }

    /// Reports one step of an assignment. Idempotent: repeating a report after a lost answer
    /// is safe.
    pub fn report(&self, deployment_id: &str, event: RobotEvent) -> Result<(), ClientError> {
        let url = self.url("/api/v1/robot/events");
        let body = EventReport {
            deployment_id: deployment_id.into(),
            event,
        };
        send("POST", &url, self.authed(self.http.post(&url).json(&body))?)?;
        Ok(())
    }

    /// Reports what each slot holds and which one booted.
    pub fn report_slots(&self, slots: &SlotsReport) -> Result<(), ClientError> {
        let url = self.url("/api/v1/robot/slots");
        send("PUT", &url, self.authed(self.http.put(&url).json(slots))?)?;
        Ok(())
    }

    /// Reports what the robot is and has. A server older than this route answers 404
    /// ([`ClientError::status`]): the robot works on without it.
    pub fn report_inventory(&self, inventory: &Inventory) -> Result<(), ClientError> {
        let url = self.url("/api/v1/robot/inventory");
        send(
            "PUT",
            &url,
            self.authed(self.http.put(&url).json(inventory))?,
        )?;
        Ok(())
    }

    /// Opens the assignment's bundle from byte `offset` (resuming a partial download).
    pub fn open_bundle(
        &self,
        assignment: &Assignment,
        offset: u64,
    ) -> Result<BundleStream, ClientError> {
        let url = assignment.bundle_url.clone();
        let mut request = self.http.get(&url).timeout(Duration::from_secs(24 * 3600));
        if assignment.bundle_requires_token {
            request = self.authed(request)?;
        }
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = send("GET", &url, request)?;
        if offset > 0 && response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(ClientError::Protocol {
                method: "GET",
                url,
                what: format!("asked for bytes {offset}- and got {}", response.status()),
            });
        }
        let total_size = if offset > 0 {
            // Content-Range: bytes START-END/TOTAL
            response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit('/').next())
                .and_then(|total| total.parse().ok())
        } else {
            response.content_length()
        };
        Ok(BundleStream {
            response,
            offset,
            total_size,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn authed(&self, request: RequestBuilder) -> Result<RequestBuilder, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotEnrolled)?;
        Ok(request.bearer_auth(token))
    }
}

fn send(method: &'static str, url: &str, request: RequestBuilder) -> Result<Response, ClientError> {
    let response = request.send().map_err(|source| ClientError::Transport {
        method,
        url: url.into(),
        source,
    })?;
    let status = response.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(response);
    }
    let text = response.text().unwrap_or_default();
    let (error, reason) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error, body.reason),
        Err(_) => (
            status.canonical_reason().unwrap_or("error").to_string(),
            text,
        ),
    };
    Err(ClientError::Status {
        method,
        url: url.into(),
        status: status.as_u16(),
        error,
        reason,
    })
}

fn json<T: serde::de::DeserializeOwned>(
    method: &'static str,
    url: &str,
    response: Response,
) -> Result<T, ClientError> {
    let bytes = response.bytes().map_err(|source| ClientError::Transport {
        method,
        url: url.into(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|err| ClientError::Protocol {
        method,
        url: url.into(),
        what: format!("body is not the expected JSON: {err}"),
    })
}
