//! The Check, step by step: read the request (`incoming`), decide by its
//! route's policy (`policies`), apply shadow mode (`shadow`), count and log
//! it, and answer (`response`). All rules are caas-core's and caas-rules';
//! this crate only reads the request the way Envoy presents it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_core::context::ContextSigner;
use caas_core::id::unix_now;
use caas_core::validate::{Denial, Validator};
use caas_rules::policy::Policy;
use caas_rules::quota::Throttle;
use caas_rules::request::{credential_in_query, path_only};
use caas_runtime::otlp::{Span, SpanExporter};
use caas_runtime::trace::TraceParent;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

use crate::decision::deny;
pub use crate::decision::{Decision, Grant, Reason};
use crate::failures::FailureLimiter;
pub use crate::incoming::Incoming;
use crate::metrics::{GatewayMetrics, policy_label};
use crate::policies::Attempt;
use crate::quota::{Holder, Quotas, holder_buckets};
use crate::trace::Traced;
pub use crate::trace::UpstreamTrace;
use crate::{response, shadow};

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
    /// Made-up credentials (`Denial::is_guess`) allowed per address bucket
    /// within `failed_auth_window`; past it, 429 before any lookup. 0: off.
    pub failed_auth_limit: u32,
    pub failed_auth_window: Duration,
    /// Address buckets tracked at once (least active evicted first).
    pub failed_auth_buckets: u64,
    /// When set, a Check without this token in its `x-caas-authz-token`
    /// metadata is refused (the caller is not our Envoy).
    pub caller_token: Option<caas_core::secret::Secret>,
    /// How often quotas are reconciled with the other instances through
    /// Redis (when the validator's shared cache is Redis).
    pub quota_sync_interval: Duration,
    /// `false`: no quota is counted or enforced (QUOTAS_ENABLED).
    pub quotas: bool,
}

impl Default for AuthorizerSettings {
    fn default() -> Self {
        Self {
            trusted_proxy_hops: 0,
            enforce: true,
            deadline: Duration::from_millis(800),
            policy_table: None,
            log_allowed: true,
            failed_auth_limit: 50,
            failed_auth_window: Duration::from_secs(60),
            failed_auth_buckets: 100_000,
            caller_token: None,
            quota_sync_interval: Duration::from_millis(25),
            quotas: true,
        }
    }
}

pub struct Authorizer {
    validator: Arc<Validator>,
    signer: ContextSigner,
    settings: AuthorizerSettings,
    metrics: Arc<GatewayMetrics>,
    exporter: Option<SpanExporter>,
    failures: FailureLimiter,
    quotas: Quotas,
    /// What the in-proxy filter's feed serves (`edge`); `None`: no feed.
    edge_material: Option<crate::material::EdgeMaterial>,
}

