//! One function per subcommand.

pub mod access;
pub mod audit;
pub mod deploy;
pub mod history;
pub mod inventory;
pub mod release;
pub mod rollout;

use anyhow::Context as _;

use crate::client::Api;
use crate::credentials;

/// The API client from --server/ROTA_SERVER, ROTA_API_KEY and the stored credentials.
pub fn api(server: Option<&str>) -> anyhow::Result<Api> {
    let stored = credentials::load()?;
    let key = std::env::var("ROTA_API_KEY").ok().filter(|k| !k.is_empty());
    let server = server
        .map(str::to_string)
        .or_else(|| stored.as_ref().map(|c| c.server.clone()))
        .context("no server: run `rota login --server URL` or set ROTA_SERVER")?;
    let key = key
        .or_else(|| stored.map(|c| c.key))
        .context("no API key: run `rota login` or set ROTA_API_KEY")?;
    Api::new(&server, &key)
}

/// Fetches a list and prints it: JSON with --json, else a table of `row(item)` lines, or
/// `empty` on stderr when there is nothing to list.
pub fn show_list<T: serde::de::DeserializeOwned + serde::Serialize>(
    api: &Api,
    path: &str,
    json: bool,
    headers: &[&str],
    empty: &str,
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    show_filtered_list(api, path, &[], json, headers, empty, row)
}

/// [`show_list`] with query parameters (filters, limits).
pub fn show_filtered_list<T: serde::de::DeserializeOwned + serde::Serialize>(
    api: &Api,
    path: &str,
    query: &[(&str, String)],
    json: bool,
    headers: &[&str],
    empty: &str,
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    let items: Vec<T> = api.get_with_query(path, query)?;
    if json {
        return crate::output::json(&items);
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    crate::output::table(headers, &rows, Some(empty))
}
