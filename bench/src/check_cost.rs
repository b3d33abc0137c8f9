//! The cost of quotas in the Check, in process: the same cached API-key
//! Check through `Authorizer::check` with quotas off, counted in the process
//! only, and (with `--redis-url`) shared through Redis, each variant its own
//! authorizer on one store, rounds interleaved so the machine's noise falls
//! on all of them alike. `--variant` runs one variant alone, for an
//! instruction count under valgrind (bench/quota.sh): instructions, unlike
//! seconds, do not depend on what else the machine is doing.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caas_core::bus::LocalBus;
use caas_core::cache::{Cache, MemoryCache, RedisCache};
use caas_core::context::ContextSigner;
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::JwtKeys;
use caas_core::metrics::AuthMetrics;
use caas_core::quotas::MAX_LIMITS;
use caas_core::store::{AuditAction, AuditEntry, NewApiKey, Store, WhitelistKind};
use caas_core::validate::{Validator, ValidatorSettings};
use caas_ext_authz::metrics::GatewayMetrics;
use caas_ext_authz::{Authorizer, AuthorizerSettings};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

#[derive(clap::Args)]
pub struct CheckCostArgs {
    /// Checks per round.
    #[arg(long, default_value_t = 50_000)]
    iterations: u32,
    /// Rounds per variant; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Also measure quotas shared through this Redis (its keys expire by themselves).
    #[arg(long)]
    redis_url: Option<String>,
    /// Run only this variant (`off`, `local` or `shared`), `iterations` Checks once, and print nothing.
    #[arg(long)]
    variant: Option<String>,
}

struct Variant {
    name: &'static str,
    label: &'static str,
    authorizer: Authorizer,
}

pub async fn run(args: CheckCostArgs) -> anyhow::Result<()> {
    let store = Store::connect("sqlite::memory:", 1).await?;
    store.migrate().await?;
    let now = unix_now();
    let generated = caas_core::api_key::generate();
    let tenant = new_id("cl");
    let key = NewApiKey { id: new_id("key"), hash: generated.hash.clone(), prefix: generated.display_prefix.clone() };
    store.register_client(&tenant, "Bench", &new_id("acc"), "bench@example.com", "h", &key, None, now).await?;
    let audit = AuditEntry::new(AuditAction::IpWhitelistUpdated);
    store.replace_whitelist(WhitelistKind::Ip, &tenant, &["127.0.0.1/32".into()], &audit, now).await?;
    // The most a tenant may set: nothing is refused, every Check counts.
    let audit = AuditEntry::new(AuditAction::RateLimitsUpdated);
    store.set_rate_limits(&tenant, &MAX_LIMITS, &audit, now).await?;

    let jwt = JwtKeys::new("caas", &caas_core::secret::generate(), None);
    let signer_secret = caas_core::secret::generate();
    let authorizer = |cache: Arc<dyn Cache>, quotas: bool| {
        let validator = Validator::start(
            store.clone(),
            cache,
            Arc::new(LocalBus::new()),
            jwt.clone(),
            ValidatorSettings::default(),
            Arc::new(AuthMetrics::default()),
        );
        let settings = AuthorizerSettings { log_allowed: false, quotas, ..AuthorizerSettings::default() };
        Authorizer::new(validator, ContextSigner::new(&signer_secret), settings, Arc::new(GatewayMetrics::default()))
    };
    let mut variants = vec![
        Variant { name: "off", label: "quotas off", authorizer: authorizer(Arc::new(MemoryCache::new()), false) },
        Variant {
            name: "local",
            label: "quotas in the process only",
            authorizer: authorizer(Arc::new(MemoryCache::new()), true),
        },
    ];
    if let Some(url) = &args.redis_url {
        let redis: Arc<dyn Cache> = Arc::new(RedisCache::new(url)?);
        variants.push(Variant {
            name: "shared",
            label: "quotas shared through Redis",
            authorizer: authorizer(redis, true),
        });
    }
    if let Some(only) = &args.variant {
        variants.retain(|v| v.name == only);
        anyhow::ensure!(!variants.is_empty(), "no variant {only} (off, local, or shared with --redis-url)");
    }

    // The API-key route's Check, as Envoy sends it from 127.0.0.1.
    let request = crate::load::check_request("api_key", "", &generated.key, None);
    for v in &variants {
        let status = code(&v.authorizer.check(request.clone()).await);
        anyhow::ensure!(status == 0, "{}: the key's Check answered {status}, not OK", v.name);
    }
    if args.variant.is_some() {
        for _ in 0..args.iterations {
            black_box(v_check(&variants[0].authorizer, &request).await);
        }
        return Ok(());
    }
    let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
    for _ in 0..args.rounds {
        for v in &variants {
            let started = Instant::now();
            for _ in 0..args.iterations {
                black_box(v_check(&v.authorizer, &request).await);
            }
            let ns = started.elapsed().as_nanos() as f64 / f64::from(args.iterations);
            samples.entry(v.name).or_default().push(ns);
            // Lets the reconciler run between rounds, as it would between Checks.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let median = |name: &str| {
        let mut s = samples[name].clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let off = median("off");
    println!("| variant | ns per Check (median of {} × {}) | vs off |", args.rounds, args.iterations);
    println!("|---|---:|---:|");
    for v in &variants {
        let ns = median(v.name);
        println!("| {} | {ns:.0} | {:.3} |", v.label, ns / off);
    }
    Ok(())
}

async fn v_check(authorizer: &Authorizer, request: &CheckRequest) -> i32 {
    code(&authorizer.check(request.clone()).await)
}

fn code(response: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}
