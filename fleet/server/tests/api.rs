//! The API's edges: who may call what, what malformed input gets, uploads that must be
//! refused, Range downloads, long-poll, and the OpenAPI document against the served routes.

mod common;

use std::time::{Duration, Instant};

use common::{bundle, stranger_key, trusted_key, Server, ADMIN_KEY, COMPATIBLE, ENROLLMENT_KEY};
use reqwest::blocking::RequestBuilder;
use reqwest::header::{CONTENT_TYPE, RANGE};
use reqwest::Method;
use rota_protocol::client::{Poll, RobotClient};
use serde_json::{json, Value};

/// Sends and returns status and JSON body (Null when empty); every error body must be
/// `{error, reason}`.
fn call(request: RequestBuilder) -> (u16, Value) {
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status >= 400 {
        assert!(
            body["error"].is_string() && body["reason"].is_string(),
            "error answer {status} is not {{error, reason}}: {body}"
        );
    }
    (status, body)
}

struct Keys {
    viewer: String,
    deployer: String,
    admin: String,
    robot: String,
}

fn keys(server: &Server) -> Keys {
    let create = |role: &str| {
        server
            .rota_ok(&["keys", "create", &format!("{role} key"), "--role", role])
            .trim()
            .to_string()
    };
    let mut robot = RobotClient::new(&server.url).unwrap();
    let token = robot
        .enroll(ENROLLMENT_KEY, "robot-001", COMPATIBLE, None)
        .unwrap()
        .token;
    Keys {
        viewer: create("viewer"),
        deployer: create("deployer"),
        admin: ADMIN_KEY.to_string(),
        robot: token,
    }
}

