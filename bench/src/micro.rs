//! In-process costs of the rules on the hot path, with warm caches.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use caas_core::bus::LocalBus;
use caas_core::cache::MemoryCache;
use caas_core::context::{AuthType, ContextSigner, ContextVerifier, RequestContext};
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::{Audience, Claims, JwtKeys};
use caas_core::metrics::AuthMetrics;
use caas_core::store::{AuditEntry, NewApiKey, NewSdkSession, Store, WhitelistKind};
use caas_core::validate::{Validator, ValidatorSettings};
use hmac::Mac as _;

#[derive(clap::Args)]
pub struct MicroArgs {
    /// Operations per round.
    #[arg(long, default_value_t = 200_000)]
    iterations: u32,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// Median nanoseconds per operation over `rounds` rounds of `iterations`.
async fn measure<F, Fut>(rounds: usize, iterations: u32, mut op: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        op().await;
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..iterations {
            op().await;
        }
        samples.push(started.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub async fn run(args: MicroArgs) -> anyhow::Result<()> {
    let store = Store::connect("sqlite::memory:", 1).await?;
    store.migrate().await?;
    let now = unix_now();
    let generated = caas_core::api_key::generate();
    let tenant = new_id("cl");
    let key = NewApiKey { id: new_id("key"), hash: generated.hash.clone(), prefix: generated.display_prefix.clone() };
    store.register_client(&tenant, "Bench", &new_id("acc"), "bench@example.com", "h", &key, None, now).await?;
    let audit = AuditEntry::new(caas_core::store::AuditAction::IpWhitelistUpdated);
    store
        .replace_whitelist(WhitelistKind::Ip, &tenant, &["10.0.0.0/8".into(), "127.0.0.1/32".into()], &audit, now)
        .await?;
    store.replace_whitelist(WhitelistKind::Origin, &tenant, &["https://app.example.com".into()], &audit, now).await?;
    let session_id = new_id("ses");
    let (_, refresh_hash) = caas_core::refresh_token::generate();
    let new = NewSdkSession {
        session_id: session_id.clone(),
        client_id: tenant.clone(),
        user_id: "user-1".into(),
        name: None,
        metadata: None,
        refresh_hash,
        refresh_expires_at: now + 86_400,
    };
    store.create_sdk_session(&new, &audit, now).await?;
    let jwt = JwtKeys::new("caas", &caas_core::secret::generate(), None);
    let token = jwt.issue(&Claims {
        iss: "caas".into(),
        aud: Audience::Sdk.as_str().into(),
        sub: "user-1".into(),
        tid: tenant.clone(),
        sid: session_id.clone(),
        jti: new_id("jti"),
        iat: now,
        exp: now + 900,
        nbf: None,
    });
    let metrics = Arc::new(AuthMetrics::default());
    let validator = Validator::start(
        store,
        Arc::new(MemoryCache::new()),
        Arc::new(LocalBus::new()),
        jwt.clone(),
        ValidatorSettings::default(),
        metrics.clone(),
    );
    let ip: IpAddr = "127.0.0.1".parse()?;
    let secret = caas_core::secret::generate();
    let signer = ContextSigner::new(&secret);
    let verifier = ContextVerifier::new(&secret, None);
    let ctx = RequestContext {
        tenant_id: tenant.clone(),
        user_id: "user-1".into(),
        session_id,
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        client_ip: "127.0.0.1".into(),
        request_id: "4f1c2b1e-9d7a-4c55-a0a2-1b3d8c9e7f60".into(),
        token_expires_at: None,
    };
    let (rounds, iterations) = (args.rounds, args.iterations);

    // Floors, for scale: one HMAC-SHA256 of a short message, one SHA-256.
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())?;
    let hmac_floor = measure(rounds, iterations, || {
        let mut m = mac.clone();
        m.update(black_box(
            b"GET\ncl_01JD3\nuser-1\nses_01JD3\njwt\n127.0.0.1\n4f1c2b1e-9d7a-4c55-a0a2-1b3d8c9e7f60\n1700000000",
        ));
        black_box(m.finalize());
        async {}
    })
    .await;

    let key_ns = measure(rounds, iterations, || {
        let validator = &validator;
        let key = &generated.key;
        async move {
            black_box(validator.validate_api_key(black_box(key), ip, now).await.ok());
        }
    })
    .await;
    let jwt_ns = measure(rounds, iterations, || {
        let validator = &validator;
        let token = &token;
        async move {
            black_box(validator.validate_token(black_box(token), Audience::Sdk, None, now).await.ok());
        }
    })
    .await;
    let jwt_origin_ns = measure(rounds, iterations, || {
        let validator = &validator;
        let token = &token;
        async move {
            black_box(
                validator
                    .validate_token(black_box(token), Audience::Sdk, Some("https://app.example.com"), now)
                    .await
                    .ok(),
            );
        }
    })
    .await;
    let sign_ns = measure(rounds, iterations, || {
        black_box(signer.headers(black_box(&ctx), "GET", now));
        async {}
    })
    .await;
    let headers = signer.headers(&ctx, "GET", now);
    let verify_ns = measure(rounds, iterations, || {
        let found =
            verifier.verify(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()), "GET", now);
        black_box(found.ok());
        async {}
    })
    .await;
    let reads = metrics.db_reads.get();

    println!("| operation (warm caches) | ns/op (median of {rounds} × {iterations}) | target |");
    println!("|---|---:|---|");
    println!("| HMAC-SHA256 of a short message (floor, for scale) | {hmac_floor:.0} | — |");
    println!("| API key check: format + SHA-256 + cached record + cached CIDR match | {key_ns:.0} | ≤ 2000 |");
    println!("| JWT verify (HS256) + cached session revocation check | {jwt_ns:.0} | ≤ 5000 |");
    println!("| … plus Origin against the cached whitelist | {jwt_origin_ns:.0} | — |");
    println!("| context sign (9 headers) | {sign_ns:.0} | — |");
    println!("| context verify | {verify_ns:.0} | — |");
    println!("| context sign + verify | {:.0} | ≤ 2000 |", sign_ns + verify_ns);
    println!("\ndatabase reads during the run: {reads} (first lookups of the key, the session and the two whitelists)");
    Ok(())
}
