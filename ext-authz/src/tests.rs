//! Unit tests of the Check mapping: built CheckRequests into `check()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use caas_core::bus::LocalBus;
use caas_core::cache::{Cache, MemoryCache, RedisCache};
use caas_core::context::{self, AuthType, ContextSigner, ContextVerifier};
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::{Audience, Claims, JwtKeys};
use caas_core::metrics::AuthMetrics;
use caas_core::secret::Secret;
use caas_core::store::{AuditEntry, NewApiKey, NewSdkSession, Store, WhitelistKind};
use caas_core::validate::{Validator, ValidatorSettings};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

use crate::metrics::GatewayMetrics;
use crate::{Authorizer, AuthorizerSettings};

mod edge;
mod quota;

const SERVICE: &str = "service-secret-service-secret-0001";

fn jwt() -> JwtKeys {
    JwtKeys::new("caas", &Secret::new("jwt-secret-jwt-secret-jwt-secret-0003"), None)
}

/// An authorizer over `store` with the test secrets and a fresh validator.
fn authorizer_on(store: Store, cache: Arc<dyn Cache>, settings: AuthorizerSettings) -> Authorizer {
    let validator = Validator::start(
        store,
        cache,
        Arc::new(LocalBus::new()),
        jwt(),
        ValidatorSettings::default(),
        Arc::new(AuthMetrics::default()),
    );
    Authorizer::new(validator, ContextSigner::new(&Secret::new(SERVICE)), settings, Arc::new(GatewayMetrics::default()))
}

struct Fixture {
    authorizer: Authorizer,
    tenant: String,
    other_tenant: String,
    key: String,
    key_id: String,
    token: String,
    other_token: String,
    dashboard_token: String,
}

async fn register(store: &Store, email: &str) -> (String, String, String) {
    let generated = caas_core::api_key::generate();
    let key = NewApiKey { id: new_id("key"), hash: generated.hash, prefix: generated.display_prefix };
    let tenant = new_id("cl");
    store.register_client(&tenant, "Acme", &new_id("acc"), email, "h", &key, None, unix_now()).await.unwrap();
    (tenant, generated.key, key.id)
}

async fn token(store: &Store, tenant: &str, audience: Audience) -> String {
    let now = unix_now();
    let session_id = new_id("ses");
    let audit = AuditEntry::new(caas_core::store::AuditAction::SessionCreated);
    if audience == Audience::Sdk {
        let (_, hash) = caas_core::refresh_token::generate();
        let new = NewSdkSession {
            session_id: session_id.clone(),
            client_id: tenant.into(),
            user_id: "user-1".into(),
            name: None,
            metadata: None,
            refresh_hash: hash,
            refresh_expires_at: now + 3600,
        };
        store.create_sdk_session(&new, &audit, now).await.unwrap();
    } else {
        store.create_dashboard_session(&session_id, tenant, "user-1", now + 900, &audit, now).await.unwrap();
    }
    jwt().issue(&Claims {
        iss: "caas".into(),
        aud: audience.as_str().into(),
        sub: "user-1".into(),
        tid: tenant.into(),
        sid: session_id,
        jti: new_id("jti"),
        iat: now,
        exp: now + 900,
        nbf: None,
    })
}

async fn fixture_with(settings: AuthorizerSettings, cache: Arc<dyn Cache>) -> Fixture {
    let store = caas_core::testing::sqlite_store().await;
    let (tenant, key, key_id) = register(&store, "a@example.com").await;
    let (other_tenant, _, _) = register(&store, "b@example.com").await;
    let audit = AuditEntry::new(caas_core::store::AuditAction::IpWhitelistUpdated);
    let now = unix_now();
    store.replace_whitelist(WhitelistKind::Ip, &tenant, &["127.0.0.1/32".into()], &audit, now).await.unwrap();
    store
        .replace_whitelist(WhitelistKind::Origin, &tenant, &["https://app.a.example".into()], &audit, now)
        .await
        .unwrap();
    store
        .replace_whitelist(WhitelistKind::Origin, &other_tenant, &["https://app.b.example".into()], &audit, now)
        .await
        .unwrap();
    let token_a = token(&store, &tenant, Audience::Sdk).await;
    let token_b = token(&store, &other_tenant, Audience::Sdk).await;
    let dashboard = token(&store, &tenant, Audience::Dashboard).await;
    let authorizer = authorizer_on(store, cache, settings);
    Fixture {
        authorizer,
        tenant,
        other_tenant,
        key,
        key_id,
        token: token_a,
        other_token: token_b,
        dashboard_token: dashboard,
    }
}

