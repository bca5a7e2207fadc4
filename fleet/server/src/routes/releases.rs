//! Releases: upload (signature- and hash-checked with rota-bundle), list, read, download.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use rota_bundle::{BundleReader, Keyring};
use rota_protocol::operator::{ErrorBody, Release, Role};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::audit;
use crate::auth::{Caller, Operator};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::git;
use crate::routes::environments;
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

pub const RELEASE_COLUMNS: &str = "id, version, compatible, git_commit, git_branch, size, manifest_hash, bundle_sha256, created_at, created_by, app";

pub type ReleaseRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    i64,
    String,
    Option<String>,
);

pub fn release_from_row(row: ReleaseRow) -> Release {
    let (
        id,
        version,
        compatible,
        commit,
        branch,
        size,
        manifest_hash,
        bundle_sha256,
        created_at,
        created_by,
        app,
    ) = row;
    Release {
        id,
        version,
        compatible,
        commit,
        branch,
        size: u64::try_from(size).unwrap_or(0),
        manifest_hash,
        bundle_sha256,
        created_at: rfc3339(created_at),
        created_by,
        push: None,
        app,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PublishQuery {
    /// Git branch, when the bundle's signed manifest does not name one.
    pub branch: Option<String>,
    /// Git commit, when the bundle's signed manifest does not name one.
    pub commit: Option<String>,
}

/// What checking an uploaded bundle found.
struct Checked {
    version: String,
    compatible: String,
    commit: Option<String>,
    branch: Option<String>,
    manifest_hash: String,
    /// The app of an app release.
    app: Option<String>,
}

/// Verifies signatures against the fleet keyring and every chunk hash; blocking.
fn check_bundle(path: &Path, keyring_dir: &Path) -> ApiResult<Checked> {
    let keyring = Keyring::load_dir(keyring_dir).map_err(|err| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_keyring",
            format!("the fleet keyring cannot be used: {err}"),
        )
    })?;
    let file = std::fs::File::open(path).map_err(ApiError::internal)?;
    let reject = |err: rota_bundle::Error| {
        let why = match &err {
            // The bundle crate's own text lists the key ids in Rust debug form.
            rota_bundle::Error::NoTrustedSignature { key_ids } => format!(
                "no signature by a trusted key: signed by key id {}, which is not in the fleet \
                 keyring (it takes *.pub files as `rota-image keygen` writes them)",
                key_ids
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bundle_rejected",
            format!("bundle rejected: {why}"),
        )
    };
    let bundle = BundleReader::open(std::io::BufReader::with_capacity(1 << 20, file), &keyring)
        .map_err(reject)?;
    let manifest = bundle.manifest().clone();
    let manifest_hash = bundle.verified_manifest().digest().to_string();
    bundle.verify_all().map_err(reject)?;
    let source = manifest.source.as_ref();
    Ok(Checked {
        version: manifest.version.to_string(),
        compatible: manifest.compatible.clone(),
        commit: source.map(|s| s.git_commit.clone()),
        branch: source.and_then(|s| s.git_branch.clone()),
        manifest_hash,
        app: manifest
            .app
            .is_some()
            .then(|| manifest.images[0].name.clone()),
    })
}

/// Fills a field the manifest lacks from the request; refuses a contradiction.
fn merge_source(
    field: &str,
    signed: Option<String>,
    given: Option<String>,
) -> ApiResult<Option<String>> {
    match (signed, given) {
        (Some(signed), Some(given)) if signed != given => Err(ApiError::unprocessable(format!(
            "the signed manifest says {field} {signed:?} but the request says {given:?}"
        ))),
        (signed, given) => Ok(signed.or(given)),
    }
}

/// How much of an oversized upload is read and dropped before the 413 goes out.
const DRAIN_BEFORE_413: u64 = 64 << 20;

/// Streams the request body into a temporary file, hashing it; 413 past `limit` bytes.
async fn receive(
    body: Body,
    dir: &Path,
    limit: u64,
) -> ApiResult<(tempfile::NamedTempFile, String, u64)> {
    let incoming = dir.join("incoming");
    tokio::fs::create_dir_all(&incoming)
        .await
        .map_err(ApiError::internal)?;
    let mut temp = tempfile::NamedTempFile::new_in(&incoming).map_err(ApiError::internal)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::with_capacity(1 << 20);
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|err| ApiError::bad_request(format!("reading the upload: {err}")))?;
        size += chunk.len() as u64;
        if size > limit {
            // Read on (up to a bound) before answering: a client still sending when the
            // connection closes never sees the 413, only a broken pipe.
            while size <= limit.saturating_add(DRAIN_BEFORE_413) {
                match stream.next().await {
                    Some(Ok(chunk)) => size += chunk.len() as u64,
                    _ => break,
                }
            }
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("bundle is larger than the server's limit of {limit} bytes"),
            ));
        }
        hasher.update(&chunk);
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= 1 << 20 {
            temp.write_all(&buffer).map_err(ApiError::internal)?;
            buffer.clear();
        }
    }
    temp.write_all(&buffer).map_err(ApiError::internal)?;
    temp.as_file().sync_all().map_err(ApiError::internal)?;
    if size == 0 {
        return Err(ApiError::bad_request(
            "empty upload: send the bundle file as the request body",
        ));
    }
    Ok((temp, hex::encode(hasher.finalize()), size))
}

pub fn bundle_path(state: &AppState, bundle_sha256: &str) -> PathBuf {
    state
        .settings
        .bundle_dir()
        .join(format!("{bundle_sha256}.rota"))
}

