//! release publish, release list.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use rota_protocol::operator::Release;

use crate::client::Api;
use crate::commands::show_list;
use crate::output;

/// Counts bytes as the upload reads them and reports every 10% on stderr.
struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    next_report: u64,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.total > 0
            && self.done * 10 / self.total >= self.next_report
            && self.next_report <= 10
        {
            eprintln!(
                "uploading: {}% of {} bytes",
                self.done * 100 / self.total,
                self.total
            );
            self.next_report = self.done * 10 / self.total + 1;
        }
        Ok(n)
    }
}

pub fn publish(
    api: &Api,
    bundle: &Path,
    branch: Option<&str>,
    commit: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let file = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let total = file
        .metadata()
        .with_context(|| format!("reading {}", bundle.display()))?
        .len();
    let reader = Progress {
        inner: file,
        done: 0,
        total,
        next_report: 1,
    };
    let mut query = Vec::new();
    if let Some(branch) = branch {
        query.push(("branch", branch));
    }
    if let Some(commit) = commit {
        query.push(("commit", commit));
    }
    let body = reqwest::blocking::Body::sized(reader, total);
    let release: Release = api
        .upload("/releases", &query, body)
        .with_context(|| format!("publishing {}", bundle.display()))?;
    eprintln!(
        "published {} {} for {} ({} bytes, manifest {})",
        release.id,
        release.version,
        release.compatible,
        release.size,
        &release.manifest_hash[..12]
    );
    if json {
        output::json(&release)
    } else {
        println!("{}", release.id);
        Ok(())
    }
}

pub fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let headers = [
        "ID",
        "VERSION",
        "COMPATIBLE",
        "BRANCH",
        "COMMIT",
        "SIZE",
        "CREATED",
    ];
    show_list(api, "/releases", json, &headers, |r: &Release| {
        vec![
            r.id.clone(),
            r.version.clone(),
            r.compatible.clone(),
            output::or_dash(r.branch.as_deref()),
            r.commit
                .as_deref()
                .map_or("-".into(), |c| c.chars().take(12).collect()),
            r.size.to_string(),
            r.created_at.clone(),
        ]
    })
}