async fn fixture() -> Fixture {
    fixture_with(AuthorizerSettings::default(), Arc::new(MemoryCache::new())).await
}

fn request(policy: Option<&str>, method: &str, path: &str, headers: &[(&str, &str)], peer: &str) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut context_extensions = HashMap::new();
    if let Some(policy) = policy {
        context_extensions.insert("policy".to_string(), policy.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: peer.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest { method: method.into(), path: path.into(), headers, ..Default::default() }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// What a CheckResponse says, flattened for assertions.
#[derive(Debug)]
struct Verdict {
    status: u16,
    set: HashMap<String, String>,
    /// What reaches the service: the request's headers, minus removals, plus sets.
    upstream: HashMap<String, String>,
    removed: Vec<String>,
    response_headers: HashMap<String, String>,
    strip_query: Vec<String>,
    body: serde_json::Value,
}

impl Verdict {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// The context a downstream service would verify.
    fn context(&self, method: &str) -> context::RequestContext {
        ContextVerifier::new(&Secret::new(SERVICE), None)
            .verify(|name| self.upstream.get(name).map(String::as_str), method, unix_now())
            .unwrap()
    }
}

fn verdict(response: CheckResponse) -> Verdict {
    let pairs = |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| -> HashMap<String, String> {
        headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect()
    };
    match response.http_response.unwrap() {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(response.status.unwrap().code, 0);
            for option in &ok.headers {
                assert_eq!(option.append_action, 2, "context headers must be OVERWRITE_IF_EXISTS_OR_ADD");
            }
            Verdict {
                status: 200,
                upstream: HashMap::new(),
                set: pairs(&ok.headers),
                removed: ok.headers_to_remove,
                response_headers: pairs(&ok.response_headers_to_add),
                strip_query: ok.query_parameters_to_remove,
                body: serde_json::Value::Null,
            }
        }
        HttpResponse::DeniedResponse(denied) => {
            assert_ne!(response.status.unwrap().code, 0);
            Verdict {
                status: denied.status.unwrap().code as u16,
                upstream: HashMap::new(),
                set: HashMap::new(),
                removed: Vec::new(),
                response_headers: pairs(&denied.headers),
                strip_query: Vec::new(),
                body: serde_json::from_str(&denied.body).unwrap_or(serde_json::Value::Null),
            }
        }
        HttpResponse::ErrorResponse(_) => panic!("unexpected error response"),
    }
}

async fn check(f: &Fixture, req: CheckRequest) -> Verdict {
    let sent = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| h.headers.clone());
    let mut v = verdict(f.authorizer.check(req).await);
    if v.status == 200 {
        let mut upstream = sent.unwrap_or_default();
        upstream.retain(|name, _| !v.removed.contains(name));
        upstream.extend(v.set.clone());
        v.upstream = upstream;
    }
    v
}

