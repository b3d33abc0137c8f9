//! caas-socket: real-time chat over WebSocket. A connection is authenticated
//! once, on the upgrade (verified gateway context, or auth-api's internal
//! validation when it did not come through the gateway); after that its
//! frames are checked against that identity, never against a token again.
//! Messages stored by any node (REST or socket) reach every subscribed
//! connection on every node through the bus (Redis pub/sub across nodes).
//!
//! It holds no rule of its own: membership and messages are caas-core's
//! `Chat`; tokens are auth-api's.

pub mod auth;
pub mod close;
pub mod config;
mod connection;
pub mod metrics;
mod presence;
pub mod protocol;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use caas_core::bus::BusMessage;
use caas_core::chat::Chat;
use caas_core::config::Backends;
use caas_core::context::ContextVerifier;
use caas_core::events::Event;
use caas_core::secret::Secret;
use caas_http::ApiError;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;

use crate::auth::{AuthFailure, Identity, Refusal, TokenValidator};
use crate::close::CloseReason;
use crate::metrics::SocketMetrics;
use crate::presence::Presence;
use crate::registry::Registry;

pub use crate::config::{Config, SocketArgs};

/// Largest frame or message accepted (larger closes with 1009).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// tungstenite's default read buffer is 128 KiB per connection, allocated up
/// front; it grows for a large frame when one comes, so start small.
const READ_BUFFER_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub send_queue: usize,
    pub frames_per_second: u32,
    pub max_subscriptions: usize,
    pub caps: registry::ConnectionCaps,
}

impl From<&SocketArgs> for Settings {
    fn from(args: &SocketArgs) -> Self {
        Self {
            ping_interval: args.ping_interval,
            idle_timeout: args.idle_timeout,
            send_queue: args.send_queue,
            frames_per_second: args.frames_per_second,
            max_subscriptions: args.max_subscriptions,
            caps: registry::ConnectionCaps {
                per_user: args.max_connections_per_user,
                per_tenant: args.max_connections_per_tenant,
            },
        }
    }
}

struct Inner {
    backends: Backends,
    chat: Chat,
    registry: Registry,
    presence: Presence,
    validator: TokenValidator,
    observer: caas_http::Observer,
    settings: Settings,
    metrics: SocketMetrics,
    metrics_registry: MetricsRegistry,
}

#[derive(Clone)]
pub struct SocketState(Arc<Inner>);

impl SocketState {
    pub(crate) fn new(
        backends: Backends,
        service_secret: Secret,
        previous: Option<Secret>,
        auth_service_url: &str,
        settings: Settings,
    ) -> Self {
        let metrics = SocketMetrics::default();
        let mut metrics_registry = MetricsRegistry::default();
        metrics.register(&mut metrics_registry);
        backends.register_metrics(&mut metrics_registry);
        Self(Arc::new(Inner {
            chat: Chat::new(backends.store.clone(), backends.bus.clone()),
            presence: Presence::new(backends.cache.clone(), caas_core::id::new_id("node")),
            registry: Registry::default(),
            validator: TokenValidator::new(auth_service_url, service_secret.clone()),
            observer: caas_http::Observer::new(ContextVerifier::new(&service_secret, previous.as_ref()), "socket"),
            backends,
            settings,
            metrics,
            metrics_registry,
        }))
    }