#[test]
fn authz_matrix() {
    let server = Server::start();
    let keys = keys(&server);
    let release = server.publish("2.0.0");
    let http = common::http();
    let deploy_body = json!({"release": release, "target": "robot:robot-001"});
    let key_body = json!({"name": "k", "role": "viewer"});

    // (who, method, path, body, expected status)
    let cases: Vec<(&str, Method, String, Option<Value>, u16)> = vec![
        ("none", Method::GET, "/robots".into(), None, 401),
        ("unknown", Method::GET, "/robots".into(), None, 401),
        (
            "unknown-robot",
            Method::GET,
            "/robot/assignment".into(),
            None,
            401,
        ),
        ("viewer", Method::GET, "/robots".into(), None, 200),
        ("viewer", Method::GET, "/audit".into(), None, 200),
        (
            "viewer",
            Method::POST,
            "/deployments".into(),
            Some(deploy_body.clone()),
            403,
        ),
        ("viewer", Method::PUT, "/groups/lab".into(), None, 403),
        ("deployer", Method::PUT, "/groups/lab".into(), None, 201),
        (
            "viewer",
            Method::PUT,
            "/groups/pis/query".into(),
            Some(json!({"query": "board ~ \"Pi\""})),
            403,
        ),
        (
            "deployer",
            Method::PUT,
            "/groups/pis/query".into(),
            Some(json!({"query": "board ~ \"Pi\""})),
            201,
        ),
        ("viewer", Method::GET, "/groups/pis".into(), None, 200),
        (
            "viewer",
            Method::PATCH,
            "/robots/robot-001/tags".into(),
            Some(json!({"set": {"site": "lab"}})),
            403,
        ),
        (
            "deployer",
            Method::PATCH,
            "/robots/robot-001/tags".into(),
            Some(json!({"set": {"site": "lab"}})),
            200,
        ),
        (
            "robot",
            Method::PATCH,
            "/robots/robot-001/tags".into(),
            Some(json!({"set": {"site": "lab"}})),
            403,
        ),
        (
            "deployer",
            Method::POST,
            "/deployments".into(),
            Some(deploy_body.clone()),
            201,
        ),
        (
            "deployer",
            Method::POST,
            "/api-keys".into(),
            Some(key_body.clone()),
            403,
        ),
        (
            "deployer",
            Method::POST,
            "/robots/robot-001/approve".into(),
            None,
            403,
        ),
        (
            "admin",
            Method::POST,
            "/api-keys".into(),
            Some(key_body.clone()),
            201,
        ),
        ("admin", Method::GET, "/api-keys".into(), None, 200),
        ("robot", Method::GET, "/robots".into(), None, 403),
        ("robot", Method::GET, "/audit".into(), None, 403),
        (
            "robot",
            Method::POST,
            "/deployments".into(),
            Some(deploy_body.clone()),
            403,
        ),
        ("robot", Method::GET, "/whoami".into(), None, 403),
        ("robot", Method::GET, "/robot/assignment".into(), None, 200),
        (
            "robot",
            Method::PUT,
            "/robot/inventory".into(),
            Some(json!({"kernel": "6.6.31"})),
            204,
        ),
        (
            "viewer",
            Method::PUT,
            "/robot/inventory".into(),
            Some(json!({"kernel": "6.6.31"})),
            403,
        ),
        ("admin", Method::GET, "/robot/assignment".into(), None, 403),
        (
            "viewer",
            Method::POST,
            "/robot/events".into(),
            Some(json!({"deployment_id": "d", "event": "committed"})),
            403,
        ),
        (
            "robot",
            Method::GET,
            format!("/releases/{release}/bundle"),
            None,
            200,
        ),
        (
            "viewer",
            Method::GET,
            format!("/releases/{release}/bundle"),
            None,
            200,
        ),
        (
            "none",
            Method::GET,
            format!("/releases/{release}/bundle"),
            None,
            401,
        ),
    ];
    let mut failures = Vec::new();
    for (who, method, path, body, expected) in &cases {
        let mut request = http.request(method.clone(), server.api(path));
        let token = match *who {
            "viewer" => Some(keys.viewer.as_str()),
            "deployer" => Some(keys.deployer.as_str()),
            "admin" => Some(keys.admin.as_str()),
            "robot" => Some(keys.robot.as_str()),
            "unknown" => Some("rota_op_000000000000000000000000000000000000000000000000"),
            "unknown-robot" => Some("rota_rb_000000000000000000000000000000000000000000000000"),
            _ => None,
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, answer) = call(request);
        if status != *expected {
            failures.push(format!(
                "{who} {method} {path}: expected {expected}, got {status} {answer}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "authz cells wrong:\n{}",
        failures.join("\n")
    );

    // A revoked key stops working; refusals are not audited as actions, grants are.
    let created: Value = server.rota_json(&["keys", "create", "temp", "--role", "viewer"]);
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    server.rota_ok(&["keys", "revoke", id]);
    let (status, _) = call(http.get(server.api("/robots")).bearer_auth(key));
    assert_eq!(status, 401);
    let actions = server.audit_actions();
    assert!(actions.iter().any(|a| a == "api_key.revoke"));
    assert!(actions.iter().any(|a| a == "group.create"));
    let audit = server.rota_json(&["audit", "--limit", "1000"]);
    assert!(
        !audit.to_string().contains(&keys.viewer),
        "a secret leaked into the audit log"
    );
}

#[test]
fn malformed_input_gets_json_4xx() {
    let server = Server::start();
    let keys = keys(&server);
    let http = common::http();
    let raw = |method: Method, path: &str, token: &str, body: &str| {
        http.request(method, server.api(path))
            .bearer_auth(token)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };
    let cases: Vec<(&str, RequestBuilder, u16, &str)> = vec![
        (
            "broken JSON",
            raw(Method::POST, "/deployments", ADMIN_KEY, "{\"release\": "),
            400,
            "malformed_json",
        ),
        (
            "wrong field type",
            raw(
                Method::POST,
                "/deployments",
                ADMIN_KEY,
                r#"{"release": 7, "target": "all"}"#,
            ),
            422,
            "invalid_body",
        ),
        (
            "bad target",
            raw(
                Method::POST,
                "/deployments",
                ADMIN_KEY,
                r#"{"release": "x", "target": "everyone"}"#,
            ),
            422,
            "invalid_body",
        ),
        (
            "unknown release",
            raw(
                Method::POST,
                "/deployments",
                ADMIN_KEY,
                r#"{"release": "9.9.9", "target": "all"}"#,
            ),
            404,
            "not_found",
        ),
        (
            "unknown group",
            raw(Method::PUT, "/groups/nope/robots/robot-001", ADMIN_KEY, ""),
            404,
            "not_found",
        ),
        (
            "unknown deployment",
            raw(Method::GET, "/deployments/dep_nope", ADMIN_KEY, ""),
            404,
            "not_found",
        ),
        (
            "unknown robot",
            raw(Method::GET, "/robots/ghost", ADMIN_KEY, ""),
            404,
            "not_found",
        ),
        (
            "unknown route",
            raw(Method::GET, "/nonsense", ADMIN_KEY, ""),
            404,
            "no_route",
        ),
        (
            "wrong method",
            raw(Method::PATCH, "/robots", ADMIN_KEY, ""),
            405,
            "method_not_allowed",
        ),
        (
            "bad query",
            raw(Method::GET, "/robot/assignment?wait=soon", &keys.robot, ""),
            400,
            "bad_query",
        ),
        (
            "unknown event",
            raw(
                Method::POST,
                "/robot/events",
                &keys.robot,
                r#"{"deployment_id": "d", "event": "exploded"}"#,
            ),
            422,
            "invalid_body",
        ),
        (
            "event for no assignment",
            raw(
                Method::POST,
                "/robot/events",
                &keys.robot,
                r#"{"deployment_id": "dep_x", "event": "committed"}"#,
            ),
            404,
            "not_found",
        ),
        (
            "enroll without fields",
            raw(Method::POST, "/robot/enroll", "", r#"{"robot_id": "r"}"#),
            422,
            "invalid_body",
        ),
        (
            "enroll with a bad id",
            raw(
                Method::POST,
                "/robot/enroll",
                "",
                &json!({"enrollment_key": ENROLLMENT_KEY, "robot_id": "../etc", "compatible": "x"})
                    .to_string(),
            ),
            422,
            "unprocessable",
        ),
        (
            "not JSON at all",
            http.post(server.api("/deployments"))
                .bearer_auth(ADMIN_KEY)
                .header(CONTENT_TYPE, "text/plain")
                .body("hi"),
            415,
            "unsupported_media_type",
        ),
        (
            "empty key name",
            raw(
                Method::POST,
                "/api-keys",
                ADMIN_KEY,
                r#"{"name": " ", "role": "viewer"}"#,
            ),
            422,
            "unprocessable",
        ),
        (
            "unknown role",
            raw(
                Method::POST,
                "/api-keys",
                ADMIN_KEY,
                r#"{"name": "x", "role": "root"}"#,
            ),
            422,
            "invalid_body",
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, status, code) in cases {
        let (got, body) = call(request);
        if got != status || body["error"] != code {
            failures.push(format!(
                "{what}: expected {status} {code}, got {got} {body}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tampered_unsigned_and_untrusted_bundles_are_rejected() {
    let server = Server::start_with(&[("ROTA_MAX_BUNDLE_SIZE", "1048576")]);
    let good = bundle("2.0.0", COMPATIBLE, &trusted_key(), 64 * 1024);

    let mut payload_flipped = good.clone();
    *payload_flipped.last_mut().unwrap() ^= 0x01;
    let mut manifest_flipped = good.clone();
    manifest_flipped[40] ^= 0x01;
    // Unsigned: drop the signature block and zero its length in the header (FORMAT.md).
    let manifest_len = u32::from_le_bytes(good[24..28].try_into().unwrap()) as usize;
    let signatures_len = u32::from_le_bytes(good[28..32].try_into().unwrap()) as usize;
    let mut unsigned = good[..32 + manifest_len].to_vec();
    unsigned[28..32].copy_from_slice(&0u32.to_le_bytes());
    unsigned.extend_from_slice(&good[32 + manifest_len + signatures_len..]);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"extra");

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "signed by an untrusted key",
            bundle("2.0.0", COMPATIBLE, &stranger_key(), 64 * 1024),
            422,
            "no signature by a trusted key",
        ),
        ("unsigned", unsigned, 422, "no signature"),
        (
            "payload byte flipped",
            payload_flipped,
            422,
            "bundle rejected",
        ),
        (
            "manifest byte flipped",
            manifest_flipped,
            422,
            "bundle rejected",
        ),
        ("trailing bytes", trailing, 422, "bundle rejected"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            422,
            "truncated",
        ),
        (
            "not a bundle",
            b"hello, I am a shell script".to_vec(),
            422,
            "bundle rejected",
        ),
        ("empty", Vec::new(), 400, "empty upload"),
        (
            "over the size limit",
            bundle("2.0.1", COMPATIBLE, &trusted_key(), 2 << 20),
            413,
            "limit",
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, status, reason) in cases {
        let path = server.write_bundle(&what.replace(' ', "-"), &bytes);
        let out = server.rota(ADMIN_KEY, &["release", "publish", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || !stderr.contains(&status.to_string())
            || !stderr.contains(reason)
        {
            failures.push(format!(
                "{what}: expected {status} ({reason}), got {}: {stderr}",
                out.status
            ));
        }
        assert!(
            out.stdout.is_empty(),
            "{what}: a refused upload printed a result"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(server.rota_json(&["release", "list"]), json!([]));

    // The good one passes; the same bundle again is the same release; another bundle with the
    // same version is a conflict.
    let path = server.write_bundle("good", &good);
    let first = server.rota_ok(&["release", "publish", path.to_str().unwrap()]);
    let second = server.rota_ok(&["release", "publish", path.to_str().unwrap()]);
    assert_eq!(first, second);
    let other = server.write_bundle(
        "other",
        &bundle("2.0.0", COMPATIBLE, &trusted_key(), 32 * 1024),
    );
    let out = server.rota(ADMIN_KEY, &["release", "publish", other.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
    // Branch and commit may fill what the manifest lacks but not contradict it.
    let out = server.rota(
        ADMIN_KEY,
        &[
            "release",
            "publish",
            path.to_str().unwrap(),
            "--commit",
            "deadbeef",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("422"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bundle_downloads_honour_range_requests() {
    let server = Server::start();
    let bytes = bundle("2.0.0", COMPATIBLE, &trusted_key(), 200 * 1024);
    let path = server.write_bundle("b", &bytes);
    let release = server
        .rota_ok(&["release", "publish", path.to_str().unwrap()])
        .trim()
        .to_string();
    let http = common::http();
    let url = server.api(&format!("/releases/{release}/bundle"));

    let whole = http.get(&url).bearer_auth(ADMIN_KEY).send().unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().unwrap().as_ref(), bytes.as_slice());

    let len = bytes.len();
    for (range, start, end) in [
        ("bytes=100-199", 100, 200),
        (&format!("bytes={}-", len - 10) as &str, len - 10, len),
        ("bytes=-5", len - 5, len),
    ] {
        let part = http
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .header(RANGE, range)
            .send()
            .unwrap();
        assert_eq!(part.status(), 206, "{range}");
        assert_eq!(
            part.headers()["content-range"],
            format!("bytes {start}-{}/{len}", end - 1)
        );
        assert_eq!(
            part.bytes().unwrap().as_ref(),
            &bytes[start..end],
            "{range}"
        );
    }
    let outside = http
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .header(RANGE, format!("bytes={}-", len + 10))
        .send()
        .unwrap();
    assert_eq!(outside.status(), 416);
}

#[test]
fn long_poll_wakes_on_deploy_and_etags_make_idle_polls_cheap() {
    let server = Server::start();
    let mut client = RobotClient::new(&server.url).unwrap();
    client
        .enroll(ENROLLMENT_KEY, "robot-001", COMPATIBLE, None)
        .unwrap();
    server.publish("2.0.0");
    assert_eq!(client.poll(None, None).unwrap(), Poll::Nothing);

    let wait = Duration::from_secs(60);
    let poller = {
        let client = client.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            (client.poll(None, Some(wait)).unwrap(), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let deployment = server
        .rota_ok(&["deploy", "2.0.0", "--to", "robot:robot-001"])
        .trim()
        .to_string();
    let (poll, elapsed) = poller.join().unwrap();
    let Poll::Assignment { assignment, etag } = poll else {
        panic!("long-poll ended without the assignment: {poll:?}")
    };
    // Answered because of the deployment, not because the wait ran out.
    assert!(
        elapsed < wait,
        "long-poll returned only after its full wait"
    );
    assert_eq!(assignment.deployment_id, deployment);
    assert_eq!(assignment.version, "2.0.0");
    assert!(assignment.bundle_requires_token);
    assert!(assignment.bundle_url.starts_with(&server.url));
    let etag = etag.expect("assignment has an ETag");

    // Same assignment: 304 with no body.
    assert_eq!(client.poll(Some(&etag), None).unwrap(), Poll::NotModified);
    // Once the robot ends the assignment, the poll says so at once even with the old ETag.
    use rota_protocol::robot::RobotEvent;
    client
        .report(
            &deployment,
            RobotEvent::Failed {
                error: "disk full".into(),
            },
        )
        .unwrap();
    client
        .report(
            &deployment,
            RobotEvent::Failed {
                error: "disk full".into(),
            },
        )
        .unwrap();
    assert_eq!(client.poll(Some(&etag), Some(wait)).unwrap(), Poll::Nothing);
    // A contradicting report after the end is a conflict.
    let err = client
        .report(&deployment, RobotEvent::Committed)
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
}

#[test]
fn openapi_document_describes_exactly_the_served_routes() {
    let server = Server::start();
    let http = common::http();
    let document: Value = http
        .get(server.api("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Every documented operation is served: an unrouted one would get no_route or 405.
    for (method, path) in &operations {
        let concrete = path
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{robot_id}", "x")
            .replace("{verb}", "pause");
        let url = format!("{}{concrete}", server.url);
        let (status, body) = call(http.request(method.parse().unwrap(), &url));
        assert!(
            status != 405 && body["error"] != "no_route",
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
    // And the routes the robot and the CLI depend on are documented.
    for expected in [
        ("POST", "/api/v1/robot/enroll"),
        ("GET", "/api/v1/robot/assignment"),
        ("POST", "/api/v1/robot/events"),
        ("PUT", "/api/v1/robot/slots"),
        ("PUT", "/api/v1/robot/inventory"),
        ("PATCH", "/api/v1/robots/{id}/tags"),
        ("PUT", "/api/v1/groups/{name}/query"),
        ("GET", "/api/v1/groups/{name}"),
        ("POST", "/api/v1/releases"),
        ("GET", "/api/v1/releases/{id}/bundle"),
        ("POST", "/api/v1/deployments"),
        ("GET", "/api/v1/deployments/{id}"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/status"),
        ("POST", "/api/v1/api-keys"),
        ("POST", "/api/v1/webhooks/github"),
        ("GET", "/api/v1/git/pushes"),
        ("GET", "/api/v1/history/releases"),
        ("POST", "/api/v1/deployments/{id}/{verb}"),
        ("POST", "/api/v1/rollbacks"),
        ("PUT", "/api/v1/environments/{name}"),
        ("POST", "/api/v1/environments/{name}/promote"),
        ("GET", "/api/v1/environments/{name}/vars"),
        ("PUT", "/api/v1/environments/{name}/vars/{var}"),
        ("DELETE", "/api/v1/environments/{name}/vars/{var}"),
        ("PUT", "/api/v1/notifications/channels/{name}"),
        ("POST", "/api/v1/notifications/channels/{name}/test"),
        ("GET", "/api/v1/notifications/deliveries"),
    ] {
        assert!(
            operations
                .iter()
                .any(|(m, p)| m == expected.0 && p == expected.1),
            "{expected:?} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        operations.len(),
        47,
        "routes added or removed: update this test's count"
    );
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Assignment",
        "RobotEvent",
        "EventReport",
        "Deployment",
        "ErrorBody",
        "Release",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
}

/// An environment's secrets: set by admins only, never answered (only their name and version),
/// never in the audit log; bad names and multi-line values are 422 with the reason.
#[test]
fn environment_secrets_are_admin_only_and_never_answered() {
    let server = Server::start();
    server.rota_ok(&["env", "set", "production", "--groups", "prod"]);
    let viewer: Value = server.rota_json(&["keys", "create", "watcher", "--role", "viewer"]);
    let viewer = viewer["key"].as_str().unwrap();
    let put = |key: &str, name: &str, body: Value| {
        call(
            common::http()
                .put(server.api(&format!("/environments/production/vars/{name}")))
                .bearer_auth(key)
                .json(&body),
        )
    };
    let secret = json!({"value": "hunter2-top-secret", "secret": true});
    assert_eq!(put(viewer, "API_KEY", secret.clone()).0, 403);
    let (status, set) = put(ADMIN_KEY, "API_KEY", secret.clone());
    assert_eq!((status, set["version"].clone()), (200, json!(1)), "{set}");
    assert!(set.get("value").is_none(), "{set}");
    assert_eq!(put(ADMIN_KEY, "API_KEY", secret).1["version"], 2);
    let (status, bad) = put(ADMIN_KEY, "1BAD", json!({"value": "x"}));
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["reason"].as_str().unwrap().contains("variable name"),
        "{bad}"
    );
    let (status, bad) = put(ADMIN_KEY, "MULTI", json!({"value": "a\nb"}));
    assert_eq!(status, 422, "{bad}");
    let unknown = call(
        common::http()
            .put(server.api("/environments/nowhere/vars/X"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"value": "x"})),
    );
    assert_eq!(unknown.0, 404);

    let (status, listed) = call(
        common::http()
            .get(server.api("/environments/production/vars"))
            .bearer_auth(viewer),
    );
    assert_eq!(status, 200);
    assert_eq!(listed[0]["name"], "API_KEY");
    assert!(!listed.to_string().contains("hunter2"), "{listed}");
    let audit = server.rota_ok(&["--json", "audit"]);
    assert!(audit.contains("environment.var.set"), "{audit}");
    assert!(!audit.contains("hunter2"), "{audit}");
}
