use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::store::register;
use crate::bus::{BusError, BusMessage, EventBus, LocalBus, RedisBus};
use crate::cache::{Cache, MemoryCache, RedisCache};
use crate::events::Event;
use crate::jwt::{Audience, Claims, JwtKeys, TokenError};
use crate::metrics::AuthMetrics;
use crate::secret::Secret;
use crate::store::{AuditEntry, NewApiKey, NewSdkSession, Store, WhitelistKind};
use crate::validate::{Denial, Validator, ValidatorSettings};

const NOW: i64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn keys() -> JwtKeys {
    JwtKeys::new("caas", &Secret::new("j".repeat(32)), None)
}

fn validator(store: Store, cache: Arc<dyn Cache>, bus: Arc<dyn EventBus>) -> Arc<Validator> {
    Validator::start(store, cache, bus, keys(), ValidatorSettings::default(), Arc::new(AuthMetrics::default()))
}

fn audit(tenant: &str) -> AuditEntry {
    AuditEntry { client_id: Some(tenant.into()), ..AuditEntry::new(crate::store::AuditAction::SessionCreated) }
}

async fn whitelist(store: &Store, v: &Validator, kind: WhitelistKind, tenant: &str, entries: &[&str]) {
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    let version = store.replace_whitelist(kind, tenant, &entries, &audit(tenant), NOW).await.unwrap();
    v.whitelist_written(kind, tenant, &entries, version).await;
}

async fn session(store: &Store, tenant: &str, user: &str) -> Claims {
    let session_id = crate::id::new_id("ses");
    let (_, hash) = crate::refresh_token::generate();
    let new = NewSdkSession {
        session_id: session_id.clone(),
        client_id: tenant.into(),
        user_id: user.into(),
        name: None,
        metadata: None,
        refresh_hash: hash,
        refresh_expires_at: NOW + 86_400,
    };
    store.create_sdk_session(&new, &audit(tenant), NOW).await.unwrap();
    Claims {
        iss: "caas".into(),
        aud: Audience::Sdk.as_str().into(),
        sub: user.into(),
        tid: tenant.into(),
        sid: session_id,
        jti: crate::id::new_id("jti"),
        iat: NOW,
        exp: NOW + 900,
        nbf: None,
    }
}

fn reads(v: &Validator) -> u64 {
    v.metrics().db_reads.get()
}

#[tokio::test]
async fn api_key_needs_a_whitelisted_ip() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (tenant, _, key, raw) = register(&store, "k@example.com").await;
    // An empty whitelist allows nobody: a tenant opts addresses in.
    assert_eq!(v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial), Err(Denial::IpNotAllowed));
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.1/32", "10.0.0.0/8"]).await;
    let identity = v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.unwrap();
    assert_eq!((identity.tenant_id.as_str(), identity.key_id.as_str()), (tenant.as_str(), key.id.as_str()));
    assert!(v.validate_api_key(&raw, ip("10.9.9.9"), NOW).await.is_ok());
    assert_eq!(v.validate_api_key(&raw, ip("127.0.0.2"), NOW).await.map_err(|r| r.denial), Err(Denial::IpNotAllowed));
}

#[tokio::test]
async fn malformed_keys_never_reach_the_database_and_unknown_keys_are_remembered() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (_, _, _, raw) = register(&store, "m@example.com").await;
    for bad in ["", "caas_", &raw[..raw.len() - 1], &format!("{raw}0"), "Bearer x", &"a".repeat(10_000)] {
        assert_eq!(
            v.validate_api_key(bad, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial),
            Err(Denial::InvalidApiKey)
        );
    }
    assert_eq!(reads(&v), 0);
    let unknown = crate::api_key::generate().key;
    assert_eq!(
        v.validate_api_key(&unknown, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial),
        Err(Denial::InvalidApiKey)
    );
    assert_eq!(
        v.validate_api_key(&unknown, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial),
        Err(Denial::InvalidApiKey)
    );
    assert_eq!(reads(&v), 1, "the unknown key was looked up once");
}

