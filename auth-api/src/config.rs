//! auth-api's configuration (clap + environment).

use std::net::SocketAddr;
use std::time::Duration;

use caas_core::config::{JwtArgs, PolicyArgs, ServiceSecretArgs, StorageArgs, check_distinct_secrets};
use caas_runtime::config::{Problems, parse_duration};

use crate::Settings;

/// Settings of auth-api itself; `caas up` flattens these too.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthApiArgs {
    /// Address auth-api listens on.
    #[arg(long, env = "AUTH_API_ADDR", default_value = "127.0.0.1:3007")]
    pub auth_api_addr: SocketAddr,
    /// Failed logins per email within the window before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_EMAIL", default_value_t = 5)]
    pub login_max_failures_per_email: u64,
    /// Failed logins per client IP within the window before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_IP", default_value_t = 20)]
    pub login_max_failures_per_ip: u64,
    /// Window of the login failure counters.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_failure_window: Duration,
    /// Registrations per client IP per hour.
    #[arg(long, env = "REGISTRATIONS_PER_IP_PER_HOUR", default_value_t = 20)]
    pub registrations_per_ip_per_hour: u64,
    /// Test end-user sessions (the console's "try it" page) per tenant per hour.
    #[arg(long, env = "TEST_SESSIONS_PER_TENANT_PER_HOUR", default_value_t = 60)]
    pub test_sessions_per_tenant_per_hour: u64,
    /// Password hashes (Argon2, ~19 MiB each) computed at once; when all are
    /// busy, logins and registrations get 503 `overloaded` at once. Default:
    /// the available parallelism (cores).
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY")]
    pub password_hash_concurrency: Option<usize>,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long rows that no longer decide anything are kept.
#[derive(clap::Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Audit rows older than this are deleted.
    #[arg(long, env = "AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// How often expired sessions, refresh tokens and old audit rows are purged.
    #[arg(long, env = "PURGE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub purge_interval: Duration,
}

impl RetentionArgs {
    pub fn retention(&self) -> caas_core::retention::Retention {
        caas_core::retention::Retention { audit_for: self.audit_retention, every: self.purge_interval }
    }
}

impl AuthApiArgs {
    pub fn check(&self, problems: &mut Problems) {
        if self.login_max_failures_per_email == 0 || self.login_max_failures_per_ip == 0 {
            problems.add("LOGIN_MAX_FAILURES_PER_EMAIL and LOGIN_MAX_FAILURES_PER_IP must be at least 1");
        }
        if self.test_sessions_per_tenant_per_hour == 0 {
            problems.add("TEST_SESSIONS_PER_TENANT_PER_HOUR must be at least 1");
        }
        if self.password_hash_concurrency == Some(0) {
            problems.add("PASSWORD_HASH_CONCURRENCY must be at least 1");
        }
        if self.login_failure_window.is_zero() {
            problems.add("LOGIN_FAILURE_WINDOW must be positive");
        }
        if self.retention.audit_retention < Duration::from_secs(86_400) || self.retention.purge_interval.is_zero() {
            problems.add("AUDIT_RETENTION must be at least 1d and PURGE_INTERVAL positive");
        }
    }

    pub fn settings(&self, jwt: &JwtArgs, service: &ServiceSecretArgs) -> Settings {
        Settings {
            service_secret: service.current(),
            service_secret_previous: service.service_secret_previous.clone(),
            access_ttl: jwt.jwt_expires_in,
            refresh_ttl: jwt.jwt_refresh_expires_in,
            login_failures_per_email: self.login_max_failures_per_email,
            login_failures_per_ip: self.login_max_failures_per_ip,
            login_window: self.login_failure_window,
            registrations_per_ip: self.registrations_per_ip_per_hour,
            registration_window: Duration::from_secs(3600),
            test_sessions_per_tenant: self.test_sessions_per_tenant_per_hour,
            retention: self.retention.retention(),
            password_hash_concurrency: self
                .password_hash_concurrency
                .unwrap_or_else(caas_core::loginguard::Hashing::default_limit),
        }
    }
}

/// The `auth-api` binary's configuration.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "auth-api", version, about = "CAAS auth API: issues and owns every credential")]
pub struct Config {
    #[command(flatten)]
    pub api: AuthApiArgs,
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
    /// Every problem at once; secrets never in the message.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        self.api.check(&mut problems);
        self.storage.check(&mut problems);
        self.jwt.check(&mut problems);
        self.service.check(&mut problems);
        check_distinct_secrets(&mut problems, &self.jwt, &self.service);
        problems.finish()
    }
}
