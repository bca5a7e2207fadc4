//! HTTP handlers, one module per resource. Each handler carries its OpenAPI description, and
//! the router is built from those descriptions, so the served routes and the document agree.

pub mod deployments;
pub mod env_vars;
pub mod environments;
pub mod fleet;
pub mod groups;
pub mod keys;
pub mod notifications;
pub mod releases;
pub mod robot;
pub mod robots;
pub mod rollbacks;
pub mod webhooks;

use crate::error::{ApiError, ApiResult};

/// A `since`/`until` query parameter (RFC 3339 UTC) in unix milliseconds; 400 naming the
/// parameter when unreadable.
pub fn time_param(name: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    value
        .map(|text| {
            crate::time::parse_rfc3339_ms(text)
                .map_err(|reason| ApiError::bad_request(format!("{name}: {reason}")))
        })
        .transpose()
}
