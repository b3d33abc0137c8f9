//! Quotas in the Check: counted after the credential passed, refused with
//! 429 and the rate-limit headers, per key, per end user and per tenant.

use super::*;
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
