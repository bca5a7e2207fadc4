//! The GitHub push webhook against a real server: signatures enforced, pushes recorded once,
//! deliveries audited, releases linked to the push of their commit, and `rota release publish`
//! taking branch and commit from GitHub Actions variables.

mod common;

use std::process::Command;

use common::{trusted_key, Server, COMPATIBLE};
use hmac::{Hmac, Mac};
use rota_bundle::{BundleBuilder, Compression};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "webhook-secret-for-tests-0123456789";

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a delivery; `signature` None leaves the header out. Returns status and JSON body.
fn deliver(
    server: &Server,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, Value) {
    let mut request = common::http()
        .post(server.api("/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

fn push_payload(branch: &str, after: &str, message: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "1111111111111111111111111111111111111111",
        "after": after,
        "repository": {"full_name": "acme/robot-os"},
        "pusher": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "sender": {"login": "ada"},
        "head_commit": {"id": after, "message": format!("{message}\n\nbody")},
        "commits": [{"id": after}],
    })
    .to_string()
    .into_bytes()
}

fn pushes(server: &Server) -> Vec<Value> {
    server.get("/git/pushes").as_array().unwrap().to_vec()
}

#[test]
fn signed_pushes_are_recorded_once_and_bad_or_missing_signatures_are_refused() {
    let server = Server::start_with(&[("ROTA_GITHUB_WEBHOOK_SECRET", SECRET)]);
    let commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    let body = push_payload("main", commit, "Tune the gripper");

    // Refusals first: none of them may leave a trace.
    let tampered = push_payload("main", commit, "Tune the gripper, evilly");
    let refusals = [
        ("missing", body.clone(), None, "missing X-Hub-Signature-256"),
        (
            "other secret",
            body.clone(),
            Some(sign("some-other-secret-0123456789", &body)),
            "does not match",
        ),
        (
            "tampered body",
            tampered,
            Some(sign(SECRET, &body)),
            "does not match",
        ),
        (
            "not sha256",
            body.clone(),
            Some("sha1=0123".to_string()),
            "sha256=",
        ),
    ];
    for (name, payload, signature, reason) in refusals {
        let (status, answer) = deliver(&server, "push", name, &payload, signature.as_deref());
        assert_eq!(status, 401, "{name}: {answer}");
        assert_eq!(answer["error"], "bad_signature", "{name}");
        assert!(
            answer["reason"].as_str().unwrap().contains(reason),
            "{name}: {answer}"
        );
    }
    assert!(
        pushes(&server).is_empty(),
        "a refused delivery was recorded"
    );
    assert!(
        !server
            .audit_actions()
            .iter()
            .any(|a| a.starts_with("webhook.")),
        "a refused delivery was audited"
    );

    let (status, receipt) = deliver(&server, "push", "d-1", &body, Some(&sign(SECRET, &body)));
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(receipt["outcome"], "recorded");
    let push = &receipt["push"];
    assert_eq!(push["repository"], "acme/robot-os");
    assert_eq!(push["ref"], "refs/heads/main");
    assert_eq!(push["branch"], "main");
    assert_eq!(push["before"], "1111111111111111111111111111111111111111");
    assert_eq!(push["after"], commit);
    assert_eq!(push["pusher"], "ada");
    assert_eq!(push["head_commit_message"], "Tune the gripper");
    assert_eq!(push["commit_count"], 1);
    assert_eq!(push["delivery_id"], "d-1");

    // GitHub redelivers with the same delivery id: recorded once.
    let (status, again) = deliver(&server, "push", "d-1", &body, Some(&sign(SECRET, &body)));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["outcome"], "already_recorded");
    assert_eq!(again["push"]["id"], push["id"]);
    let recorded = pushes(&server);
    assert_eq!(recorded.len(), 1);
    assert_eq!(&recorded[0], push);

    let ping = br#"{"zen":"Design for failure.","hook_id":1}"#;
    let (status, pong) = deliver(&server, "ping", "d-2", ping, Some(&sign(SECRET, ping)));
    assert_eq!((status, pong["outcome"].as_str()), (200, Some("pong")));
    let issue = br#"{"action":"opened"}"#;
    let (status, ignored) = deliver(&server, "issues", "d-3", issue, Some(&sign(SECRET, issue)));
    assert_eq!(
        (status, ignored["outcome"].as_str()),
        (202, Some("ignored"))
    );
    assert_eq!(pushes(&server).len(), 1);

    // Every accepted delivery is audited as github's, and the secret is nowhere in the log.
    let audit = server.rota_json(&["audit", "--actor", "github"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.ignored",
            "webhook.ping",
            "webhook.push",
            "webhook.push"
        ]
    );
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "github"));
    assert!(!audit.to_string().contains(SECRET));

    // Reading pushes needs an API key like every operator route.
    let anonymous = common::http()
        .get(server.api("/git/pushes"))
        .send()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[test]
fn without_a_secret_the_webhook_says_it_is_not_configured() {
    let server = Server::start();
    let body = push_payload("main", &"a".repeat(40), "x");
    let (status, answer) = deliver(&server, "push", "d-1", &body, Some(&sign(SECRET, &body)));
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"], "webhook_not_configured");
    assert!(answer["reason"]
        .as_str()
        .unwrap()
        .contains("ROTA_GITHUB_WEBHOOK_SECRET"));
    assert!(pushes(&server).is_empty());
}

