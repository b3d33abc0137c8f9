//! Prometheus plumbing every service's metrics share: label shapes, the
//! latency buckets, and the text a registry renders to. Which metrics exist
//! is each crate's own (core's `AuthMetrics`, ext-authz's, socket's).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = [(&'static str, &'static str); 1];
pub type Labels2 = [(&'static str, &'static str); 2];

/// Latency buckets from 1 µs to ~4 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_001, 2.5, 18))
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        tracing::error!("failed to encode metrics");
    }
    out
}
