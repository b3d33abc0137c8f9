//! Configuration shared by every binary: one definition of each environment
//! variable (docs/DESIGN.md "Flags"), so binaries cannot drift apart. Each binary
//! flattens the groups it needs into its own clap `Config`.
//!
//! The groups stay here, not in caas-runtime, because each builds domain
//! objects (backends, JWT keys, context verifier, validator) and checks
//! domain limits (secret strength, database dialect).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use caas_runtime::config::{Problems, parse_duration, redact_url};

use crate::bus::{EventBus, LocalBus, RedisBus};
use crate::cache::{Cache, MemoryCache, RedisCache};
use crate::feed::ChangeFeed;
use crate::metrics::AuthMetrics;
use crate::secret::Secret;
use crate::store::{Dialect, Store, StoreError};
use crate::validate::{Validator, ValidatorSettings};

/// A required secret: present and at least 32 bytes.
fn secret(problems: &mut Problems, name: &str, value: Option<&Secret>) {
    match value {
        None => problems.add(format!("{name} is required (at least 32 bytes; e.g. `openssl rand -base64 48`)")),
        Some(value) => optional_secret(problems, name, Some(value)),
    }
}

fn optional_secret(problems: &mut Problems, name: &str, value: Option<&Secret>) {
    if let Some(Err(problem)) = value.map(|s| s.check_strength(name)) {
        problems.add(problem);
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// Database: `sqlite://path` (embedded default, created if missing) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/caas.db", hide_env_values = true)]
    pub database_url: String,
    /// Largest number of PostgreSQL connections per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Redis for the shared cache and the event bus between processes. Unset:
    /// in-process cache and bus, correct only when everything is one process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How often this process reads the durable change feed (core/src/feed.rs):
    /// the longest a credential change whose bus message was lost takes to
    /// reach it. Not used by `caas up` without Redis (one process, nothing to lose).
    #[arg(long, env = "CHANGE_FEED_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub change_feed_interval: Duration,
}

/// Changes of this long ago are read again by a starting process: enough to
/// know of every whitelist change whose shared copy may still be stale
/// (`ValidatorSettings::shared_ttl`) and of recent revocations.
const FEED_REPLAY: Duration = Duration::from_secs(300);

/// The storage, cache and bus a process runs on.
#[derive(Clone)]
pub struct Backends {
    pub store: Store,
    pub cache: Arc<dyn Cache>,
    pub bus: Arc<dyn EventBus>,
    /// Followed whenever other processes may change credentials; `None` for
    /// `caas up` on its own (everything in this process already sees every change).
    pub feed: Option<Arc<ChangeFeed>>,
}

impl StorageArgs {
    pub fn check(&self, problems: &mut Problems) {
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.change_feed_interval) {
            problems.add("CHANGE_FEED_INTERVAL must be between 100ms and 60s");
        }
        if Dialect::of_url(&self.database_url).is_none() {
            problems.add(format!(
                "DATABASE_URL '{}' must start with sqlite:// or postgres://",
                redact_url(&self.database_url)
            ));
        }
        // This build speaks no TLS to its data stores: refuse a URL that asks
        // for it rather than fail at the first connection (or, for sslmode=
        // prefer, PostgreSQL's default, quietly not encrypt: say so in the docs).
        let database = self.database_url.to_ascii_lowercase();
        // sqlx takes `sslmode` or `ssl-mode` in the URL, else PGSSLMODE.
        let from_env = std::env::var("PGSSLMODE").map(|m| format!("sslmode={}", m.to_ascii_lowercase()));
        let asked = ["require", "verify-ca", "verify-full"].into_iter().find(|mode| {
            [format!("sslmode={mode}"), format!("ssl-mode={mode}")].iter().any(|p| database.contains(p.as_str()))
                || (database.starts_with("postgres") && from_env.as_deref() == Ok(&format!("sslmode={mode}")))
        });
        if let Some(mode) = asked {
            problems.add(format!(
                "DATABASE_URL (or PGSSLMODE) asks for sslmode={mode}, but this build has no TLS: reach PostgreSQL \
                 over a private network, a mesh's mTLS or a TLS sidecar"
            ));
        }
        if let Some(url) = &self.redis_url {
            if url.starts_with("rediss://") {
                problems.add(
                    "REDIS_URL is rediss:// (TLS), which this build does not speak: use redis:// over a private \
                     network, a mesh's mTLS or a TLS sidecar",
                );
            } else if !url.starts_with("redis://") {
                problems.add(format!("REDIS_URL '{}' must start with redis://", redact_url(url)));
            }
        }
    }

    /// A standalone binary's backends (it warns when they are in-process
    /// only); failing to open them is exit code 1.
    pub async fn connect_standalone(&self, service: &str) -> Result<Backends, ExitCode> {
        self.connect(service, false).await.map_err(|error| caas_runtime::startup::failed(service, error))
    }

    /// Opens the database (and migrates it), the cache and the bus.
    /// `service` names the binary in the warning about running without Redis.
    pub async fn connect(&self, service: &str, single_process: bool) -> Result<Backends, StoreError> {
        let store = Store::connect(&self.database_url, self.database_max_connections).await?;
        store.migrate().await?;
        tracing::info!(database = %redact_url(&self.database_url), "database ready");
        let (cache, bus): (Arc<dyn Cache>, Arc<dyn EventBus>) = match &self.redis_url {
            Some(url) => {
                let cache = RedisCache::new(url).map_err(|e| StoreError::Setup(e.to_string()))?;
                let bus = RedisBus::start(url).map_err(|e| StoreError::Setup(e.to_string()))?;
                tracing::info!(redis = %redact_url(url), "shared cache and event bus on Redis");
                (Arc::new(cache), Arc::new(bus))
            }
            None => {
                if !single_process {
                    tracing::warn!(
                        service,
                        "REDIS_URL is not set: cache and event bus are in-process only. Revocations and \
                         credential changes made by OTHER processes will NOT reach this one. Set REDIS_URL \
                         unless everything runs in one process (`caas up`)."
                    );
                }
                (Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()))
            }
        };
        let interval = self.change_feed_interval;
        let feed = (!single_process || self.redis_url.is_some())
            .then(|| Arc::new(ChangeFeed::start(store.clone(), bus.clone(), interval, FEED_REPLAY)));
        Ok(Backends { store, cache, bus, feed })
    }
}

