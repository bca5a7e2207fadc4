//! HTTP handlers, one module per resource. Each handler carries its OpenAPI description, and
//! the router is built from those descriptions, so the served routes and the document agree.

pub mod deployments;
pub mod environments;
pub mod fleet;
pub mod groups;
pub mod keys;
pub mod releases;
pub mod robot;
pub mod robots;
pub mod rollbacks;
