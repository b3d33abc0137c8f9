//! Quotas in the Check: counted after the credential passed, refused with
//! 429 and the rate-limit headers, per key, per end user and per tenant.

use super::*;
use crate::quota::Holder;
use caas_core::context::RequestContext;
use caas_core::quotas::{DEFAULT_LIMITS, Limit, Limits, set_rate_limits};

struct Quota {
    f: Fixture,
    store: Store,
    second_key: String,
}

async fn quota_fixture() -> Quota {
    let store = caas_core::testing::sqlite_store().await;
    let (tenant, key, key_id) = register(&store, "q@example.com").await;
    let now = unix_now();
    let audit = AuditEntry::new(caas_core::store::AuditAction::IpWhitelistUpdated);
    store.replace_whitelist(WhitelistKind::Ip, &tenant, &["127.0.0.1/32".into()], &audit, now).await.unwrap();
    // A second active key of the same tenant (the first is demoted, still valid).
    let generated = caas_core::api_key::generate();
    let second = NewApiKey { id: new_id("key"), hash: generated.hash, prefix: generated.display_prefix };
    let rotated = AuditEntry::new(caas_core::store::AuditAction::ApiKeyRotated);
    store.rotate_api_key(&tenant, &second, 3600, &rotated, now).await.unwrap();
    let token = token(&store, &tenant, Audience::Sdk).await;
    let authorizer = authorizer_on(store.clone(), Arc::new(MemoryCache::new()), AuthorizerSettings::default());
    let f = Fixture {
        authorizer,
        tenant,
        other_tenant: String::new(),
        key,
        key_id,
        token: token.clone(),
        other_token: token,
        dashboard_token: String::new(),
    };
    Quota { f, store, second_key: generated.key }
}

impl Quota {
    async fn set(&self, limits: Limits) {
        let caller = RequestContext {
            tenant_id: self.f.tenant.clone(),
            user_id: "acc".into(),
            session_id: "ses".into(),
            auth_type: AuthType::Dashboard,
            key_id: String::new(),
            client_ip: "127.0.0.1".into(),
            request_id: "req".into(),
            token_expires_at: None,
        };
        set_rate_limits(&self.store, self.f.authorizer.validator(), &caller, limits, unix_now()).await.unwrap();
    }

    async fn with_key(&self, key: &str) -> Verdict {
        check(&self.f, request(Some("api_key"), "POST", "/v1/sdk/session", &[("x-api-key", key)], "127.0.0.1")).await
    }

    async fn as_end_user(&self) -> Verdict {
        let bearer = format!("Bearer {}", self.f.token);
        check(
            &self.f,
            request(Some("end_user"), "GET", "/v1/conversations", &[("authorization", &bearer)], "127.0.0.1"),
        )
        .await
    }
}

fn metric(f: &Fixture, policy: &'static str, scope: &'static str) -> u64 {
    let metrics = f.authorizer.metrics();
    metrics.rate_limited.get_or_create(&[("policy", policy), ("scope", scope)]).get()
}