impl Backends {
    /// The backends' own metrics (the change feed's), for a service's registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(feed) = &self.feed {
            feed.metrics.register(registry);
        }
    }

    /// The validator of the rules on these backends, with the configuration's
    /// keys and policy flags. `caas up` shares one between auth-api and
    /// ext-authz, so each service takes it rather than building its own.
    pub fn validator(&self, jwt: &JwtArgs, policy: &PolicyArgs) -> Arc<Validator> {
        let settings = ValidatorSettings {
            ip_whitelist_enabled: policy.ip_whitelist_enabled,
            origin_validation_enabled: policy.origin_validation_enabled,
            capacity: policy.auth_cache_capacity,
            negative_capacity: policy.auth_negative_cache_capacity,
            ..ValidatorSettings::default()
        };
        Validator::start(
            self.store.clone(),
            self.cache.clone(),
            self.bus.clone(),
            jwt.keys(),
            settings,
            Arc::new(AuthMetrics::default()),
        )
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct JwtArgs {
    /// HS256 signing secret for access tokens (at least 32 bytes). Only the
    /// auth service holds it.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// The secret before the last rotation: still accepted for verification.
    #[arg(long, env = "JWT_SECRET_PREVIOUS", hide_env_values = true)]
    pub jwt_secret_previous: Option<Secret>,
    /// `iss` of issued tokens; tokens with another issuer are refused.
    #[arg(long, env = "JWT_ISSUER", default_value = "caas")]
    pub jwt_issuer: String,
    /// Access-token lifetime.
    #[arg(long, env = "JWT_EXPIRES_IN", default_value = "15m", value_parser = parse_duration)]
    pub jwt_expires_in: Duration,
    /// Refresh-token lifetime.
    #[arg(long, env = "JWT_REFRESH_EXPIRES_IN", default_value = "7d", value_parser = parse_duration)]
    pub jwt_refresh_expires_in: Duration,
}

impl JwtArgs {
    pub fn check(&self, problems: &mut Problems) {
        secret(problems, "JWT_SECRET", self.jwt_secret.as_ref());
        optional_secret(problems, "JWT_SECRET_PREVIOUS", self.jwt_secret_previous.as_ref());
        let access = self.jwt_expires_in.as_secs();
        if !(60..=86_400).contains(&access) {
            problems.add("JWT_EXPIRES_IN must be between 1m and 24h");
        }
        if self.jwt_refresh_expires_in.as_secs() <= access {
            problems.add("JWT_REFRESH_EXPIRES_IN must be longer than JWT_EXPIRES_IN");
        }
        if self.jwt_issuer.trim().is_empty() {
            problems.add("JWT_ISSUER must not be empty");
        }
    }

    /// Call after `check` passed.
    pub fn keys(&self) -> crate::jwt::JwtKeys {
        let current = self.jwt_secret.clone().unwrap_or_else(|| Secret::new(""));
        crate::jwt::JwtKeys::new(self.jwt_issuer.clone(), &current, self.jwt_secret_previous.as_ref())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServiceSecretArgs {
    /// Signs gateway context and authenticates internal calls (at least 32 bytes).
    #[arg(long, env = "SERVICE_SECRET", hide_env_values = true)]
    pub service_secret: Option<Secret>,
    /// The secret before the last rotation: still accepted.
    #[arg(long, env = "SERVICE_SECRET_PREVIOUS", hide_env_values = true)]
    pub service_secret_previous: Option<Secret>,
}

impl ServiceSecretArgs {
    pub fn check(&self, problems: &mut Problems) {
        secret(problems, "SERVICE_SECRET", self.service_secret.as_ref());
        optional_secret(problems, "SERVICE_SECRET_PREVIOUS", self.service_secret_previous.as_ref());
    }

    /// Call after `check` passed.
    pub fn current(&self) -> Secret {
        self.service_secret.clone().unwrap_or_else(|| Secret::new(""))
    }

    pub fn verifier(&self) -> crate::context::ContextVerifier {
        crate::context::ContextVerifier::new(&self.current(), self.service_secret_previous.as_ref())
    }
}

/// A secret must have one job: reusing the JWT secret as the service secret
/// would let a token signer forge context, and the reverse.
pub fn check_distinct_secrets(problems: &mut Problems, jwt: &JwtArgs, service: &ServiceSecretArgs) {
    if let (Some(a), Some(b)) = (&jwt.jwt_secret, &service.service_secret)
        && a == b
    {
        problems.add("JWT_SECRET and SERVICE_SECRET must be different secrets");
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Enforce tenants' IP whitelists for API keys. `false` is for development only.
    #[arg(long, env = "IP_WHITELIST_ENABLED", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_whitelist_enabled: bool,
    /// Enforce tenants' Origin whitelists. `false` is for development only.
    #[arg(long, env = "ORIGIN_VALIDATION_ENABLED", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub origin_validation_enabled: bool,
    /// Largest number of known credentials (and whitelists) each in-process
    /// validation cache keeps; the least useful entry goes first, never all.
    #[arg(long, env = "AUTH_CACHE_CAPACITY", default_value_t = 200_000)]
    pub auth_cache_capacity: usize,
    /// Largest number of unknown API keys or sessions remembered as unknown
    /// (for the short `negative_for`), apart from the known ones.
    #[arg(long, env = "AUTH_NEGATIVE_CACHE_CAPACITY", default_value_t = 50_000)]
    pub auth_negative_cache_capacity: usize,
}

impl PolicyArgs {
    /// Says loudly what is switched off.
    pub fn warn_if_relaxed(&self) {
        if !self.ip_whitelist_enabled {
            tracing::warn!("IP_WHITELIST_ENABLED=false: API keys are accepted from ANY address. Development only.");
        }
        if !self.origin_validation_enabled {
            tracing::warn!("ORIGIN_VALIDATION_ENABLED=false: browser Origins are NOT checked. Development only.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_store_urls_asking_for_tls_are_refused_at_start() {
        let check = |database: &str, redis: Option<&str>| {
            let args = StorageArgs {
                database_url: database.into(),
                database_max_connections: 4,
                redis_url: redis.map(String::from),
                change_feed_interval: Duration::from_secs(1),
            };
            let mut problems = Problems::default();
            args.check(&mut problems);
            problems.finish().err().unwrap_or_default()
        };
        assert_eq!(check("postgres://u:pw@db:5432/caas", Some("redis://r:6379")), "");
        assert_eq!(check("postgres://u:pw@db/caas?sslmode=disable", None), "");
        let refused = check("postgres://u:pw@db/caas?sslmode=verify-full", Some("rediss://r:6380"));
        assert!(refused.contains("sslmode=verify-full") && refused.contains("rediss://"), "{refused}");
        assert!(check("postgres://u:pw@db/caas?ssl-mode=require", None).contains("sslmode=require"));
        assert!(!refused.contains("pw@"), "{refused}");
        assert!(check("sqlite://x.db", Some("http://r")).contains("must start with redis://"));
    }

    #[test]
    fn every_problem_is_listed_without_secrets() {
        let mut problems = Problems::default();
        secret(&mut problems, "JWT_SECRET", Some(&Secret::new("tooshort-secret")));
        secret(&mut problems, "SERVICE_SECRET", None);
        let message = problems.finish().unwrap_err();
        assert!(message.contains("JWT_SECRET") && message.contains("SERVICE_SECRET is required"));
        assert!(!message.contains("tooshort-secret"));
    }
}
