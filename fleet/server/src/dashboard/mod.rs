//! The dashboard at `/`: a single page (embedded in the binary) that logs in with an operator
//! API key, shows the fleet, deployments, releases, history, audit and charts, updates live
//! over Server-Sent Events, and acts through the same handlers as the JSON API.
//!
//! Routes: `/` and `/ui/*` for the page's files, `POST /ui/login`, `GET /ui/session`,
//! `POST /ui/logout`, `GET /ui/events`, and the API under `/ui/api` (see [`api`]).

pub mod api;
mod assets;
pub(crate) mod events;
pub mod session;

use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Only this server's own script and styles run; no frames, no form posts elsewhere. Charts
/// are SVG built with DOM calls, so no inline script or style attribute is needed.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

async fn protective_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_VALUE),
        (X_FRAME_OPTIONS, "DENY"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The dashboard's routes, to merge into the server's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(assets::index))
        .route("/ui/app.js", get(assets::script))
        .route("/ui/app.css", get(assets::stylesheet))
        .route("/ui/icon.svg", get(assets::icon))
        .route("/ui/login", post(session::login))
        .route("/ui/session", get(session::current))
        .route("/ui/logout", post(session::logout))
        .route("/ui/events", get(events::stream))
        .nest(api::PREFIX, api::router())
        .layer(axum::middleware::map_response(protective_headers))
}
