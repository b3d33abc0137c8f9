//! caas-auth-api: the HTTP API that issues and owns every credential —
//! client registration and dashboard login, API keys, whitelists, SDK
//! sessions, refresh-token rotation, logout — and the internal validation
//! endpoints for services that cannot sit behind the gateway.
//!
//! It is a downstream service like any other: who is calling is taken only
//! from the gateway's signed context (verified with caas-core), never from
//! bare headers. The rules themselves live in caas-core; this crate turns
//! HTTP into calls to them and their results back into HTTP.

mod client;
pub mod config;
pub mod console;
mod errors;
mod extract;
mod internal;
mod ops;
mod quotas;
mod schema;
mod sdk;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use caas_core::config::Backends;
use caas_core::context::ContextVerifier;
use caas_core::credentials::{Credentials, Lifetimes, Throttles};
use caas_core::loginguard::{Hashing, KnownAddresses};
use caas_core::metrics::AuthMetrics;
use caas_core::ratelimit::RateLimiter;
use caas_core::secret::Secret;
use caas_core::validate::Validator;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use crate::config::{AuthApiArgs, Config};
pub use caas_http::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What auth-api needs besides the backends and the validator.
#[derive(Debug, Clone)]
pub struct Settings {
    pub service_secret: Secret,
    pub service_secret_previous: Option<Secret>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub login_failures_per_email: u64,
    pub login_failures_per_ip: u64,
    pub login_window: Duration,
    pub registrations_per_ip: u64,
    pub registration_window: Duration,
    /// Test end-user sessions per tenant per hour (`TEST_SESSIONS_PER_TENANT_PER_HOUR`).
    pub test_sessions_per_tenant: u64,
    pub retention: caas_core::retention::Retention,
    /// Password hashes computed at once (`PASSWORD_HASH_CONCURRENCY`).
    pub password_hash_concurrency: usize,
}

struct Inner {
    observer: caas_http::Observer,
    backends: Backends,
    validator: Arc<Validator>,
    credentials: Credentials,
    settings: Settings,
    registry: Registry,
    retention_metrics: Arc<caas_core::retention::RetentionMetrics>,
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// The one wiring of auth-api: its binary, `caas up` and the tests all
    /// build it here from its configuration. `validator` (see
    /// `Backends::validator`) is shared with ext-authz when both run in one
    /// process, so auth-api's changes evict ext-authz's cache directly.
    pub fn from_config(config: &Config, backends: Backends, validator: Arc<Validator>) -> Self {
        Self::new(backends, validator, config.api.settings(&config.jwt, &config.service))
    }

    fn new(backends: Backends, validator: Arc<Validator>, settings: Settings) -> Self {
        let verifier = ContextVerifier::new(&settings.service_secret, settings.service_secret_previous.as_ref());
        let cache = backends.cache.clone();
        let mut registry = Registry::default();
        validator.metrics().register(&mut registry);
        backends.register_metrics(&mut registry);
        let throttles = Throttles {
            login_by_email: RateLimiter::new(
                "login-email",
                settings.login_failures_per_email,
                settings.login_window,
                cache.clone(),
            ),
            login_by_ip: RateLimiter::new(
                "login-ip",
                settings.login_failures_per_ip,
                settings.login_window,
                cache.clone(),
            ),
            registrations: RateLimiter::new(
                "register-ip",
                settings.registrations_per_ip,
                settings.registration_window,
                cache.clone(),
            ),
            test_sessions: RateLimiter::new(
                "test-session",
                settings.test_sessions_per_tenant,
                Duration::from_secs(3600),
                cache.clone(),
            ),
            known_addresses: KnownAddresses::new(cache),
            hashing: Hashing::new(settings.password_hash_concurrency),
        };
        throttles.hashing.register(&mut registry);
        let retention_metrics = Arc::new(caas_core::retention::RetentionMetrics::default());
        retention_metrics.register(&mut registry);
        let lifetimes = Lifetimes { access: settings.access_ttl, refresh: settings.refresh_ttl };
        let credentials = Credentials::new(backends.store.clone(), validator.clone(), lifetimes, throttles);
        Self(Arc::new(Inner {
            observer: caas_http::Observer::new(verifier.clone(), "auth-api"),
            backends,
            validator,
            credentials,
            settings,
            registry,
            retention_metrics,
        }))
    }

