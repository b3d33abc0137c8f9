//! Gateway decision metrics (names from DESIGN.md).

use caas_core::metrics::{Labels, Labels2, latency_histogram};
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
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            auth_failures: Family::default(),
            ip_whitelist_rejections: Counter::default(),
            origin_rejections: Counter::default(),
            check_seconds: Family::new_with_constructor(latency_histogram),
        }
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
