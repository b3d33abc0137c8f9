//! The decision: from a CheckRequest to allow (with context), deny (with a
//! reason) or answer a CORS preflight. All rules are caas-core's; this file
//! only reads the request the way Envoy presents it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_core::context::{AuthType, ContextSigner, RequestContext};
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::{Audience, MAX_TOKEN_LEN, TokenError};
use caas_core::validate::{Denial, Rejection, Validator};
pub use caas_rules::denial::Reason;
use caas_runtime::otlp::{Span, SpanExporter};
use caas_runtime::trace::{TraceParent, new_span_id};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

use crate::metrics::GatewayMetrics;
use crate::response;
use caas_rules::policy::Policy;

/// Subprotocol prefix a WebSocket client uses to carry its token.
pub const BEARER_SUBPROTOCOL: &str = "caas.bearer.";

#[derive(Debug, Clone)]
pub struct AuthorizerSettings {
    /// Proxies in front of Envoy whose X-Forwarded-For entries are trusted.
    pub trusted_proxy_hops: usize,
    /// `false` is shadow mode: decide, log and count, but allow.
    pub enforce: bool,
    /// Internal deadline, shorter than Envoy's timeout: past it, deny.
    pub deadline: Duration,
    /// Policies by path, for requests whose route declares none (meshes).
    pub policy_table: Option<caas_rules::policy::PolicyTable>,
    /// Log allowed requests too (at info), not only denials.
    pub log_allowed: bool,
}

impl Default for AuthorizerSettings {
    fn default() -> Self {
        Self {
            trusted_proxy_hops: 0,
            enforce: true,
            deadline: Duration::from_millis(800),
            policy_table: None,
            log_allowed: true,
        }
    }
}

/// A Check's place in a trace: the trace (the caller's, or a new one when
/// spans are exported) and, when exporting, the Check's own span id.
struct Traced {
    trace: Option<TraceParent>,
    span: Option<String>,
    /// The trace began here (the caller sent no valid traceparent).
    new_trace: bool,
}

/// What an allowed request carries on of its trace, when spans are exported.
pub struct UpstreamTrace {
    /// This Check as the service's parent.
    pub traceparent: String,
    /// The caller's `tracestate` belongs to no trace we continue: drop it.
    pub drop_tracestate: bool,
}

impl Traced {
    fn upstream(&self) -> Option<UpstreamTrace> {
        let (trace, span_id) = (self.trace.as_ref()?, self.span.as_ref()?);
        Some(UpstreamTrace { traceparent: trace.child(span_id), drop_tracestate: self.new_trace })
    }
}

/// What the gateway decided; `response::build` turns it into a CheckResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// `None` only in shadow mode, for a request that would be denied.
        context: Option<RequestContext>,
        /// Remove `authorization` and `x-api-key` before forwarding.
        strip_credentials: bool,
        /// An Origin the tenant allows: echoed in CORS response headers.
        cors_origin: Option<String>,
        /// Query parameters to drop before forwarding (a WebSocket `token`).
        strip_query: Vec<String>,
    },
    Preflight {
        origin: String,
    },
    Deny {
        reason: Reason,
        tenant_id: Option<String>,
        /// The request's Origin, so a browser can read why it was refused.
        origin: Option<String>,
    },
}

/// A CheckRequest, read once into what the decision needs.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HashMap<String, String>,
    pub peer: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub request_id: String,
}

impl<'a> Incoming<'a> {
    pub fn read(request: &'a CheckRequest, empty: &'a HashMap<String, String>) -> Self {
        let attributes = request.attributes.as_ref();
        let http = attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let headers = http.map_or(empty, |h| &h.headers);
        let peer = attributes.and_then(|a| a.source.as_ref()).and_then(|s| s.address.as_ref()).and_then(|a| {
            match a.address.as_ref()? {
                Address::SocketAddress(socket) => Some(socket.address.as_str()),
                _ => None,
            }
        });
        let request_id = headers
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .or_else(|| http.map(|h| h.id.clone()).filter(|id| !id.is_empty()))
            .unwrap_or_else(|| new_id("req"));
        Self {
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            headers,
            peer,
            policy: attributes.and_then(|a| a.context_extensions.get("policy")).map(String::as_str),
            request_id,
        }
    }

    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub struct Authorizer {
    validator: Arc<Validator>,
    signer: ContextSigner,
    settings: AuthorizerSettings,
    metrics: Arc<GatewayMetrics>,
    exporter: Option<SpanExporter>,
}

impl Authorizer {
    /// Spans of each Check are exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub fn new(
        validator: Arc<Validator>,
        signer: ContextSigner,
        settings: AuthorizerSettings,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self { validator, signer, settings, metrics, exporter: SpanExporter::from_env("ext-authz") }
    }