    pub(crate) fn store(&self) -> &caas_core::store::Store {
        &self.0.backends.store
    }

    pub(crate) fn backends(&self) -> &Backends {
        &self.0.backends
    }

    pub(crate) fn validator(&self) -> &Validator {
        &self.0.validator
    }

    fn observer(&self) -> caas_http::Observer {
        self.0.observer.clone()
    }

    pub(crate) fn metrics(&self) -> &AuthMetrics {
        self.0.validator.metrics()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub(crate) fn service_secrets(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.0.settings.service_secret).chain(self.0.settings.service_secret_previous.as_ref())
    }

    /// Every credential change goes through here (store, audit, events).
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.0.credentials
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "CAAS auth API",
        description = "Issues and owns every credential. Behind the gateway these paths are reached as /v1/client/*, /v1/sdk/session, /v1/sdk/users/{user_id}/revoke, /v1/sdk/refresh and /v1/sdk/logout; callers are identified by the gateway's signed context. /internal/* is for services only and never routed by the gateway."
    ),
    modifiers(&ServiceToken),
    tags((name = "client", description = "Client onboarding and dashboard"), (name = "sdk", description = "End-user sessions"), (name = "internal", description = "Validation for services outside the gateway"))
)]
struct ApiDoc;

struct ServiceToken;

impl utoipa::Modify for ServiceToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "service_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "authorization",
                "Service <SERVICE_SECRET>",
            ))),
        );
    }
}

/// The routes, and the OpenAPI document generated from the same handlers.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let auth = OpenApiRouter::new()
        .routes(routes!(client::register))
        .routes(routes!(client::login))
        .routes(routes!(client::logout))
        .routes(routes!(client::logout_all))
        .routes(routes!(client::change_password))
        .routes(routes!(client::list_sessions))
        .routes(routes!(client::profile))
        .routes(routes!(client::list_keys))
        .routes(routes!(client::rotate_key))
        .routes(routes!(client::revoke_key))
        .routes(routes!(client::get_ip_whitelist, client::put_ip_whitelist))
        .routes(routes!(client::get_origin_whitelist, client::put_origin_whitelist))
        .routes(routes!(quotas::get_rate_limits, quotas::put_rate_limits))
        .routes(routes!(console::activity))
        .routes(routes!(console::create_test_session))
        .routes(routes!(sdk::create_session))
        .routes(routes!(sdk::refresh))
        .routes(routes!(sdk::logout))
        .routes(routes!(sdk::revoke_user))
        .routes(routes!(internal::validate_token))
        .routes(routes!(internal::validate_api_key));
    let (router, mut spec) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .nest("/api/v1/auth", auth)
        .split_for_parts();
    caas_http::declare_shared_answers(&mut spec);
    (router, spec)
}

/// auth-api's OpenAPI 3 document (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// Every route of auth-api.
pub fn app(state: AppState) -> Router {
    let (router, spec) = routes();
    let spec = Arc::new(spec);
    router
        .route("/openapi.json", get(move || async move { axum::Json(spec.as_ref().clone()) }))
        .route(console::PREFIX, get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/health", get(ops::health))
        .route("/livez", get(caas_http::live))
        .route("/metrics", get(ops::metrics))
        .fallback(caas_http::not_found)
        .method_not_allowed_fallback(caas_http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside `observe`, which verifies the context it reads.
        .layer(axum::middleware::from_fn_with_state(state.clone(), client::record_dashboard_use))
        .layer(axum::middleware::from_fn_with_state(state.observer(), caas_http::observe))
        .with_state(state)
}

/// Serves until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "auth-api listening");
    // Expired sessions and old audit rows are purged while auth-api serves.
    let purge = tokio::spawn(state.0.settings.retention.run(state.store().clone(), state.0.retention_metrics.clone()));
    let served = axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    purge.abort();
    served
}
