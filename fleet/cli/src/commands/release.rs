//! release publish, release list.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rota_protocol::operator::Release;

use crate::client::Api;
use crate::commands::show_list;
use crate::output;

/// Counts bytes as the upload reads them: a one-line bar redrawn on a terminal, nothing
/// when stderr is a pipe or a file (the `published ...` line says how it ended).
struct Progress<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64) -> Progress<R> {
        let bar = crate::output::stderr_is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Progress { inner, bar }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
            if n == 0 || bar.length().is_some_and(|len| bar.position() >= len) {
                bar.finish_and_clear();
            }
        }
        Ok(n)
    }
}

/// The branch and commit a CI job builds, from the variables GitHub Actions (and Gitea and
/// Forgejo Actions) set: a pull request's head branch, else the pushed branch (not a tag).
pub fn ci_source(var: impl Fn(&str) -> Option<String>) -> (Option<String>, Option<String>) {
    let set = |name: &str| var(name).filter(|value| !value.is_empty());
    let branch = set("GITHUB_HEAD_REF").or_else(|| {
        let pushed_a_branch = set("GITHUB_REF_TYPE").is_none_or(|kind| kind == "branch");
        set("GITHUB_REF_NAME").filter(|_| pushed_a_branch)
    });
    (branch, set("GITHUB_SHA"))
}

pub fn publish(
    api: &Api,
    bundle: &Path,
    branch: Option<&str>,
    commit: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let release = upload(api, bundle, branch, commit)?;
    if json {
        output::json(&release)
    } else {
        outln!("{}", release.id);
        Ok(())
    }
}

/// Uploads a bundle file (branch and commit from the arguments, else from the CI
/// environment) and says what the server made of it.
pub fn upload(
    api: &Api,
    bundle: &Path,
    branch: Option<&str>,
    commit: Option<&str>,
) -> anyhow::Result<Release> {
    let (ci_branch, ci_commit) = ci_source(|name| std::env::var(name).ok());
    let branch = branch
        .map(str::to_string)
        .or_else(|| ci_branch.inspect(|b| note!("branch {b} (from the CI environment)")));
    let commit = commit
        .map(str::to_string)
        .or_else(|| ci_commit.inspect(|c| note!("commit {c} (from the CI environment)")));
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let total = file
        .metadata()
        .with_context(|| format!("reading {}", bundle.display()))?
        .len();
    let reader = Progress::new(file, total);
    let mut query = Vec::new();
    if let Some(branch) = &branch {
        query.push(("branch", branch.as_str()));
    }
    if let Some(commit) = &commit {
        query.push(("commit", commit.as_str()));
    }
    let body = reqwest::blocking::Body::sized(reader, total);
    let release: Release = api
        .upload("/releases", &query, body)
        .with_context(|| format!("publishing {}", bundle.display()))?;
    note!(
        "published {} {}v{} for {} ({}, manifest {})",
        release.id,
        release
            .app
            .as_deref()
            .map(|app| format!("app {app} "))
            .unwrap_or_default(),
        release.version,
        release.compatible,
        output::size(release.size),
        &release.manifest_hash[..12]
    );
    Ok(release)
}

pub fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let headers = [
        "ID",
        "APP",
        "VERSION",
        "COMPATIBLE",
        "BRANCH",
        "COMMIT",
        "SIZE",
        "CREATED",
    ];
    let empty = "no releases yet: publish a signed bundle with `rota release publish BUNDLE`";
    show_list(api, "/releases", json, &headers, empty, |r: &Release| {
        vec![
            r.id.clone(),
            r.app.clone().unwrap_or_else(|| "(os)".into()),
            r.version.clone(),
            r.compatible.clone(),
            output::or_dash(r.branch.as_deref()),
            r.commit
                .as_deref()
                .map_or("-".into(), |c| c.chars().take(12).collect()),
            output::size(r.size),
            output::ago(&r.created_at),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(vars: &[(&str, &str)]) -> Source {
        ci_source(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    type Source = (Option<String>, Option<String>);
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Source,
    );

    fn some(branch: &str, commit: &str) -> Source {
        (Some(branch.into()), Some(commit.into()))
    }

    #[test]
    fn ci_variables_give_the_built_branch_and_commit() {
        const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
        let cases: [Case; 5] = [
            ("outside CI", &[], (None, None)),
            (
                "branch push",
                &[
                    ("GITHUB_REF_NAME", "main"),
                    ("GITHUB_REF_TYPE", "branch"),
                    ("GITHUB_SHA", SHA),
                ],
                some("main", SHA),
            ),
            (
                "pull request: the head branch, not 12/merge",
                &[
                    ("GITHUB_HEAD_REF", "feature/arm"),
                    ("GITHUB_REF_NAME", "12/merge"),
                    ("GITHUB_REF_TYPE", "branch"),
                    ("GITHUB_SHA", SHA),
                ],
                some("feature/arm", SHA),
            ),
            (
                "tag push: no branch",
                &[
                    ("GITHUB_HEAD_REF", ""),
                    ("GITHUB_REF_NAME", "v1.2.0"),
                    ("GITHUB_REF_TYPE", "tag"),
                    ("GITHUB_SHA", SHA),
                ],
                (None, Some(SHA.into())),
            ),
            (
                "a CI without GITHUB_REF_TYPE",
                &[("GITHUB_REF_NAME", "staging"), ("GITHUB_SHA", SHA)],
                some("staging", SHA),
            ),
        ];
        for (name, vars, expected) in cases {
            assert_eq!(source(vars), expected, "{name}");
        }
    }
}
