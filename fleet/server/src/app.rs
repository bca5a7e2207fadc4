//! The router: API routes (built from their OpenAPI descriptions), the OpenAPI document,
//! metrics, health, and JSON answers for unknown routes.

use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{no_route, wrong_method};
use crate::metrics;
use crate::routes::{
    deployments, env_vars, environments, fleet, groups, keys, notifications, releases, robot,
    robots, rollbacks, webhooks,
};
use crate::state::AppState;

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rota fleet API",
        description = "Robots enroll, poll for assignments and report events; operators publish releases, deploy and audit. Errors are JSON {error, reason}."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "robot", description = "Called by robots with their token"),
        (name = "releases", description = "Signed bundles"),
        (name = "robots", description = "Enrolled robots and their history"),
        (name = "groups", description = "Groups of robots"),
        (name = "deployments", description = "Releases sent to robots, rollouts and rollbacks"),
        (name = "environments", description = "Groups of robots with deployment rules"),
        (name = "keys", description = "Operator API keys"),
        (name = "fleet", description = "Overview and audit log"),
        (name = "git", description = "GitHub push webhook and the pushes it recorded"),
        (name = "notifications", description = "Channels that hear about deployments and robots, and their deliveries"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes and the OpenAPI document describing exactly them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(robot::enroll))
        .routes(routes!(robot::poll))
        .routes(routes!(robot::report_event))
        .routes(routes!(robot::report_slots))
        .routes(routes!(robot::report_inventory))
        .routes(routes!(releases::publish, releases::list))
        .routes(routes!(releases::get))
        .routes(routes!(releases::download))
        .routes(routes!(robots::list))
        .routes(routes!(robots::get, robots::remove))
        .routes(routes!(robots::approve))
        .routes(routes!(robots::tag))
        .routes(routes!(robots::history))
        .routes(routes!(robots::release_history))
        .routes(routes!(groups::list))
        .routes(routes!(groups::get, groups::create, groups::delete))
        .routes(routes!(groups::set_query))
        .routes(routes!(groups::add_robot, groups::remove_robot))
        .routes(routes!(deployments::create, deployments::list))
        .routes(routes!(deployments::get))
        .routes(routes!(deployments::act))
        .routes(routes!(rollbacks::create))
        .routes(routes!(environments::list))
        .routes(routes!(environments::put))
        .routes(routes!(environments::promote))
        .routes(routes!(env_vars::list))
        .routes(routes!(env_vars::put, env_vars::delete))
        .routes(routes!(keys::whoami))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(fleet::status))
        .routes(routes!(fleet::audit))
        .routes(routes!(webhooks::github))
        .routes(routes!(webhooks::pushes))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::put, notifications::delete))
        .routes(routes!(notifications::test))
        .routes(routes!(notifications::deliveries))
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (api, document) = api();
    let document = std::sync::Arc::new(document);
    api.route(
        OPENAPI_PATH,
        get(move || async move { Json(document.as_ref().clone()) }),
    )
    .route("/metrics", get(metrics::render))
    .route("/healthz", get(|| async { "ok\n" }))
    .merge(crate::dashboard::router())
    .fallback(no_route)
    .method_not_allowed_fallback(wrong_method)
    .layer(middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .layer(TraceLayer::new_for_http())
    .with_state(state)
}