    /// Spans go to `exporter` instead of where the environment says.
    pub fn with_exporter(self, exporter: Option<SpanExporter>) -> Self {
        Self { exporter, ..self }
    }

    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    pub fn validator(&self) -> &Arc<Validator> {
        &self.validator
    }

    /// Decides within the internal deadline; past it, denies (fail closed).
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let empty = HashMap::new();
        let incoming = Incoming::read(&request, &empty);
        let decision = self.decide_within_deadline(&incoming).await;
        let trace = self.trace(&incoming);
        let decision = self.observe(&incoming, decision, started, &trace);
        response::build(&decision, &incoming, &self.signer, unix_now(), trace.upstream())
    }

    /// The Check's place in a trace. With export on, every Check is a span
    /// (of the caller's trace, or of a new one) and an allowed request goes
    /// on with a `traceparent` naming it, so the service's span is its child
    /// even when the client sent none. With export off, only the caller's
    /// trace id is logged, and nothing is added to the request.
    fn trace(&self, req: &Incoming<'_>) -> Traced {
        let caller = req.header("traceparent").and_then(TraceParent::parse);
        match &self.exporter {
            Some(_) => Traced {
                new_trace: caller.is_none(),
                trace: Some(caller.unwrap_or_else(TraceParent::new_root)),
                span: Some(new_span_id()),
            },
            None => Traced { trace: caller, span: None, new_trace: false },
        }
    }

    /// With warm caches a decision completes on its first poll; only one
    /// that has to wait (database, Redis) arms the deadline timer. Arming a
    /// timer per Check costs a lock on the runtime's timer wheel, which
    /// under load was a measurable share of the whole check.
    async fn decide_within_deadline(&self, incoming: &Incoming<'_>) -> Decision {
        let mut decision = std::pin::pin!(self.decide(incoming, unix_now()));
        let first = decision.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        if let std::task::Poll::Ready(decision) = first {
            return decision;
        }
        // Polled again below with the real waker: a pending future re-registers it.
        match tokio::time::timeout(self.settings.deadline, decision).await {
            Ok(decision) => decision,
            Err(_) => deny(Reason::DeadlineExceeded, None, incoming.header("origin")),
        }
    }

    /// The decision alone (tests call this through `check`).
    pub async fn decide(&self, req: &Incoming<'_>, now: i64) -> Decision {
        let origin = req.header("origin");
        // Before any policy: the policy is chosen by this path, and a path
        // with another spelling could be routed elsewhere by a later hop.
        if !caas_rules::policy::canonical(path_only(req.path)) {
            return deny(Reason::PathNotCanonical, None, origin);
        }
        let Some(policy) = self.policy_of(req) else {
            tracing::error!(
                path = %path_only(req.path),
                policy = req.policy.unwrap_or("<none>"),
                request_id = %req.request_id,
                "route has no valid authorization policy: gateway misconfiguration, denying"
            );
            return deny(Reason::PolicyMissing, None, origin);
        };
        if req.method == "OPTIONS"
            && let Some(origin) = origin
            && req.header("access-control-request-method").is_some()
        {
            return if policy.browser_facing() {
                Decision::Preflight { origin: origin.to_string() }
            } else {
                deny(Reason::PreflightNotAllowed, None, Some(origin))
            };
        }
        if credential_in_query(req.path) {
            return deny(Reason::CredentialInQuery, None, origin);
        }
        let peer = req.peer.and_then(|p| p.parse::<IpAddr>().ok());
        let client_ip = peer.and_then(|peer| {
            caas_core::net::client_ip(peer, req.header("x-forwarded-for"), self.settings.trusted_proxy_hops)
        });
        let Some(client_ip) = client_ip else {
            return deny(Reason::ClientIpUnknown, None, origin);
        };
        let mut context = RequestContext {
            tenant_id: String::new(),
            user_id: String::new(),
            session_id: String::new(),
            auth_type: AuthType::Anonymous,
            key_id: String::new(),
            client_ip: caas_core::whitelist::canonical_ip(client_ip).to_string(),
            request_id: req.request_id.clone(),
            token_expires_at: None,
        };
        let mut cors_origin = None;
        let mut strip_query = Vec::new();
        let outcome: Result<(), Rejection> = async {
            match policy {
                Policy::Public => Ok(()),
                Policy::ApiKey => {
                    let key = req.header("x-api-key").ok_or(Denial::MissingCredentials)?;
                    self.api_key(&mut context, key, client_ip, now).await
                }
                // The refresh token travels in the body (auth-api checks it);
                // an API key or an access token, if sent, is checked here.
                Policy::Refresh => match (req.header("x-api-key"), req.header("authorization")) {
                    (Some(key), _) => self.api_key(&mut context, key, client_ip, now).await,
                    (None, Some(_)) => {
                        let claims = self.validator.validate_token(bearer(req)?, Audience::Sdk, origin, now).await?;
                        context.tenant_id = claims.tid;
                        context.user_id = claims.sub;
                        context.session_id = claims.sid;
                        context.auth_type = AuthType::Jwt;
                        cors_origin = origin.map(str::to_string);
                        Ok(())
                    }
                    (None, None) => Ok(()),
                },
                Policy::Dashboard => {
                    let token = bearer(req)?;
                    let claims = self.validator.validate_token(token, Audience::Dashboard, None, now).await?;
                    context.tenant_id = claims.tid;
                    context.user_id = claims.sub;
                    context.session_id = claims.sid;
                    context.auth_type = AuthType::Dashboard;
                    Ok(())
                }
                Policy::EndUser => {
                    // End-user routes serve chat and sockets, which do not use
                    // the address; each context header costs Envoy ~2 µs.
                    context.client_ip.clear();
                    let (token, from_query) = end_user_token(req)?;
                    let claims = self.validator.validate_token(token, Audience::Sdk, origin, now).await?;
                    // A socket outlives its upgrade request and must close when
                    // its token expires: tell the socket service when.
                    if is_websocket_upgrade(req) {
                        context.token_expires_at = Some(claims.exp);
                    }
                    context.tenant_id = claims.tid;
                    context.user_id = claims.sub;
                    context.session_id = claims.sid;
                    context.auth_type = AuthType::Jwt;
                    cors_origin = origin.map(str::to_string);
                    if from_query {
                        strip_query.push("token".to_string());
                    }
                    Ok(())
                }
            }
        }
        .await;
        match outcome {
            // In shadow mode services that have not moved to the signed
            // context still validate the credential themselves (a socket's
            // `?token=` included).
            Ok(()) => Decision::Allow {
                context: Some(context),
                strip_credentials: self.settings.enforce,
                cors_origin,
                strip_query: if self.settings.enforce { strip_query } else { Vec::new() },
            },
            Err(rejection) => Decision::Deny {
                reason: Reason::Denied(rejection.denial),
                tenant_id: rejection.tenant_id,
                origin: origin.map(str::to_string),
            },
        }
    }

    /// The route's declared policy, else (for meshes) the table's for the path.
    fn policy_of(&self, req: &Incoming<'_>) -> Option<Policy> {
        match req.policy {
            Some(name) => Policy::parse(name),
            None => self.settings.policy_table.as_ref().and_then(|table| table.lookup(req.path)),
        }
    }

    async fn api_key(&self, context: &mut RequestContext, key: &str, ip: IpAddr, now: i64) -> Result<(), Rejection> {
        let identity = self.validator.validate_api_key(key, ip, now).await?;
        context.tenant_id = identity.tenant_id;
        context.key_id = identity.key_id;
        context.auth_type = AuthType::ApiKey;
        Ok(())
    }

    /// Counts and logs the decision; in shadow mode turns a denial into an
    /// allow without context (downstream keeps validating as before).
    fn observe(&self, req: &Incoming<'_>, decision: Decision, started: Instant, trace: &Traced) -> Decision {
        let policy = self.policy_of(req).map_or("none", Policy::as_str);
        let (allowed, seconds) = self.metrics.hot(policy);
        seconds.observe(started.elapsed().as_secs_f64());
        let trace_id = trace.trace.as_ref().map_or("", |t| t.trace_id.as_str());
        let path = path_only(req.path);
        let (outcome, status, tenant_id) = match &decision {
            Decision::Allow { context, .. } => {
                allowed.inc();
                let tenant_id = context.as_ref().map_or("", |c| c.tenant_id.as_str());
                if self.settings.log_allowed {
                    tracing::info!(request_id = %req.request_id, trace_id, tenant_id, policy, %path, method = req.method, decision = "allow", "check");
                }
                ("allow", 200, tenant_id.to_string())
            }
            Decision::Preflight { .. } => {
                self.metrics.requests.get_or_create(&[("policy", policy), ("decision", "preflight")]).inc();
                ("preflight", 204, String::new())
            }
            Decision::Deny { reason, tenant_id, .. } => {
                let reason = *reason;
                self.metrics.auth_failures.get_or_create(&[("policy", policy), ("reason", reason.code())]).inc();
                match reason {
                    Reason::Denied(Denial::IpNotAllowed) => self.metrics.ip_whitelist_rejections.inc(),
                    Reason::Denied(Denial::OriginNotAllowed) => self.metrics.origin_rejections.inc(),
                    _ => 0,
                };
                let tenant = tenant_id.as_deref().unwrap_or("");
                if self.settings.enforce || reason == Reason::PolicyMissing {
                    self.metrics.requests.get_or_create(&[("policy", policy), ("decision", "deny")]).inc();
                    tracing::info!(request_id = %req.request_id, trace_id, tenant_id = tenant, policy, %path, method = req.method, reason = reason.code(), status = reason.status(), decision = "deny", "check");
                    ("deny", reason.status(), tenant.to_string())
                } else {
                    self.metrics.requests.get_or_create(&[("policy", policy), ("decision", "shadow_deny")]).inc();
                    tracing::warn!(request_id = %req.request_id, trace_id, tenant_id = tenant, policy, %path, method = req.method, reason = reason.code(), decision = "shadow_deny", "check: would deny; allowed because USE_AUTH_SERVICE=false");
                    self.export(trace, req, policy, "shadow_deny", 200, tenant, started);
                    return Decision::Allow {
                        context: None,
                        // Downstream still validates credentials itself during a migration.
                        strip_credentials: false,
                        cors_origin: None,
                        strip_query: Vec::new(),
                    };
                }
            }
        };
        self.export(trace, req, policy, outcome, status, &tenant_id, started);
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn export(
        &self,
        trace: &Traced,
        req: &Incoming<'_>,
        policy: &str,
        outcome: &str,
        status: u16,
        tenant: &str,
        started: Instant,
    ) {
        let (Some(exporter), Some(span_id)) = (&self.exporter, &trace.span) else { return };
        let mut span = Span::ended(trace.trace.clone(), format!("check {policy}"), started, status);
        span.span_id = span_id.clone();
        span.attributes.extend([
            ("caas.policy", policy.to_string()),
            ("caas.decision", outcome.to_string()),
            ("caas.request_id", req.request_id.clone()),
            ("caas.tenant_id", tenant.to_string()),
        ]);
        exporter.record(span);
    }

    /// Whether shadow mode is on.
    pub fn enforcing(&self) -> bool {
        self.settings.enforce
    }
}

