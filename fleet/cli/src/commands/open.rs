//! `rota open`: the dashboard's address for a page, opened in the user's browser.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::output;
use crate::profiles::{self, Overrides};

/// The dashboard route (after `#/`) for what the user typed.
pub fn route(page: Option<&str>) -> anyhow::Result<String> {
    const PAGES: [&str; 5] = ["fleet", "deployments", "releases", "audit", "charts"];
    let page = page.unwrap_or("fleet");
    if PAGES.contains(&page) {
        return Ok(page.to_string());
    }
    if page.starts_with("dep_") {
        return Ok(format!("deployments/{page}"));
    }
    if let Some(robot) = page.strip_prefix("robot:").filter(|r| !r.is_empty()) {
        return Ok(format!("robots/{robot}"));
    }
    bail!(
        "no dashboard page {page:?}: use {}, a deployment id (dep_...) or robot:ID",
        PAGES.join(", ")
    )
}

/// The page's full address on `server`.
pub fn address(server: &str, page: Option<&str>) -> anyhow::Result<String> {
    // The dashboard sits at the server's root, which may itself be below a path prefix.
    let root = format!("{}/", server.trim_end_matches('/'));
    let mut url =
        reqwest::Url::parse(&root).with_context(|| format!("{server:?} is not a server URL"))?;
    url.set_fragment(Some(&format!("/{}", route(page)?)));
    Ok(url.to_string())
}

/// The command that opens a URL here: $BROWSER, else the desktop's opener when there is a
/// desktop to open it on.
fn opener() -> Option<String> {
    if let Some(browser) = std::env::var("BROWSER").ok().filter(|b| !b.is_empty()) {
        return Some(browser);
    }
    if cfg!(target_os = "macos") {
        return Some("open".into());
    }
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    desktop.then(|| "xdg-open".into())
}

pub fn open(
    overrides: &Overrides,
    page: Option<&str>,
    print_only: bool,
    json: bool,
) -> anyhow::Result<()> {
    let server = match &overrides.server {
        Some(server) => server.clone(),
        None => profiles::load()?
            .selected(overrides.profile.as_deref())?
            .map(|(_, profile)| profile.server.clone())
            .context("no server: run `rota login --server URL` or set ROTA_SERVER")?,
    };
    let url = address(&server, page)?;
    if json {
        output::json(&serde_json::json!({ "url": url }))?;
    } else {
        outln!("{url}");
    }
    if print_only || json {
        return Ok(());
    }
    match opener() {
        Some(program) => {
            let started = Command::new(&program)
                .arg(&url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match started {
                Ok(status) if status.success() => note!("opened in the browser ({program})"),
                Ok(status) => note!("{program} {status}: open the address above yourself"),
                Err(err) => note!("cannot run {program} ({err}): open the address above yourself"),
            }
        }
        None => note!("no browser here (no DISPLAY, BROWSER unset): open the address above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_map_to_dashboard_routes() {
        let table = [
            (None, "http://h:8470/#/fleet"),
            (Some("audit"), "http://h:8470/#/audit"),
            (Some("dep_4f2a"), "http://h:8470/#/deployments/dep_4f2a"),
            (Some("robot:r 1"), "http://h:8470/#/robots/r%201"),
        ];
        for (page, expected) in table {
            assert_eq!(address("http://h:8470", page).unwrap(), expected);
        }
        assert_eq!(
            address("https://h/rota/", Some("releases")).unwrap(),
            "https://h/rota/#/releases"
        );
        let err = address("http://h:8470", Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no dashboard page \"nope\""), "{err}");
    }
}
