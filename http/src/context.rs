//! The gateway's signed context, verified once per request by `observe` and
//! read by the caller extractors. Services trust only this, never bare
//! `x-caas-*` headers.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use caas_core::context::{AuthType, ContextError, ContextVerifier, RequestContext};
use caas_core::id::unix_now;
use caas_runtime::otlp::{Span, SpanExporter};
use caas_runtime::trace::TraceParent;

use crate::ApiError;

/// What `observe` needs: the verifier, the service name for logs, and where
/// spans go (if anywhere).
#[derive(Clone)]
pub struct Observer {
    pub verifier: ContextVerifier,
    pub service: &'static str,
    pub exporter: Option<SpanExporter>,
}

impl Observer {
    /// Spans are exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub fn new(verifier: ContextVerifier, service: &'static str) -> Self {
        Self { verifier, service, exporter: SpanExporter::from_env(service) }
    }
}

/// The request's trace context, if the caller sent a valid `traceparent`.
pub fn trace_of(headers: &axum::http::HeaderMap) -> Option<TraceParent> {
    headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse)
}

/// The outcome of verifying the request's context, kept in its extensions.
#[derive(Clone)]
pub struct VerifiedContext(pub Result<Option<RequestContext>, ContextError>);

impl VerifiedContext {
    pub fn of(headers: &axum::http::HeaderMap, method: &str, verifier: &ContextVerifier) -> Self {
        let verified = verifier.verify(|name| headers.get(name).and_then(|v| v.to_str().ok()), method, unix_now());
        VerifiedContext(match verified {
            Ok(context) => Ok(Some(context)),
            Err(ContextError::Missing) => Ok(None),
            Err(error) => Err(error),
        })
    }
}

/// The ids that join a request's log lines, in its extensions (for lines a
/// handler writes later, such as a socket's close).
#[derive(Debug, Clone, Default)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
}

/// Middleware: verifies the context once, then writes one log line per
/// request — method, path (never the query, which may hold a credential),
/// status, the error code of a refusal, duration, request id, trace id, the
/// verified tenant — exports a span when configured, and echoes
/// `x-request-id`.
pub async fn observe(State(observer): State<Observer>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let verified = VerifiedContext::of(request.headers(), request.method().as_str(), &observer.verifier);
    let tenant_id = match &verified.0 {
        Ok(Some(context)) => context.tenant_id.clone(),
        _ => String::new(),
    };
    request.extensions_mut().insert(verified);
    let trace = trace_of(request.headers());
    let trace_id = trace.as_ref().map(|t| t.trace_id.clone()).unwrap_or_default();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| caas_core::id::new_id("req"));
    request.extensions_mut().insert(RequestIds { request_id: request_id.clone(), trace_id: trace_id.clone() });
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let code = response.extensions().get::<crate::ErrorCode>().map(|c| c.0.clone()).unwrap_or_default();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let service = observer.service;
    if status >= 500 {
        tracing::error!(service, %method, path, status, %code, millis, request_id, trace_id, tenant_id, "request");
    } else {
        tracing::info!(service, %method, path, status, %code, millis, request_id, trace_id, tenant_id, "request");
    }
    if let Some(exporter) = &observer.exporter {
        let mut span = Span::ended(trace, format!("{method} {path}"), started, status);
        span.attributes.extend([
            ("http.request.method", method.to_string()),
            ("url.path", path.clone()),
            ("caas.request_id", request_id.clone()),
            ("caas.tenant_id", tenant_id.clone()),
        ]);
        exporter.record(span);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The verified context, if the request carries one; an invalid one is an
/// error, never silently ignored. Without `observe` in front: none.
pub fn signed_context(parts: &Parts) -> Result<Option<RequestContext>, ContextError> {
    context_of(&parts.extensions)
}

/// As `signed_context`, from a request's extensions.
pub fn context_of(extensions: &axum::http::Extensions) -> Result<Option<RequestContext>, ContextError> {
    extensions.get::<VerifiedContext>().map_or(Ok(None), |verified| verified.0.clone())
}

/// A context of one of `auth_types`, naming a tenant.
pub fn require(parts: &Parts, auth_types: &[AuthType]) -> Result<RequestContext, ApiError> {
    let context = signed_context(parts)?.ok_or(ContextError::Missing)?;
    if !auth_types.contains(&context.auth_type) || context.tenant_id.is_empty() {
        return Err(ApiError::forbidden("wrong_credential_type", "this route needs a different kind of credential"));
    }
    Ok(context)
}

macro_rules! caller {
    ($(#[$doc:meta])* $name:ident, $($auth:expr),+) => {
        $(#[$doc])*
        pub struct $name(pub RequestContext);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;
            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
                require(parts, &[$($auth),+]).map($name)
            }
        }
    };
}

caller!(
    /// A dashboard user of a client (tenant).
    DashboardCaller,
    AuthType::Dashboard
);
caller!(
    /// A client's backend, by API key from a whitelisted IP.
    ApiKeyCaller,
    AuthType::ApiKey
);

/// An end user (access token, aud `caas-sdk`) with a user id.
pub struct EndUser(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for EndUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let context = require(parts, &[AuthType::Jwt])?;
        if context.user_id.is_empty() {
            return Err(ApiError::forbidden("wrong_credential_type", "this route needs an end user's access token"));
        }
        Ok(EndUser(context))
    }
}

/// Whatever the gateway vouched for, if anything (public routes).
pub struct OptionalCaller(pub Option<RequestContext>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(OptionalCaller(signed_context(parts)?))
    }
}

/// The client address: from the signed context behind the gateway, else the
/// TCP peer. Never from X-Forwarded-For, which a client can write.
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(context) = signed_context(parts)?
            && !context.client_ip.is_empty()
        {
            return Ok(ClientIp(context.client_ip));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string());
        Ok(ClientIp(peer.unwrap_or_else(|| "unknown".into())))
    }
}
