//! A Check's place in a trace.

use caas_runtime::trace::{TraceParent, new_root, new_span_id};

/// The trace (the caller's, or a new one when spans are exported) and, when
/// exporting, the Check's own span id.
pub struct Traced {
    pub trace: Option<TraceParent>,
    pub span: Option<String>,
    /// The trace began here (the caller sent no valid traceparent).
    pub new_trace: bool,
}

/// What an allowed request carries on of its trace, when spans are exported.
pub struct UpstreamTrace {
    /// This Check as the service's parent.
    pub traceparent: String,
    /// The caller's `tracestate` belongs to no trace we continue: drop it.
    pub drop_tracestate: bool,
}

impl Traced {
    /// With export on, every Check is a span (of the caller's trace, or of a
    /// new one) and an allowed request goes on with a `traceparent` naming
    /// it, so the service's span is its child even when the client sent
    /// none. With export off, only the caller's trace id is logged, and
    /// nothing is added to the request.
    pub fn new(caller: Option<TraceParent>, exporting: bool) -> Self {
        if exporting {
            Traced {
                new_trace: caller.is_none(),
                trace: Some(caller.unwrap_or_else(new_root)),
                span: Some(new_span_id()),
            }
        } else {
            Traced { trace: caller, span: None, new_trace: false }
        }
    }

    pub fn trace_id(&self) -> &str {
        self.trace.as_ref().map_or("", |t| t.trace_id.as_str())
    }

    pub fn upstream(&self) -> Option<UpstreamTrace> {
        let (trace, span_id) = (self.trace.as_ref()?, self.span.as_ref()?);
        Some(UpstreamTrace { traceparent: trace.child(span_id), drop_tracestate: self.new_trace })
    }
}
