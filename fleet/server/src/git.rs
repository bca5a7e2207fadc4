//! GitHub pushes: checking a webhook delivery's signature, reading a push payload, recording
//! it, and finding the push a release was built from.
//!
//! The parsers take bytes and strings; the database functions are separate.

use hmac::{Hmac, Mac};
use rota_protocol::operator::{GitPush, Release};
use serde::Deserialize;
use sha2::Sha256;
use sqlx::AnyConnection;

use crate::time::rfc3339;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not sha256=<64 hex digits>")]
    Malformed,
    #[error(
        "X-Hub-Signature-256 does not match the body signed with the configured webhook secret"
    )]
    Mismatch,
}

/// Checks `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of body>` in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let digest_hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let presented = hex::decode(digest_hex).map_err(|_| SignatureError::Malformed)?;
    if presented.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC-SHA256 takes keys of any length");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// What a push delivery says, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPush {
    pub repository: String,
    pub git_ref: String,
    pub branch: Option<String>,
    pub before: String,
    pub after: String,
    pub pusher: Option<String>,
    pub head_commit_message: Option<String>,
    pub commit_count: u64,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    repository: Repository,
    pusher: Option<Person>,
    sender: Option<Account>,
    head_commit: Option<HeadCommit>,
    #[serde(default)]
    commits: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct Person {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Account {
    login: Option<String>,
}

#[derive(Deserialize)]
struct HeadCommit {
    message: String,
}

/// Longest head commit message line kept.
const MAX_MESSAGE_CHARS: usize = 500;

fn is_commit_id(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a `push` event payload.
pub fn parse_push(body: &[u8]) -> Result<NewPush, String> {
    let payload: PushPayload =
        serde_json::from_slice(body).map_err(|err| format!("push payload: {err}"))?;
    for (field, value) in [("before", &payload.before), ("after", &payload.after)] {
        if !is_commit_id(value) {
            return Err(format!(
                "push payload: {field} {value:?} is not a commit id"
            ));
        }
    }
    let pusher = payload
        .sender
        .and_then(|s| s.login)
        .or(payload.pusher.and_then(|p| p.name));
    Ok(NewPush {
        branch: payload
            .git_ref
            .strip_prefix("refs/heads/")
            .map(str::to_string),
        repository: payload.repository.full_name,
        git_ref: payload.git_ref,
        before: payload.before.to_ascii_lowercase(),
        after: payload.after.to_ascii_lowercase(),
        pusher,
        head_commit_message: payload.head_commit.map(|c| {
            c.message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(MAX_MESSAGE_CHARS)
                .collect()
        }),
        commit_count: payload.commits.len() as u64,
    })
}

const PUSH_COLUMNS: &str = "id, delivery_id, repository, git_ref, branch, before_commit, after_commit, pusher, head_message, commit_count, received_at";

type PushRow = (
    i64,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

fn push_from_row(row: PushRow) -> GitPush {
    let (
        id,
        delivery_id,
        repository,
        git_ref,
        branch,
        before,
        after,
        pusher,
        head_commit_message,
        commit_count,
        received_at,
    ) = row;
    GitPush {
        id,
        delivery_id,
        repository,
        git_ref,
        branch,
        before,
        after,
        pusher,
        head_commit_message,
        commit_count: u64::try_from(commit_count).unwrap_or(0),
        received_at: rfc3339(received_at),
    }
}

/// Stores a push; returns it and whether it is new (false: this delivery id was recorded
/// before, GitHub redelivered it).
pub async fn record_push(
    conn: &mut AnyConnection,
    push: &NewPush,
    delivery_id: Option<&str>,
    now_ms: i64,
) -> Result<(GitPush, bool), sqlx::Error> {
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO git_pushes (delivery_id, repository, git_ref, branch, before_commit,
             after_commit, pusher, head_message, commit_count, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
    )
    .bind(delivery_id)
    .bind(&push.repository)
    .bind(&push.git_ref)
    .bind(&push.branch)
    .bind(&push.before)
    .bind(&push.after)
    .bind(&push.pusher)
    .bind(&push.head_commit_message)
    .bind(i64::try_from(push.commit_count).unwrap_or(i64::MAX))
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    let select =
        |condition: &str| format!("SELECT {PUSH_COLUMNS} FROM git_pushes WHERE {condition}");
    let row: PushRow = match inserted {
        Some(id) => {
            sqlx::query_as(&select("id = $1"))
                .bind(id)
                .fetch_one(&mut *conn)
                .await?
        }
        // Only a delivery id can conflict, so there is one.
        None => {
            sqlx::query_as(&select("delivery_id = $1"))
                .bind(delivery_id)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok((push_from_row(row), inserted.is_some()))
}

/// Recorded pushes, newest first, optionally of one repository and/or branch.
pub async fn list_pushes(
    conn: &mut AnyConnection,
    repository: Option<&str>,
    branch: Option<&str>,
    limit: i64,
) -> Result<Vec<GitPush>, sqlx::Error> {
    // Empty strings stand for "any", so one statement serves every filter combination.
    let rows: Vec<PushRow> = sqlx::query_as(&format!(
        "SELECT {PUSH_COLUMNS} FROM git_pushes
         WHERE ($1 = '' OR repository = $2) AND ($3 = '' OR branch = $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(repository.unwrap_or_default())
    .bind(repository.unwrap_or_default())
    .bind(branch.unwrap_or_default())
    .bind(branch.unwrap_or_default())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(push_from_row).collect())
}

/// The push a release with `commit` (full, or abbreviated to 7+ hex digits) was built from:
/// one to `branch` if there is such, else the newest.
pub async fn push_for_commit(
    conn: &mut AnyConnection,
    commit: &str,
    branch: Option<&str>,
) -> Result<Option<GitPush>, sqlx::Error> {
    if !is_commit_id(commit) {
        return Ok(None);
    }
    let commit = commit.to_ascii_lowercase();
    let row: Option<PushRow> = sqlx::query_as(&format!(
        "SELECT {PUSH_COLUMNS} FROM git_pushes
         WHERE SUBSTR(after_commit, 1, LENGTH(CAST($1 AS TEXT))) = $2
            OR (LENGTH(after_commit) >= 7 AND SUBSTR(CAST($3 AS TEXT), 1, LENGTH(after_commit)) = after_commit)
         ORDER BY CASE WHEN branch = $4 THEN 0 ELSE 1 END, id DESC
         LIMIT 1"
    ))
    .bind(&commit)
    .bind(&commit)
    .bind(&commit)
    .bind(branch.unwrap_or_default())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(push_from_row))
}

/// Fills the release's `push` from the recorded pushes.
pub async fn attach_push(
    conn: &mut AnyConnection,
    release: &mut Release,
) -> Result<(), sqlx::Error> {
    if let Some(commit) = &release.commit {
        release.push = push_for_commit(conn, commit, release.branch.as_deref()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_against_the_body_and_secret() {
        let secret = "it's a secret to everybody";
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = sign(secret, body);
        assert_eq!(
            verify_signature(secret.as_bytes(), body, Some(&good)),
            Ok(())
        );
        let cases = [
            (None, SignatureError::Missing),
            (Some("sha1=abc".to_string()), SignatureError::Malformed),
            (Some("sha256=zz".to_string()), SignatureError::Malformed),
            (Some("sha256=abcd".to_string()), SignatureError::Malformed),
            (Some(sign("another secret", body)), SignatureError::Mismatch),
            (Some(sign(secret, b"{}")), SignatureError::Mismatch),
        ];
        for (header, expected) in cases {
            assert_eq!(
                verify_signature(secret.as_bytes(), body, header.as_deref()),
                Err(expected),
                "{header:?}"
            );
        }
    }

    #[test]
    fn github_documentation_example_signature_verifies() {
        // The worked example in GitHub's "Validating webhook deliveries" page.
        assert_eq!(
            verify_signature(
                b"It's a Secret to Everybody",
                b"Hello, World!",
                Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            ),
            Ok(())
        );
    }

    #[test]
    fn push_payloads_give_branch_commits_pusher_and_first_message_line() {
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678",
            "repository": {"full_name": "acme/robot-os", "id": 1},
            "pusher": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "sender": {"login": "ada"},
            "head_commit": {"id": "a1b2", "message": "Tune the gripper\n\nLonger body."},
            "commits": [{"id": "x"}, {"id": "y"}],
        });
        let push = parse_push(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            push,
            NewPush {
                repository: "acme/robot-os".into(),
                git_ref: "refs/heads/main".into(),
                branch: Some("main".into()),
                before: "0000000000000000000000000000000000000000".into(),
                after: "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678".into(),
                pusher: Some("ada".into()),
                head_commit_message: Some("Tune the gripper".into()),
                commit_count: 2,
            }
        );
        let tag = serde_json::json!({
            "ref": "refs/tags/v1.0.0", "before": "0".repeat(40), "after": "b".repeat(40),
            "repository": {"full_name": "acme/robot-os"}, "head_commit": null,
        });
        let push = parse_push(tag.to_string().as_bytes()).unwrap();
        assert_eq!(push.branch, None);
        assert_eq!(push.commit_count, 0);
        assert_eq!(push.head_commit_message, None);
    }

    #[test]
    fn unreadable_push_payloads_name_the_problem() {
        let err = parse_push(b"{}").unwrap_err();
        assert!(err.contains("ref"), "{err}");
        let bad_commit = serde_json::json!({
            "ref": "refs/heads/x", "before": "0".repeat(40), "after": "not-a-commit",
            "repository": {"full_name": "a/b"},
        });
        let err = parse_push(bad_commit.to_string().as_bytes()).unwrap_err();
        assert!(
            err.contains("after") && err.contains("not-a-commit"),
            "{err}"
        );
    }
}
