//! caas-chat: conversations and messages over REST, behind the gateway. It
//! is the model of a downstream service: every request is authorized only by
//! the gateway's signed context (one HMAC, no network call), everything is
//! scoped to the context's tenant, and it never sees a token.
//!
//! The rules (membership, idempotency, limits) are caas-core's `Chat`; a
//! stored message is announced on the bus for the socket nodes.

pub mod config;
mod routes;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use caas_core::chat::Chat;
use caas_core::config::Backends;
use caas_core::context::ContextVerifier;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use crate::config::{ChatArgs, Config};

/// Request bodies up to this size are read; a message body itself is limited
/// to 16 KiB (JSON escaping can make its encoding several times longer).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

#[derive(Default)]
pub struct ChatMetrics {
    pub messages_posted: Counter,
    pub conversations_created: Counter,
}

struct Inner {
    observer: caas_http::Observer,
    backends: Backends,
    chat: Chat,
    metrics: ChatMetrics,
    registry: Registry,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// The one wiring of chat: its binary, `caas up` and the tests all build
    /// it here from its configuration.
    pub fn from_config(config: &Config, backends: Backends) -> Self {
        Self::new(backends, config.service.verifier())
    }

    fn new(backends: Backends, verifier: ContextVerifier) -> Self {
        let chat = Chat::new(backends.store.clone(), backends.bus.clone());
        let metrics = ChatMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "chat_messages_posted",
            "Messages stored (retries not counted)",
            metrics.messages_posted.clone(),
        );
        registry.register("chat_conversations_created", "Conversations created", metrics.conversations_created.clone());
        let observer = caas_http::Observer::new(verifier, "chat");
        Self(Arc::new(Inner { observer, backends, chat, metrics, registry }))
    }

    pub(crate) fn chat(&self) -> &Chat {
        &self.0.chat
    }

    pub(crate) fn metrics(&self) -> &ChatMetrics {
        &self.0.metrics
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "CAAS chat",
        description = "Conversations and messages. Every request is authorized by the gateway's signed context for an end user (aud caas-sdk); everything is scoped to that user's tenant."
    ),
    tags((name = "chat", description = "Conversations and messages"))
)]
struct ApiDoc;

/// The routes, and the OpenAPI document generated from the same handlers.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (router, mut spec) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(routes::list_conversations, routes::create_conversation))
        .routes(routes!(routes::list_messages, routes::post_message))
        .split_for_parts();
    caas_http::declare_shared_answers(&mut spec);
    (router, spec)
}

/// The chat service's OpenAPI 3 document (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn app(state: AppState) -> Router {
    let observer = state.0.observer.clone();
    let (router, spec) = routes();
    let spec = Arc::new(spec);
    router
        .route("/openapi.json", get(move || async move { axum::Json(spec.as_ref().clone()) }))
        .route("/health", get(health))
        .route("/livez", get(caas_http::live))
        .route("/metrics", get(metrics))
        .fallback(caas_http::not_found)
        .method_not_allowed_fallback(caas_http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn_with_state(observer, caas_http::observe))
        .with_state(state)
}

async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    caas_http::health(&state.0.backends).await
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    caas_http::metrics(&state.0.registry)
}

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "chat listening");
    axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