#[tokio::test]
async fn steady_state_validation_is_served_from_cache() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (tenant, _, _, raw) = register(&store, "c@example.com").await;
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.0/8"]).await;
    whitelist(&store, &v, WhitelistKind::Origin, &tenant, &["https://app.example"]).await;
    let claims = session(&store, &tenant, "u1").await;
    let token = keys().issue(&claims);
    for _ in 0..1000 {
        v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.unwrap();
        v.validate_token(&token, Audience::Sdk, Some("https://app.example"), NOW).await.unwrap();
    }
    // One read for the key and one for the session; the whitelists came
    // from the shared cache that the writer filled.
    assert!(reads(&v) <= 2, "{} reads", reads(&v));
}

#[tokio::test]
async fn key_revocation_and_rotation_take_effect() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (tenant, _, key, raw) = register(&store, "r@example.com").await;
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.1"]).await;
    assert!(v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.is_ok());

    // Rotated: the old key works until its grace expiry, then not.
    let next = crate::api_key::generate();
    let new_key = NewApiKey { id: crate::id::new_id("key"), hash: next.hash.clone(), prefix: next.display_prefix };
    store.rotate_api_key(&tenant, &new_key, 60, &audit(&tenant), NOW).await.unwrap();
    v.publish(Event::ApiKeyChanged { tenant_id: tenant.clone(), key_id: key.id.clone(), key_hash: key.hash.clone() })
        .await;
    assert!(v.validate_api_key(&raw, ip("127.0.0.1"), NOW + 59).await.is_ok());
    assert_eq!(
        v.validate_api_key(&raw, ip("127.0.0.1"), NOW + 60).await.map_err(|r| r.denial),
        Err(Denial::ApiKeyExpired)
    );
    assert!(v.validate_api_key(&next.key, ip("127.0.0.1"), NOW + 60).await.is_ok());

    store.revoke_api_key(&tenant, &new_key.id, &audit(&tenant), NOW).await.unwrap();
    v.publish(Event::ApiKeyChanged { tenant_id: tenant.clone(), key_id: new_key.id, key_hash: next.hash }).await;
    assert!(
        crate::testing::eventually(Duration::from_secs(1), || async {
            v.validate_api_key(&next.key, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial)
                == Err(Denial::ApiKeyRevoked)
        })
        .await
    );
}

