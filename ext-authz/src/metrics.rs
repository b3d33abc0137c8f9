//! Gateway decision metrics (names from DESIGN.md).

use caas_runtime::metrics::{Labels, Labels2, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct GatewayMetrics {
    /// By policy and decision (`allow`, `deny`, `shadow_deny`, `preflight`).
    pub requests: Family<Labels2, Counter>,
    /// By policy and reason code.
    pub auth_failures: Family<Labels2, Counter>,
    pub ip_whitelist_rejections: Counter,
    pub origin_rejections: Counter,
    /// Time inside `check`, by policy.
    pub check_seconds: Family<Labels, Histogram>,
    /// Per policy (in `POLICY_NAMES` order): the allow counter and the check
    /// histogram, resolved once (a family lookup locks and hashes per call).
    pub hot: Vec<(Counter, Histogram)>,
}

/// Label values of the policy dimension; `none` is a route without one.
pub const POLICY_NAMES: [&str; 6] = ["public", "dashboard", "api_key", "refresh", "end_user", "none"];

impl Default for GatewayMetrics {
    fn default() -> Self {
        let requests: Family<Labels2, Counter> = Family::default();
        let check_seconds: Family<Labels, Histogram> = Family::new_with_constructor(latency_histogram);
        let hot = POLICY_NAMES
            .iter()
            .map(|p| {
                let allow = requests.get_or_create(&[("policy", p), ("decision", "allow")]).clone();
                (allow, check_seconds.get_or_create(&[("policy", p)]).clone())
            })
            .collect();
        Self {
            requests,
            auth_failures: Family::default(),
            ip_whitelist_rejections: Counter::default(),
            origin_rejections: Counter::default(),
            check_seconds,
            hot,
        }
    }
}

impl GatewayMetrics {
    /// The allow counter and check histogram of a policy label.
    pub fn hot(&self, policy: &str) -> &(Counter, Histogram) {
        let index = POLICY_NAMES.iter().position(|p| *p == policy).unwrap_or(POLICY_NAMES.len() - 1);
        &self.hot[index]
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
        registry.register("gateway_check_duration_seconds", "Time to decide one Check", self.check_seconds.clone());
    }
}
