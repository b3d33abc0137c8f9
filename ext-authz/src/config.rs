//! ext-authz configuration (clap + environment).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use caas_core::config::{JwtArgs, PolicyArgs, ServiceSecretArgs, StorageArgs, check_distinct_secrets};
use caas_core::context::ContextSigner;
use caas_core::secret::Secret;
use caas_core::validate::Validator;
use caas_runtime::config::{Problems, parse_duration};

use crate::AuthorizerSettings;
use crate::metrics::GatewayMetrics;
use caas_rules::policy::PolicyTable;

/// Settings of ext-authz itself; `caas up` flattens these too.
#[derive(clap::Args, Debug, Clone)]
pub struct ExtAuthzArgs {
    /// gRPC address Envoy calls.
    #[arg(long, env = "EXT_AUTHZ_ADDR", default_value = "127.0.0.1:9191")]
    pub ext_authz_addr: SocketAddr,
    /// Address of `/metrics` and `/health`.
    #[arg(long, env = "EXT_AUTHZ_OPS_ADDR", default_value = "127.0.0.1:9192")]
    pub ext_authz_ops_addr: SocketAddr,
    /// Proxies in front of Envoy whose X-Forwarded-For entries to trust
    /// (must equal Envoy's `xff_num_trusted_hops`). 0: the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// `false` is shadow mode: decisions are computed, logged and counted but
    /// not enforced. For migrations only.
    #[arg(long, env = "USE_AUTH_SERVICE", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub use_auth_service: bool,
    /// Deny when a decision takes longer than this (keep below Envoy's ext_authz timeout).
    #[arg(long, env = "EXT_AUTHZ_DEADLINE", default_value = "800ms", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Policies by path for routes that cannot declare one (Istio, Envoy
    /// Gateway): `builtin` (the routes of envoy/envoy.yaml) or a file of
    /// `exact|prefix <path> <policy>` lines. Unset: routes must declare theirs.
    #[arg(long, env = "POLICY_TABLE")]
    pub policy_table: Option<String>,
    /// Log every allowed request (a line per request at info); `false` logs denials only.
    #[arg(long, env = "EXT_AUTHZ_LOG_ALLOWED", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub log_allowed: bool,
    /// Invalid or forged credentials (unknown API key, malformed token, bad
    /// signature...) one address (IPv6: one /64) may send per
    /// FAILED_AUTH_WINDOW; past it, 429 `too_many_failures`. 0 turns it off.
    #[arg(long, env = "FAILED_AUTH_LIMIT", default_value_t = 50)]
    pub failed_auth_limit: u32,
    /// The window FAILED_AUTH_LIMIT counts in.
    #[arg(long, env = "FAILED_AUTH_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub failed_auth_window: Duration,
    /// Addresses whose failures are tracked at once.
    #[arg(long, env = "FAILED_AUTH_TRACKED_ADDRESSES", default_value_t = 100_000)]
    pub failed_auth_tracked_addresses: u64,
    /// A shared token (at least 32 bytes) Envoy must send with every Check
    /// (gRPC metadata `x-caas-authz-token`; `caas envoy-config` puts it in
    /// Envoy's configuration). Unset: any caller that reaches the gRPC port
    /// is trusted, so the network must allow only Envoy (deploy/k8s's
    /// NetworkPolicies do). Set both or neither.
    #[arg(long = "ext-authz-caller-token", env = "EXT_AUTHZ_CALLER_TOKEN", hide_env_values = true)]
    pub caller_token: Option<Secret>,
    /// How often each instance reconciles its quota buckets with the others
    /// through Redis (one pipelined round trip; the Check never waits for
    /// it). Shorter: a tighter shared limit, more Redis traffic.
    #[arg(long, env = "QUOTA_SYNC_INTERVAL", default_value = "25ms", value_parser = parse_duration)]
    pub quota_sync_interval: Duration,
    /// Enforce tenants' quotas (rate limits). `false` only where another
    /// rate limiter in front does it (and for the cost benchmark); logged loudly.
    #[arg(long, env = "QUOTAS_ENABLED", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub quotas_enabled: bool,
}