#[tokio::test]
async fn api_key_from_a_whitelisted_ip_gets_signed_context() {
    let f = fixture().await;
    let v = check(
        &f,
        request(
            Some("api_key"),
            "POST",
            "/v1/sdk/session",
            &[
                ("x-api-key", &f.key),
                ("x-request-id", "rid-1"),
                ("x-caas-tenant-id", "cl_evil"),
                ("x-caas-user-id", "u-evil"),
                ("x-caas-admin", "1"),
            ],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
    let ctx = v.context("POST");
    assert_eq!(
        (ctx.tenant_id.as_str(), ctx.key_id.as_str(), ctx.auth_type),
        (f.tenant.as_str(), f.key_id.as_str(), AuthType::ApiKey)
    );
    assert_eq!((ctx.client_ip.as_str(), ctx.request_id.as_str()), ("127.0.0.1", "rid-1"));
    // Removed: the credential, a context field this request has no value
    // for (the client's copy must not survive), any other x-caas-* header.
    // Nothing else: every removal costs Envoy work on every request.
    let mut removed = v.removed.clone();
    removed.sort();
    assert_eq!(removed, ["x-api-key", "x-caas-admin", "x-caas-user-id"]);
    // The client's x-caas-tenant-id is overwritten, never kept.
    assert_eq!(v.set[context::TENANT_ID], f.tenant);
    assert_eq!(v.upstream[context::TENANT_ID], f.tenant);
    assert!(!v.upstream.contains_key(context::USER_ID));
    // Envoy's request id is on the request already: signed, not set again.
    assert!(!v.set.contains_key(context::REQUEST_ID));
    // Signed for this method only.
    assert!(
        ContextVerifier::new(&Secret::new(SERVICE), None)
            .verify(|n| v.set.get(n).map(String::as_str), "DELETE", unix_now())
            .is_err()
    );
}

#[tokio::test]
async fn api_key_refusals() {
    let f = fixture().await;
    let at = |headers: Vec<(&'static str, String)>, path: &'static str, peer: &'static str| {
        let headers: Vec<(&str, String)> = headers;
        let owned: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(Some("api_key"), "POST", path, &owned, peer)
    };
    let key = f.key.clone();
    let cases = [
        (at(vec![("x-api-key", key.clone())], "/v1/sdk/session", "127.0.0.2"), 403, "ip_not_allowed"),
        // X-Forwarded-For naming a whitelisted address changes nothing without trusted hops.
        (
            at(
                vec![("x-api-key", key.clone()), ("x-forwarded-for", "127.0.0.1".into())],
                "/v1/sdk/session",
                "127.0.0.2",
            ),
            403,
            "ip_not_allowed",
        ),
        (at(vec![], "/v1/sdk/session", "127.0.0.1"), 401, "missing_credentials"),
        (at(vec![], "/v1/sdk/session?api_key=x", "127.0.0.1"), 400, "credential_in_query"),
        (at(vec![("x-api-key", key[..20].into())], "/v1/sdk/session", "127.0.0.1"), 401, "invalid_api_key"),
        (
            at(vec![("x-api-key", caas_core::api_key::generate().key)], "/v1/sdk/session", "127.0.0.1"),
            401,
            "invalid_api_key",
        ),
        (at(vec![("x-api-key", format!("{key},{key}"))], "/v1/sdk/session", "127.0.0.1"), 401, "invalid_api_key"),
    ];
    for (req, status, code) in cases {
        let v = check(&f, req).await;
        assert_eq!((v.status, v.code()), (status, code), "{v:?}");
        assert_eq!(v.body["error"]["request_id"].as_str().map(|s| !s.is_empty()), Some(true));
    }
    let v = check(
        &f,
        request(
            Some("api_key"),
            "POST",
            &format!("/v1/sdk/session?k={}", f.key),
            &[("x-api-key", &f.key)],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.code(), "credential_in_query");
    let v = check(&f, request(Some("api_key"), "POST", "/v1/sdk/session", &[], "127.0.0.1")).await;
    assert!(v.response_headers["www-authenticate"].starts_with("Bearer"));
    assert_eq!(v.response_headers["content-type"], "application/json");
}

#[tokio::test]
async fn trusted_hops_take_the_address_that_many_places_left_of_the_peer() {
    let f =
        fixture_with(AuthorizerSettings { trusted_proxy_hops: 1, ..Default::default() }, Arc::new(MemoryCache::new()))
            .await;
    // Envoy appended the peer (127.0.0.9, the trusted proxy); the client is the one before.
    let v = check(
        &f,
        request(
            Some("api_key"),
            "POST",
            "/x",
            &[("x-api-key", &f.key), ("x-forwarded-for", "6.6.6.6, 127.0.0.1, 127.0.0.9")],
            "127.0.0.9",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.context("POST").client_ip, "127.0.0.1");
    // The leftmost entry (client-written) is never used.
    let v = check(
        &f,
        request(
            Some("api_key"),
            "POST",
            "/x",
            &[("x-api-key", &f.key), ("x-forwarded-for", "127.0.0.1, 6.6.6.6, 127.0.0.9")],
            "127.0.0.9",
        ),
    )
    .await;
    assert_eq!((v.status, v.code()), (403, "ip_not_allowed"));
    let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "127.0.0.9")).await;
    assert_eq!((v.status, v.code()), (403, "client_ip_unknown"));
}

#[tokio::test]
async fn end_user_tokens_origins_and_cors() {
    let f = fixture().await;
    let bearer = format!("Bearer {}", f.token);
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/v1/conversations",
            &[("authorization", &bearer), ("origin", "https://app.a.example")],
            "127.0.0.5",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
    let ctx = v.context("GET");
    assert_eq!(
        (ctx.tenant_id.as_str(), ctx.user_id.as_str(), ctx.auth_type),
        (f.tenant.as_str(), "user-1", AuthType::Jwt)
    );
    assert_eq!(ctx.client_ip, "", "end-user routes do not carry the address");
    assert_eq!(v.response_headers["access-control-allow-origin"], "https://app.a.example");
    assert_eq!(v.response_headers["vary"], "Origin");
    assert!(v.removed.contains(&"authorization".to_string()));

    // Mobile apps send no Origin: allowed, no CORS headers.
    let v =
        check(&f, request(Some("end_user"), "GET", "/v1/conversations", &[("authorization", &bearer)], "127.0.0.5"))
            .await;
    assert_eq!(v.status, 200);
    assert!(!v.response_headers.contains_key("access-control-allow-origin"));

    // Tenant A's token with an Origin only tenant B allows.
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/v1/conversations",
            &[("authorization", &bearer), ("origin", "https://app.b.example")],
            "127.0.0.5",
        ),
    )
    .await;
    assert_eq!((v.status, v.code()), (403, "origin_not_allowed"));
    assert!(!v.response_headers.contains_key("access-control-allow-origin"));
    let b = format!("Bearer {}", f.other_token);
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/v1/conversations",
            &[("authorization", &b), ("origin", "https://app.b.example")],
            "127.0.0.5",
        ),
    )
    .await;
    assert_eq!(v.status, 200);
    assert_eq!(v.context("GET").tenant_id, f.other_tenant);
}

