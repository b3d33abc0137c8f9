//! Logins under hostile traffic: attempts are reserved before any hash, the
//! hashing bound refuses instead of queueing, an owner's known address is
//! not locked out by strangers, and IPv6 addresses count per /64. Each runs
//! on the in-process cache and, when reachable, on Redis.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, MemoryCache, RedisCache};
use crate::credentials::{CredentialError, Credentials, Lifetimes, Throttles};
use crate::id::new_id;
use crate::jwt::JwtKeys;
use crate::loginguard::{Hashing, KnownAddresses};
use crate::metrics::AuthMetrics;
use crate::ratelimit::RateLimiter;
use crate::secret::Secret;
use crate::testing::RecordingBus;
use crate::validate::{Validator, ValidatorSettings};

const NOW: i64 = 1_700_000_000;
const PASSWORD: &str = "correct horse battery staple";
const WRONG: &str = "wrong horse battery staple";
const PER_EMAIL: u64 = 5;
const PER_IP: u64 = 20;

struct Guarded {
    credentials: Credentials,
    hashing: Hashing,
    _validator: Arc<Validator>,
}

async fn guarded(cache: Arc<dyn Cache>, hashing_limit: usize) -> Guarded {
    let store = crate::testing::sqlite_store().await;
    let validator = Validator::start(
        store.clone(),
        cache.clone(),
        Arc::new(RecordingBus::new()),
        JwtKeys::new("caas", &Secret::new("j".repeat(32)), None),
        ValidatorSettings::default(),
        Arc::new(AuthMetrics::default()),
    );
    let window = Duration::from_secs(900);
    let hashing = Hashing::new(hashing_limit);
    let throttles = Throttles {
        login_by_email: RateLimiter::new("login-email", PER_EMAIL, window, cache.clone()),
        login_by_ip: RateLimiter::new("login-ip", PER_IP, window, cache.clone()),
        registrations: RateLimiter::new("register-ip", 1000, window, cache.clone()),
        test_sessions: RateLimiter::new("test-session", 1000, window, cache.clone()),
        known_addresses: KnownAddresses::new(cache),
        hashing: hashing.clone(),
    };
    let lifetimes = Lifetimes { access: Duration::from_secs(900), refresh: Duration::from_secs(86_400) };
    Guarded {
        credentials: Credentials::new(store, validator.clone(), lifetimes, throttles),
        hashing,
        _validator: validator,
    }
}

/// The in-process cache, and Redis when it is reachable.
async fn caches() -> Vec<Arc<dyn Cache>> {
    let mut caches: Vec<Arc<dyn Cache>> = vec![Arc::new(MemoryCache::new())];
    if let Some(url) = crate::testing::redis_url().await {
        caches.push(Arc::new(RedisCache::new(&url).unwrap()));
    }
    caches
}

/// A fresh email and loopback-style address prefix, so runs on a shared
/// Redis never see each other's counters.
fn fresh() -> (String, String) {
    let id = new_id("lg").to_lowercase();
    let [a, b] = rand_word().to_be_bytes();
    (format!("{id}@example.com"), format!("10.{a}.{b}"))
}