impl ExtAuthzArgs {
    pub fn check(&self, problems: &mut Problems) {
        if self.deadline.is_zero() || self.deadline > Duration::from_secs(10) {
            problems.add("EXT_AUTHZ_DEADLINE must be between 1ms and 10s");
        }
        if self.trusted_proxy_hops > 10 {
            problems.add("TRUSTED_PROXY_HOPS must be at most 10");
        }
        if self.failed_auth_window < Duration::from_secs(1) || self.failed_auth_window > Duration::from_secs(86_400) {
            problems.add("FAILED_AUTH_WINDOW must be between 1s and 24h");
        }
        if let Some(Err(problem)) = self.caller_token().map(|t| t.check_strength("EXT_AUTHZ_CALLER_TOKEN")) {
            problems.add(problem);
        }
        if self.quota_sync_interval < Duration::from_millis(5) || self.quota_sync_interval > Duration::from_secs(1) {
            problems.add("QUOTA_SYNC_INTERVAL must be between 5ms and 1s");
        }
        if self.failed_auth_tracked_addresses == 0 {
            problems.add("FAILED_AUTH_TRACKED_ADDRESSES must be at least 1");
        }
        if let Err(problem) = self.table() {
            problems.add(problem);
        }
    }

    fn table(&self) -> Result<Option<PolicyTable>, String> {
        let Some(text) = self.table_text()? else { return Ok(None) };
        let path = self.policy_table.as_deref().unwrap_or_default();
        PolicyTable::parse(&text).map(Some).map_err(|e| format!("POLICY_TABLE {path}: {e}"))
    }

    /// The policy table's text (the in-proxy filter parses the same).
    pub fn table_text(&self) -> Result<Option<String>, String> {
        match self.policy_table.as_deref() {
            None | Some("") => Ok(None),
            Some("builtin") => Ok(Some(caas_rules::policy::BUILTIN_TABLE.to_string())),
            Some(path) => std::fs::read_to_string(path).map(Some).map_err(|e| format!("POLICY_TABLE {path}: {e}")),
        }
    }

    /// The caller token; an empty value (a deployment passing it through
    /// unset) is none.
    pub fn caller_token(&self) -> Option<&Secret> {
        self.caller_token.as_ref().filter(|t| !t.expose().is_empty())
    }

    pub fn settings(&self) -> AuthorizerSettings {
        AuthorizerSettings {
            trusted_proxy_hops: self.trusted_proxy_hops,
            enforce: self.use_auth_service,
            deadline: self.deadline,
            // Checked at start (`check`): a bad table never gets this far.
            policy_table: self.table().ok().flatten(),
            log_allowed: self.log_allowed,
            failed_auth_limit: self.failed_auth_limit,
            failed_auth_window: self.failed_auth_window,
            failed_auth_buckets: self.failed_auth_tracked_addresses,
            caller_token: self.caller_token().cloned(),
            quota_sync_interval: self.quota_sync_interval,
            quotas: self.quotas_enabled,
        }
    }

    /// Says loudly when not enforcing.
    pub fn warn_if_shadow(&self) {
        if !self.quotas_enabled {
            tracing::warn!("QUOTAS_ENABLED=false: tenants' rate limits are NOT enforced by this gateway.");
        }
        if !self.use_auth_service {
            tracing::warn!(
                "USE_AUTH_SERVICE=false: SHADOW MODE. Requests that fail authorization are LOGGED AND ALLOWED \
                 (without context headers). Use only while migrating; downstream services must still validate."
            );
        }
    }
}

/// The `ext-authz` binary's configuration.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "ext-authz", version, about = "CAAS external authorization server for Envoy")]
pub struct Config {
    #[command(flatten)]
    pub ext_authz: ExtAuthzArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub service: ServiceSecretArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        self.ext_authz.check(&mut problems);
        self.storage.check(&mut problems);
        self.jwt.check(&mut problems);
        self.service.check(&mut problems);
        check_distinct_secrets(&mut problems, &self.jwt, &self.service);
        problems.finish()
    }
}

impl crate::Authorizer {
    /// The one wiring of ext-authz: its binary and `caas up` build it here
    /// from its configuration. `validator` (see `Backends::validator`) is
    /// shared with auth-api when both run in one process. Unit tests that
    /// need settings no flag gives build it from parts with `new`.
    pub fn from_config(config: &Config, validator: Arc<Validator>) -> Self {
        let material = crate::material::EdgeMaterial {
            issuer: config.jwt.jwt_issuer.clone(),
            jwt_secret: config.jwt.jwt_secret.clone().unwrap_or_else(|| Secret::new("")),
            jwt_secret_previous: config.jwt.jwt_secret_previous.clone(),
            service_secret: config.service.current(),
            trusted_proxy_hops: config.ext_authz.trusted_proxy_hops,
            quotas: config.ext_authz.quotas_enabled,
            // Checked at start (`check`), as the Check's own table is.
            policy_table: config.ext_authz.table_text().ok().flatten(),
        };
        Self::new(
            validator,
            ContextSigner::new(&config.service.current()),
            config.ext_authz.settings(),
            Arc::new(GatewayMetrics::default()),
        )
        .with_edge_material(material)
    }
}
