//! Optional span export over OTLP/HTTP (JSON encoding) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: one span per request (or Check, or
//! socket upgrade), parented on the caller's `traceparent`. Spans are batched
//! and sent off the request path; when the collector is slow or down, spans
//! are dropped (and counted in a log line), never waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caas_core::trace::{TraceParent, new_span_id};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const QUEUE: usize = 4096;
const BATCH: usize = 256;

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace: TraceParent,
    pub span_id: String,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

impl Span {
    /// A span under `trace` (or a new trace) that began at `started` and
    /// ends now, answered with `status` (an error from 500 on).
    pub fn ended(
        trace: Option<TraceParent>,
        name: impl Into<String>,
        started: std::time::Instant,
        status: u16,
    ) -> Self {
        let end = SystemTime::now();
        Self {
            trace: trace.unwrap_or_else(TraceParent::new_root),
            span_id: new_span_id(),
            name: name.into(),
            start: end - started.elapsed(),
            end,
            attributes: vec![("http.response.status_code", status.to_string())],
            error: status >= 500,
        }
    }
}

/// Where spans go; cheap to clone.
#[derive(Clone)]
pub struct SpanExporter {
    tx: mpsc::Sender<Span>,
    /// Spans dropped because the queue was full, since the last log line.
    dropped: Arc<AtomicU64>,
}

impl SpanExporter {
    /// From `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://collector:4318`), or
    /// `None` when it is unset. Must be called inside a Tokio runtime.
    pub fn from_env(service: &'static str) -> Option<Self> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty())?;
        Some(Self::start(service, &endpoint))
    }

    pub fn start(service: &'static str, endpoint: &str) -> Self {
        Self::with_queue(service, endpoint, QUEUE)
    }

    fn with_queue(service: &'static str, endpoint: &str, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        tokio::spawn(export_loop(service, url, rx, dropped.clone()));
        tracing::info!(service, endpoint, "exporting spans over OTLP/HTTP");
        Self { tx, dropped }
    }

    /// Queues a finished span; drops (and counts) it if the queue is full.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0).to_string()
}

fn encode(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> =
                s.attributes.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect();
            let mut span = json!({
                "traceId": s.trace.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if !s.trace.parent_span_id.is_empty() {
                span["parentSpanId"] = json!(s.trace.parent_span_id);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"scope": {"name": "caas"}, "spans": spans}],
        }]
    })
}

async fn export_loop(service: &'static str, url: String, mut rx: mpsc::Receiver<Span>, dropped: Arc<AtomicU64>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match rx.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        // Gather what arrives within 200 ms, up to a batch.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                _ => break,
            }
        }
        let body = encode(service, &batch);
        match http.post(&url).json(&body).send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(status = response.status().as_u16(), spans = batch.len(), "OTLP collector refused spans")
            }
            Err(error) => tracing::warn!(%error, spans = batch.len(), "OTLP collector unreachable; spans dropped"),
        }
        batch.clear();
        let overflowed = dropped.swap(0, Ordering::Relaxed);
        if overflowed > 0 {
            tracing::warn!(spans = overflowed, "OTLP export queue full; spans dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let trace = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let span = Span::ended(trace, "GET /v1/messages", std::time::Instant::now(), 200);
        let body = encode("chat", &[span]);
        let encoded = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(encoded["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(encoded["attributes"][0]["key"], "http.response.status_code");
        assert_eq!(body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "chat");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // Nothing listens on port 9 of localhost: the exporter's one batch
        // is stuck being refused while requests keep recording.
        let exporter = SpanExporter::with_queue("chat", "http://127.0.0.1:9", 2);
        for _ in 0..10 {
            exporter.record(Span::ended(None, "GET /", std::time::Instant::now(), 200));
        }
        let dropped = exporter.dropped.load(Ordering::Relaxed);
        assert!((7..=8).contains(&dropped), "dropped {dropped} of 10 with room for 2 (+1 in flight)");
    }
}
