//! caas-runtime: what a CAAS process needs around its service, whichever
//! service it is — collecting configuration problems and parsing durations,
//! start-up and exit codes, JSON logging, the shutdown signal, rendering
//! Prometheus registries, W3C trace context and the OTLP span exporter.
//!
//! It must not depend on the domain (caas-core, caas-rules) or on any
//! service or server framework (axum, tonic, sqlx, redis): core and every
//! binary build on it, so anything here that knew a rule or a route would
//! tie the layers into a circle. Domain metrics (`AuthMetrics`) and the
//! argument groups that build domain objects stay in caas-core.

pub mod config;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod signal;
pub mod startup;
pub mod trace;
