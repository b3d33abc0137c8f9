//! W3C trace context (`traceparent`): read from requests so every log line
//! and exported span of a request carries the caller's trace id. What a
//! valid one is lives in caas-rules (rules/src/trace.rs, which the in-proxy
//! filter shares); new ids here come from the OS.

pub use caas_rules::trace::TraceParent;

/// A new trace, for requests that arrive without one.
pub fn new_root() -> TraceParent {
    TraceParent::new_root(&mut rand::rngs::OsRng)
}

/// A new span id (16 hex digits).
pub fn new_span_id() -> String {
    caas_rules::trace::new_span_id(&mut rand::rngs::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_w3c_ids() {
        assert!(caas_rules::trace::is_trace_id(&new_root().trace_id));
        assert!(caas_rules::trace::is_span_id(&new_span_id()));
    }
}
