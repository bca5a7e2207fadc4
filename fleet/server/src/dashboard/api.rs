//! The API as the dashboard page calls it: the same handlers as `/api/v1`, with the operator
//! taken from the session cookie instead of a bearer key. Reads need a session; changes need a
//! session and its CSRF token. Role checks stay where they are, in the handlers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rota_protocol::operator::{CreateDeploymentRequest, PromoteRequest, RollbackRequest};

use super::session::{CsrfChecked, Session};
use crate::error::{ApiJson, ApiPath, ApiQuery};
use crate::routes::deployments::{self, DeploymentsQuery};
use crate::routes::fleet::{self, AuditQuery};
use crate::routes::notifications::{self, DeliveriesQuery};
use crate::routes::robots::{self, HistoryQuery, ReleaseHistoryQuery, RobotsQuery};
use crate::routes::{environments, groups, releases, rollbacks};
use crate::state::AppState;

/// Where these routes live; the page's `fetch` calls start with it.
pub const PREFIX: &str = "/ui/api";

/// `async fn $name(state, guard, args...)` calling `$handler(state, operator, args...)`: the
/// handler sees the session's operator exactly as it would see a bearer key's.
macro_rules! through_session {
    ($name:ident, $guard:ty => $handler:path $(, $arg:ident: $ty:ty)*) => {
        async fn $name(state: State<AppState>, guard: $guard $(, $arg: $ty)*) -> Response {
            $handler(state, guard.into_operator() $(, $arg)*)
                .await
                .into_response()
        }
    };
}

through_session!(status, Session => fleet::status);
through_session!(audit, Session => fleet::audit, query: ApiQuery<AuditQuery>);
through_session!(robot_list, Session => robots::list, query: ApiQuery<RobotsQuery>);
through_session!(robot_get, Session => robots::get, id: ApiPath<String>);
through_session!(history, Session => robots::history, query: ApiQuery<HistoryQuery>);
through_session!(release_history, Session => robots::release_history,
    query: ApiQuery<ReleaseHistoryQuery>);
through_session!(release_list, Session => releases::list);
through_session!(group_list, Session => groups::list);
through_session!(environment_list, Session => environments::list);
through_session!(deployment_list, Session => deployments::list,
    query: ApiQuery<DeploymentsQuery>);
through_session!(deployment_get, Session => deployments::get, id: ApiPath<String>);
through_session!(deployment_create, CsrfChecked => deployments::create,
    body: ApiJson<CreateDeploymentRequest>);
through_session!(deployment_act, CsrfChecked => deployments::act,
    id_and_verb: ApiPath<(String, String)>);
through_session!(rollback, CsrfChecked => rollbacks::create, body: ApiJson<RollbackRequest>);
through_session!(promote, CsrfChecked => environments::promote,
    from: ApiPath<String>, body: ApiJson<PromoteRequest>);
through_session!(channel_list, Session => notifications::list);
through_session!(channel_test, CsrfChecked => notifications::test, name: ApiPath<String>);
through_session!(delivery_list, Session => notifications::deliveries,
    query: ApiQuery<DeliveriesQuery>);

/// The routes, relative to [`PREFIX`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/audit", get(audit))
        .route("/robots", get(robot_list))
        .route("/robots/{id}", get(robot_get))
        .route("/history", get(history))
        .route("/history/releases", get(release_history))
        .route("/releases", get(release_list))
        .route("/groups", get(group_list))
        .route("/environments", get(environment_list))
        .route("/environments/{name}/promote", post(promote))
        .route("/deployments", get(deployment_list).post(deployment_create))
        .route("/deployments/{id}", get(deployment_get))
        .route("/deployments/{id}/{verb}", post(deployment_act))
        .route("/rollbacks", post(rollback))
        .route("/notifications/channels", get(channel_list))
        .route("/notifications/channels/{name}/test", post(channel_test))
        .route("/notifications/deliveries", get(delivery_list))
}
