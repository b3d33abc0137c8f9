//! Health, metrics, request logging and the JSON fallbacks.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::VerifiedContext;

pub async fn health(State(state): State<AppState>) -> Response {
    let backends = state.backends();
    let timeout = Duration::from_secs(2);
    let database = matches!(tokio::time::timeout(timeout, backends.store.ping()).await, Ok(Ok(())));
    let cache = matches!(tokio::time::timeout(timeout, backends.cache.ping()).await, Ok(Ok(())));
    let bus = backends.bus.is_connected();
    let mut down = Vec::new();
    if !database {
        down.push("database");
    }
    if !cache {
        down.push("redis");
    }
    if !bus && !down.contains(&"redis") {
        down.push("event_bus");
    }
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if down.is_empty() { "ok" } else { "unavailable" },
        "down": down,
        "database": state.store().dialect().name(),
        "cache": backends.cache.kind(),
        "bus": backends.bus.kind(),
    });
    (status, axum::Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics().refresh();
    let text = caas_core::metrics::render(state.registry());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// Verifies the gateway context once, then writes one log line per request:
/// method, path (never the query, which could hold a credential), status,
/// duration, request id and the verified tenant. Echoes `x-request-id`.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let verified = VerifiedContext::of(request.headers(), request.method().as_str(), &state);
    let tenant = match &verified.0 {
        Ok(Some(context)) => context.tenant_id.clone(),
        _ => String::new(),
    };
    request.extensions_mut().insert(verified);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| caas_core::id::new_id("req"));
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(%method, path, status, millis, request_id, tenant, "request");
    } else {
        tracing::info!(%method, path, status, millis, request_id, tenant, "request");
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