#[tokio::test]
async fn bad_bearer_tokens() {
    let f = fixture().await;
    let dashboard = format!("Bearer {}", f.dashboard_token);
    let sdk = format!("Bearer {}", f.token);
    let duplicate = format!("Bearer {},Bearer {}", f.token, f.token);
    let oversized = format!("Bearer {}", "a".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("end_user", dashboard.clone(), 401, "wrong_audience"),
        ("dashboard", sdk.clone(), 401, "wrong_audience"),
        ("end_user", duplicate, 401, "malformed_token"),
        ("end_user", oversized, 401, "malformed_token"),
        ("end_user", f.token.clone(), 401, "malformed_token"),
        ("end_user", format!("Basic {}", f.token), 401, "malformed_token"),
        ("end_user", "Bearer ".into(), 401, "malformed_token"),
        ("end_user", "Bearer a.b.c".into(), 401, "malformed_token"),
    ];
    for (policy, authorization, status, code) in cases {
        let v =
            check(&f, request(Some(policy), "GET", "/v1/x", &[("authorization", &authorization)], "127.0.0.1")).await;
        assert_eq!((v.status, v.code()), (status, code), "{policy} {}", &authorization[..authorization.len().min(40)]);
    }
    let v = check(
        &f,
        request(Some("dashboard"), "GET", "/v1/client/profile", &[("authorization", &dashboard)], "127.0.0.1"),
    )
    .await;
    assert_eq!(v.status, 200);
    assert_eq!(v.context("GET").auth_type, AuthType::Dashboard);
}

#[tokio::test]
async fn websocket_tokens_from_subprotocol_or_query() {
    let f = fixture().await;
    let protocol = format!("caas.v1, caas.bearer.{}", f.token);
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/v1/ws",
            &[("upgrade", "websocket"), ("sec-websocket-protocol", &protocol)],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            &format!("/v1/ws?token={}", f.token),
            &[("upgrade", "websocket")],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.strip_query, vec!["token".to_string()], "the token must not reach the socket service's URL");
    // Outside an upgrade, a query token is not a credential.
    let v =
        check(&f, request(Some("end_user"), "GET", &format!("/v1/conversations?token={}", f.token), &[], "127.0.0.1"))
            .await;
    assert_eq!((v.status, v.code()), (401, "missing_credentials"));
}

