//! Optional span export over OTLP/HTTP (JSON encoding) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: one span per request (or Check, or
//! socket upgrade), parented on the caller's `traceparent`. Spans are batched
//! and sent off the request path; when the collector is slow or down, spans
//! are dropped (and counted in a log line), never waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::trace::{TraceParent, new_root, new_span_id};

/// Spans waiting for export: at `GATHER` intervals, room for 80,000 a second.
const QUEUE: usize = 8192;
/// Spans per POST.
const BATCH: usize = 1024;
const GATHER: Duration = Duration::from_millis(100);

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
            trace: trace.unwrap_or_else(new_root),
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
        if !endpoint.starts_with("http://") {
            // No TLS in this build: an https:// collector would drop every span.
            tracing::error!(
                service,
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// URL (a local collector or agent); not exporting spans"
            );
            return None;
        }
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
    /// A span of a trace its caller did not sample is not exported (the
    /// caller decides, as W3C trace context says).
    pub fn record(&self, span: Span) {
        if !span.trace.sampled {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0).to_string()
}

// The OTLP/HTTP JSON shape, serialized straight from the spans (borrowed):
// building a `serde_json::Value` tree first cost more than the Check itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Export<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<OtlpSpan<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OtlpSpan<'a> {
    trace_id: &'a str,
    span_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    parent_span_id: &'a str,
    name: &'a str,
    /// SPAN_KIND_SERVER.
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    status: Status,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnyValue<'a> {
    string_value: &'a str,
}

#[derive(Serialize)]
struct Status {
    /// STATUS_CODE_OK (1) or STATUS_CODE_ERROR (2).
    code: u8,
}

fn encode(service: &str, spans: &[Span]) -> Vec<u8> {
    let kv = |key, value| KeyValue { key, value: AnyValue { string_value: value } };
    let spans = spans
        .iter()
        .map(|s| OtlpSpan {
            trace_id: &s.trace.trace_id,
            span_id: &s.span_id,
            parent_span_id: &s.trace.parent_span_id,
            name: &s.name,
            kind: 2,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
            status: Status { code: if s.error { 2 } else { 1 } },
        })
        .collect();
    let export = Export {
        resource_spans: [ResourceSpans {
            resource: Resource { attributes: [kv("service.name", service)] },
            scope_spans: [ScopeSpans { scope: Scope { name: "caas" }, spans }],
        }],
    };
    serde_json::to_vec(&export).unwrap_or_default()
}

/// Sleeps between batches instead of waiting on the queue, so recording a
/// span never wakes this task: one wake-up per `GATHER`, whatever the rate.
async fn export_loop(service: &'static str, url: String, mut rx: mpsc::Receiver<Span>, dropped: Arc<AtomicU64>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::time::sleep(GATHER).await;
        loop {
            batch.clear();
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) if batch.is_empty() => return,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let request = http.post(&url).header("content-type", "application/json").body(encode(service, &batch));
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(
                        status = response.status().as_u16(),
                        spans = batch.len(),
                        "OTLP collector refused spans"
                    )
                }
                Err(error) => tracing::warn!(%error, spans = batch.len(), "OTLP collector unreachable; spans dropped"),
            }
            // Here, not after the loop: under sustained overload every batch
            // is full and the loop never ends.
            let overflowed = dropped.swap(0, Ordering::Relaxed);
            if overflowed > 0 {
                tracing::warn!(spans = overflowed, "OTLP export queue full; spans dropped");
            }
            if batch.len() < BATCH {
                break;
            }
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
        let body: serde_json::Value = serde_json::from_slice(&encode("chat", &[span])).unwrap();
        let encoded = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(encoded["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(encoded["attributes"][0]["key"], "http.response.status_code");
        assert_eq!(body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "chat");
        assert_eq!(encoded["kind"], 2);
        assert_eq!(encoded["status"]["code"], 1);
        let (start, end) =
            (encoded["startTimeUnixNano"].as_str().unwrap(), encoded["endTimeUnixNano"].as_str().unwrap());
        assert!(start.parse::<u128>().unwrap() <= end.parse::<u128>().unwrap());
        // A span that starts a trace has no parent, and a 5xx is an error.
        let root = Span::ended(None, "GET /", std::time::Instant::now(), 503);
        let body: serde_json::Value = serde_json::from_slice(&encode("chat", &[root])).unwrap();
        let encoded = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(encoded.get("parentSpanId").is_none());
        assert_eq!(encoded["status"]["code"], 2);
        assert_eq!(encoded["traceId"].as_str().unwrap().len(), 32);
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

    #[tokio::test]
    async fn spans_of_traces_the_caller_did_not_sample_are_not_exported() {
        let exporter = SpanExporter::with_queue("chat", "http://127.0.0.1:9", 1);
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        for _ in 0..10 {
            exporter.record(Span::ended(unsampled.clone(), "GET /", std::time::Instant::now(), 200));
        }
        assert_eq!(exporter.dropped.load(Ordering::Relaxed), 0, "nothing was even queued");
        assert_eq!(exporter.tx.capacity(), 1);
    }
}
