//! caas-ext-authz: Envoy's external authorization server
//! (`envoy.service.auth.v3.Authorization/Check`). For every public request it
//! applies the route's policy with caas-core's rules and answers allow (with
//! signed context headers for the services) or deny (with the reason).
//!
//! It holds no rule of its own: credentials, whitelists and revocation are
//! caas-core's. It must not depend on auth-api.

pub mod check;
pub mod config;
pub mod decision;
pub mod edge;
pub mod failures;
pub mod incoming;
pub mod material;
pub mod metrics;
mod policies;
mod quota;
pub use caas_rules::policy;
pub mod response;
mod shadow;
pub mod trace;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use caas_core::config::Backends;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use crate::check::{Authorizer, AuthorizerSettings, Decision, Reason};
pub use crate::config::{Config, ExtAuthzArgs};

/// The gRPC metadata Envoy sends the caller token in (envoy/envoy.yaml).
pub const CALLER_TOKEN_METADATA: &str = "x-caas-authz-token";

/// The gRPC service Envoy calls.
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let presented = request.metadata().get(CALLER_TOKEN_METADATA).map(|v| v.as_bytes());
        if !self.authorizer.admits_caller(presented) {
            // Not our Envoy: no decision, and above all no signed context.
            self.authorizer.metrics().unknown_callers.inc();
            let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(peer, "Check without the caller token (EXT_AUTHZ_CALLER_TOKEN); refused");
            return Err(tonic::Status::unauthenticated("caller token required"));
        }
        // Always an answer: denials are normal replies (see `response`).
        Ok(tonic::Response::new(self.authorizer.check(request.into_inner()).await))
    }
}

#[derive(Clone)]
struct OpsState {
    authorizer: Arc<Authorizer>,
    backends: Backends,
    registry: Arc<Registry>,
}

/// Serves gRPC Check on `grpc` and `/metrics` + `/health` on `ops` until
/// `shutdown` completes.
pub async fn serve(
    grpc: TcpListener,
    ops: TcpListener,
    authorizer: Arc<Authorizer>,
    backends: Backends,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    authorizer.validator().metrics().register(&mut registry);
    authorizer.metrics().register(&mut registry);
    backends.register_metrics(&mut registry);
    // The in-proxy filter's feed: the process's bus, as its validator hears it.
    let edge = authorizer.edge_material().map(|material| {
        edge::EdgeFeed::start(
            material.clone(),
            authorizer.caller_token().cloned(),
            authorizer.clone(),
            &backends.bus,
            backends.feed.clone(),
        )
    });
    let ops_state = OpsState { authorizer: authorizer.clone(), backends, registry: Arc::new(registry) };
    let mut ops_app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(health))
        .route("/livez", axum::routing::get(caas_http::live))
        .with_state(ops_state);
    if let Some(edge) = edge {
        ops_app = ops_app.merge(edge::router(edge));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let grpc_addr = grpc.local_addr()?;
    let ops_addr = ops.local_addr()?;
    tracing::info!(%grpc_addr, %ops_addr, enforcing = authorizer.enforcing(), "ext-authz listening");
    let mut grpc_stop = stop_rx.clone();
    let mut ops_stop = stop_rx;
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(4 << 20))
        .add_service(AuthorizationServer::new(AuthzService { authorizer }))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_stop.wait_for(|stop| *stop).await;
        });
    let ops_server = axum::serve(ops, ops_app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            let _ = ops_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, ops_result) = tokio::join!(grpc_server, ops_server);
    grpc_result.map_err(std::io::Error::other)?;
    ops_result
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    state.authorizer.validator().metrics().refresh();
    let text = caas_runtime::metrics::render(&state.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn health(State(state): State<OpsState>) -> impl IntoResponse {
    let down = caas_http::down(&state.backends).await;
    // Degraded dependencies still leave cached decisions working; the status
    // tells operators, the gateway keeps failing closed where it must.
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "status": if down.is_empty() { "ok" } else { "unavailable" }, "down": down, "enforcing": state.authorizer.enforcing() });
    (status, axum::Json(body))
}