#[tokio::test]
async fn preflights_are_answered_without_opening_routes() {
    let f = fixture().await;
    let headers = [
        ("origin", "https://anything.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "Authorization, Content-Type, X-Evil"),
    ];
    let v = check(&f, request(Some("end_user"), "OPTIONS", "/v1/messages", &headers, "127.0.0.1")).await;
    assert_eq!(v.status, 204, "{v:?}");
    assert_eq!(v.response_headers["access-control-allow-origin"], "https://anything.example");
    assert_eq!(v.response_headers["access-control-allow-headers"], "authorization, content-type");
    assert!(v.response_headers["access-control-allow-methods"].contains("POST"));
    let v = check(&f, request(Some("api_key"), "OPTIONS", "/v1/sdk/session", &headers, "127.0.0.1")).await;
    assert_eq!((v.status, v.code()), (403, "cors_not_allowed"));
    // An OPTIONS without the preflight headers is an ordinary request.
    let v = check(&f, request(Some("end_user"), "OPTIONS", "/v1/messages", &[], "127.0.0.1")).await;
    assert_eq!(v.status, 401);
}

#[tokio::test]
async fn routes_without_a_policy_are_denied() {
    let f = fixture().await;
    for policy in [None, Some("admin"), Some("")] {
        let v = check(
            &f,
            request(policy, "GET", "/v1/x", &[("authorization", &format!("Bearer {}", f.token))], "127.0.0.1"),
        )
        .await;
        assert_eq!((v.status, v.code()), (500, "route_policy_missing"));
    }
    let v = check(
        &f,
        request(
            Some("public"),
            "POST",
            "/v1/client/register",
            &[("authorization", "Bearer junk"), ("x-caas-user-id", "u")],
            "127.0.0.3",
        ),
    )
    .await;
    assert_eq!(v.status, 200);
    let ctx = v.context("POST");
    assert_eq!((ctx.auth_type, ctx.client_ip.as_str(), ctx.tenant_id.as_str()), (AuthType::Anonymous, "127.0.0.3", ""));
    assert!(v.removed.contains(&"authorization".to_string()) && v.removed.contains(&context::USER_ID.to_string()));
}

#[tokio::test]
async fn shadow_mode_allows_but_without_context() {
    let f =
        fixture_with(AuthorizerSettings { enforce: false, ..Default::default() }, Arc::new(MemoryCache::new())).await;
    let v = check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/v1/x",
            &[("authorization", "Bearer nope"), ("x-caas-tenant-id", "cl_evil")],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.status, 200);
    assert!(v.set.is_empty());
    assert_eq!(v.removed, [context::TENANT_ID], "the client's context header is removed");
    assert!(v.upstream.keys().all(|k| !k.starts_with("x-caas-")));
    assert!(!v.removed.contains(&"authorization".to_string()), "downstream still validates in shadow mode");
    let shadow =
        f.authorizer.metrics().requests.get_or_create(&[("policy", "end_user"), ("decision", "shadow_deny")]).get();
    assert_eq!(shadow, 1);
    // Valid requests get context, and keep their credential for services
    // that still validate it themselves (a migration moves them one by one).
    let bearer = format!("Bearer {}", f.token);
    let v = check(&f, request(Some("end_user"), "GET", "/v1/x", &[("authorization", &bearer)], "127.0.0.1")).await;
    assert_eq!(v.context("GET").tenant_id, f.tenant);
    assert_eq!(v.upstream.get("authorization"), Some(&bearer), "{v:?}");
    let v = check(&f, request(Some("api_key"), "POST", "/v1/sdk/session", &[("x-api-key", &f.key)], "127.0.0.1")).await;
    assert_eq!(v.context("POST").tenant_id, f.tenant);
    assert_eq!(v.upstream.get("x-api-key"), Some(&f.key));
    let upgrade = format!("/v1/ws?token={}", f.token);
    let v = check(&f, request(Some("end_user"), "GET", &upgrade, &[("upgrade", "websocket")], "127.0.0.1")).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert!(v.strip_query.is_empty(), "a socket's query token stays in shadow mode");
}

#[tokio::test]
async fn a_slow_dependency_is_a_denial_at_the_deadline() {
    // A "Redis" that accepts connections and never answers.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = blackhole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            held.push(socket);
        }
    });
    let cache: Arc<dyn Cache> = Arc::new(RedisCache::new(&format!("redis://{addr}")).unwrap());
    let f =
        fixture_with(AuthorizerSettings { deadline: Duration::from_millis(100), ..Default::default() }, cache).await;
    let started = std::time::Instant::now();
    let v = check(&f, request(Some("api_key"), "POST", "/v1/sdk/session", &[("x-api-key", &f.key)], "127.0.0.1")).await;
    assert_eq!((v.status, v.code()), (503, "auth_timeout"));
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn decisions_are_counted() {
    let f = fixture().await;
    check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "127.0.0.2")).await;
    check(
        &f,
        request(
            Some("end_user"),
            "GET",
            "/x",
            &[("authorization", &format!("Bearer {}", f.token)), ("origin", "https://evil.example")],
            "127.0.0.1",
        ),
    )
    .await;
    check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "127.0.0.1")).await;
    let m = f.authorizer.metrics();
    assert_eq!(m.ip_whitelist_rejections.get(), 1);
    assert_eq!(m.origin_rejections.get(), 1);
    assert_eq!(m.requests.get_or_create(&[("policy", "api_key"), ("decision", "allow")]).get(), 1);
    assert_eq!(m.auth_failures.get_or_create(&[("policy", "api_key"), ("reason", "ip_not_allowed")]).get(), 1);
}

