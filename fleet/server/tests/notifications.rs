//! Notifications against real receivers on loopback: a webhook receiver that checks the
//! HMAC-SHA256 signature, a Slack-shaped receiver, and a dead endpoint, around a canary that
//! halts on 20 simulated robots; `rota notify` and the delivery log; secrets never answered.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::robots::{Behaviour, SimFleet};
use common::{Server, ADMIN_KEY};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One POST a receiver got: its headers (lower-case names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP receiver on loopback answering every request with `status`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut headers = BTreeMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or(0); // the request line
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        headers.insert(name.trim().to_lowercase(), value.trim().to_string());
                    }
                }
                let length = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                sink.lock().unwrap().push(Received { headers, body });
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { url, got }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The JSON bodies received so far.
    fn bodies(&self) -> Vec<Value> {
        self.received()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// Waits until `check` holds on the bodies received (a hang guard, not a time bound).
    fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let bodies = self.bodies();
            if check(&bodies) {
                return bodies;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "gave up waiting for {what}; got {bodies:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn events(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap_or("").to_string())
        .collect()
}

const SECRET: &str = "a-webhook-secret-of-32-characters";

#[test]
fn channels_hear_a_halting_canary_signed_and_a_dead_endpoint_slows_nothing() {
    let server = Server::start_with(&[("ROTA_ROBOT_OFFLINE_MINUTES", "0.25")]);
    let webhook = Receiver::start(200);
    let slack = Receiver::start(200);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/gone", dead.local_addr().unwrap());
    drop(dead); // nothing listens there now

    // Channels: a signed webhook for everything, Slack for production's halts and rollbacks,
    // and one whose endpoint is gone.
    let mut set_secret = std::process::Command::new(common::cli_bin());
    set_secret
        .args([
            "notify",
            "set",
            "ops",
            "--webhook",
            &webhook.url,
            "--secret",
            "-",
        ])
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = set_secret.spawn().unwrap();
    writeln!(child.stdin.as_mut().unwrap(), "{SECRET}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.rota_ok(&["groups", "create", "canary"]);
    server.rota_ok(&["groups", "create", "rest"]);
    server.rota_ok(&["env", "set", "production", "--groups", "canary,rest"]);
    let slack_url = format!("{}/services/T0/B0/slack-token", slack.url);
    server.rota_ok(&[
        "notify",
        "set",
        "team",
        "--slack",
        &slack_url,
        "--env",
        "production",
        "--events",
        "deployment.halted,robot.rolled_back",
    ]);
    server.rota_ok(&["notify", "set", "gone", "--webhook", &dead_url]);

    // Secrets never come back: not the HMAC key, not the Slack URL.
    let channels = server.rota_json(&["notify", "list"]);
    let listed = channels.to_string();
    assert!(
        !listed.contains(SECRET) && !listed.contains("slack-token"),
        "{listed}"
    );
    assert_eq!(channels[1]["name"], "ops");
    assert_eq!(channels[1]["signed"], true);
    let audit = server
        .rota_json(&["audit", "--action", "notification"])
        .to_string();
    assert!(
        !audit.contains(SECRET) && !audit.contains("slack-token"),
        "{audit}"
    );

    let fleet = SimFleet::start(&server.url, "robot", 20, |n| Behaviour {
        unhealthy_versions: match n {
            1 => ["2.0.0".to_string()].into(),
            _ => Default::default(),
        },
        gate: None,
    });
    server.rota_ok(&["groups", "add", "canary", "robot-001", "robot-002"]);
    let rest: Vec<String> = (3..=20).map(|n| format!("robot-{n:03}")).collect();
    let mut add = vec!["groups", "add", "rest"];
    add.extend(rest.iter().map(String::as_str));
    server.rota_ok(&add);
    server.publish("2.0.0");
    let halted = server.rota(
        ADMIN_KEY,
        &[
            "--json",
            "deploy",
            "2.0.0",
            "--to",
            "env:production",
            "--canary",
            "canary",
            "--stage-wait",
            "0",
            "--wait",
        ],
    );
    assert_eq!(halted.status.code(), Some(3));
    let deployment: Value = serde_json::from_slice(&halted.stdout).unwrap();
    assert_eq!(deployment["state"], "halted");
    let id = deployment["id"].as_str().unwrap();

    // The webhook hears the rollout, in order, each body signed.
    let bodies = webhook.wait_for("the halt on the webhook", |bodies| {
        events(bodies).contains(&"deployment.halted".to_string())
    });
    let heard = events(&bodies);
    let position = |name: &str| heard.iter().position(|e| e == name).unwrap_or(usize::MAX);
    // Deliveries go out side by side, so they may arrive in any order; their ids (queue
    // order) say what happened first.
    let queued = |name: &str| -> u64 {
        let received = webhook.received();
        let index = position(name);
        assert!(index < received.len(), "{name} not heard: {heard:?}");
        received[index].headers["x-rota-delivery"].parse().unwrap()
    };
    assert!(
        queued("deployment.created") < queued("deployment.stage_started")
            && queued("deployment.stage_started") < queued("deployment.halted")
            && heard.contains(&"robot.rolled_back".to_string()),
        "{heard:?}"
    );
    for received in webhook.received() {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&received.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(received.headers["x-rota-signature-256"], expected);
        assert!(received.headers.contains_key("x-rota-delivery"));
    }
    let halt = &bodies[position("deployment.halted")];
    assert_eq!(halt["environment"], "production");
    assert_eq!(halt["details"]["deployment"]["id"], id);
    assert!(halt["text"].as_str().unwrap().contains("halted"), "{halt}");
    let rolled_back = &bodies[position("robot.rolled_back")];
    assert_eq!(rolled_back["details"]["robot"], "robot-001");
    assert!(
        rolled_back["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{rolled_back}"
    );

    // Slack hears only what it asked for, as {"text"}, unsigned.
    let texts = slack.wait_for("the halt on Slack", |bodies| bodies.len() >= 2);
    let texts: Vec<&str> = texts.iter().map(|b| b["text"].as_str().unwrap()).collect();
    assert!(
        texts.iter().any(|t| t.contains("halted")) && texts.iter().any(|t| t.contains("robot-001")),
        "{texts:?}"
    );
    assert!(slack
        .received()
        .iter()
        .all(|r| !r.headers.contains_key("x-rota-signature-256")));

    // The dead endpoint: retried, then failed, with the reason and never its URL.
    let failed = server.wait_for(
        "/notifications/deliveries?channel=gone&state=failed",
        "the dead channel's deliveries to fail",
        |list| !list.as_array().unwrap().is_empty(),
    );
    assert_eq!(failed[0]["attempts"], 5, "{failed:#}");
    // The rollout halted before the first of them gave up: it never waited for them.
    let log = server.get(&format!("/deployments/{id}"))["log"].clone();
    let halted_at = log
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == "halted")
        .map(|entry| entry["at"].as_str().unwrap().to_string())
        .unwrap();
    let gave_up = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["finished_at"].as_str().unwrap())
        .min()
        .unwrap();
    assert!(
        halted_at.as_str() < gave_up,
        "halted {halted_at}, gave up {gave_up}"
    );
    let error = failed[0]["last_error"].as_str().unwrap();
    assert!(!error.contains(&dead_url) && !error.is_empty(), "{error}");
    assert!(!events(&webhook.bodies()).contains(&"robot.offline".to_string()));
    let log = server.rota_ok(&["notify", "deliveries", "--channel", "ops"]);
    assert!(
        log.contains("deployment.halted") && log.contains("delivered"),
        "{log}"
    );

    // `rota notify test` follows its delivery; to the dead channel it fails with the reason.
    let sent = server.rota(ADMIN_KEY, &["notify", "test", "ops"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    webhook.wait_for("the test notification", |bodies| {
        events(bodies).contains(&"test".to_string())
    });
    let bad = server.rota(ADMIN_KEY, &["notify", "test", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no notification channel"));

    // Robots that go silent for longer than the 15 s set: robot.offline, once each (robots
    // polling every 3 s, their last-seen times written every 5 s, never look silent before).
    drop(fleet);
    let offline = webhook.wait_for("robot.offline", |bodies| {
        events(bodies)
            .iter()
            .filter(|e| *e == "robot.offline")
            .count()
            >= 20
    });
    std::thread::sleep(Duration::from_secs(2));
    let told = events(&webhook.bodies())
        .iter()
        .filter(|e| *e == "robot.offline")
        .count();
    assert_eq!(told, 20, "{offline:#?}");
}

/// Bad channels are refused with the reason and change nothing; only admins change channels.
#[test]
fn bad_channels_are_refused_with_a_reason() {
    let server = Server::start();
    for (args, reason) in [
        (vec!["--webhook", "ftp://x"], "is not an http(s) URL"),
        (
            vec![
                "--webhook",
                "http://127.0.0.1:9",
                "--events",
                "deployment.exploded",
            ],
            "unknown event",
        ),
        (
            vec!["--webhook", "http://127.0.0.1:9", "--env", "nowhere"],
            "no environment named",
        ),
    ] {
        let mut all = vec!["notify", "set", "x"];
        all.extend(args);
        let out = server.rota(ADMIN_KEY, &all);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(reason),
            "{all:?}: {said}"
        );
    }
    let viewer = server.rota_json(&["keys", "create", "watcher", "--role", "viewer"]);
    let viewer = viewer["key"].as_str().unwrap();
    let out = server.rota(
        viewer,
        &["notify", "set", "x", "--webhook", "http://127.0.0.1:9"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    assert_eq!(server.rota_json(&["notify", "list"]), serde_json::json!([]));
}

/// A real SMTP server (Debian's python3-aiosmtpd) that requires STARTTLS and a login, with a
/// certificate from a CA made for the test, which the fleet server trusts through
/// SSL_CERT_FILE as it would trust a system root.
struct SmtpServer {
    port: u16,
    mail_dir: std::path::PathBuf,
    child: std::process::Child,
}

const SMTP_PASSWORD: &str = "smtp-password-never-logged";

const SMTP_SERVER_PY: &str = r#"
import os, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, mail_dir, password = sys.argv[1:6]

class Keep:
    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(mail_dir, "%d.eml" % time.monotonic_ns())
        with open(name + ".tmp", "wb") as f:
            f.write(envelope.content)
        os.rename(name + ".tmp", name)
        return "250 kept"

def login(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"rota" and data.password == password.encode()
    return AuthResult(success=ok)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Keep(), hostname="127.0.0.1", port=int(port), tls_context=context,
                        require_starttls=True, authenticator=login, auth_required=True)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(60)
"#;

impl SmtpServer {
    /// Starts it on a free port; returns it and the CA file the fleet server must trust.
    fn start(dir: &std::path::Path) -> (SmtpServer, std::path::PathBuf) {
        let path = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rota test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "smtp.key",
            "-out",
            "smtp.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs_write(&path("san.ext"), "subjectAltName=IP:127.0.0.1\n");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "smtp.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "smtp.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let mail_dir = path("mail");
        std::fs::create_dir_all(&mail_dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", SMTP_SERVER_PY, &port.to_string()])
            .arg(path("smtp.pem"))
            .arg(path("smtp.key"))
            .arg(&mail_dir)
            .arg(SMTP_PASSWORD)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-aiosmtpd (scripts/deps installs it)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the SMTP server did not start");
        (
            SmtpServer {
                port,
                mail_dir,
                child,
            },
            path("ca.pem"),
        )
    }

    /// Every mail received so far, as text.
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.mail_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fs_write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// `rota notify set NAME --email ... --secret -` with `password` on stdin.
fn set_email_channel(
    server: &Server,
    name: &str,
    url: &str,
    password: &str,
) -> std::process::Output {
    let mut child = std::process::Command::new(common::cli_bin())
        .args([
            "notify",
            "set",
            name,
            "--email",
            url,
            "--secret",
            "-",
            "--from",
            "rota@example.com",
            "--to",
            "oncall@example.com",
            "--to",
            "lead@example.com",
        ])
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", ADMIN_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.as_mut().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

/// Email over SMTP with STARTTLS and a login: the mail arrives with its subject and both
/// recipients; the password is never answered.
#[test]
fn email_goes_out_over_starttls_with_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = SmtpServer::start(dir.path());
    let server = Server::start_with(&[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let url = format!("smtp://rota@127.0.0.1:{}", smtp.port);
    let out = set_email_channel(&server, "oncall", &url, SMTP_PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let channels = server.rota_json(&["notify", "list"]);
    assert_eq!(channels[0]["kind"], "email");
    assert_eq!(
        channels[0]["to"],
        serde_json::json!(["oncall@example.com", "lead@example.com"])
    );
    assert!(!channels.to_string().contains(SMTP_PASSWORD), "{channels}");

    let sent = server.rota(ADMIN_KEY, &["notify", "test", "oncall"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    for needle in [
        "Subject: Rota: a test notification to channel oncall",
        "From: rota@example.com",
        "oncall@example.com",
        "lead@example.com",
        "event: test",
    ] {
        assert!(mail.contains(needle), "{needle} missing from\n{mail}");
    }

    let log = server.rota_json(&["notify", "deliveries", "--channel", "oncall"]);
    assert_eq!(log[0]["state"], "delivered", "{log:#}");
    assert!(!log.to_string().contains(SMTP_PASSWORD));
}