#[tokio::test]
async fn tokens_check_session_tenant_and_origin() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (a, _, _, _) = register(&store, "ta@example.com").await;
    let (b, _, _, _) = register(&store, "tb@example.com").await;
    whitelist(&store, &v, WhitelistKind::Origin, &a, &["https://a.example"]).await;
    whitelist(&store, &v, WhitelistKind::Origin, &b, &["https://b.example"]).await;
    let claims = session(&store, &a, "u1").await;
    let token = keys().issue(&claims);
    assert_eq!(v.validate_token(&token, Audience::Sdk, None, NOW).await.unwrap(), claims);
    assert!(v.validate_token(&token, Audience::Sdk, Some("https://a.example"), NOW).await.is_ok());
    // Tenant A's token with an Origin only tenant B allows.
    let rejection = v.validate_token(&token, Audience::Sdk, Some("https://b.example"), NOW).await.unwrap_err();
    assert_eq!((rejection.denial, rejection.tenant_id.as_deref()), (Denial::OriginNotAllowed, Some(a.as_str())));
    assert_eq!(
        v.validate_token(&token, Audience::Dashboard, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::Token(TokenError::WrongAudience))
    );

    // A validly signed token naming a session of another tenant, or none.
    let forged = keys().issue(&Claims { tid: b.clone(), ..claims.clone() });
    assert_eq!(
        v.validate_token(&forged, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );
    let ghost = keys().issue(&Claims { sid: "ses_ghost".into(), ..claims.clone() });
    assert_eq!(
        v.validate_token(&ghost, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );
}

#[tokio::test]
async fn revocation_is_pinned_against_stale_reads_and_database_outages() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (tenant, _, _, raw) = register(&store, "p@example.com").await;
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.1"]).await;
    let keep = session(&store, &tenant, "u1").await;
    let kill = session(&store, &tenant, "u2").await;
    let (keep_token, kill_token) = (keys().issue(&keep), keys().issue(&kill));
    assert!(v.validate_token(&kill_token, Audience::Sdk, None, NOW).await.is_ok());
    assert!(v.validate_token(&keep_token, Audience::Sdk, None, NOW).await.is_ok());
    assert!(v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.is_ok());

    // The event alone (the database has not even changed) denies at once.
    v.publish(Event::SessionRevoked { tenant_id: tenant.clone(), session_id: kill.sid.clone() }).await;
    assert!(
        crate::testing::eventually(Duration::from_secs(1), || async {
            v.validate_token(&kill_token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial)
                == Err(Denial::SessionRevoked)
        })
        .await
    );
    v.apply(&BusMessage::Resync);
    assert_eq!(
        v.validate_token(&kill_token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );

    // Database down: cached answers continue, revoked stays revoked, and
    // anything not cached is denied as unavailable (fail closed).
    let (other, _, _, _) = register(&store, "p2@example.com").await;
    let stranger = keys().issue(&session(&store, &other, "u3").await);
    store.close().await;
    assert!(v.validate_token(&keep_token, Audience::Sdk, None, NOW).await.is_ok());
    assert!(v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.is_ok());
    assert_eq!(
        v.validate_token(&kill_token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );
    assert_eq!(
        v.validate_token(&stranger, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::Unavailable)
    );
}

/// A bus whose cross-process link is down (a fake for this one rule).
struct DisconnectedBus(broadcast::Sender<BusMessage>);

#[async_trait]
impl EventBus for DisconnectedBus {
    async fn publish(&self, _: Event) -> Result<(), BusError> {
        Ok(())
    }
    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.0.subscribe()
    }
    fn deliver_from_feed(&self, event: Event) -> bool {
        let _ = self.0.send(BusMessage::Event(Arc::new(event)));
        true
    }
    fn is_connected(&self) -> bool {
        false
    }
    fn kind(&self) -> &'static str {
        "disconnected"
    }
}

#[tokio::test]
async fn without_the_bus_the_database_decides_every_time() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(DisconnectedBus(broadcast::channel(4).0)));
    let (tenant, _, _, _) = register(&store, "d@example.com").await;
    let claims = session(&store, &tenant, "u1").await;
    let token = keys().issue(&claims);
    assert!(v.validate_token(&token, Audience::Sdk, None, NOW).await.is_ok());
    // Revoked by another process whose event cannot reach us.
    store.revoke_session(&claims.sid, "logout", &audit(&tenant), NOW).await.unwrap();
    assert_eq!(
        v.validate_token(&token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );
}

