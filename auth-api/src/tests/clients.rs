use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode};
use caas_core::context::{self, AuthType};
use caas_core::id::unix_now;
use serde_json::json;

use super::harness::*;

const REGISTER: &str = "/api/v1/auth/client/register";
const LOGIN: &str = "/api/v1/auth/client/login";

#[tokio::test]
async fn register_returns_the_key_once_and_stores_only_its_hash() {
    let h = Harness::sqlite().await;
    let r = h
        .send(post(
            REGISTER,
            json!({"name": " Acme ", "email": "Ada@Example.com", "password": "correct horse battery"}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["name"], "Acme");
    assert_eq!(r.body["email"], "ada@example.com");
    assert_eq!(r.body["api_key"]["role"], "primary");
    let key = r.body["api_key"]["key"].as_str().unwrap();
    assert!(key.starts_with(r.body["api_key"]["prefix"].as_str().unwrap()));
    let hash = caas_core::api_key::parse(key).unwrap();
    assert!(h.store.api_key_by_hash(&hash).await.unwrap().is_some());

    let again = h
        .send(post(REGISTER, json!({"name": "Other", "email": "ada@example.com", "password": "correct horse battery"})))
        .await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "email_taken"));
}

#[tokio::test]
async fn register_names_the_bad_field() {
    let h = Harness::sqlite().await;
    let cases = [
        (json!({"name": "A", "email": "not-an-email", "password": "correct horse battery"}), "invalid_email", "email"),
        (json!({"name": "A", "email": "a@example.com", "password": "short"}), "invalid_password", "password"),
        (json!({"name": "  ", "email": "a@example.com", "password": "correct horse battery"}), "invalid_name", "name"),
        (
            json!({"name": "A".repeat(101), "email": "a@example.com", "password": "correct horse battery"}),
            "invalid_name",
            "name",
        ),
    ];
    for (body, code, field) in cases {
        let r = h.send(post(REGISTER, body)).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, code), "{}", r.text);
        assert_eq!(r.body["error"]["field"], field);
    }
}

