//! One function per subcommand.

pub mod access;
pub mod audit;
pub mod deploy;
pub mod env_vars;
pub mod history;
pub mod inventory;
pub mod notify;
pub mod open;
pub mod release;
pub mod rollout;

use crate::client::Api;
use crate::profiles::{self, Overrides};

/// The API client for the server and key that --server, --profile, the environment and the
/// config file choose.
pub fn api(overrides: &Overrides) -> anyhow::Result<Api> {
    let resolved = profiles::load()?.resolve(overrides)?;
    Api::new(&resolved.server, &resolved.key)
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