impl Authorizer {
    /// Spans of each Check are exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub fn new(
        validator: Arc<Validator>,
        signer: ContextSigner,
        settings: AuthorizerSettings,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let failures =
            FailureLimiter::new(settings.failed_auth_limit, settings.failed_auth_window, settings.failed_auth_buckets);
        let exporter = SpanExporter::from_env("ext-authz");
        // Shared only through Redis: an in-process cache means one process.
        let shared = validator.shared_cache();
        let shared = (shared.kind() == "redis").then(|| shared.clone());
        let gauges = crate::quota::QuotaGauges {
            shared: metrics.quota_shared.clone(),
            instances: metrics.quota_instances.clone(),
        };
        let quotas = Quotas::new(crate::quota::DEFAULT_CAPACITY, shared, gauges);
        quotas.reconcile_every(settings.quota_sync_interval);
        Self { validator, signer, settings, metrics, exporter, failures, quotas, edge_material: None }
    }

    /// Serves the in-proxy filter's feed with `material` (its secrets).
    pub fn with_edge_material(self, material: crate::material::EdgeMaterial) -> Self {
        Self { edge_material: Some(material), ..self }
    }

    pub fn edge_material(&self) -> Option<&crate::material::EdgeMaterial> {
        self.edge_material.as_ref()
    }

    /// EXT_AUTHZ_CALLER_TOKEN, when set.
    pub fn caller_token(&self) -> Option<&caas_core::secret::Secret> {
        self.settings.caller_token.as_ref()
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

    /// Whether a Check carrying `presented` as its caller token may be
    /// answered: always when no token is configured, else only with it
    /// (compared in constant time).
    pub fn admits_caller(&self, presented: Option<&[u8]>) -> bool {
        match &self.settings.caller_token {
            None => true,
            Some(token) => presented.is_some_and(|p| token.matches(p)),
        }
    }

    /// Whether shadow mode is off.
    pub fn enforcing(&self) -> bool {
        self.settings.enforce
    }

    /// Decides within the internal deadline; past it, denies (fail closed).
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let empty = HashMap::new();
        let incoming = Incoming::read(&request, &empty);
        let policy = self.policy_of(&incoming);
        let decision = self.decide_within_deadline(&incoming, policy).await;
        let decision = if self.settings.enforce { decision } else { shadow::apply(decision) };
        let trace = Traced::new(incoming.header("traceparent").and_then(TraceParent::parse), self.exporter.is_some());
        self.observe(&incoming, policy, &decision, started, &trace);
        response::build(&decision, &incoming, &self.signer, unix_now(), trace.upstream())
    }

    /// With warm caches a decision completes on its first poll; only one
    /// that has to wait (database, Redis) arms the deadline timer. Arming a
    /// timer per Check costs a lock on the runtime's timer wheel, which
    /// under load was a measurable share of the whole check.
    async fn decide_within_deadline(&self, incoming: &Incoming<'_>, policy: Option<Policy>) -> Decision {
        let mut decision = std::pin::pin!(self.decide(incoming, policy, unix_now()));
        let first = decision.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        if let std::task::Poll::Ready(decision) = first {
            return decision;
        }
        // Polled again below with the real waker: a pending future re-registers it.
        match tokio::time::timeout(self.settings.deadline, decision).await {
            Ok(decision) => decision,
            Err(_) => deny(Reason::DeadlineExceeded, None, incoming.origin()),
        }
    }

    /// The decision as enforced (`check` applies shadow mode after it);
    /// `policy` is `policy_of(req)`.
    pub async fn decide(&self, req: &Incoming<'_>, policy: Option<Policy>, now: i64) -> Decision {
        let origin = req.origin();
        // Before any policy: the policy is chosen by this path, and a path
        // with another spelling could be routed elsewhere by a later hop.
        if !caas_rules::policy::canonical(path_only(req.path)) {
            return deny(Reason::PathNotCanonical, None, origin);
        }
        let Some(policy) = policy else {
            tracing::error!(
                path = %path_only(req.path),
                policy = req.policy.unwrap_or("<none>"),
                request_id = %req.request_id,
                "route has no valid authorization policy: gateway misconfiguration, denying"
            );
            return deny(Reason::PolicyMissing, None, origin);
        };
        if let Some(preflight) = preflight(req, policy) {
            return preflight;
        }
        if credential_in_query(req.path) {
            return deny(Reason::CredentialInQuery, None, origin);
        }
        let Some(client_ip) = self.client_ip(req) else {
            return deny(Reason::ClientIpUnknown, None, origin);
        };
        // Before any lookup: a refused address costs no database read.
        if policy != Policy::Public
            && let Some(retry_after) = self.failures.refused_for(client_ip, Instant::now())
        {
            return deny(Reason::TooManyFailures { retry_after }, None, origin);
        }
        let attempt = Attempt { validator: &self.validator, req, client_ip, now };
        match attempt.grant(policy).await {
            Ok(grant) => match self.count(policy, &grant, req).await {
                Ok(()) => Decision::Allow { grant, strip_credentials: true },
                Err(throttle) => deny(Reason::RateLimited(throttle), Some(grant.context.tenant_id), origin),
            },
            Err(rejection) => {
                if rejection.denial.is_guess() {
                    self.count_failure(client_ip);
                }
                deny(Reason::Denied(rejection.denial), rejection.tenant_id, origin)
            }
        }
    }

    /// Counts a made-up credential against the address; says so once when
    /// the address starts being refused (its bucket only, never the credential).
    fn count_failure(&self, client_ip: IpAddr) {
        if let Some(bucket) = self.failures.record(client_ip, Instant::now()) {
            tracing::warn!(
                address_bucket = %bucket,
                limit = self.settings.failed_auth_limit,
                window_seconds = self.settings.failed_auth_window.as_secs(),
                "too many invalid credentials from one address: refusing it (429 too_many_failures) until the window ends"
            );
        }
    }

    /// Counts an authenticated request against its tenant's quotas, in the
    /// same Check (no second callout).
    async fn count(&self, policy: Policy, grant: &Grant, req: &Incoming<'_>) -> Result<(), Throttle> {
        if !self.settings.quotas {
            return Ok(());
        }
        let counted = crate::quota::buckets(policy, grant);
        if counted.is_empty() {
            return Ok(());
        }
        let ctx = &grant.context;
        let limits = self.validator.rate_limits(&ctx.tenant_id).await;
        self.quotas.admit(&counted, &limits).inspect_err(|throttle| {
            // The key's id only: the key itself never reaches a log.
            tracing::warn!(
                request_id = %req.request_id,
                tenant_id = %ctx.tenant_id,
                key_id = %ctx.key_id,
                policy = policy.as_str(),
                scope = throttle.scope.as_str(),
                rate = throttle.limit.rate,
                burst = throttle.limit.burst,
                retry_after = throttle.retry_after,
                "rate limit exceeded"
            );
        })
    }

    /// Takes up to `want` of an end user's or a key's requests from its
    /// quotas (its own bucket and the tenant's, as a Check counts them) for
    /// the in-proxy filter to spend, and returns how many fitted. With
    /// quotas off the filter asks for none (its material says so).
    pub async fn lease(&self, tenant_id: &str, holder: Holder<'_>, want: u32) -> u32 {
        if !self.settings.quotas {
            return 0;
        }
        let limits = self.validator.rate_limits(tenant_id).await;
        let granted = self.quotas.lease(&holder_buckets(tenant_id, holder), &limits, want);
        self.metrics.edge_leased.inc_by(u64::from(granted));
        granted
    }

    /// Un-counts `n` leased requests the filter gives back unspent.
    pub async fn give_back(&self, tenant_id: &str, holder: Holder<'_>, n: u32) {
        if !self.settings.quotas || n == 0 {
            return;
        }
        let limits = self.validator.rate_limits(tenant_id).await;
        self.quotas.give_back(&holder_buckets(tenant_id, holder), &limits, n);
        self.metrics.edge_returned.inc_by(u64::from(n));
    }

    /// The address buckets refused for too many failed credentials now
    /// (`None`: too many to list), for the in-proxy filter.
    pub fn refusing(&self) -> Option<Vec<ipnet::IpNet>> {
        self.failures.refusing(Instant::now())
    }

    /// The route's declared policy, else (for meshes) the table's for the path.
    fn policy_of(&self, req: &Incoming<'_>) -> Option<Policy> {
        match req.policy {
            Some(name) => Policy::parse(name),
            None => self.settings.policy_table.as_ref().and_then(|table| table.lookup(req.path)),
        }
    }

    fn client_ip(&self, req: &Incoming<'_>) -> Option<IpAddr> {
        let peer = req.peer.and_then(|p| p.parse::<IpAddr>().ok())?;
        caas_core::net::client_ip(peer, req.header("x-forwarded-for"), self.settings.trusted_proxy_hops)
    }

    /// Counts, logs and (when exporting) records the decision as a span.
    fn observe(
        &self,
        req: &Incoming<'_>,
        policy: Option<Policy>,
        decision: &Decision,
        started: Instant,
        trace: &Traced,
    ) {
        let (allowed, seconds) = self.metrics.hot(policy);
        seconds.observe(started.elapsed().as_secs_f64());
        let policy = policy_label(policy);
        let trace_id = trace.trace_id();
        let path = path_only(req.path);
        let (outcome, tenant) = match decision {
            Decision::Allow { grant, .. } => {
                allowed.inc();
                let tenant_id = grant.context.tenant_id.as_str();
                if self.settings.log_allowed {
                    tracing::info!(request_id = %req.request_id, trace_id, tenant_id, policy, %path, method = req.method, decision = "allow", "check");
                }
                ("allow", tenant_id)
            }
            Decision::Preflight { .. } => ("preflight", ""),
            Decision::Deny { reason, tenant_id, .. } => {
                let tenant = tenant_id.as_deref().unwrap_or("");
                let line =
                    RefusalLine { request_id: &req.request_id, trace_id, tenant_id: tenant, path, method: req.method };
                self.refused(policy, *reason, &line, false);
                ("deny", tenant)
            }
            Decision::ShadowDeny { reason, tenant_id } => {
                self.count_refusal(policy, *reason);
                let tenant = tenant_id.as_deref().unwrap_or("");
                tracing::warn!(request_id = %req.request_id, trace_id, tenant_id = tenant, policy, %path, method = req.method, reason = reason.code(), decision = "shadow_deny", "check: would deny; allowed because USE_AUTH_SERVICE=false");
                ("shadow_deny", tenant)
            }
        };
        if outcome != "allow" {
            self.metrics.requests.get_or_create(&[("policy", policy), ("decision", outcome)]).inc();
        }
        self.export(trace, req, policy, outcome, decision.answer().status, tenant, started);
    }

    fn count_refusal(&self, policy: &'static str, reason: Reason) {
        self.metrics.auth_failures.get_or_create(&[("policy", policy), ("reason", reason.code())]).inc();
        match reason {
            Reason::Denied(Denial::IpNotAllowed) => self.metrics.ip_whitelist_rejections.inc(),
            Reason::Denied(Denial::OriginNotAllowed) => self.metrics.origin_rejections.inc(),
            Reason::RateLimited(throttle) => {
                self.metrics.rate_limited.get_or_create(&[("policy", policy), ("scope", throttle.scope.as_str())]).inc()
            }
            _ => 0,
        };
    }

    /// Whether spans are exported (the filter then makes its allows spans too).
    pub fn exporting(&self) -> bool {
        self.exporter.is_some()
    }

    /// Exports the in-proxy filter's decisions (allows, preflights) as a
    /// Check's spans would be (`export`), marked as the filter's; how many
    /// (none when not exporting).
    pub fn export_edge_spans(&self, spans: Vec<crate::edge::EdgeSpan>) -> usize {
        let Some(exporter) = &self.exporter else { return 0 };
        let count = spans.len();
        let at = |nanos: u64| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
        for sent in spans {
            let span = Span {
                trace: TraceParent { trace_id: sent.trace_id, parent_span_id: sent.parent_span_id, sampled: true },
                span_id: sent.span_id,
                name: format!("check {}", sent.policy),
                start: at(sent.start_unix_nano),
                end: at(sent.end_unix_nano),
                // As `observe` and `export` record a Check's.
                attributes: vec![
                    ("http.response.status_code", if sent.decision == "preflight" { "204" } else { "200" }.to_string()),
                    ("caas.policy", sent.policy),
                    ("caas.decision", sent.decision),
                    ("caas.request_id", sent.request_id),
                    ("caas.tenant_id", sent.tenant_id),
                    ("caas.decided_by", "edge".to_string()),
                ],
                error: false,
            };
            exporter.record(span);
        }
        self.metrics.edge_spans.inc_by(count as u64);
        count
    }

    /// Counts `count` allows or preflights (`decision`) the in-proxy filter
    /// made on `policy`'s routes, as `observe` counts a Check's.
    pub fn count_edge_decisions(&self, policy: Policy, decision: &'static str, count: u64) {
        self.count_edge(policy_label(Some(policy)), decision, count);
    }

    /// The filter's decisions, in `gateway_requests_total` with the Checks'
    /// and in `gateway_edge_decisions_total`.
    fn count_edge(&self, policy: &'static str, decision: &'static str, count: u64) {
        let labels = [("policy", policy), ("decision", decision)];
        self.metrics.requests.get_or_create(&labels).inc_by(count);
        self.metrics.edge_decisions.get_or_create(&labels).inc_by(count);
    }

    /// Counts `count` requests the in-proxy filter left to ext_authz for `reason`.
    pub fn count_edge_forwards(&self, reason: &'static str, count: u64) {
        self.metrics.edge_forwarded.get_or_create(&[("reason", reason)]).inc_by(count);
    }

    /// Logs and counts a refusal the in-proxy filter answered itself, as
    /// `observe` does a Check's (the same line, with `edge`).
    pub fn record_edge_denial(&self, report: &crate::edge::EdgeDenial, policy: Policy, denial: Denial) {
        let policy = policy_label(Some(policy));
        let line = RefusalLine {
            request_id: &report.request_id,
            trace_id: &report.trace_id,
            tenant_id: &report.tenant_id,
            path: &report.path,
            method: &report.method,
        };
        self.refused(policy, Reason::Denied(denial), &line, true);
        self.count_edge(policy, "deny", 1);
    }

    /// A refusal's log line and its refusal counters, whoever answered it
    /// (`edge`: the in-proxy filter), so the two can never differ.
    fn refused(&self, policy: &'static str, reason: Reason, line: &RefusalLine<'_>, edge: bool) {
        self.count_refusal(policy, reason);
        tracing::info!(
            request_id = line.request_id,
            trace_id = line.trace_id,
            tenant_id = line.tenant_id,
            policy,
            path = line.path,
            method = line.method,
            reason = reason.code(),
            status = reason.status(),
            decision = "deny",
            edge,
            "check"
        );
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
}

/// What a refusal's log line says of its request (`Authorizer::refused`).
struct RefusalLine<'a> {
    request_id: &'a str,
    trace_id: &'a str,
    tenant_id: &'a str,
    path: &'a str,
    method: &'a str,
}

/// A CORS preflight: answered here for routes a browser may call, refused
/// for the rest; `None` when the request is not one.
fn preflight(req: &Incoming<'_>, policy: Policy) -> Option<Decision> {
    let origin = req.origin()?;
    if !caas_rules::cors::is_preflight(req.method, Some(origin), req.header("access-control-request-method")) {
        return None;
    }
    Some(if policy.browser_facing() {
        Decision::Preflight { origin: origin.to_string() }
    } else {
        deny(Reason::PreflightNotAllowed, None, Some(origin))
    })
}
