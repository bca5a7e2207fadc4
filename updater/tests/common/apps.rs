//! App releases for the updater tests: trees packed as `rota-image app` packs them (a tar in
//! an `app` image with a signed spec), and a robot's view of its apps directory.
//!
//! systemd does not run in this container, so `systemctl` here is a script that records each
//! call in `systemctl.log` and fails while `systemctl.fail` exists; the QEMU scenario runs the
//! same flow against the guest's real systemd.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use rota_bundle::{AppCheck, AppProbe, AppSpec, BundleBuilder, Compression, SlotClass, SourceInfo};

use super::{ok, Robot, COMPATIBLE};

pub const APP: &str = "demo";
pub const UNIT: &str = "demo.service";

pub fn write_systemctl(robot: &Robot) {
    let path = robot.path("systemctl");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\nif [ -e {fail} ]; then echo 'Job for unit failed' >&2; exit 1; fi\n",
            log = robot.path("systemctl.log").display(),
            fail = robot.path("systemctl.fail").display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// One app release to build.
#[derive(Clone)]
pub struct AppRelease {
    pub name: String,
    pub version: String,
    pub compatible: String,
    pub security_version: u32,
    /// Path, content, mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub units: Vec<String>,
    pub checks: Vec<AppCheck>,
    pub os_versions: Option<String>,
    pub commit: String,
}

impl AppRelease {
    /// A release whose `health` file says `healthy` and whose one check reads it from the
    /// current release, so a release passes or fails its checks by what it ships.
    pub fn new(robot: &Robot, version: &str) -> AppRelease {
        let current = robot.app_dir().join("current");
        AppRelease {
            name: APP.into(),
            version: version.into(),
            compatible: COMPATIBLE.into(),
            security_version: 0,
            files: vec![
                ("VERSION".into(), version.as_bytes().to_vec(), 0o644),
                ("health".into(), b"healthy\n".to_vec(), 0o644),
                (
                    "bin/serve".into(),
                    b"#!/bin/sh\nexec sleep 1000\n".to_vec(),
                    0o755,
                ),
            ],
            units: vec![UNIT.into()],
            checks: vec![AppCheck {
                name: "reports healthy".into(),
                probe: AppProbe::Command(vec![
                    "grep".into(),
                    "-q".into(),
                    "^healthy$".into(),
                    current.join("health").display().to_string(),
                ]),
                attempt_timeout_secs: 5,
            }],
            os_versions: None,
            commit: format!("c0ffee{}", version.replace('.', "")),
        }
    }

    pub fn broken(mut self) -> AppRelease {
        self.file("health", b"broken\n");
        self
    }

    pub fn file(&mut self, path: &str, content: &[u8]) -> &mut Self {
        self.files.retain(|(existing, _, _)| existing != path);
        self.files.push((path.into(), content.to_vec(), 0o644));
        self
    }

    /// The tar `rota-image app` would pack: sorted, directories first.
    pub fn tar(&self) -> Vec<u8> {
        let mut files = self.files.clone();
        files.sort();
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = Vec::new();
        for (path, content, mode) in &files {
            let mut parent = String::new();
            for part in Path::new(path).parent().into_iter().flat_map(Path::iter) {
                parent = if parent.is_empty() {
                    part.to_string_lossy().into_owned()
                } else {
                    format!("{parent}/{}", part.to_string_lossy())
                };
                if !dirs.contains(&parent) {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, &parent, std::io::empty())
                        .unwrap();
                    dirs.push(parent.clone());
                }
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_size(content.len() as u64);
            builder
                .append_data(&mut header, path, &content[..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub fn spec(&self) -> AppSpec {
        AppSpec {
            units: self.units.clone(),
            checks: self.checks.clone(),
            // Short: a broken release's check is asked again until the deadline.
            check_deadline_secs: 4,
            os_versions: self.os_versions.clone(),
        }
    }
}

impl Robot {
    pub fn app_dir(&self) -> PathBuf {
        self.path("data/rota/apps").join(APP)
    }

    /// Builds the app bundle signed with this robot's key and returns its path.
    pub fn app_bundle(&self, file_name: &str, release: &AppRelease) -> PathBuf {
        let mut builder =
            BundleBuilder::new(release.compatible.clone(), release.version.parse().unwrap());
        builder
            .build_time(1_700_000_000)
            .security_version(release.security_version)
            .compression(Compression::ZstdPrefixed { window: 128 << 10 })
            .source(SourceInfo {
                git_commit: release.commit.clone(),
                git_branch: Some("main".into()),
            })
            .app(release.spec())
            .add_image(
                release.name.clone(),
                SlotClass::App,
                std::io::Cursor::new(release.tar()),
            )
            .sign_with(&self.key);
        let mut bytes = Vec::new();
        builder.write_to(&mut bytes).unwrap();
        let path = self.path(file_name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// `rota-updater app install BUNDLE`, to add arguments or environment to.
    pub fn app_install_command(&self, bundle: &Path) -> std::process::Command {
        let mut command = self.updater();
        command.args(["app", "install"]).arg(bundle);
        command
    }

    pub fn app_install(&self, bundle: &Path) -> std::process::Output {
        self.app_install_command(bundle).output().unwrap()
    }

    pub fn app_status(&self) -> serde_json::Value {
        let stdout = ok(self.run(&["app", "status", APP, "--json"]), "app status");
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
        all.remove(0)
    }

    /// The version the current release holds, read through the `current` link.
    pub fn current_app_version(&self) -> Option<String> {
        fs::read_to_string(self.app_dir().join("current/VERSION")).ok()
    }

    pub fn systemctl_calls(&self) -> Vec<String> {
        fs::read_to_string(self.path("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Every path below `dir` with its file type and content hash: a snapshot that shows whether
/// anything changed.
pub fn tree_snapshot(dir: &Path) -> Vec<String> {
    let mut entries = Vec::new();
    if !dir.exists() {
        return entries;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let relative = path.strip_prefix(dir).unwrap().display().to_string();
        if meta.is_dir() {
            entries.push(format!("{relative}/"));
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if meta.file_type().is_symlink() {
            entries.push(format!(
                "{relative} -> {}",
                fs::read_link(&path).unwrap().display()
            ));
        } else {
            let content = fs::read(&path).unwrap();
            entries.push(format!(
                "{relative} {}",
                rota_bundle::Sha256Digest::of(&content)
            ));
        }
    }
    entries.sort();
    entries
}
