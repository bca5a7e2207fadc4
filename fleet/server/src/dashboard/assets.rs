//! The page itself: one HTML file, its script and its stylesheet, compiled into the binary so
//! the dashboard needs nothing but this server (no CDN, no files next to the binary).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const APP_CSS: &str = include_str!("../../dashboard/app.css");
const ICON_SVG: &str = include_str!("../../dashboard/icon.svg");

/// Browsers revalidate each load, so a new server version's page is never mixed with an old
/// script.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
}

pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

pub async fn icon() -> impl IntoResponse {
    asset("image/svg+xml", ICON_SVG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            // The SVG namespace is a name, not something fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for remote in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(remote), "{name} refers to {remote}");
            }
        }
        for local in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
            assert!(
                INDEX_HTML.contains(local),
                "index.html does not load {local}"
            );
        }
    }
}
