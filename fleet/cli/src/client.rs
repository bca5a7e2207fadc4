//! The operator side of the API over blocking HTTP.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use reqwest::blocking::{Client, RequestBuilder, Response};
use rota_protocol::operator::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Api {
    server: String,
    key: String,
    http: Client,
}

/// An answer with an error status, kept apart so commands can tell a 404 from a crash.
#[derive(Debug)]
pub struct ServerError {
    pub status: u16,
    pub error: String,
    pub reason: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server answered {} {}: {}",
            self.status, self.error, self.reason
        )
    }
}

impl std::error::Error for ServerError {}

/// The server did not answer at all: nothing listens there, no route, DNS, TLS, a timeout.
#[derive(Debug)]
pub struct Unreachable {
    pub server: String,
    /// The innermost cause, without the URL (`Connection refused (os error 111)`).
    pub cause: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach {} ({}). Is rota-server running there? The server comes from --server, \
             ROTA_SERVER or `rota login --server URL`",
            self.server, self.cause
        )
    }
}

impl std::error::Error for Unreachable {}

/// The innermost error of `err`'s chain, which names the cause without the URL.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl Api {
    pub fn new(server: &str, key: &str) -> anyhow::Result<Api> {
        let http = Client::builder()
            .user_agent(concat!("rota-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Uploads of multi-GiB bundles take a while; the server bounds what it accepts.
            .timeout(None)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            server: server.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.server)
    }

    fn send(&self, what: &str, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = match request.bearer_auth(&self.key).send() {
            Ok(response) => response,
            Err(err) if err.is_connect() || err.is_timeout() || err.is_request() => {
                return Err(Unreachable {
                    server: self.server.clone(),
                    cause: root_cause(&err.without_url()),
                }
                .into());
            }
            Err(err) => return Err(anyhow!(err.without_url()).context(what.to_string())),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        let err = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ServerError {
                status: status.as_u16(),
                error: body.error,
                reason: body.reason,
            },
            Err(_) => ServerError {
                status: status.as_u16(),
                error: "error".into(),
                reason: text,
            },
        };
        Err(anyhow!(err).context(what.to_string()))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_with_query(path, &[])
    }

    /// GET with query parameters, encoded here.
    pub fn get_with_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = self.url(path);
        let response = self.send(&format!("GET {path}"), self.http.get(&url).query(query))?;
        response
            .json()
            .with_context(|| format!("decoding the answer of GET {path}"))
    }

    pub fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let url = self.url(path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(&format!("{method} {path}"), request)?;
        response
            .json()
            .with_context(|| format!("decoding the answer of {method} {path}"))
    }

    /// A call whose answer has no body (204).
    pub fn send_empty(&self, method: reqwest::Method, path: &str) -> anyhow::Result<()> {
        let url = self.url(path);
        self.send(
            &format!("{method} {path}"),
            self.http.request(method.clone(), &url),
        )?;
        Ok(())
    }

    pub fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: reqwest::blocking::Body,
    ) -> anyhow::Result<T> {
        // Ask first whether the server is there and takes the key: a streamed body that
        // cannot be sent says only "receiver is gone", and a bad key should not cost an upload.
        let _: serde_json::Value = self.get("/whoami")?;
        let url = self.url(path);
        let request = self
            .http
            .post(&url)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = self.send(&format!("POST {path}"), request)?;
        response
            .json()
            .with_context(|| format!("decoding the answer of POST {path}"))
    }
}