#[tokio::test]
async fn revocation_reaches_another_process_within_a_second() {
    let Some(url) = crate::testing::redis_url().await else {
        return;
    };
    let Some((store, _guard)) = crate::testing::postgres_store().await else {
        return;
    };
    let bus_a = Arc::new(RedisBus::start(&url).unwrap());
    let bus_b = Arc::new(RedisBus::start(&url).unwrap());
    assert!(bus_a.wait_connected(Duration::from_secs(5)).await && bus_b.wait_connected(Duration::from_secs(5)).await);
    let cache: Arc<dyn Cache> = Arc::new(RedisCache::new(&url).unwrap());
    let a = validator(store.clone(), cache.clone(), bus_a);
    let b = validator(store.clone(), cache, bus_b);
    let (tenant, _, _, raw) = register(&store, "x@example.com").await;
    let claims = session(&store, &tenant, "u1").await;
    let token = keys().issue(&claims);
    assert!(b.validate_token(&token, Audience::Sdk, None, NOW).await.is_ok());

    // A whitelist written through A reaches B's parsed copy.
    assert_eq!(b.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial), Err(Denial::IpNotAllowed));
    whitelist(&store, &a, WhitelistKind::Ip, &tenant, &["127.0.0.1"]).await;
    assert!(
        crate::testing::eventually(Duration::from_secs(1), || async {
            b.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.is_ok()
        })
        .await
    );

    let started = std::time::Instant::now();
    store.revoke_session(&claims.sid, "logout", &audit(&tenant), NOW).await.unwrap();
    a.publish(Event::SessionRevoked { tenant_id: tenant, session_id: claims.sid.clone() }).await;
    assert!(
        crate::testing::eventually(Duration::from_secs(1), || async {
            b.validate_token(&token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial)
                == Err(Denial::SessionRevoked)
        })
        .await
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

fn validator_with(store: Store, settings: ValidatorSettings) -> Arc<Validator> {
    let bus = Arc::new(LocalBus::new());
    Validator::start(store, Arc::new(MemoryCache::new()), bus, keys(), settings, Arc::new(AuthMetrics::default()))
}

#[tokio::test]
async fn a_key_remembered_as_unknown_validates_as_soon_as_it_is_created() {
    let store = crate::testing::sqlite_store().await;
    let v = validator(store.clone(), Arc::new(MemoryCache::new()), Arc::new(LocalBus::new()));
    let (tenant, _, _, _) = register(&store, "n@example.com").await;
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.1"]).await;
    let next = crate::api_key::generate();
    for _ in 0..2 {
        assert_eq!(
            v.validate_api_key(&next.key, ip("127.0.0.1"), NOW).await.map_err(|r| r.denial),
            Err(Denial::InvalidApiKey)
        );
    }
    let before = reads(&v);
    let new_key = NewApiKey { id: crate::id::new_id("key"), hash: next.hash.clone(), prefix: next.display_prefix };
    store.rotate_api_key(&tenant, &new_key, 60, &audit(&tenant), NOW).await.unwrap();
    v.publish(Event::ApiKeyChanged { tenant_id: tenant.clone(), key_id: new_key.id.clone(), key_hash: next.hash })
        .await;
    // At once, not after `negative_for`: the event evicted the remembered unknown.
    let identity = v.validate_api_key(&next.key, ip("127.0.0.1"), NOW).await.unwrap();
    assert_eq!(identity.key_id, new_key.id);
    assert_eq!(reads(&v), before + 1);
}

#[tokio::test]
async fn a_flood_of_unknown_keys_never_evicts_known_ones() {
    let store = crate::testing::sqlite_store().await;
    let settings = ValidatorSettings { capacity: 50, negative_capacity: 20, ..ValidatorSettings::default() };
    let v = validator_with(store.clone(), settings);
    let (tenant, _, _, raw) = register(&store, "f@example.com").await;
    whitelist(&store, &v, WhitelistKind::Ip, &tenant, &["127.0.0.1"]).await;
    v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.unwrap();
    let honest_reads = reads(&v);
    for _ in 0..500 {
        let forged = crate::api_key::generate().key;
        assert!(v.validate_api_key(&forged, ip("203.0.113.7"), NOW).await.is_err());
    }
    assert_eq!(reads(&v), honest_reads + 500, "each distinct unknown key is one read");
    // The honest key (and its whitelist) are still cached: no read.
    v.validate_api_key(&raw, ip("127.0.0.1"), NOW).await.unwrap();
    assert_eq!(reads(&v), honest_reads + 500);
}

#[tokio::test]
async fn a_pinned_revocation_outlives_any_number_of_entries() {
    let store = crate::testing::sqlite_store().await;
    let settings = ValidatorSettings { capacity: 5, negative_capacity: 5, ..ValidatorSettings::default() };
    let v = validator_with(store.clone(), settings);
    let (tenant, _, _, _) = register(&store, "q@example.com").await;
    let kill = session(&store, &tenant, "victim").await;
    let kill_token = keys().issue(&kill);
    v.publish(Event::SessionRevoked { tenant_id: tenant.clone(), session_id: kill.sid.clone() }).await;
    for i in 0..50 {
        let claims = session(&store, &tenant, &format!("u{i}")).await;
        assert!(v.validate_token(&keys().issue(&claims), Audience::Sdk, None, NOW).await.is_ok());
    }
    let before = reads(&v);
    assert_eq!(
        v.validate_token(&kill_token, Audience::Sdk, None, NOW).await.map_err(|r| r.denial),
        Err(Denial::SessionRevoked)
    );
    assert_eq!(reads(&v), before, "the pin answered, not the database");
}

/// Two processes on one database whose bus link is lost (each has only its
/// own in-process bus): what the writer announces never reaches the other
/// over the bus, so only the durable change feed (core/src/feed.rs) can.
async fn a_change_whose_bus_message_is_lost_still_arrives_through_the_feed(store: Store) {
    let shared: Arc<dyn Cache> = Arc::new(MemoryCache::new());
    let writer = validator(store.clone(), shared.clone(), Arc::new(LocalBus::new()));
    let reader_bus: Arc<dyn EventBus> = Arc::new(LocalBus::new());
    let reader = validator(store.clone(), shared.clone(), reader_bus.clone());
    let feed =
        crate::feed::ChangeFeed::start(store.clone(), reader_bus, Duration::from_millis(100), Duration::from_secs(300));
    let (tenant, _, _, _) = register(&store, "feed@example.com").await;
    assert!(crate::testing::eventually(Duration::from_secs(5), || async { feed.metrics.current.get() == 1 }).await);

    // A session the reader has cached as valid, revoked by the writer.
    let claims = session(&store, &tenant, "user-1").await;
    reader.check_session(&claims, Audience::Sdk).await.unwrap();
    let started = std::time::Instant::now();
    let audit = audit(&tenant);
    store.revoke_session(&claims.sid, "logout", &audit, NOW).await.unwrap();
    writer.publish(Event::session_revoked(&tenant, &claims.sid)).await;
    let refused = crate::testing::eventually(Duration::from_secs(3), || async {
        reader.check_session(&claims, Audience::Sdk).await == Err(Denial::SessionRevoked)
    })
    .await;
    assert!(refused, "the revocation reached the other process");
    assert!(started.elapsed() < Duration::from_secs(2), "within about one feed period: {:?}", started.elapsed());

    // A whitelist whose new version the writer could not put in the shared
    // cache: the old shared copy is recognised as stale and read again.
    whitelist(&store, &writer, WhitelistKind::Ip, &tenant, &["10.0.0.0/8"]).await;
    assert_eq!(reader.check_ip(&tenant, ip("10.1.2.3")).await, Ok(()));
    let entries = vec!["192.0.2.0/24".to_string()];
    let version = store.replace_whitelist(WhitelistKind::Ip, &tenant, &entries, &audit, NOW).await.unwrap();
    assert_eq!(version, 2);
    let moved = crate::testing::eventually(Duration::from_secs(3), || async {
        reader.check_ip(&tenant, ip("192.0.2.9")).await.is_ok()
            && reader.check_ip(&tenant, ip("10.1.2.3")).await == Err(Denial::IpNotAllowed)
    })
    .await;
    assert!(moved, "the stale shared copy was not served");
    assert!(reader.metrics().stale_shared_whitelists.get() >= 1);
    let key = crate::validate::whitelist_cache_key(WhitelistKind::Ip, &tenant);
    let copy = shared.get(&key).await.unwrap().unwrap();
    assert!(copy.contains("\"version\":2") && copy.contains("192.0.2.0/24"), "repaired for everyone: {copy}");
    assert!(feed.metrics.delivered.get() >= 2);
}

crate::store_conformance!(a_change_whose_bus_message_is_lost_still_arrives_through_the_feed);
