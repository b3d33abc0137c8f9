//! What exporting a span costs the exporting process: the in-house OTLP/JSON
//! exporter (`caas_runtime::otlp`) side by side with the OpenTelemetry SDK
//! (`opentelemetry_sdk` batch processor + `opentelemetry-otlp` HTTP/JSON),
//! both configured alike (queue 8,192, batches of 1,024, every 100 ms) and
//! fed the span ext-authz records per Check, at a fixed rate, to the same
//! collector (`caas-bench otlp-sink`). CPU is every thread of this process
//! (`/proc/self/task/*/schedstat`, nanoseconds), per span; variants are
//! interleaved over rounds and the medians reported.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use caas_runtime::otlp::{Span, SpanExporter};
use caas_runtime::trace::TraceParent;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};

#[derive(clap::Args)]
pub struct SpanExportArgs {
    /// The collector (`caas-bench otlp-sink`).
    #[arg(long, default_value = "http://127.0.0.1:9499")]
    endpoint: String,
    /// Spans per second, in 10 ms steps.
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// Seconds per variant per round.
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// CPU time of every thread of this process so far.
fn process_cpu() -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread that ended between the listing and the read is gone.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).context("schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// One ext-authz Check's span, recorded the way each exporter is used.
trait Record {
    fn record(&self, started: Instant);
}

/// The loop alone: what neither exporter is charged for.
struct Nothing;

impl Record for Nothing {
    fn record(&self, started: Instant) {
        std::hint::black_box(started);
    }
}

struct InHouse(SpanExporter);

impl Record for InHouse {
    fn record(&self, started: Instant) {
        let trace = TraceParent::parse(TRACEPARENT);
        let mut span = Span::ended(trace, "check end_user", started, 200);
        span.attributes.extend([
            ("caas.policy", "end_user".to_string()),
            ("caas.decision", "allow".to_string()),
            ("caas.request_id", "req_0123456789abcdef".to_string()),
            ("caas.tenant_id", "cl_0123456789abcdef".to_string()),
        ]);
        self.0.record(span);
    }
}

struct Sdk(opentelemetry_sdk::trace::SdkTracer);

impl Record for Sdk {
    fn record(&self, started: Instant) {
        let parent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(parent);
        let end = SystemTime::now();
        let mut span = self
            .0
            .span_builder("check end_user")
            .with_kind(SpanKind::Server)
            .with_start_time(end - started.elapsed())
            .with_attributes([
                KeyValue::new("http.response.status_code", 200),
                KeyValue::new("caas.policy", "end_user"),
                KeyValue::new("caas.decision", "allow"),
                KeyValue::new("caas.request_id", "req_0123456789abcdef"),
                KeyValue::new("caas.tenant_id", "cl_0123456789abcdef"),
            ])
            .start_with_context(&self.0, &cx);
        span.set_status(Status::Ok);
        span.end_with_timestamp(end);
    }
}

/// Records at `rate` for `seconds`, then waits for the last batch to leave;
/// CPU nanoseconds per span.
async fn run_variant(recorder: &dyn Record, rate: u32, seconds: u32) -> anyhow::Result<f64> {
    let per_tick = (rate / 100).max(1);
    let ticks = seconds * 100;
    let before = process_cpu()?;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..ticks {
        interval.tick().await;
        for _ in 0..per_tick {
            recorder.record(Instant::now());
        }
    }
    // Both exporters send every 100 ms: let the last batch go.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spent = process_cpu()? - before;
    Ok(spent.as_nanos() as f64 / f64::from(per_tick * ticks))
}

pub async fn run(args: SpanExportArgs) -> anyhow::Result<()> {
    let in_house = InHouse(SpanExporter::start("bench", &args.endpoint));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", args.endpoint.trim_end_matches('/')))
        .build()?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(8192)
        .with_max_export_batch_size(1024)
        .with_scheduled_delay(Duration::from_millis(100))
        .build();
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).with_batch_config(batch).build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
    let sdk = Sdk(provider.tracer("ext-authz"));

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let floor = run_variant(&Nothing, args.rate, args.seconds).await?;
        let a = run_variant(&in_house, args.rate, args.seconds).await? - floor;
        let b = run_variant(&sdk, args.rate, args.seconds).await? - floor;
        println!(
            "round {}: in-house {a:.0} ns/span, OpenTelemetry SDK {b:.0} ns/span (loop alone {floor:.0})",
            round + 1
        );
        ours.push(a);
        theirs.push(b);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let (a, b) = (ours[ours.len() / 2], theirs[theirs.len() / 2]);
    println!(
        "median CPU per span at {}/s: in-house {a:.0} ns, OpenTelemetry SDK {b:.0} ns ({:.2}x); spread in-house {:.0}-{:.0}, SDK {:.0}-{:.0}",
        args.rate,
        b / a,
        ours[0],
        ours[ours.len() - 1],
        theirs[0],
        theirs[theirs.len() - 1]
    );
    provider.shutdown()?;
    Ok(())
}
