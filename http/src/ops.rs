//! Ops routes every service serves, and the JSON fallbacks.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use caas_core::config::Backends;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::ApiError;

/// The dependencies that do not answer within 2 s, by name: `database`,
/// `redis`, or `event_bus` (Redis answers but the bus lost its subscription).
pub async fn down(backends: &Backends) -> Vec<&'static str> {
    let timeout = Duration::from_secs(2);
    let (database, cache) = tokio::join!(
        tokio::time::timeout(timeout, backends.store.ping()),
        tokio::time::timeout(timeout, backends.cache.ping()),
    );
    let (database, cache) = (matches!(database, Ok(Ok(()))), matches!(cache, Ok(Ok(()))));
    let mut down = Vec::new();
    if !database {
        down.push("database");
    }
    if !cache {
        down.push("redis");
    }
    if !backends.bus.is_connected() && cache {
        down.push("event_bus");
    }
    down
}

/// `GET /health`: 200, or 503 naming each dependency that is down. For
/// monitoring and start-up ordering; see [`live`] for orchestrator probes.
pub async fn health(backends: &Backends) -> Response {
    let down = down(backends).await;
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if down.is_empty() { "ok" } else { "unavailable" },
        "down": down,
        "database": backends.store.dialect().name(),
        "cache": backends.cache.kind(),
        "bus": backends.bus.kind(),
    });
    (status, axum::Json(body)).into_response()
}

/// `GET /livez`: 200 while the process serves HTTP (it listens only once its
/// backends are connected and migrated). Kubernetes liveness and readiness
/// probe this, not `/health`: a dependency every replica shares being down
/// must neither take them all out of service (ext-authz keeps deciding from
/// its cache; Envoy would answer 503 for everything instead) nor restart
/// them (which would throw that cache away).
pub async fn live() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// The registry in Prometheus text format.
pub fn metrics(registry: &Registry) -> Response {
    let text = caas_runtime::metrics::render(registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
