//! `rota open`: the dashboard's address for a page, opened in the user's browser.

use std::io::IsTerminal as _;
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

/// The commands that may open a URL here, in order: $BROWSER (a `:`-separated list, each
/// entry a command with arguments, as xdg-utils reads it), else the desktop's opener when
/// there is a desktop to open it on.
fn openers() -> Vec<Vec<String>> {
    if let Some(browser) = std::env::var("BROWSER").ok().filter(|b| !b.is_empty()) {
        return browser
            .split(':')
            .map(|entry| entry.split_whitespace().map(String::from).collect())
            .filter(|words: &Vec<String>| !words.is_empty())
            .collect();
    }
    if cfg!(target_os = "macos") {
        return vec![vec!["open".into()]];
    }
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if desktop {
        vec![vec!["xdg-open".into()]]
    } else {
        Vec::new()
    }
}

/// Starts the first opener that runs, without waiting for the browser to exit.
fn launch(url: &str) {
    let openers = openers();
    if openers.is_empty() {
        note!("no browser here (no DISPLAY, BROWSER unset): open the address above");
        return;
    }
    for words in &openers {
        let started = Command::new(&words[0])
            .args(&words[1..])
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match started {
            Ok(_) => {
                note!("opening in the browser ({})", words.join(" "));
                return;
            }
            Err(err) => note!("cannot run {} ({err})", words[0]),
        }
    }
    note!("no browser could be started: open the address above");
}

pub fn open(
    overrides: &Overrides,
    page: Option<&str>,
    print_only: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (server, _) = profiles::load()?.server(overrides)?;
    let url = address(&server, page)?;
    if json {
        output::json(&serde_json::json!({ "url": url }))?;
    } else {
        outln!("{url}");
    }
    // Into a pipe (`url=$(rota open)`), the address is the whole answer.
    if print_only || json || !std::io::stdout().is_terminal() {
        return Ok(());
    }
    launch(&url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_lists_with_arguments_are_split() {
        // nextest runs each test in a process of its own: nothing else reads BROWSER here.
        std::env::set_var("BROWSER", "firefox --new-window:xdg-open");
        assert_eq!(
            openers(),
            [vec!["firefox", "--new-window"], vec!["xdg-open"]]
        );
        std::env::remove_var("BROWSER");
    }

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