async fn parallel_guesses_run_at_most_the_limits_worth_of_hashes(cache: Arc<dyn Cache>) {
    // Room to hash all 60 at once: only the reservations may stop them.
    let g = guarded(cache, 64).await;
    let (email, net) = fresh();
    g.credentials.register("Acme", &email, PASSWORD.into(), &format!("{net}.250"), NOW).await.unwrap();
    let attempts = (0..60).map(|i| {
        let (credentials, email) = (&g.credentials, &email);
        let ip = format!("{net}.{}", i + 1);
        async move { credentials.login(email, WRONG.into(), &ip, NOW).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let wrong = results.iter().filter(|r| matches!(r, Err(CredentialError::WrongPassword))).count();
    let throttled = results.iter().filter(|r| matches!(r, Err(CredentialError::Throttled(_)))).count();
    assert_eq!((wrong, throttled), (PER_EMAIL as usize, 60 - PER_EMAIL as usize), "{results:?}");
    assert_eq!(g.hashing.count("mismatch"), PER_EMAIL);
}

async fn one_address_runs_at_most_its_limits_worth_of_hashes(cache: Arc<dyn Cache>) {
    let g = guarded(cache, 64).await;
    let (email, net) = fresh();
    let ip = format!("{net}.1");
    let attempts = (0..60).map(|i| {
        let (credentials, ip) = (&g.credentials, &ip);
        let email = format!("{i}.{email}");
        async move { credentials.login(&email, WRONG.into(), ip, NOW).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let throttled = results.iter().filter(|r| matches!(r, Err(CredentialError::Throttled(_)))).count();
    assert_eq!(throttled, 60 - PER_IP as usize, "{results:?}");
    assert_eq!(g.hashing.count("mismatch"), PER_IP);
}

async fn the_owner_is_not_locked_out_from_a_known_address(cache: Arc<dyn Cache>) {
    let g = guarded(cache, 4).await;
    let (email, net) = fresh();
    let (owner, stranger, newcomer) = (format!("{net}.1"), format!("{net}.2"), format!("{net}.3"));
    g.credentials.register("Acme", &email, PASSWORD.into(), &owner, NOW).await.unwrap();
    g.credentials.login(&email, PASSWORD.into(), &owner, NOW).await.unwrap();
    for _ in 0..PER_EMAIL {
        let r = g.credentials.login(&email, WRONG.into(), &stranger, NOW).await;
        assert!(matches!(r, Err(CredentialError::WrongPassword)), "{r:?}");
    }
    // The email's budget for unknown addresses is spent: the right password
    // from an address that never logged in is refused...
    let r = g.credentials.login(&email, PASSWORD.into(), &newcomer, NOW).await;
    assert!(matches!(r, Err(CredentialError::Throttled(_))), "{r:?}");
    let r = g.credentials.login(&email, WRONG.into(), &stranger, NOW).await;
    assert!(matches!(r, Err(CredentialError::Throttled(_))), "{r:?}");
    // ...but the owner's known address logs in.
    g.credentials.login(&email, PASSWORD.into(), &owner, NOW).await.unwrap();
    // A known address still has its own limit on guesses.
    for _ in 0..PER_EMAIL {
        let r = g.credentials.login(&email, WRONG.into(), &owner, NOW).await;
        assert!(matches!(r, Err(CredentialError::WrongPassword)), "{r:?}");
    }
    let r = g.credentials.login(&email, PASSWORD.into(), &owner, NOW).await;
    assert!(matches!(r, Err(CredentialError::Throttled(_))), "{r:?}");
}

async fn ipv6_addresses_count_per_64(cache: Arc<dyn Cache>) {
    let g = guarded(cache, 4).await;
    let (email, _) = fresh();
    // A /64 of its own per run, so a shared Redis holds no earlier counts.
    let net = format!("2001:db8:{:x}:{:x}", rand_word(), rand_word());
    for i in 0..PER_IP {
        let r = g.credentials.login(&format!("{i}.{email}"), WRONG.into(), &format!("{net}::{i:x}"), NOW).await;
        assert!(matches!(r, Err(CredentialError::WrongPassword)), "{r:?}");
    }
    let r = g.credentials.login(&format!("x.{email}"), WRONG.into(), &format!("{net}:ffff:1:2:3"), NOW).await;
    assert!(matches!(r, Err(CredentialError::Throttled(_))), "{r:?}");
    let next = format!("2001:db8:{:x}:{:x}::1", rand_word(), rand_word());
    let r = g.credentials.login(&format!("y.{email}"), WRONG.into(), &next, NOW).await;
    assert!(matches!(r, Err(CredentialError::WrongPassword)), "{r:?}");
}

fn rand_word() -> u16 {
    let digest = crate::api_key::hash_key(&new_id("w"));
    u16::from_str_radix(&digest[..4], 16).unwrap()
}

#[tokio::test]
async fn parallel_guesses_for_one_email_hash_at_most_its_limit() {
    for cache in caches().await {
        parallel_guesses_run_at_most_the_limits_worth_of_hashes(cache).await;
    }
}

#[tokio::test]
async fn parallel_guesses_from_one_address_hash_at_most_its_limit() {
    for cache in caches().await {
        one_address_runs_at_most_its_limits_worth_of_hashes(cache).await;
    }
}

#[tokio::test]
async fn strangers_cannot_lock_the_owner_out() {
    for cache in caches().await {
        the_owner_is_not_locked_out_from_a_known_address(cache).await;
    }
}

#[tokio::test]
async fn ipv6_guesses_count_per_64() {
    for cache in caches().await {
        ipv6_addresses_count_per_64(cache).await;
    }
}

/// A full hashing bound refuses at once and gives the reservation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_bound_refuses_at_once() {
    let g = guarded(Arc::new(MemoryCache::new()), 1).await;
    let (email, net) = fresh();
    // No more than the email's limit: only the bound may refuse.
    let attempts = (0..PER_EMAIL).map(|i| {
        let (credentials, email) = (&g.credentials, &email);
        let ip = format!("{net}.{}", i + 1);
        async move { credentials.login(email, WRONG.into(), &ip, NOW).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let overloaded = results.iter().filter(|r| matches!(r, Err(CredentialError::Overloaded(_)))).count();
    assert!(overloaded >= 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(r, Err(CredentialError::WrongPassword | CredentialError::Overloaded(_)))));
    // Refused attempts were not counted as failures of the email.
    let wrong = results.len() - overloaded;
    assert_eq!(g.hashing.count("mismatch"), wrong as u64);
    // Refused attempts gave their reservations back: the email has room.
    let r = g.credentials.login(&email, WRONG.into(), &format!("{net}.99"), NOW).await;
    assert!(matches!(r, Err(CredentialError::WrongPassword)), "{r:?}");
}

/// Strangers' guesses fill the hashing bound; the owner, from an address it
/// logged in from before, still gets in through the slot kept for owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_gets_in_while_strangers_fill_the_hashing_bound() {
    let g = guarded(Arc::new(MemoryCache::new()), 1).await;
    let (email, net) = fresh();
    let home = format!("{net}.200");
    g.credentials.register("Acme", &email, PASSWORD.into(), &home, NOW).await.unwrap();
    g.credentials.login(&email, PASSWORD.into(), &home, NOW).await.unwrap();
    for round in 0..5 {
        let strangers = (0..8).map(|i| {
            let credentials = &g.credentials;
            let (stranger, ip) = (format!("s{round}-{i}-{email}"), format!("{net}.{}", 10 + round * 8 + i));
            async move { credentials.login(&stranger, WRONG.into(), &ip, NOW).await }
        });
        let owner = g.credentials.login(&email, PASSWORD.into(), &home, NOW);
        let (results, owner) = tokio::join!(futures_util::future::join_all(strangers), owner);
        assert!(owner.is_ok(), "round {round}: {owner:?}");
        assert!(results.iter().any(|r| matches!(r, Err(CredentialError::Overloaded(_)))), "the bound was never full");
    }
}
