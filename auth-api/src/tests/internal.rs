use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caas_core::id::unix_now;
use caas_core::jwt::{Audience, Claims, JwtKeys};
use caas_core::secret::Secret;
use serde_json::json;

use super::harness::*;

const VALIDATE: &str = "/api/v1/auth/internal/validate";
const VALIDATE_KEY: &str = "/api/v1/auth/internal/validate-api-key";

fn with_auth(path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::POST).uri(path).header("content-type", "application/json");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Body::from(json!({"token": "x"}).to_string())).unwrap()
}

#[tokio::test]
async fn internal_endpoints_require_the_service_token() {
    let h = Harness::sqlite().await;
    for auth in
        [None, Some("Service wrong-secret"), Some(&format!("Bearer {SERVICE_SECRET}") as &str), Some("Service ")]
    {
        let r = h.send(with_auth(VALIDATE, auth)).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_service_token"), "{auth:?}");
        assert_eq!(r.headers["www-authenticate"], r#"Service realm="caas-internal""#);
    }
    // The previous secret still works during rotation.
    let r = h.send(with_auth(VALIDATE, Some(&format!("Service {PREVIOUS_SERVICE_SECRET}")))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "malformed_token"));
}

fn claims_for(session: &serde_json::Value, tenant: &str) -> Claims {
    Claims {
        iss: "caas".into(),
        aud: Audience::Sdk.as_str().into(),
        sub: session["user_id"].as_str().unwrap().into(),
        tid: tenant.into(),
        sid: session["session_id"].as_str().unwrap().into(),
        jti: "j".into(),
        iat: unix_now(),
        exp: unix_now() + 900,
        nbf: None,
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() {
    let h = Harness::sqlite().await;
    let who = h.register("tok@example.com").await;
    let session = h.session(&who, "user-1").await;
    let keys = jwt_keys();
    let good = claims_for(&session, &who.client_id);
    let token = session["access_token"].as_str().unwrap();

    let expired = keys.issue(&Claims { iat: unix_now() - 2000, exp: unix_now() - 1000, ..good.clone() });
    let future = keys.issue(&Claims { nbf: Some(unix_now() + 600), ..good.clone() });
    let dashboard = keys.issue(&Claims { aud: Audience::Dashboard.as_str().into(), ..good.clone() });
    let foreign = JwtKeys::new("caas", &Secret::new("another-secret-another-secret-0099"), None).issue(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2]);
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": header["kid"]});
    let alg_none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(none_header.to_string()), parts[1]);

    for (candidate, code) in [
        (expired, "token_expired"),
        (future, "token_not_yet_valid"),
        (dashboard, "wrong_audience"),
        (foreign, "bad_signature"),
        (tampered, "bad_signature"),
        (alg_none, "algorithm_not_allowed"),
        ("x".repeat(5000), "malformed_token"),
    ] {
        let r = h.token_verdict(&candidate).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, code), "{}", r.text);
    }
    let r = h.internal(VALIDATE, json!({"token": token, "audience": "caas-dashboard"})).await;
    assert_eq!(r.code(), "wrong_audience");
    let r = h.internal(VALIDATE, json!({"token": token, "audience": "root"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_audience"));
}

#[tokio::test]
async fn origins_and_ips_are_checked_against_the_tokens_tenant() {
    let h = Harness::sqlite().await;
    let a = h.register("oa@example.com").await;
    let b = h.register("ob@example.com").await;
    let (ctx_a, ctx_b) = (h.dashboard(&a).await, h.dashboard(&b).await);
    h.send(h.signed(
        Method::PUT,
        "/api/v1/auth/client/origin-whitelist",
        &ctx_a,
        Some(json!({"origins": ["https://a.example"]})),
    ))
    .await;
    h.send(h.signed(
        Method::PUT,
        "/api/v1/auth/client/origin-whitelist",
        &ctx_b,
        Some(json!({"origins": ["https://b.example"]})),
    ))
    .await;
    h.send(h.signed(Method::PUT, "/api/v1/auth/client/ip-whitelist", &ctx_a, Some(json!({"cidrs": ["127.0.0.1"]}))))
        .await;
    let token = h.session(&a, "user-1").await["access_token"].as_str().unwrap().to_string();
    let r = h.internal(VALIDATE, json!({"token": token, "origin": "https://a.example"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.internal(VALIDATE, json!({"token": token, "origin": "https://b.example"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "origin_not_allowed"));

    let r = h.internal(VALIDATE_KEY, json!({"api_key": a.key, "ip": "127.0.0.1"})).await;
    assert_eq!((r.status, r.body["tenant_id"].as_str()), (StatusCode::OK, Some(a.client_id.as_str())));
    let r = h.internal(VALIDATE_KEY, json!({"api_key": a.key, "ip": "127.0.0.2"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "ip_not_allowed"));
    let r = h.internal(VALIDATE_KEY, json!({"api_key": b.key, "ip": "127.0.0.1"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "ip_not_allowed"), "b has no whitelist");
    let r = h.internal(VALIDATE_KEY, json!({"api_key": a.key, "ip": "not-an-ip"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_ip"));
    let r = h.internal(VALIDATE_KEY, json!({"api_key": &a.key[..20], "ip": "127.0.0.1"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_api_key"));
}

#[test]
fn weak_or_shared_secrets_are_refused_at_start() {
    use clap::Parser as _;
    let config =
        crate::Config::try_parse_from(["auth-api", "--jwt-secret", "short", "--service-secret", "alsoshort"]).unwrap();
    let message = config.check().unwrap_err();
    assert!(message.contains("JWT_SECRET must be at least 32 bytes"), "{message}");
    assert!(message.contains("SERVICE_SECRET must be at least 32 bytes"), "{message}");
    assert!(!message.contains("alsoshort"));
    let same = "s".repeat(40);
    let config = crate::Config::try_parse_from(["auth-api", "--jwt-secret", &same, "--service-secret", &same]).unwrap();
    assert!(config.check().unwrap_err().contains("must be different"));
    let config =
        crate::Config::try_parse_from(["auth-api", "--service-secret", &same, "--database-url", "mysql://x"]).unwrap();
    let message = config.check().unwrap_err();
    assert!(message.contains("JWT_SECRET is required") && message.contains("DATABASE_URL"), "{message}");
}
