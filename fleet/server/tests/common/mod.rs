//! Test harness: a real `rota-server` process (SQLite in a temp dir, or a fresh PostgreSQL
//! database when ROTA_TEST_DATABASE_URL is set), the real `rota` CLI, signed test bundles, and
//! simulated robots on rota-protocol's blocking client.

#![allow(dead_code)]

pub mod robots;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rota_bundle::{BundleBuilder, Compression, SigningKey, SlotClass, SourceInfo};
use serde_json::Value;

pub const ADMIN_KEY: &str = "rota_op_test_bootstrap_admin_key_0123456789";
pub const ENROLLMENT_KEY: &str = "rota_en_test_enrollment_key_0123456789";
pub const COMPATIBLE: &str = "lekiwi-rpi5";

/// The key the fleet trusts.
pub fn trusted_key() -> SigningKey {
    SigningKey::from_seed([1; 32])
}

/// A key the fleet does not trust.
pub fn stranger_key() -> SigningKey {
    SigningKey::from_seed([2; 32])
}

/// A bundle of `image_len` pseudo-random bytes (different per version), signed by `key`.
pub fn bundle(version: &str, compatible: &str, key: &SigningKey, image_len: usize) -> Vec<u8> {
    bundle_of(version, compatible, key, random_image(version, image_len))
}

/// Pseudo-random image bytes, the same for the same seed.
pub fn random_image(seed: &str, len: usize) -> Vec<u8> {
    let mut image = vec![0u8; len];
    let mut x: u64 = seed.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    for byte in image.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    image
}

/// A bundle of `image`, uncompressed, signed with `key`.
pub fn bundle_of(version: &str, compatible: &str, key: &SigningKey, image: Vec<u8>) -> Vec<u8> {
    let mut builder = BundleBuilder::new(compatible, version.parse().unwrap());
    builder
        .build_time(1_700_000_000)
        .compression(Compression::None)
        .workers(1)
        .source(SourceInfo {
            git_commit: format!("c0ffee{}", version.replace('.', "")),
            git_branch: Some("main".into()),
        })
        .sign_with(key)
        .add_image("rootfs", SlotClass::Rootfs, std::io::Cursor::new(image));
    let mut out = Vec::new();
    builder.write_to(&mut out).unwrap();
    out
}

/// An app release (format 3) of `name` holding one file, `VERSION`, packed by GNU tar as
/// `rota-image app` packs a tree; no units, no checks. Signed with `key`.
pub fn app_bundle(name: &str, version: &str, compatible: &str, key: &SigningKey) -> Vec<u8> {
    app_bundle_checked(name, version, compatible, key, Vec::new())
}

/// [`app_bundle`] with these checks.
pub fn app_bundle_checked(
    name: &str,
    version: &str,
    compatible: &str,
    key: &SigningKey,
    checks: Vec<rota_bundle::AppCheck>,
) -> Vec<u8> {
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("VERSION"), version).unwrap();
    let tar = std::process::Command::new("tar")
        .args([
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
        ])
        .arg("-C")
        .arg(tree.path())
        .args(["-cf", "-", "VERSION"])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut builder = BundleBuilder::new(compatible, version.parse().unwrap());
    builder
        .build_time(1_700_000_000)
        .source(SourceInfo {
            git_commit: format!("a99{}", version.replace('.', "")),
            git_branch: Some("main".into()),
        })
        .app(rota_bundle::AppSpec {
            units: Vec::new(),
            checks,
            // Short: a failing check is asked again until the deadline.
            check_deadline_secs: 3,
            os_versions: None,
        })
        .sign_with(key)
        .add_image(name, SlotClass::App, std::io::Cursor::new(tar.stdout));
    let mut out = Vec::new();
    builder.write_to(&mut out).unwrap();
    out
}

/// Where the test's database lives.
pub enum Database {
    Sqlite,
    Postgres(String),
}

impl Database {
    /// SQLite, or a fresh PostgreSQL database when ROTA_TEST_DATABASE_URL names a server.
    pub fn for_test() -> Database {
        match std::env::var("ROTA_TEST_DATABASE_URL") {
            Ok(base) if !base.is_empty() => Database::Postgres(create_postgres_database(&base)),
            _ => Database::Sqlite,
        }
    }
}

fn create_postgres_database(base: &str) -> String {
    use sqlx::Connection as _;
    let name = format!("rota_test_{}", rota_server::secrets::random_hex(6));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::postgres::PgConnection::connect(base)
            .await
            .expect("connect to ROTA_TEST_DATABASE_URL");
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
    });
    // Same server and credentials, the new database.
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("ROTA_TEST_DATABASE_URL ends in /DBNAME");
    format!("{prefix}/{name}")
}