#[tokio::test]
async fn without_a_route_policy_the_path_table_decides() {
    let settings =
        AuthorizerSettings { policy_table: Some(crate::policy::PolicyTable::builtin()), ..Default::default() };
    let f = fixture_with(settings, Arc::new(MemoryCache::new())).await;
    let v = check(&f, request(None, "POST", "/v1/sdk/session", &[("x-api-key", &f.key)], "127.0.0.1")).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.context("POST").auth_type, AuthType::ApiKey);
    let bearer = format!("Bearer {}", f.token);
    let v =
        check(&f, request(None, "GET", "/v1/messages?conversation_id=c", &[("authorization", &bearer)], "127.0.0.1"))
            .await;
    assert_eq!(v.context("GET").auth_type, AuthType::Jwt);
    // A dashboard route by path needs a dashboard token.
    let v = check(&f, request(None, "GET", "/v1/client/profile", &[("authorization", &bearer)], "127.0.0.1")).await;
    assert_eq!((v.status, v.code()), (401, "wrong_audience"));
    // Paths the table does not know are denied.
    for path in ["/api/v1/auth/internal/validate", "/", "/v1/unknown"] {
        let v = check(&f, request(None, "POST", path, &[("authorization", &bearer)], "127.0.0.1")).await;
        assert_eq!((v.status, v.code()), (500, "route_policy_missing"), "{path}");
    }
    // A policy the route declares wins over the table.
    let v = check(&f, request(Some("api_key"), "GET", "/v1/conversations", &[("authorization", &bearer)], "127.0.0.1"))
        .await;
    assert_eq!((v.status, v.code()), (401, "missing_credentials"));
}