#[test]
fn an_unreadable_push_is_refused_and_not_recorded() {
    let server = Server::start_with(&[("ROTA_GITHUB_WEBHOOK_SECRET", SECRET)]);
    let body = br#"{"ref":"refs/heads/main","after":"nope"}"#;
    let (status, answer) = deliver(&server, "push", "d-1", body, Some(&sign(SECRET, body)));
    assert_eq!(status, 422, "{answer}");
    assert!(pushes(&server).is_empty());
}

/// A signed bundle whose manifest names no branch or commit, so the publisher supplies them.
fn bundle_without_source(version: &str) -> Vec<u8> {
    let mut builder = BundleBuilder::new(COMPATIBLE, version.parse().unwrap());
    builder
        .build_time(1_700_000_000)
        .compression(Compression::None)
        .workers(1)
        .sign_with(&trusted_key())
        .add_image(
            "rootfs",
            rota_bundle::SlotClass::Rootfs,
            std::io::Cursor::new(version.repeat(4096).into_bytes()),
        );
    let mut out = Vec::new();
    builder.write_to(&mut out).unwrap();
    out
}

/// `rota --json release publish PATH FLAGS` as GitHub Actions runs it: with its variables set.
fn publish_from_ci(
    server: &Server,
    path: &std::path::Path,
    vars: &[(&str, &str)],
    flags: &[&str],
) -> Value {
    let home = server.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut command = Command::new(common::cli_bin());
    command
        .args(["--json", "release", "publish", path.to_str().unwrap()])
        .args(flags)
        .env("HOME", &home)
        .env("ROTA_SERVER", &server.url)
        .env("ROTA_API_KEY", common::ADMIN_KEY);
    for name in [
        "GITHUB_HEAD_REF",
        "GITHUB_REF_NAME",
        "GITHUB_REF_TYPE",
        "GITHUB_SHA",
    ] {
        command.env_remove(name);
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn releases_show_the_push_of_their_commit_and_ci_variables_name_it() {
    let server = Server::start_with(&[("ROTA_GITHUB_WEBHOOK_SECRET", SECRET)]);
    let full = "0123456789abcdef0123456789abcdef01234567";
    let deliver_push = |delivery: &str, branch: &str, after: &str, message: &str| {
        let body = push_payload(branch, after, message);
        let (status, answer) =
            deliver(&server, "push", delivery, &body, Some(&sign(SECRET, &body)));
        assert_eq!(status, 201, "{answer}");
        answer["push"].clone()
    };

    // The commit is pushed to main, then the same commit to staging: a release built on main
    // shows the main push.
    let on_main = deliver_push("d-1", "main", full, "Release 2.0.0");
    deliver_push("d-2", "staging", full, "Release 2.0.0");

    // Published from a GitHub Actions job: branch and commit come from its variables.
    let path = server.write_bundle("2.0.0", &bundle_without_source("2.0.0"));
    let release = publish_from_ci(
        &server,
        &path,
        &[
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_REF_TYPE", "branch"),
            ("GITHUB_SHA", full),
        ],
        &[],
    );
    assert_eq!(release["branch"], "main");
    assert_eq!(release["commit"], full);
    assert_eq!(release["push"], on_main);
    let id = release["id"].as_str().unwrap();
    assert_eq!(server.get(&format!("/releases/{id}"))["push"], on_main);

    // A release whose manifest has an abbreviated commit links to the push of the full one,
    // even when the push arrives after the release.
    let short = server.publish("1.0.0"); // commit c0ffee100, branch main
    assert!(server
        .get(&format!("/releases/{short}"))
        .get("push")
        .is_none());
    let later = deliver_push(
        "d-3",
        "main",
        "c0ffee100aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "Old release",
    );
    assert_eq!(server.get(&format!("/releases/{short}"))["push"], later);

    // A CI that does not set GITHUB_REF_TYPE still names the branch.
    let path = server.write_bundle("3.0.0", &bundle_without_source("3.0.0"));
    let from_variables = publish_from_ci(
        &server,
        &path,
        &[("GITHUB_SHA", full), ("GITHUB_REF_NAME", "main")],
        &[],
    );
    assert_eq!(from_variables["branch"], "main");
    assert_eq!(from_variables["push"], on_main);

    // Flags win over the variables; a commit nobody pushed has no push.
    let path = server.write_bundle("4.0.0", &bundle_without_source("4.0.0"));
    let flagged = publish_from_ci(
        &server,
        &path,
        &[("GITHUB_SHA", full), ("GITHUB_REF_NAME", "main")],
        &[
            "--branch",
            "feature/x",
            "--commit",
            "fedcba9876543210fedcba9876543210fedcba98",
        ],
    );
    assert_eq!(flagged["branch"], "feature/x");
    assert_eq!(
        flagged["commit"],
        "fedcba9876543210fedcba9876543210fedcba98"
    );
    assert!(flagged.get("push").is_none());

    // The list shows the same links.
    let list = server.get("/releases");
    let push_of = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .get("push")
            .cloned()
    };
    assert_eq!(push_of(id), Some(on_main));
    assert_eq!(push_of(&short), Some(later));
    assert_eq!(push_of(flagged["id"].as_str().unwrap()), None);
}