/// A running rota-server and everything needed to restart it on the same data.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    port: u16,
    database: Option<String>,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
}

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rota-server"))
}

/// The `rota` CLI, built next to rota-server (`cargo test -p rota-server -p rota-cli`, or the
/// workspace, builds both).
pub fn cli_bin() -> PathBuf {
    let path = server_bin().with_file_name("rota");
    assert!(
        path.exists(),
        "{} is missing: build the CLI too (cargo build -p rota-cli, or test with -p rota-server -p rota-cli)",
        path.display()
    );
    path
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra_env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("data").join("keyring");
        std::fs::create_dir_all(&keyring).unwrap();
        trusted_key()
            .public_key()
            .write_new(&keyring.join("fleet.pub"))
            .unwrap();
        let database = match Database::for_test() {
            Database::Sqlite => None,
            Database::Postgres(url) => Some(url),
        };
        let mut server = Server {
            dir,
            url: String::new(),
            port: 0,
            database,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The PostgreSQL database this server uses (None: SQLite under the data dir).
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_deref()
    }

    fn spawn(&mut self) {
        let (child, url) = spawn_server(
            &self.data_dir(),
            self.port,
            self.database.as_deref(),
            &self.extra_env,
        );
        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
        self.url = url;
        self.child = Some(child);
    }

    /// A second server process on the same database and bundle store, as a replica behind a
    /// load balancer would run.
    pub fn replica(&self) -> Replica {
        let (child, url) = spawn_server(
            &self.data_dir(),
            0,
            self.database.as_deref(),
            &self.extra_env,
        );
        Replica { url, child }
    }

    /// Kills the server without warning (SIGKILL) and starts it again on the same port and
    /// data.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// The real CLI with the given key (no stored login).
    pub fn rota(&self, key: &str, args: &[&str]) -> Output {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Command::new(cli_bin())
            .args(args)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env("ROTA_SERVER", &self.url)
            .env("ROTA_API_KEY", key)
            // Run inside GitHub Actions, `rota release publish` would take these for the
            // bundle's branch and commit.
            .env_remove("GITHUB_HEAD_REF")
            .env_remove("GITHUB_REF_NAME")
            .env_remove("GITHUB_REF_TYPE")
            .env_remove("GITHUB_SHA")
            .output()
            .expect("run rota")
    }

    /// The CLI as admin; panics unless it succeeds. Returns stdout.
    pub fn rota_ok(&self, args: &[&str]) -> String {
        let out = self.rota(ADMIN_KEY, args);
        assert!(
            out.status.success(),
            "rota {args:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn rota_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.rota_ok(&all)).unwrap()
    }

    /// The audit log's actions, newest first.
    pub fn audit_actions(&self) -> Vec<String> {
        let audit = self.rota_json(&["audit", "--limit", "1000"]);
        audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    }

    /// Writes a bundle into the test dir and publishes it with the CLI; returns the release id.
    pub fn publish(&self, version: &str) -> String {
        let path = self.write_bundle(
            version,
            &bundle(version, COMPATIBLE, &trusted_key(), 96 * 1024),
        );
        self.rota_ok(&["release", "publish", path.to_str().unwrap()])
            .trim()
            .to_string()
    }

    /// Publishes a release of app `name` ([`app_bundle`]); returns the release id.
    pub fn publish_app(&self, name: &str, version: &str) -> String {
        let path = self.write_bundle(
            &format!("{name}-{version}"),
            &app_bundle(name, version, COMPATIBLE, &trusted_key()),
        );
        self.rota_ok(&["release", "publish", path.to_str().unwrap()])
            .trim()
            .to_string()
    }

    pub fn write_bundle(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.rota"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// GET as admin, JSON.
    pub fn get(&self, path: &str) -> Value {
        http()
            .get(self.api(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Polls `check` on `GET path` until it holds; panics after `limit` (a hang guard, not a
    /// performance assertion).
    pub fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.get(path);
            if check(&value) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "gave up waiting for {what}; last: {value:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts rota-server on `data_dir` and `port` (0: any); returns it and the URL it printed.
pub fn spawn_server(
    data_dir: &Path,
    port: u16,
    database: Option<&str>,
    extra_env: &[(String, String)],
) -> (Child, String) {
    let mut command = Command::new(server_bin());
    command
        .arg("--data")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("ROTA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("ROTA_ENROLLMENT_KEY", ENROLLMENT_KEY)
        .env("ROTA_LAST_SEEN_FLUSH_SECS", "1")
        .env("ROTA_LOG", "warn")
        .env_remove("ROTA_DATABASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = database {
        command.arg("--database").arg(url);
    }
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start rota-server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's URL");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "server printed {url:?} instead of its URL"
    );
    (child, url)
}

/// A replica started by [`Server::replica`]; killed on drop.
pub struct Replica {
    pub url: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}
