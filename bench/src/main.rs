//! caas-bench: the measuring tools behind BENCHMARKS.md.
//!
//! - `micro`: in-process cost of the hot rules (cached API-key check, JWT +
//!   cached revocation, context sign + verify), median of rounds.
//! - `check-cost`: in-process cost of a cached API-key Check with quotas
//!   off, in the process only, and shared through Redis, side by side.
//! - `noop-authz`: an ext_authz server that allows everything: the floor any
//!   ext_authz server pays (Envoy's gRPC client + the gRPC stack).
//! - `seed`: a tenant, key, whitelist and session in a database, for runs.
//! - `grpc-load`: Check requests at a fixed rate straight to an ext_authz
//!   server; client-side latency percentiles.
//! - `otlp-sink`: an OTLP/HTTP collector that only counts spans.
//! - `span-export`: CPU per exported span, in-house exporter vs the
//!   OpenTelemetry SDK, side by side.
//! - `sessions`: concurrent `POST /api/v1/auth/sdk/session` against auth-api.
//! - `ws-hold`: many authenticated WebSocket connections (memory, accept
//!   rate, and deliveries with latency when subscribed).
//! - `ws-publish`: messages on the Redis bus at a fixed rate, as chat nodes
//!   announce them.
//! - `legacy-gateway`: the pre-refactor flow (auth-api asked over HTTP on
//!   every request), the baseline of bench/refactor.sh.

mod check_cost;
mod legacy;
mod load;
mod micro;
mod spans;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "caas-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Micro(micro::MicroArgs),
    CheckCost(check_cost::CheckCostArgs),
    NoopAuthz(load::NoopArgs),
    Seed(load::SeedArgs),
    GrpcLoad(load::GrpcLoadArgs),
    OtlpSink(load::OtlpSinkArgs),
    Sessions(load::SessionsArgs),
    SpanExport(spans::SpanExportArgs),
    WsHold(ws::WsHoldArgs),
    WsPublish(ws::WsPublishArgs),
    LegacyGateway(legacy::LegacyArgs),
}

/// The value at quantile `q` of sorted samples (0 when there are none).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::NoopAuthz(args) = command {
        // Builds its own runtime: its thread count is part of the experiment.
        return load::noop_authz(args);
    }

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match command {
            Command::Micro(args) => micro::run(args).await,
            Command::CheckCost(args) => check_cost::run(args).await,
            Command::Seed(args) => load::seed(args).await,
            Command::GrpcLoad(args) => load::grpc_load(args).await,
            Command::OtlpSink(args) => load::otlp_sink(args).await,
            Command::Sessions(args) => load::sessions(args).await,
            Command::SpanExport(args) => spans::run(args).await,
            Command::WsHold(args) => ws::hold(args).await,
            Command::WsPublish(args) => ws::publish(args).await,
            Command::LegacyGateway(args) => legacy::legacy_gateway(args).await,
            Command::NoopAuthz(_) => unreachable!("handled above"),
        }
    })
}
