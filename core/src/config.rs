//! Configuration shared by every binary: one definition of each environment
//! variable (docs/DESIGN.md "Flags"), so binaries cannot drift apart. Each binary
//! flattens the groups it needs into its own clap `Config`.
//!
//! The groups stay here, not in caas-runtime, because each builds domain
//! objects (backends, JWT keys, context verifier, validator) and checks
//! domain limits (secret strength, database dialect).

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use caas_runtime::config::{Problems, parse_duration, redact_url};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

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
    /// Database: `sqlite://path` (embedded default, created if missing) or
    /// `postgres://...`. TLS to PostgreSQL takes libpq's parameters:
    /// `sslmode=verify-full` and, for a CA the system does not trust,
    /// `sslrootcert=/path/ca.pem`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/caas.db", hide_env_values = true)]
    pub database_url: String,
    /// Largest number of PostgreSQL connections per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Redis for the shared cache and the event bus between processes:
    /// `redis://` or `rediss://` (TLS). Unset: in-process cache and bus,
    /// correct only when everything is one process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How often this process reads the durable change feed (core/src/feed.rs):
    /// the longest a credential change whose bus message was lost takes to
    /// reach it. Not used by `caas up` without Redis (one process, nothing to lose).
    #[arg(long, env = "CHANGE_FEED_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub change_feed_interval: Duration,
    /// PEM file of the CA(s) that signed the certificate of a `rediss://`
    /// Redis the system does not trust (a managed Redis's private CA); when
    /// set, only these CAs are trusted for Redis.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
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
        match Dialect::of_url(&self.database_url) {
            None => problems.add(format!(
                "DATABASE_URL '{}' must start with sqlite:// or postgres://",
                redact_url(&self.database_url)
            )),
            Some(Dialect::Postgres) => check_postgres_url(&self.database_url, problems),
            Some(Dialect::Sqlite) => {}
        }
        match &self.redis_url {
            Some(url) => {
                if let Err(problem) = self.redis_client(url) {
                    problems.add(problem);
                }
            }
            None if self.redis_ca_file.is_some() => problems.add("REDIS_CA_FILE is set but REDIS_URL is not"),
            None => {}
        }
    }

    /// The client of REDIS_URL, trusting REDIS_CA_FILE's CAs when it is set;
    /// or why it cannot be used, in one line with no password in it.
    fn redis_client(&self, url: &str) -> Result<redis::Client, String> {
        let shown = redact_url(url);
        let tls = url.starts_with("rediss://");
        if !tls && !url.starts_with("redis://") {
            return Err(format!("REDIS_URL '{shown}' must start with redis:// or rediss:// (TLS)"));
        }
        // redis's `#insecure` turns certificate checks off; this build cannot
        // (no `tls-rustls-insecure`), and would fail at every connection.
        if url::Url::parse(url).is_ok_and(|u| u.fragment().is_some()) {
            return Err(format!(
                "REDIS_URL '{shown}' has a #fragment: #insecure (TLS without certificate checks) is not supported; \
                 set REDIS_CA_FILE to the CA of Redis's certificate instead"
            ));
        }
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL '{shown}' is not usable: {e}"))?;
        match &self.redis_ca_file {
            None => Ok(client),
            Some(_) if !tls => Err(format!("REDIS_CA_FILE is set but REDIS_URL '{shown}' is not rediss:// (TLS)")),
            Some(path) => {
                let path = path.to_string_lossy();
                let root_cert = Some(read_certificates("REDIS_CA_FILE", &path)?);
                let certificates = redis::TlsCertificates { client_tls: None, root_cert };
                redis::Client::build_with_tls(client.get_connection_info().clone(), certificates)
                    .map_err(|e| format!("REDIS_CA_FILE '{path}' is not usable: {e}"))
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
        if store.dialect() == Dialect::Postgres
            && PgConnectOptions::from_str(&self.database_url)
                .is_ok_and(|o| matches!(o.get_ssl_mode(), PgSslMode::Require))
        {
            tracing::warn!(
                "DATABASE_URL has sslmode=require: traffic to PostgreSQL is encrypted but its certificate is NOT \
                 checked, so anyone on the path can pose as the database. Use sslmode=verify-full (with \
                 sslrootcert= for a private CA)."
            );
        }
        let (cache, bus): (Arc<dyn Cache>, Arc<dyn EventBus>) = match &self.redis_url {
            Some(url) => {
                let client = self.redis_client(url).map_err(StoreError::Setup)?;
                let cache = RedisCache::from_client(client.clone()).map_err(|e| StoreError::Setup(e.to_string()))?;
                let bus = RedisBus::start_on(client).map_err(|e| StoreError::Setup(e.to_string()))?;
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

/// Reads a PEM file of certificates now, so that a wrong path is a start-up
/// problem naming the setting, rather than a bare "No such file" from the
/// first connection.
fn read_certificates(setting: &str, path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{setting} '{path}' cannot be read: {e}"))?;
    if !pem.windows(CERTIFICATE.len()).any(|w| w == CERTIFICATE.as_bytes()) {
        return Err(format!("{setting} '{path}' holds no PEM certificate ({CERTIFICATE})"));
    }
    Ok(pem)
}

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// Refuses at start what sqlx would refuse at the first connection (an
/// unknown sslmode, a TLS file it cannot read) and the one libpq URL sqlx
/// reads differently.
fn check_postgres_url(url: &str, problems: &mut Problems) {
    let shown = redact_url(url);
    let options = match PgConnectOptions::from_str(url) {
        Ok(options) => options,
        Err(e) => return problems.add(format!("DATABASE_URL '{shown}' is not usable: {e}")),
    };
    // sqlx reads these parameters (under these names), else the PG* variables.
    let parsed = url::Url::parse(url).ok();
    let param = |names: &[&'static str], variable: &str| {
        let in_url = parsed.as_ref().and_then(|u| {
            u.query_pairs().filter(|(k, _)| names.contains(&k.as_ref())).last().map(|(_, v)| v.into_owned())
        });
        in_url.or_else(|| std::env::var(variable).ok()).map(|v| (v, names[0]))
    };
    let root = param(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT");
    let cert = param(&["sslcert", "ssl-cert"], "PGSSLCERT");
    let key = param(&["sslkey", "ssl-key"], "PGSSLKEY");
    // A value that is itself a PEM certificate is one sqlx takes inline.
    for (value, name) in [&root, &cert].into_iter().flatten() {
        if !value.starts_with(CERTIFICATE)
            && let Err(problem) = read_certificates(&format!("DATABASE_URL's {name}"), value)
        {
            problems.add(problem);
        }
    }
    if let Some((path, _)) = &key
        && !path.starts_with("-----BEGIN")
        && let Err(e) = std::fs::File::open(path)
    {
        problems.add(format!("DATABASE_URL's sslkey '{path}' cannot be read: {e}"));
    }
    if cert.is_some() != key.is_some() {
        problems.add("DATABASE_URL has sslcert without sslkey or the reverse: a client certificate needs both");
    }
    // libpq checks the CA under `require` when given one; sqlx checks nothing.
    if root.is_some() && matches!(options.get_ssl_mode(), PgSslMode::Require) {
        problems.add(format!(
            "DATABASE_URL '{shown}' has sslmode=require with sslrootcert: this build would NOT check the server's \
             certificate against it (libpq would); say sslmode=verify-full (or verify-ca)"
        ));
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
    /// HS256 secret of access tokens (at least 32 bytes): auth-api signs
    /// with it, ext-authz verifies with it; no other service holds it.
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

    fn check_storage(database: &str, redis: Option<&str>, redis_ca_file: Option<&std::path::Path>) -> String {
        let args = StorageArgs {
            database_url: database.into(),
            database_max_connections: 4,
            redis_url: redis.map(String::from),
            redis_ca_file: redis_ca_file.map(PathBuf::from),
            change_feed_interval: Duration::from_secs(1),
        };
        let mut problems = Problems::default();
        args.check(&mut problems);
        problems.finish().err().unwrap_or_default()
    }

    #[test]
    fn data_store_urls_with_tls_are_accepted() {
        let check = |database: &str, redis: Option<&str>| check_storage(database, redis, None);
        assert_eq!(check("postgres://u:pw@db:5432/caas", Some("redis://r:6379")), "");
        assert_eq!(check("postgres://u:pw@db/caas?sslmode=disable", None), "");
        assert_eq!(check("postgres://u:pw@db/caas?sslmode=verify-full", Some("rediss://:pw@r:6380")), "");
        assert_eq!(check("postgresql://u:pw@db/caas?ssl-mode=require", Some("rediss://u:pw@r:6380/2")), "");
    }

    #[test]
    fn data_store_urls_this_build_cannot_use_are_refused_at_start_without_their_password() {
        let dir = std::env::temp_dir().join(crate::id::new_id("caas-config-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, not_pem) = (dir.join("ca.pem"), dir.join("ca.txt"));
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.join("missing.pem");
        let refused = |database: &str, redis: Option<&str>, ca: Option<&std::path::Path>, expected: &str| {
            let problems = check_storage(database, redis, ca);
            assert!(problems.contains(expected), "{database} {redis:?} {ca:?}: {problems}");
            assert!(!problems.contains("s3cret"), "{problems}");
        };
        let db = "postgres://u:s3cret@db/caas";
        refused(&format!("{db}?sslmode=verify_full"), None, None, "unknown value \"verify_full\"");
        let root = format!("{db}?sslmode=verify-full&sslrootcert={}", missing.display());
        refused(&root, None, None, &format!("sslrootcert '{}' cannot be read", missing.display()));
        let root = format!("{db}?sslmode=verify-full&sslrootcert={}", not_pem.display());
        refused(&root, None, None, "holds no PEM certificate");
        let root = format!("{db}?sslmode=require&sslrootcert={}", pem.display());
        refused(&root, None, None, "sslmode=require with sslrootcert");
        refused(&format!("{db}?sslmode=verify-full&sslcert={}", pem.display()), None, None, "without sslkey");

        let sqlite = "sqlite://x.db";
        refused(sqlite, Some("http://r"), None, "must start with redis:// or rediss://");
        refused(sqlite, Some("rediss://:s3cret@r:6380/#insecure"), None, "#insecure");
        refused(sqlite, Some("redis://:s3cret@r:6379"), Some(&pem), "is not rediss://");
        refused(sqlite, None, Some(&pem), "REDIS_URL is not");
        refused(sqlite, Some("rediss://:s3cret@r"), Some(&missing), "REDIS_CA_FILE");
        refused(sqlite, Some("rediss://:s3cret@r"), Some(&not_pem), "holds no PEM certificate");
        refused(sqlite, Some("rediss://:s3cret@r"), Some(&pem), "Unable to parse TLS trust anchors");
        std::fs::remove_dir_all(&dir).unwrap();
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
