//! Gateway decision metrics (names from docs/DESIGN.md, "Metrics").

use caas_rules::policy::Policy;
use caas_runtime::metrics::{Labels, Labels2, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct GatewayMetrics {
    /// By policy and decision (`allow`, `deny`, `shadow_deny`, `preflight`).
    pub requests: Family<Labels2, Counter>,
    /// By policy and reason code.
    pub auth_failures: Family<Labels2, Counter>,
    pub ip_whitelist_rejections: Counter,
    pub origin_rejections: Counter,
    /// Requests over a quota, by policy and scope (`key`, `user`, `tenant`).
    pub rate_limited: Family<Labels2, Counter>,
    /// Checks refused for lack of the caller token (EXT_AUTHZ_CALLER_TOKEN).
    pub unknown_callers: Counter,
    /// 1 while quotas are shared with the other instances through Redis; 0
    /// without Redis or while it is unreachable (each instance then enforces
    /// its share alone).
    pub quota_shared: Gauge,
    /// The instances sharing each quota as of the last round that reached
    /// Redis (what each limit is divided by while Redis is unreachable).
    pub quota_instances: Gauge,
    /// End users' requests counted in their quotas ahead of time for the
    /// in-proxy filter (ext-authz/src/edge.rs, leases), which allows them
    /// without a Check.
    pub edge_leased: Counter,
    /// Of those, given back unspent by the filter (un-counted again).
    pub edge_returned: Counter,
    /// The in-proxy filter's allows exported as spans (ext-authz/src/edge.rs, spans).
    pub edge_spans: Counter,
    /// The in-proxy filter's own decisions, by policy and decision (`allow`,
    /// `preflight`, `deny`); each also in `requests`.
    pub edge_decisions: Family<Labels2, Counter>,
    /// Requests the in-proxy filter left to ext_authz, by its reason.
    pub edge_forwarded: Family<Labels, Counter>,
    /// Time inside `check`, by policy.
    pub check_seconds: Family<Labels, Histogram>,
    /// Per policy (`Policy::ALL` order, then routes without one): the allow
    /// counter and the check histogram, resolved once (a family lookup locks
    /// and hashes per call).
    hot: [(Counter, Histogram); POLICY_SLOTS],
}

/// Label value of the policy dimension for a route without a valid policy.
pub const NO_POLICY: &str = "none";

/// One slot per policy and one for routes without one.
const POLICY_SLOTS: usize = Policy::ALL.len() + 1;

/// The policy label of a Check: the policy's name, or `none`.
pub fn policy_label(policy: Option<Policy>) -> &'static str {
    policy.map_or(NO_POLICY, Policy::as_str)
}

fn slot(policy: Option<Policy>) -> usize {
    policy.map_or(Policy::ALL.len(), Policy::index)
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let requests: Family<Labels2, Counter> = Family::default();
        let check_seconds: Family<Labels, Histogram> = Family::new_with_constructor(latency_histogram);
        let hot = std::array::from_fn(|i| {
            let label = policy_label(Policy::ALL.get(i).copied());
            let allow = requests.get_or_create(&[("policy", label), ("decision", "allow")]).clone();
            (allow, check_seconds.get_or_create(&[("policy", label)]).clone())
        });
        Self {
            requests,
            auth_failures: Family::default(),
            ip_whitelist_rejections: Counter::default(),
            origin_rejections: Counter::default(),
            rate_limited: Family::default(),
            unknown_callers: Counter::default(),
            quota_shared: Gauge::default(),
            quota_instances: Gauge::default(),
            edge_leased: Counter::default(),
            edge_returned: Counter::default(),
            edge_spans: Counter::default(),
            edge_decisions: Family::default(),
            edge_forwarded: Family::default(),
            check_seconds,
            hot,
        }
    }
}

impl GatewayMetrics {
    /// The allow counter and check histogram of a policy (`None`: no policy).
    pub fn hot(&self, policy: Option<Policy>) -> &(Counter, Histogram) {
        &self.hot[slot(policy)]
    }
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("gateway_requests", "Authorization decisions by policy and decision", self.requests.clone());
        registry.register("gateway_auth_failures", "Denied requests by policy and reason", self.auth_failures.clone());
        registry.register(
            "gateway_ip_whitelist_rejections",
            "API-key requests from an address outside the tenant's whitelist",
            self.ip_whitelist_rejections.clone(),
        );
        registry.register(
            "gateway_origin_rejections",
            "Requests from an Origin outside the tenant's whitelist",
            self.origin_rejections.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Authenticated requests refused over a quota, by policy and scope",
            self.rate_limited.clone(),
        );
        registry.register(
            "gateway_unknown_callers",
            "Checks refused because they lacked the caller token (not from our Envoy)",
            self.unknown_callers.clone(),
        );
        registry.register(
            "gateway_quota_shared",
            "1 while quotas are shared through Redis, 0 while this instance enforces its share alone",
            self.quota_shared.clone(),
        );
        registry.register(
            "gateway_quota_instances",
            "Instances sharing each quota as of the last round that reached Redis (each one's share is 1/this while Redis is down)",
            self.quota_instances.clone(),
        );
        registry.register(
            "gateway_edge_leased",
            "End users' requests counted in their quotas ahead of time for the in-proxy filter to allow",
            self.edge_leased.clone(),
        );
        registry.register(
            "gateway_edge_returned",
            "Of the leased requests, those the in-proxy filter gave back unspent (un-counted again)",
            self.edge_returned.clone(),
        );
        registry.register(
            "gateway_edge_decisions",
            "Decisions the in-proxy filter made itself, by policy and decision (each also in gateway_requests)",
            self.edge_decisions.clone(),
        );
        registry.register(
            "gateway_edge_forwarded",
            "Requests the in-proxy filter left to ext_authz, by reason",
            self.edge_forwarded.clone(),
        );
        registry.register(
            "gateway_edge_spans",
            "The in-proxy filter's allows exported as spans (when spans are exported)",
            self.edge_spans.clone(),
        );
        registry.register("gateway_check_duration_seconds", "Time to decide one Check", self.check_seconds.clone());
    }
}
