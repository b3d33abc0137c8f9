//! Socket metrics (names from docs/DESIGN.md "Metrics", plus current connections, deliveries and closes).

use caas_runtime::metrics::{Labels, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct SocketMetrics {
    pub connections_total: Counter,
    /// By reason code.
    pub auth_failures: Family<Labels, Counter>,
    /// Permission checks answered from the connection's own context (no database).
    pub context_cache_hits: Counter,
    pub connections: Gauge,
    pub delivered: Counter,
    /// Server-initiated closes, by reason.
    pub closes: Family<Labels, Counter>,
    /// From a message event reaching this node to its frame written to a
    /// subscriber's socket.
    pub delivery_seconds: Histogram,
}

impl Default for SocketMetrics {
    fn default() -> Self {
        Self {
            connections_total: Counter::default(),
            auth_failures: Family::default(),
            context_cache_hits: Counter::default(),
            connections: Gauge::default(),
            delivered: Counter::default(),
            closes: Family::default(),
            delivery_seconds: latency_histogram(),
        }
    }
}

impl SocketMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("socket_connections", "WebSocket connections accepted", self.connections_total.clone());
        registry.register(
            "socket_auth_failures",
            "Refused upgrades and refreshes, by reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "socket_context_cache_hits",
            "Permission checks answered from the connection's cached context",
            self.context_cache_hits.clone(),
        );
        registry.register(
            "socket_connections_current",
            "Open WebSocket connections on this node",
            self.connections.clone(),
        );
        registry.register("socket_messages_delivered", "Message frames queued to subscribers", self.delivered.clone());
        registry.register("socket_closes", "Connections closed by the server, by reason", self.closes.clone());
        registry.register(
            "socket_delivery_duration_seconds",
            "From a message event reaching the node to its frame written to a subscriber",
            self.delivery_seconds.clone(),
        );
    }
}