#[tokio::test]
async fn malformed_bodies_get_codes_and_never_echo_values() {
    let h = Harness::sqlite().await;
    let r = h.send(raw(Method::POST, REGISTER, Some("application/json"), "{not json")).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    let r = h
        .send(post(
            REGISTER,
            json!({"name": "A", "email": "a@example.com", "password": "correct horse battery", "admin": true}),
        ))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("unknown field `admin`"), "{}", r.text);
    let r = h.send(post(REGISTER, json!({"name": "A", "email": "a@example.com"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"));
    // A wrongly typed secret is named, not shown.
    let r =
        h.send(post(REGISTER, json!({"name": "A", "email": "a@example.com", "password": 987_654_321_123_u64}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"));
    assert_eq!(r.body["error"]["field"], "password");
    assert!(!r.text.contains("987654321123"), "{}", r.text);
    let r = h.send(raw(Method::POST, REGISTER, None, r#"{"name":"A"}"#)).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let huge = json!({"name": "A", "email": "a@example.com", "password": "x".repeat(70_000)});
    let r = h.send(post(REGISTER, huge)).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    // A body that is JSON but not an object: said plainly, no field named,
    // and a string's value (it could be a password) not echoed.
    for body in [json!(null), json!("hunter2-hunter2"), json!([1, 2])] {
        let r = h.send(post(REGISTER, body)).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"), "{}", r.text);
        assert_eq!(r.body["error"]["message"], "request body must be a JSON object with the documented fields");
        assert!(r.body["error"].get("field").is_none(), "{}", r.text);
        assert!(!r.text.contains("hunter2"), "{}", r.text);
    }
}

#[tokio::test]
async fn registrations_are_rate_limited_per_ip() {
    let mut config = config();
    config.api.registrations_per_ip_per_hour = 2;
    let h = Harness::sqlite_with(config).await;
    for i in 0..2 {
        h.register(&format!("r{i}@example.com")).await;
    }
    let r = h
        .send(post(REGISTER, json!({"name": "A", "email": "r9@example.com", "password": "correct horse battery"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(r.headers.get("retry-after").is_some());
    // Another address is not affected.
    let mut other =
        post(REGISTER, json!({"name": "A", "email": "r9@example.com", "password": "correct horse battery"}));
    other.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 9], 1))));
    assert_eq!(h.send(other).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn login_issues_dashboard_tokens_and_never_says_which_part_was_wrong() {
    let h = Harness::sqlite().await;
    let who = h.register("login@example.com").await;
    let ctx = h.dashboard(&who).await;
    assert_eq!(ctx.tenant_id, who.client_id);
    let r = h.send(post(LOGIN, json!({"email": "login@example.com", "password": "correct horse battery"}))).await;
    assert_eq!((r.body["token_type"].as_str(), r.body["expires_in"].as_i64()), (Some("Bearer"), Some(900)));
    // A dashboard token is not an end-user token.
    let verdict = h.token_verdict(r.body["access_token"].as_str().unwrap()).await;
    assert_eq!((verdict.status, verdict.code()), (StatusCode::UNAUTHORIZED, "wrong_audience"));

    let wrong = h.send(post(LOGIN, json!({"email": "login@example.com", "password": "wrong horse battery"}))).await;
    let unknown = h.send(post(LOGIN, json!({"email": "nobody@example.com", "password": "wrong horse battery"}))).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.status, unknown.status);
    let actions: Vec<String> =
        h.store.audit_log(&who.client_id, 10).await.unwrap().into_iter().map(|a| a.action).collect();
    assert!(actions.contains(&"client.login".into()) && actions.contains(&"client.login_failed".into()), "{actions:?}");
}

#[tokio::test]
async fn repeated_login_failures_are_throttled_per_email_and_per_ip() {
    let mut config = config();
    config.api.login_max_failures_per_ip = 8;
    let h = Harness::sqlite_with(config).await;
    let who = h.register("throttle@example.com").await;
    for _ in 0..5 {
        let r = h.send(post(LOGIN, json!({"email": who.email, "password": "wrong horse battery"}))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is refused until the window passes.
    let r = h.send(post(LOGIN, json!({"email": who.email, "password": "correct horse battery"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    // Unknown emails throttle the same way (no hint that they do not exist).
    for i in 0..3 {
        h.send(post(LOGIN, json!({"email": format!("ghost{i}@example.com"), "password": "wrong horse battery"}))).await;
    }
    // 8 failures from this IP: every email is now refused from here.
    let other = h.register("other@example.com").await;
    let r = h.send(post(LOGIN, json!({"email": other.email, "password": "correct horse battery"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
}

#[tokio::test]
async fn dashboard_routes_trust_only_signed_context() {
    let h = Harness::sqlite().await;
    let who = h.register("ctx@example.com").await;
    let ctx = h.dashboard(&who).await;
    let r = h.send(get("/api/v1/auth/client/profile")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_context"));
    assert!(r.headers.get("www-authenticate").is_some());

    // Bare context headers, as a client would send them.
    let mut bare = get("/api/v1/auth/client/profile");
    bare.headers_mut().insert(context::TENANT_ID, who.client_id.parse().unwrap());
    bare.headers_mut().insert(context::AUTH_TYPE, "dashboard".parse().unwrap());
    assert_eq!(h.send(bare).await.status, StatusCode::UNAUTHORIZED);

    // A signed context with one header changed afterwards.
    let mut forged = h.signed(Method::GET, "/api/v1/auth/client/profile", &ctx, None);
    forged.headers_mut().insert(context::TENANT_ID, "cl_someone_else".parse().unwrap());
    let r = h.send(forged).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_context"));

    // Signed for another method (replayed onto a write).
    let mut replayed = h.signed(Method::GET, "/api/v1/auth/client/ip-whitelist", &ctx, None);
    *replayed.method_mut() = Method::PUT;
    assert_eq!(h.send(replayed).await.status, StatusCode::UNAUTHORIZED);

    // Older than 60 s.
    let mut old = h.signed(Method::GET, "/api/v1/auth/client/profile", &ctx, None);
    let ts = unix_now() - 61;
    for (name, value) in h.signer.headers(&ctx, "GET", ts) {
        old.headers_mut().insert(name, value.parse().unwrap());
    }
    let r = h.send(old).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "context_expired"));

    // An API-key context is the wrong credential for the dashboard.
    let r = h.send(h.signed(Method::GET, "/api/v1/auth/client/profile", &h.api_key_context(&who), None)).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "wrong_credential_type"));

    let r = h.send(h.signed(Method::GET, "/api/v1/auth/client/profile", &ctx, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["client_id"], who.client_id.as_str());
    assert_eq!(r.body["api_keys"][0]["id"], who.key_id.as_str());
    assert!(!r.text.contains(&who.key), "profile must never show a key");
    assert!(!r.text.contains(&caas_core::api_key::hash_key(&who.key)), "nor its hash");
}

#[tokio::test]
async fn key_rotation_grace_and_revocation() {
    let h = Harness::sqlite().await;
    let who = h.register("keys@example.com").await;
    let ctx = h.dashboard(&who).await;
    let put = h
        .send(h.signed(Method::PUT, "/api/v1/auth/client/ip-whitelist", &ctx, Some(json!({"cidrs": ["127.0.0.1"]}))))
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let check = |key: String| {
        let h = &h;
        async move { h.internal("/api/v1/auth/internal/validate-api-key", json!({"api_key": key, "ip": "127.0.0.1"})).await }
    };

    let r = h
        .send(h.signed(Method::POST, "/api/v1/auth/client/api-keys/rotate", &ctx, Some(json!({"grace_seconds": 3600}))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let second = r.body["key"].as_str().unwrap().to_string();
    let second_id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["previous_key"]["id"], who.key_id.as_str());
    assert!(r.body["previous_key"]["expires_at"].as_i64().unwrap() > unix_now());
    assert_eq!(check(who.key.clone()).await.status, StatusCode::OK, "old key valid during grace");
    assert_eq!(check(second.clone()).await.status, StatusCode::OK);

    // No body: default grace. A third key revokes the oldest at once.
    let r = h.send(h.signed(Method::POST, "/api/v1/auth/client/api-keys/rotate", &ctx, None)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let third = r.body["key"].as_str().unwrap().to_string();
    assert_eq!(r.body["revoked_key_ids"], json!([who.key_id]));
    let v = check(who.key.clone()).await;
    assert_eq!((v.status, v.code()), (StatusCode::UNAUTHORIZED, "api_key_revoked"));
    let list = h.send(h.signed(Method::GET, "/api/v1/auth/client/api-keys", &ctx, None)).await;
    assert_eq!(list.body["api_keys"].as_array().unwrap().len(), 2);

    // Zero grace: the previous primary stops working now.
    let r = h
        .send(h.signed(Method::POST, "/api/v1/auth/client/api-keys/rotate", &ctx, Some(json!({"grace_seconds": 0}))))
        .await;
    let fourth = r.body["key"].as_str().unwrap().to_string();
    let v = check(third).await;
    assert_eq!((v.status, v.code()), (StatusCode::UNAUTHORIZED, "api_key_expired"));
    assert_eq!(check(fourth.clone()).await.status, StatusCode::OK);
    let _ = second;

    let r = h
        .send(h.signed(
            Method::POST,
            "/api/v1/auth/client/api-keys/rotate",
            &ctx,
            Some(json!({"grace_seconds": 99_999_999})),
        ))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_grace_seconds"));

    // Revocation is immediate and scoped to the tenant.
    let fourth_id = h.send(h.signed(Method::GET, "/api/v1/auth/client/api-keys", &ctx, None)).await.body["api_keys"][0]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stranger = h.register("stranger@example.com").await;
    let stranger_ctx = h.dashboard(&stranger).await;
    let r = h
        .send(h.signed(Method::DELETE, &format!("/api/v1/auth/client/api-keys/{fourth_id}"), &stranger_ctx, None))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "api_key_not_found"));
    assert_eq!(check(fourth.clone()).await.status, StatusCode::OK);
    let r = h.send(h.signed(Method::DELETE, &format!("/api/v1/auth/client/api-keys/{fourth_id}"), &ctx, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let v = check(fourth).await;
    assert_eq!((v.status, v.code()), (StatusCode::UNAUTHORIZED, "api_key_revoked"));
    let _ = second_id;
    let actions: Vec<String> =
        h.store.audit_log(&who.client_id, 20).await.unwrap().into_iter().map(|a| a.action).collect();
    assert!(actions.contains(&"api_key.rotated".into()) && actions.contains(&"api_key.revoked".into()), "{actions:?}");
}

#[tokio::test]
async fn whitelists_apply_all_or_nothing() {
    let h = Harness::sqlite().await;
    let who = h.register("wl@example.com").await;
    let ctx = h.dashboard(&who).await;
    let ip_path = "/api/v1/auth/client/ip-whitelist";
    let r = h
        .send(h.signed(Method::PUT, ip_path, &ctx, Some(json!({"cidrs": ["10.0.0.0/8", "::1", "2001:db8::/32"]}))))
        .await;
    assert_eq!(r.body, json!({"cidrs": ["10.0.0.0/8", "::1/128", "2001:db8::/32"]}));
    let r =
        h.send(h.signed(Method::PUT, ip_path, &ctx, Some(json!({"cidrs": ["192.168.0.0/16", "10.0.0.1/33"]})))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_cidr"));
    assert_eq!(r.body["error"]["field"], "cidrs[1]");
    let r = h.send(h.signed(Method::GET, ip_path, &ctx, None)).await;
    assert_eq!(r.body["cidrs"][0], "10.0.0.0/8", "nothing of the failed PUT was applied");

    let origin_path = "/api/v1/auth/client/origin-whitelist";
    let r = h
        .send(h.signed(
            Method::PUT,
            origin_path,
            &ctx,
            Some(json!({"origins": ["https://App.example.com", "https://*.example.org"]})),
        ))
        .await;
    assert_eq!(r.body, json!({"origins": ["https://app.example.com", "https://*.example.org"]}));
    let r = h
        .send(h.signed(
            Method::PUT,
            origin_path,
            &ctx,
            Some(json!({"origins": ["https://ok.example", "javascript:alert(1)"]})),
        ))
        .await;
    assert_eq!(
        (r.status, r.code(), r.body["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, "invalid_origin", Some("origins[1]"))
    );
    let r = h.send(h.signed(Method::PUT, origin_path, &ctx, Some(json!({"origins": "https://x.example"})))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"));
    let profile = h.send(h.signed(Method::GET, "/api/v1/auth/client/profile", &ctx, None)).await;
    assert_eq!(profile.body["origin_whitelist"], json!(["https://app.example.com", "https://*.example.org"]));
    assert_eq!(profile.body["ip_whitelist"][1], "::1/128");
}

#[tokio::test]
async fn ops_routes_and_fallbacks() {
    let h = Harness::sqlite().await;
    let r = h.send(get("/health")).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let who = h.register("m@example.com").await;
    h.dashboard(&who).await;
    let r = h.send(get("/metrics")).await;
    for name in [
        "auth_token_validations_total",
        "auth_token_validation_duration_seconds",
        "auth_session_creations_total",
        "auth_api_key_validations_total",
        "auth_cache_hit_rate",
    ] {
        assert!(r.text.contains(name), "{name} missing from /metrics");
    }
    let r = h.send(get("/api/v1/auth/nope")).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = h.send(get(REGISTER)).await;
    assert_eq!((r.status, r.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    assert!(r.headers.get("x-request-id").is_some());

    h.store.close().await;
    let r = h.send(get("/health")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["down"], json!(["database"]));
    // Liveness stays up: probes must not restart every replica over a shared outage.
    assert_eq!(h.send(get("/livez")).await.status, StatusCode::OK);
    let r = h
        .send(post(REGISTER, json!({"name": "A", "email": "down@example.com", "password": "correct horse battery"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"));
    assert!(!r.text.to_lowercase().contains("pool"), "internal details leak: {}", r.text);
    let _ = AuthType::Jwt;
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let h = Harness::sqlite().await;
    let r = h.send(get("/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", r.body["openapi"]);
    let paths = r.body["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in
            item.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
        {
            operations.push(format!("{} {path}", method.to_uppercase()));
            // A documented operation must reach a handler, not the fallbacks.
            let uri = path.replace("{id}", "key_x").replace("{user_id}", "user_x");
            let request = raw(method.to_uppercase().parse().unwrap(), &uri, None, "");
            let reply = h.send(request).await;
            assert!(
                !["not_found", "method_not_allowed"].contains(&reply.code()),
                "{method} {path} is documented but not routed"
            );
            assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    operations.sort();
    let expected = [
        "DELETE /api/v1/auth/client/api-keys/{id}",
        "GET /api/v1/auth/client/api-keys",
        "GET /api/v1/auth/client/audit-log",
        "GET /api/v1/auth/client/ip-whitelist",
        "GET /api/v1/auth/client/origin-whitelist",
        "GET /api/v1/auth/client/profile",
        "GET /api/v1/auth/client/rate-limits",
        "GET /api/v1/auth/client/sessions",
        "POST /api/v1/auth/client/api-keys/rotate",
        "POST /api/v1/auth/client/login",
        "POST /api/v1/auth/client/logout",
        "POST /api/v1/auth/client/logout-all",
        "POST /api/v1/auth/client/register",
        "POST /api/v1/auth/client/test-sessions",
        "POST /api/v1/auth/internal/validate",
        "POST /api/v1/auth/internal/validate-api-key",
        "POST /api/v1/auth/logout",
        "POST /api/v1/auth/refresh",
        "POST /api/v1/auth/sdk/session",
        "POST /api/v1/auth/sdk/users/{user_id}/revoke",
        "PUT /api/v1/auth/client/ip-whitelist",
        "PUT /api/v1/auth/client/origin-whitelist",
        "PUT /api/v1/auth/client/password",
        "PUT /api/v1/auth/client/rate-limits",
    ];
    assert_eq!(operations, expected);
    // Every response body the handlers send is described.
    let schemas = r.body["components"]["schemas"].as_object().unwrap();
    for name in ["Registered", "AccessToken", "Profile", "RotatedKey", "SessionTokens", "ValidatedToken", "ErrorBody"] {
        assert!(schemas.contains_key(name), "{name} missing from components");
    }
    // The document and the crate agree.
    assert_eq!(serde_json::to_value(crate::openapi()).unwrap(), r.body);
}