/// Publish a release: the body is the bundle file.
///
/// The bundle must be signed by a key in the fleet keyring and every chunk must match its
/// signed hash. Publishing the same bundle again answers 200 with the existing release.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases",
    params(PublishQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Release),
        (status = 200, description = "this bundle was published before", body = Release),
        (status = 403, description = "needs the deployer role", body = ErrorBody),
        (status = 409, description = "another bundle has this version", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "unsigned, untrusted or damaged bundle", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn publish(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(query): ApiQuery<PublishQuery>,
    body: Body,
) -> ApiResult<(StatusCode, ApiJson<Release>)> {
    operator.require(Role::Deployer)?;
    let dir = state.settings.bundle_dir();
    let (temp, bundle_sha256, size) = receive(body, &dir, state.settings.max_bundle_size).await?;
    let keyring_dir = state.settings.keyring_dir.clone();
    let temp_path = temp.path().to_path_buf();
    let checked = tokio::task::spawn_blocking(move || check_bundle(&temp_path, &keyring_dir))
        .await
        .map_err(ApiError::internal)??;
    let commit = merge_source("commit", checked.commit, query.commit)?;
    let branch = merge_source("branch", checked.branch, query.branch)?;

    let existing: Option<ReleaseRow> = sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases
         WHERE compatible = $1 AND version = $2 AND COALESCE(app, '') = $3"
    ))
    .bind(&checked.compatible)
    .bind(&checked.version)
    .bind(checked.app.as_deref().unwrap_or(""))
    .fetch_optional(state.db.pool())
    .await?;
    if let Some(row) = existing {
        let release = release_from_row(row);
        if release.bundle_sha256 == bundle_sha256 {
            return Ok((StatusCode::OK, ApiJson(release)));
        }
        return Err(ApiError::conflict(format!(
            "release {} already has version {} for {}{}; bump the version",
            release.id,
            release.version,
            release.compatible,
            release
                .app
                .as_deref()
                .map(|app| format!(" (app {app})"))
                .unwrap_or_default()
        )));
    }

    let final_path = bundle_path(&state, &bundle_sha256);
    temp.persist(&final_path)
        .map_err(|err| ApiError::internal(err.error))?;
    let release = Release {
        id: format!("rel_{}", &checked.manifest_hash[..16]),
        version: checked.version,
        compatible: checked.compatible,
        commit,
        branch,
        size,
        manifest_hash: checked.manifest_hash,
        bundle_sha256,
        created_at: String::new(),
        created_by: operator.actor(),
        push: None,
        app: checked.app,
    };
    let now = now_ms();
    let mut write = state.db.begin_write().await?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT DO NOTHING"
    ))
    .bind(&release.id)
    .bind(&release.version)
    .bind(&release.compatible)
    .bind(&release.commit)
    .bind(&release.branch)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(&release.manifest_hash)
    .bind(&release.bundle_sha256)
    .bind(now)
    .bind(&release.created_by)
    .bind(&release.app)
    .execute(&mut *write.tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::conflict(format!(
            "release {} ({} for {}) was published concurrently or holds this manifest already",
            release.id, release.version, release.compatible
        )));
    }
    audit::Record::by(
        &operator,
        "release.publish",
        format!("release:{}", release.id),
    )
    .details(serde_json::json!({
        "version": release.version, "compatible": release.compatible,
        "commit": release.commit, "branch": release.branch, "size": size,
        "manifest_hash": release.manifest_hash, "app": release.app,
    }))
    .write(&mut write.tx)
    .await?;
    let auto = environments::auto_deploy(&state, &mut write.tx, &release).await?;
    write.commit().await?;
    if let Some(created) = auto {
        state.wake(&created.offered).await;
    }
    tracing::info!(release = %release.id, version = %release.version, "release published");
    let mut published = Release {
        created_at: rfc3339(now),
        ..release
    };
    git::attach_push(&mut *state.db.pool().acquire().await?, &mut published).await?;
    Ok((StatusCode::CREATED, ApiJson(published)))
}

/// List releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases",
    responses((status = 200, body = Vec<Release>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<Vec<Release>>> {
    let rows: Vec<ReleaseRow> = sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases ORDER BY created_at DESC, id"
    ))
    .fetch_all(state.db.pool())
    .await?;
    let mut releases: Vec<Release> = rows.into_iter().map(release_from_row).collect();
    let mut conn = state.db.pool().acquire().await?;
    for release in &mut releases {
        git::attach_push(&mut conn, release).await?;
    }
    Ok(ApiJson(releases))
}

pub async fn find(state: &AppState, id: &str) -> ApiResult<Release> {
    let row: Option<ReleaseRow> = sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(state.db.pool())
    .await?;
    row.map(release_from_row)
        .ok_or_else(|| ApiError::not_found(format!("no release with id {id:?}")))
}

/// Read one release.
#[utoipa::path(get, path = "/api/v1/releases/{id}", tag = "releases",
    params(("id" = String, Path, description = "release id")),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<Release>> {
    let mut release = find(&state, &id).await?;
    git::attach_push(&mut *state.db.pool().acquire().await?, &mut release).await?;
    Ok(ApiJson(release))
}

/// Download a release's bundle; honours `Range` so robots resume.
#[utoipa::path(get, path = "/api/v1/releases/{id}/bundle", tag = "releases",
    params(("id" = String, Path, description = "release id")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"),
        (status = 404, body = ErrorBody),
        (status = 416, description = "range outside the bundle"),
    ),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    if let Caller::Robot(robot) = &caller {
        robot.require_approved()?;
    }
    let release = find(&state, &id).await?;
    let path = bundle_path(&state, &release.bundle_sha256);
    // `.rota` is unknown to mime_guess, so the type is application/octet-stream.
    let response = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?;
    if response.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::internal(format!(
            "bundle file {} of release {id} is missing",
            path.display()
        )));
    }
    Ok(response.map(Body::new).into_response())
}