    pub(crate) fn chat(&self) -> &Chat {
        &self.0.chat
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub(crate) fn presence(&self) -> &Presence {
        &self.0.presence
    }

    pub(crate) fn validator(&self) -> &TokenValidator {
        &self.0.validator
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn metrics(&self) -> &SocketMetrics {
        &self.0.metrics
    }
}

pub fn app(state: SocketState) -> Router {
    let observer = state.0.observer.clone();
    Router::new()
        .route("/v1/ws", get(upgrade))
        .route("/health", get(health))
        .route("/livez", get(caas_http::live))
        .route("/metrics", get(metrics))
        .fallback(caas_http::not_found)
        .method_not_allowed_fallback(caas_http::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(observer, caas_http::observe))
        .with_state(state)
}

fn refused(state: &SocketState, refusal: Refusal) -> Response {
    state.metrics().auth_failures.get_or_create(&[("reason", AuthFailure::label(&refusal.code))]).inc();
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::UNAUTHORIZED);
    ApiError::relayed(status, refusal.code, refusal.message).into_response()
}

/// The upgrade: authenticate before the 101, then hand the socket over.
async fn upgrade(
    State(state): State<SocketState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    request: Request,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this route takes WebSocket upgrades",
            )
            .into_response();
        }
    };
    let origin = request.headers().get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    let ids = request.extensions().get::<caas_http::RequestIds>().cloned().unwrap_or_default();
    let identity: Result<Identity, Refusal> = match auth::from_context(caas_http::context_of(request.extensions())) {
        Some(result) => result,
        None => match auth::token_of(request.headers(), request.uri().query()) {
            Some(token) => {
                state.validator().validate(token, origin.as_deref(), request.headers().get("traceparent")).await
            }
            None => Err(Refusal::of(401, AuthFailure::MissingCredentials, "a token is required")),
        },
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(refusal) => return refused(&state, refusal),
    };
    ws.protocols([protocol::SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_failed_upgrade(|error| tracing::warn!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection::run(state, socket, identity, origin, ids))
}

async fn health(State(state): State<SocketState>) -> Response {
    caas_http::health(&state.0.backends).await
}

async fn metrics(State(state): State<SocketState>) -> Response {
    caas_http::metrics(&state.0.metrics_registry)
}

/// Applies bus events to this node's connections: new messages go to their
/// subscribers, revoked sessions are closed.
fn spawn_fanout(state: SocketState) -> tokio::task::JoinHandle<()> {
    let mut events = state.0.backends.bus.subscribe();
    tokio::spawn(async move {
        loop {
            let message = match events.recv().await {
                Ok(message) => message,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "socket fan-out lagged behind the bus");
                    BusMessage::Resync
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            match message {
                BusMessage::Event(event) => match event.as_ref() {
                    Event::MessageCreated { tenant_id, message } => {
                        let frame = Utf8Bytes::from(protocol::message(&message.conversation_id, message));
                        let delivered = state.registry().deliver(tenant_id, &message.conversation_id, &frame);
                        state.metrics().delivered.inc_by(delivered);
                    }
                    Event::SessionRevoked { session_id, .. } => {
                        let closed = state.registry().close_session(session_id, CloseReason::SessionRevoked);
                        if closed > 0 {
                            tracing::info!(session_id, closed, "closing sockets of a revoked session");
                        }
                    }
                    _ => {}
                },
                // A `Resync` follows the reconnection.
                BusMessage::Disconnected => {}
                // Revocations may have been missed: ask the database.
                BusMessage::Resync => {
                    tokio::spawn(recheck_sessions(state.clone()));
                }
            }
        }
    })
}

async fn recheck_sessions(state: SocketState) {
    for session_id in state.registry().sessions() {
        match state.0.backends.store.session(&session_id).await {
            Ok(Some(session)) if session.revoked_at.is_none() => {}
            Ok(_) => {
                state.registry().close_session(&session_id, CloseReason::SessionRevoked);
            }
            Err(error) => {
                tracing::warn!(%error, "could not recheck socket sessions; will on the next resync");
                return;
            }
        }
    }
}

/// Serves until `shutdown`, then closes every connection with "going away"
/// and waits (up to 10 s) for them to go.
pub async fn serve(
    listener: TcpListener,
    state: SocketState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "socket listening");
    let fanout = spawn_fanout(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let closing = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        closing.registry().close_all(CloseReason::GoingAway);
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    let result = axum::serve(listener, app(state.clone()).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !state.registry().is_empty() && tokio::time::Instant::now() < deadline {
        state.registry().close_all(CloseReason::GoingAway);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fanout.abort();
    result
}
