//! The `caas` command line, here rather than in main.rs so that the
//! configuration reference (docs/CONFIGURATION.md) can be generated from it
//! and checked by a test.

use clap::{Parser, Subcommand};

use crate::stack::UpConfig;

#[derive(Parser)]
#[command(name = "caas", version, about = "CAAS: auth gateway, auth API and services")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run everything in one process (SQLite and in-process bus by default) with Envoy in front.
    Up(Box<UpConfig>),
    /// Apply database migrations and exit.
    Migrate(caas_core::config::StorageArgs),
    /// Print (or write) the Envoy configuration for the given service addresses.
    EnvoyConfig(EnvoyConfigArgs),
    /// Exit 0 if a URL answers 200 (container health checks without curl).
    Healthcheck {
        /// e.g. http://127.0.0.1:3007/health
        url: String,
    },
}

#[derive(clap::Args)]
pub struct EnvoyConfigArgs {
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: String,
    #[arg(long, default_value_t = 8080)]
    pub listen_port: u16,
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Envoy's metrics for Prometheus (`GET /stats/prometheus` only).
    #[arg(long, default_value_t = 9902)]
    pub stats_port: u16,
    #[arg(long, default_value = "auth-api:3007")]
    pub auth_api: String,
    #[arg(long, default_value = "ext-authz:9191")]
    pub ext_authz: String,
    #[arg(long, default_value = "chat:3008")]
    pub chat: String,
    #[arg(long, default_value = "socket:3009")]
    pub socket: String,
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    #[arg(long, default_value = "/dev/stdout")]
    pub access_log_path: String,
    /// Sent with every Check so ext-authz knows the call is from this Envoy
    /// (give ext-authz the same EXT_AUTHZ_CALLER_TOKEN). Unset: none.
    #[arg(long, env = "EXT_AUTHZ_CALLER_TOKEN", hide_env_values = true)]
    pub caller_token: Option<caas_core::secret::Secret>,
    /// The in-proxy fast path's module (caas_edge_wasm.wasm, as Envoy will
    /// see the path): renders the fast path. Unset: ext_authz decides every request.
    #[arg(long, env = "EDGE_WASM")]
    pub edge_wasm: Option<std::path::PathBuf>,
    /// ext-authz's ops listener (its feed), for the fast path.
    #[arg(long, default_value = "ext-authz:9192")]
    pub ext_authz_ops: String,
    /// Write the configuration here instead of printing it.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}
