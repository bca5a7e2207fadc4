//! The GitHub Actions example of the fleet README, run here: every `run:` step of
//! fleet/examples/github-actions-app.yml under bash with the step's own environment (its
//! `${{ secrets.* }}` filled in) and the variables GitHub sets, in a checkout holding the app's
//! directory, against a real rota-server and simulated robots. The binaries under test stand in
//! for the step that installs them.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::robots::{Behaviour, SimFleet};
use common::Server;
use serde_json::Value;

/// The workflow file as JSON (python3-yaml reads it: no YAML crate for one test).
fn workflow(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let output = Command::new("/usr/bin/python3")
        .args([
            "-c",
            // BaseLoader: every scalar a string, so the key `on` stays "on" (YAML 1.1
            // would read it as true), as GitHub reads it.
            "import json, sys, yaml; print(json.dumps(yaml.load(open(sys.argv[1]), yaml.BaseLoader)))",
        ])
        .arg(&path)
        .output()
        .expect("python3 (scripts/deps installs it with python3-yaml)");
    assert!(
        output.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A directory whose `rota` and `rota-image` are the binaries under test.
fn tools_dir(root: &Path) -> PathBuf {
    let dir = root.join("bin");
    fs::create_dir_all(&dir).unwrap();
    let cli = common::cli_bin();
    let image = cli.with_file_name("rota-image");
    assert!(
        image.exists(),
        "{} is missing: build it into the same target dir (cargo build -p rota-image)",
        image.display()
    );
    std::os::unix::fs::symlink(&cli, dir.join("rota")).unwrap();
    std::os::unix::fs::symlink(&image, dir.join("rota-image")).unwrap();
    dir
}

/// `${{ secrets.NAME }}` replaced by the secret; any other expression is a test failure.
fn fill_secrets(value: &str, secrets: &BTreeMap<&str, String>) -> String {
    let Some(inner) = value
        .trim()
        .strip_prefix("${{")
        .and_then(|rest| rest.strip_suffix("}}"))
    else {
        return value.to_string();
    };
    let name = inner
        .trim()
        .strip_prefix("secrets.")
        .unwrap_or_else(|| panic!("the test knows no expression {value:?}"));
    secrets
        .get(name)
        .unwrap_or_else(|| panic!("the test has no secret {name}"))
        .clone()
}

#[test]
fn the_app_workflow_example_turns_a_push_to_staging_into_a_deployment_to_its_robots() {
    let server = Server::start();
    let _fleet = SimFleet::start(&server.url, "robot", 3, |_| Behaviour::default());
    server.rota_ok(&["groups", "create", "lab"]);
    server.rota_ok(&["groups", "add", "lab", "robot-001", "robot-002"]);
    server.rota_ok(&["env", "set", "staging", "--groups", "lab"]);
    let ci_key = server.rota_json(&["keys", "create", "ci", "--role", "deployer"])["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The repository at the pushed commit: the app's directory with its rota-app.toml.
    let root = tempfile::tempdir().unwrap();
    let checkout = root.path().join("checkout");
    let nav = checkout.join("nav");
    fs::create_dir_all(&nav).unwrap();
    fs::write(nav.join("rota-app.toml"), "name = \"nav\"\nunits = []\n").unwrap();
    fs::write(nav.join("VERSION"), "from CI\n").unwrap();
    let runner_temp = root.path().join("runner-temp");
    fs::create_dir_all(&runner_temp).unwrap();
    let path = format!(
        "{}:{}",
        tools_dir(root.path()).display(),
        std::env::var("PATH").unwrap()
    );
    let sha = "5e1ec7ed0c0ffee5e1ec7ed0c0ffee5e1ec7ed00";
    let secrets = BTreeMap::from([
        (
            "ROTA_SIGNING_KEY",
            common::trusted_key()
                .to_file_string()
                .trim_end()
                .to_string(),
        ),
        ("ROTA_SERVER", server.url.clone()),
        ("ROTA_API_KEY", ci_key),
    ]);

    let workflow = workflow("github-actions-app.yml");
    assert_eq!(
        workflow["on"]["push"]["branches"],
        serde_json::json!(["main", "staging"])
    );
    let steps = workflow["jobs"]["deploy"]["steps"].as_array().unwrap();
    let mut ran = 0;
    for step in steps {
        if step.get("uses").is_some() {
            continue; // actions/checkout: `checkout` is the checkout
        }
        let script = step["run"].as_str().expect("a step runs or uses");
        if script.starts_with("cargo install") {
            assert!(script.contains("rota-image rota-cli"), "{script}");
            continue; // the binaries under test stand in
        }
        let mut command = Command::new("bash");
        command
            .args(["-e", "-c", script])
            .current_dir(&checkout)
            .env("PATH", &path)
            .env("HOME", root.path())
            .env("GITHUB_SHA", sha)
            .env("GITHUB_REF_NAME", "staging")
            .env("GITHUB_RUN_NUMBER", "7")
            .env("RUNNER_TEMP", &runner_temp)
            .env_remove("ROTA_SERVER")
            .env_remove("ROTA_API_KEY");
        for (name, value) in step["env"].as_object().into_iter().flatten() {
            command.env(name, fill_secrets(value.as_str().unwrap(), &secrets));
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "step {:?}: {}\n{}",
            step["name"],
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ran += 1;
    }
    assert_eq!(ran, 2, "the sign and the deploy steps");
    assert!(
        !runner_temp.join("release.key").exists(),
        "the signing key outlived its step"
    );

    // A release of nav from that commit and branch, deployed to staging's robots only.
    let releases = server.get("/releases");
    let release = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["app"] == "nav")
        .unwrap_or_else(|| panic!("no nav release: {releases:#}"));
    assert_eq!(release["commit"], sha, "{release:#}");
    assert_eq!(release["branch"], "staging", "{release:#}");
    let version = release["version"].as_str().unwrap();
    assert!(
        version.starts_with("1.") && version.ends_with(".7"),
        "{version}"
    );
    let deployments = server.rota_json(&["deployments"]);
    let deployment = &deployments[0];
    assert_eq!(deployment["target"], "env:staging", "{deployment:#}");
    assert_eq!(deployment["state"], "succeeded", "{deployment:#}");
    assert_eq!(deployment["counts"]["committed"], 2, "{deployment:#}");
    let audit = server.rota_json(&["audit", "--action", "deployment.create"]);
    assert!(
        audit[0]["actor"].as_str().unwrap().contains("(ci)"),
        "{audit:#}"
    );
}