#[tokio::test]
async fn a_key_over_its_quota_gets_429_and_another_key_of_the_tenant_does_not() {
    let q = quota_fixture().await;
    // Far under the defaults: nothing is refused.
    for _ in 0..20 {
        assert_eq!(q.with_key(&q.f.key).await.status, 200);
    }
    // A lowered limit applies at once: the event evicted the cached one.
    q.set(Limits { per_key: Limit { rate: 1, burst: 3 }, ..DEFAULT_LIMITS }).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(q.with_key(&q.f.key).await.status);
    }
    // The 20 earlier requests (1 ms each at 1,000/s) may or may not have
    // drained by the third; the burst of 3 never lets the fourth through.
    assert_eq!((statuses[0], statuses[1], statuses[3]), (200, 200, 429), "{statuses:?}");
    let refused = q.with_key(&q.f.key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    assert_eq!(refused.response_headers["retry-after"], "1");
    assert_eq!(refused.response_headers["ratelimit-policy"], r#""key";q=1;w=1"#);
    assert_eq!(refused.response_headers["ratelimit"], r#""key";r=0;t=1"#);
    assert!(!refused.body.to_string().contains(&q.f.key), "the key is never echoed");
    assert!(metric(&q.f, "api_key", "key") >= 2);

    // Another key of the same tenant has a bucket of its own.
    for _ in 0..3 {
        assert_eq!(q.with_key(&q.second_key).await.status, 200);
    }
}

#[tokio::test]
async fn the_tenant_quota_counts_every_key_and_end_users_have_their_own() {
    let q = quota_fixture().await;
    q.set(Limits {
        per_key: Limit { rate: 100, burst: 100 },
        per_user: Limit { rate: 1, burst: 2 },
        per_tenant: Limit { rate: 1, burst: 4 },
    })
    .await;
    assert_eq!(q.with_key(&q.f.key).await.status, 200);
    assert_eq!(q.with_key(&q.second_key).await.status, 200);
    let user: Vec<u16> = [q.as_end_user().await.status, q.as_end_user().await.status].into();
    assert_eq!(user, [200, 200]);
    // The user's own bucket is empty first (burst 2).
    let over = q.as_end_user().await;
    assert_eq!((over.status, over.response_headers["ratelimit-policy"].as_str()), (429, r#""user";q=1;w=1"#));
    // Four requests of the tenant so far: its bucket is empty for any key.
    let over = q.with_key(&q.second_key).await;
    assert_eq!((over.status, over.response_headers["ratelimit-policy"].as_str()), (429, r#""tenant";q=1;w=1"#));
    assert_eq!(metric(&q.f, "end_user", "user"), 1);
    assert_eq!(metric(&q.f, "api_key", "tenant"), 1);
}

mod shared {
    //! Two instances sharing their buckets through one cache (the in-process
    //! one stands for Redis here; the e2e tests use Redis itself).
    use std::sync::Arc;

    use caas_core::cache::{Cache, MemoryCache, RedisCache};
    use caas_rules::quota::{Limit, Limits, Scope};

    use crate::quota::{QuotaGauges, Quotas};

    /// A burst of 10 that refills slowly (1/s), so a test's own time barely shows.
    const TEN: Limits = Limits {
        per_key: Limit { rate: 1, burst: 10 },
        per_user: Limit { rate: 10, burst: 10 },
        per_tenant: Limit { rate: 1_000, burst: 1_000 },
    };

    fn instance(cache: &Arc<dyn Cache>) -> (Quotas, QuotaGauges) {
        let gauges = QuotaGauges::default();
        (Quotas::new(100, Some(cache.clone()), gauges.clone()), gauges)
    }

    fn bucket() -> Vec<(Scope, String)> {
        vec![(Scope::Key, caas_core::id::new_id("key")), (Scope::Tenant, caas_core::id::new_id("tenant"))]
    }

    fn admitted(q: &Quotas, counted: &[(Scope, String)], tries: usize) -> usize {
        (0..tries).filter(|_| q.admit(counted, &TEN).is_ok()).count()
    }

    #[tokio::test]
    async fn what_one_instance_admits_is_charged_to_the_other_at_the_next_round() {
        let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
        let ((a, gauges), (b, _)) = (instance(&cache), instance(&cache));
        let key = bucket();
        // Both use the bucket once and hear of each other.
        assert_eq!((admitted(&a, &key, 1), admitted(&b, &key, 1)), (1, 1));
        for q in [&a, &b, &a, &b] {
            q.reconcile_once().await;
        }
        assert_eq!((gauges.shared.get(), gauges.instances.get()), (1, 2));
        // A spends the rest of the burst; once B has heard of it, B refuses
        // but for A's first request, made before B's first round: what an
        // instance's first round finds is not charged (docs/DESIGN.md, the bound).
        assert_eq!(admitted(&a, &key, 20), 8, "a burst of 10, 2 spent");
        a.reconcile_once().await;
        b.reconcile_once().await;
        assert_eq!(admitted(&b, &key, 20), 1);
        let refused = b.admit(&key, &TEN).unwrap_err();
        assert_eq!((refused.scope, refused.limit), (Scope::Key, TEN.per_key));
        // Another bucket is untouched.
        assert_eq!(admitted(&b, &bucket(), 10), 10);
    }

    #[tokio::test]
    async fn what_a_filter_gives_back_to_one_instance_every_instance_gets_back() {
        let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
        let ((a, _), (b, _)) = (instance(&cache), instance(&cache));
        let key = bucket();
        assert_eq!((admitted(&a, &key, 1), admitted(&b, &key, 1)), (1, 1));
        for q in [&a, &b, &a, &b] {
            q.reconcile_once().await;
        }
        // A leases 3 (8 left: 3 above the lower half of 5), B hears of it.
        assert_eq!(a.lease(&key, &TEN, 10), 3);
        a.reconcile_once().await;
        b.reconcile_once().await;
        // Two come back unspent to A; B hears of that too and admits them.
        a.give_back(&key, &TEN, 2);
        a.reconcile_once().await;
        b.reconcile_once().await;
        // (B's first round charged nothing of A's first request: the bound
        // the test above shows.)
        assert_eq!(admitted(&b, &key, 20), 8, "10 - 1 used - 3 leased + 2 given back");
        // A heard of B's seven: nothing is left there either.
        b.reconcile_once().await;
        a.reconcile_once().await;
        assert_eq!(admitted(&a, &key, 20), 0);
        // Giving back to a bucket that is full changes nothing.
        let fresh = bucket();
        a.give_back(&fresh, &TEN, 5);
        assert_eq!(admitted(&a, &fresh, 20), 10);
    }

    #[tokio::test]
    async fn with_the_shared_cache_unreachable_each_instance_enforces_alone_and_says_so() {
        let down: Arc<dyn Cache> = Arc::new(RedisCache::new("redis://127.0.0.1:1").unwrap());
        let (q, gauges) = instance(&down);
        let gauge = gauges.shared;
        gauge.set(1);
        let key = bucket();
        assert_eq!(admitted(&q, &key, 1), 1);
        q.reconcile_once().await;
        assert!(q.alone());
        assert_eq!(gauge.get(), 0);
        // No instance was ever seen: this one takes the whole limit, no more.
        assert_eq!(admitted(&q, &key, 20), 9);
        assert!(q.admit(&key, &TEN).is_err());
    }
}

#[tokio::test]
async fn a_lease_for_the_in_proxy_filter_comes_out_of_the_quota_a_check_counts_in() {
    let q = quota_fixture().await;
    let per_user = Limit { rate: 1, burst: 6 };
    q.set(Limits { per_user, ..DEFAULT_LIMITS }).await;
    let user = "user-1";
    // The filter asks for five of the user's six and is leased the upper
    // half of the burst, three; Checks get the other three.
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User(user), 5).await, 3);
    for _ in 0..3 {
        assert_eq!(q.as_end_user().await.status, 200);
    }
    let refused = q.as_end_user().await;
    assert_eq!(refused.status, 429, "{refused:?}");
    // Nothing is left to lease either, and a lease never overdraws.
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User(user), 10).await, 0);
    assert_eq!(q.f.authorizer.metrics().edge_leased.get(), 3);
    // Leases in turn never take the lower half either: another user's six
    // give three in all, however they are asked for.
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User("user-2"), 1).await, 1);
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User("user-2"), 10).await, 2);
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User("user-2"), 1).await, 0);
    // What the filter gives back unspent, Checks can use.
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User("user-1"), 0).await, 0);
    q.f.authorizer.give_back(&q.f.tenant, Holder::User(user), 2).await;
    for _ in 0..2 {
        assert_eq!(q.as_end_user().await.status, 200);
    }
    assert_eq!(q.as_end_user().await.status, 429);
    assert_eq!(q.f.authorizer.metrics().edge_returned.get(), 2);
    // A burst of one is never leased: its only request is a Check's.
    q.set(Limits { per_user: Limit { rate: 1, burst: 1 }, ..DEFAULT_LIMITS }).await;
    assert_eq!(q.f.authorizer.lease(&q.f.tenant, Holder::User("user-3"), 1).await, 0);
}

#[tokio::test]
async fn with_quotas_off_nothing_is_leased() {
    let store = caas_core::testing::sqlite_store().await;
    let (tenant, _, _) = register(&store, "off@example.com").await;
    let settings = AuthorizerSettings { quotas: false, ..AuthorizerSettings::default() };
    let authorizer = authorizer_on(store, Arc::new(MemoryCache::new()), settings);
    assert_eq!(authorizer.lease(&tenant, Holder::User("user-1"), 5).await, 0);
}