#[tokio::test]
async fn paths_another_hop_could_route_elsewhere_are_refused() {
    let settings =
        AuthorizerSettings { policy_table: Some(crate::policy::PolicyTable::builtin()), ..Default::default() };
    let f = fixture_with(settings, Arc::new(MemoryCache::new())).await;
    let bearer = format!("Bearer {}", f.token);
    // An end-user token on a path that starts like an end-user route but
    // could be resolved to a dashboard route by a hop that normalizes later.
    for path in [
        "/v1/ws/../client/api-keys",
        "/v1/conversations/%2e%2e/client/api-keys",
        "/v1/messages/..%2f..%2fclient/api-keys",
        "/v1//client/api-keys",
        "/v1/ws/./x",
        "/v1/ws\\..\\client",
    ] {
        for policy in [None, Some("end_user")] {
            let v = check(&f, request(policy, "GET", path, &[("authorization", &bearer)], "127.0.0.1")).await;
            assert_eq!((v.status, v.code()), (400, "path_not_canonical"), "{path} {policy:?}");
        }
    }
    // Encoded separators in the query are the query's business.
    let v = check(
        &f,
        request(
            None,
            "GET",
            "/v1/messages?conversation_id=c&next=%2F..%2F",
            &[("authorization", &bearer)],
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(v.status, 200, "{v:?}");
}

#[tokio::test]
async fn with_export_on_every_allowed_request_goes_on_with_the_checks_traceparent() {
    let mut f = fixture().await;
    let bearer = format!("Bearer {}", f.token);
    let get = |headers: Vec<(&'static str, String)>| {
        let mut all = vec![("authorization", bearer.clone())];
        all.extend(headers);
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(Some("end_user"), "GET", "/v1/conversations", &pairs, "127.0.0.1")
    };
    // Export off: nothing is added to the request.
    let v = check(&f, get(vec![])).await;
    assert_eq!(v.status, 200);
    assert!(!v.set.contains_key("traceparent"), "{v:?}");

    f.authorizer =
        f.authorizer.with_exporter(Some(caas_runtime::otlp::SpanExporter::start("ext-authz", "http://127.0.0.1:9")));
    let parse = |v: &Verdict| caas_runtime::trace::TraceParent::parse(&v.set["traceparent"]).unwrap();
    // The caller's trace continues, with this Check as the parent.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let v = check(&f, get(vec![("traceparent", caller.into())])).await;
    let passed = parse(&v);
    assert_eq!(passed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(passed.parent_span_id, "00f067aa0ba902b7");
    assert!(passed.sampled);
    // Without one, the Check starts a trace (and a caller's tracestate,
    // which belongs to no trace continued here, is dropped); a caller's
    // "not sampled" stays so.
    let v = check(&f, get(vec![("tracestate", "vendor=x".into())])).await;
    assert_eq!(parse(&v).trace_id.len(), 32);
    assert!(v.removed.contains(&"tracestate".to_string()), "{v:?}");
    let v = check(&f, get(vec![("traceparent", caller.into()), ("tracestate", "vendor=x".into())])).await;
    assert!(!v.removed.contains(&"tracestate".to_string()), "{v:?}");
    let v = check(&f, get(vec![("traceparent", caller.replace("-01", "-00"))])).await;
    assert!(!parse(&v).sampled);
    // A refusal carries no traceparent (nothing goes on).
    let v = check(&f, request(Some("end_user"), "GET", "/v1/conversations", &[], "127.0.0.1")).await;
    assert_eq!(v.status, 401);
    assert!(v.set.is_empty());
}

/// Every refusal the gateway (or a service, for its context) can answer,
/// listed by exhaustive matches: a new variant does not compile until it is
/// added here, and then the test wants it documented.
fn every_refusal_code() -> Vec<(&'static str, u16)> {
    use crate::check::Reason;
    use caas_core::context::ContextError;
    use caas_core::jwt::TokenError;
    use caas_core::validate::Denial;
    let tokens = [
        TokenError::Malformed,
        TokenError::TooLong,
        TokenError::AlgorithmNotAllowed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::WrongIssuer,
    ];
    let mut denials = vec![
        Denial::MissingCredentials,
        Denial::InvalidApiKey,
        Denial::ApiKeyRevoked,
        Denial::ApiKeyExpired,
        Denial::SessionRevoked,
        Denial::IpNotAllowed,
        Denial::OriginNotAllowed,
        Denial::Unavailable,
    ];
    denials.extend(tokens.map(Denial::Token));
    let mut reasons: Vec<Reason> = denials.into_iter().map(Reason::Denied).collect();
    reasons.extend([
        Reason::CredentialInQuery,
        Reason::PolicyMissing,
        Reason::PathNotCanonical,
        Reason::ClientIpUnknown,
        Reason::DeadlineExceeded,
        Reason::PreflightNotAllowed,
        Reason::TooManyFailures { retry_after: 60 },
        Reason::RateLimited(caas_rules::quota::Throttle {
            scope: caas_rules::quota::Scope::Key,
            limit: caas_rules::quota::DEFAULT_LIMITS.per_key,
            retry_after: 1,
        }),
    ]);
    for reason in &reasons {
        match reason {
            Reason::Denied(
                Denial::MissingCredentials
                | Denial::InvalidApiKey
                | Denial::ApiKeyRevoked
                | Denial::ApiKeyExpired
                | Denial::SessionRevoked
                | Denial::IpNotAllowed
                | Denial::OriginNotAllowed
                | Denial::Unavailable,
            )
            | Reason::CredentialInQuery
            | Reason::PolicyMissing
            | Reason::PathNotCanonical
            | Reason::ClientIpUnknown
            | Reason::DeadlineExceeded
            | Reason::PreflightNotAllowed
            | Reason::TooManyFailures { .. }
            | Reason::RateLimited(_) => {}
            Reason::Denied(Denial::Token(token)) => match token {
                TokenError::Malformed
                | TokenError::TooLong
                | TokenError::AlgorithmNotAllowed
                | TokenError::BadSignature
                | TokenError::Expired
                | TokenError::NotYetValid
                | TokenError::WrongAudience
                | TokenError::WrongIssuer => {}
            },
        }
    }
    let mut codes: Vec<(&'static str, u16)> = reasons.iter().map(|r| (r.code(), r.status())).collect();
    for error in [ContextError::Missing, ContextError::Malformed, ContextError::BadSignature, ContextError::Expired] {
        match error {
            ContextError::Missing | ContextError::Malformed | ContextError::BadSignature | ContextError::Expired => {}
        }
        codes.push((error.code(), 401));
    }
    codes.sort();
    codes.dedup();
    codes
}

#[test]
fn every_refusal_code_is_documented_with_its_status() {
    let guide = include_str!("../../docs/TROUBLESHOOTING_AUTH.md");
    let reference = include_str!("../../docs/API_REFERENCE.md");
    for (code, status) in every_refusal_code() {
        let row = guide.lines().find(|l| l.starts_with('|') && l.contains(&format!("`{code}`")));
        let row = row.unwrap_or_else(|| panic!("{code} is not in TROUBLESHOOTING_AUTH.md's table"));
        assert!(row.contains(&format!("| {status} |")), "{code}: the guide's table does not say {status}: {row}");
        assert!(guide.contains(&format!("### `{code}`")) || row.contains("](#"), "{code} has no section in the guide");
        assert!(reference.contains(&format!("`{code}`")), "{code} is not in API_REFERENCE.md");
    }
}

#[tokio::test]
async fn an_address_sending_made_up_keys_is_refused_before_any_lookup() {
    let settings = AuthorizerSettings { failed_auth_limit: 5, ..Default::default() };
    let f = fixture_with(settings, Arc::new(MemoryCache::new())).await;
    let honest = || request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "127.0.0.1");
    assert_eq!(check(&f, honest()).await.status, 200);
    let reads = || f.authorizer.validator().metrics().db_reads.get();
    let before = reads();
    for _ in 0..5 {
        let forged = caas_core::api_key::generate().key;
        let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &forged)], "203.0.113.7")).await;
        assert_eq!((v.status, v.code()), (401, "invalid_api_key"));
    }
    assert_eq!(reads(), before + 5);
    for _ in 0..20 {
        let forged = caas_core::api_key::generate().key;
        let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &forged)], "203.0.113.7")).await;
        assert_eq!((v.status, v.code()), (429, "too_many_failures"));
        let retry_after: u32 = v.response_headers["retry-after"].parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(reads(), before + 5, "a refused address costs no database read");
    // Even a real key from that address waits out the window; a bad token too.
    let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "203.0.113.7")).await;
    assert_eq!(v.code(), "too_many_failures");
    // Other addresses, honest or not, are not affected; public routes neither.
    assert_eq!(check(&f, honest()).await.status, 200);
    let forged = caas_core::api_key::generate().key;
    let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &forged)], "203.0.113.8")).await;
    assert_eq!(v.code(), "invalid_api_key");
    assert_eq!(check(&f, request(Some("public"), "GET", "/x", &[], "203.0.113.7")).await.status, 200);
    let m = f.authorizer.metrics();
    assert_eq!(m.auth_failures.get_or_create(&[("policy", "api_key"), ("reason", "too_many_failures")]).get(), 21);
}