fn deny(reason: Reason, tenant_id: Option<String>, origin: Option<&str>) -> Decision {
    Decision::Deny { reason, tenant_id, origin: origin.map(str::to_string) }
}

/// The path without its query, for logs (a query can hold a credential).
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// `Authorization: Bearer <token>`. Two headers arrive joined by a comma,
/// which no token contains: refused as malformed.
fn bearer<'a>(req: &Incoming<'a>) -> Result<&'a str, Denial> {
    let value = req.header("authorization").ok_or(Denial::MissingCredentials)?;
    let (scheme, token) = value.split_once(' ').ok_or(Denial::Token(TokenError::Malformed))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::Token(TokenError::Malformed));
    }
    well_formed_token(token)
}

/// Length only: the JWT parser's strict base64url decoding refuses every
/// other byte (a comma from joined duplicate headers, spaces, padding).
fn well_formed_token(token: &str) -> Result<&str, Denial> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Denial::Token(TokenError::Malformed));
    }
    Ok(token)
}

/// An end user's token: the Authorization header, else (WebSocket upgrades
/// only) the `caas.bearer.<jwt>` subprotocol or the `token` query parameter.
/// The bool says it came from the query (to be stripped before forwarding).
fn end_user_token<'a>(req: &Incoming<'a>) -> Result<(&'a str, bool), Denial> {
    if req.header("authorization").is_some() {
        return bearer(req).map(|t| (t, false));
    }
    if !is_websocket_upgrade(req) {
        return Err(Denial::MissingCredentials);
    }
    if let Some(protocols) = req.header("sec-websocket-protocol") {
        let mut tokens = protocols.split(',').filter_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL));
        if let Some(token) = tokens.next() {
            if tokens.next().is_some() {
                return Err(Denial::Token(TokenError::Malformed));
            }
            return well_formed_token(token).map(|t| (t, false));
        }
    }
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    let mut tokens = query.split('&').filter_map(|pair| pair.strip_prefix("token="));
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => well_formed_token(token).map(|t| (t, true)),
        (Some(_), Some(_)) => Err(Denial::Token(TokenError::Malformed)),
        (None, _) => Err(Denial::MissingCredentials),
    }
}

fn is_websocket_upgrade(req: &Incoming<'_>) -> bool {
    req.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// An API key (or any `caas_` credential) in the query string.
fn credential_in_query(path: &str) -> bool {
    let Some((_, query)) = path.split_once('?') else { return false };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase();
        matches!(name.as_str(), "api_key" | "apikey" | "api-key" | "x-api-key" | "key" | "refresh_token")
            || value.starts_with("caas_")
            || value.starts_with("caas%5F")
            || value.starts_with("caas%5f")
    })
}