#[tokio::test]
async fn honest_failures_and_forged_tokens_are_told_apart() {
    let settings = AuthorizerSettings { failed_auth_limit: 3, ..Default::default() };
    let f = fixture_with(settings, Arc::new(MemoryCache::new())).await;
    let bearer = |token: &str| format!("Bearer {token}");
    let at = |auth: &str, peer: &str| request(Some("end_user"), "GET", "/x", &[("authorization", auth)], peer);
    // Missing credentials, wrong audience and whitelist refusals are not guesses.
    for _ in 0..10 {
        assert_eq!(
            check(&f, request(Some("api_key"), "POST", "/x", &[], "127.0.0.9")).await.code(),
            "missing_credentials"
        );
        assert_eq!(check(&f, at(&bearer(&f.dashboard_token), "127.0.0.9")).await.code(), "wrong_audience");
        let v = check(&f, request(Some("api_key"), "POST", "/x", &[("x-api-key", &f.key)], "127.0.0.9")).await;
        assert_eq!(v.code(), "ip_not_allowed");
    }
    // A token signed with another secret is; IPv6 addresses count per /64.
    let mut forged = f.token.clone();
    forged.push('x');
    for peer in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
        assert_eq!(check(&f, at(&bearer(&forged), peer)).await.code(), "bad_signature");
    }
    assert_eq!(check(&f, at(&bearer(&f.token), "2001:db8::ffff")).await.code(), "too_many_failures");
    assert_eq!(check(&f, at(&bearer(&f.token), "2001:db8:0:1::1")).await.status, 200);
}

/// With EXT_AUTHZ_CALLER_TOKEN set, a Check over gRPC without it (or with
/// another) gets no decision at all, let alone signed context; with it, the
/// usual answer.
#[tokio::test]
async fn checks_without_the_caller_token_are_refused_over_grpc() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let token = "c".repeat(40);
    let settings =
        AuthorizerSettings { caller_token: Some(Secret::new(token.clone())), ..AuthorizerSettings::default() };
    let store = caas_core::testing::sqlite_store().await;
    let authorizer = Arc::new(authorizer_on(store.clone(), Arc::new(MemoryCache::new()), settings));
    let metrics = authorizer.metrics().clone();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let backends = caas_core::testing::local_backends(store);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(grpc, ops, authorizer, backends, async move {
        let _ = stopped.await;
    }));
    let mut client = AuthorizationClient::connect(format!("http://{addr}")).await.unwrap();
    let public = || request(Some("public"), "GET", "/v1/anything", &[], "203.0.113.9");
    let with = |value: Option<&str>| {
        let mut call = tonic::Request::new(public());
        if let Some(value) = value {
            call.metadata_mut().insert(crate::CALLER_TOKEN_METADATA, value.parse().unwrap());
        }
        call
    };
    for presented in [None, Some("wrong"), Some(&token[..39])] {
        let refused = client.check(with(presented)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{presented:?}");
    }
    assert_eq!(metrics.unknown_callers.get(), 3);
    let answered = client.check(with(Some(&token))).await.unwrap().into_inner();
    assert_eq!(answered.status.map(|s| s.code), Some(0), "the public route is allowed");
    let _ = stop.send(());
    let _ = server.await;
}
