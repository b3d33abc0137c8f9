use axum::http::{Method, StatusCode};
use caas_core::quotas::DEFAULT_LIMITS;
use serde_json::json;

use super::harness::*;

const PATH: &str = "/api/v1/auth/client/rate-limits";

fn body(key: (i64, i64), user: (i64, i64), tenant: (i64, i64)) -> serde_json::Value {
    let limit = |(rate, burst): (i64, i64)| json!({"rate": rate, "burst": burst});
    json!({"per_key": limit(key), "per_user": limit(user), "per_tenant": limit(tenant)})
}

#[tokio::test]
async fn rate_limits_default_then_are_set_as_a_whole() {
    let h = Harness::sqlite().await;
    let who = h.register("quota@example.com").await;
    let ctx = h.dashboard(&who).await;

    let r = h.send(h.signed(Method::GET, PATH, &ctx, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["per_key"], json!({"rate": DEFAULT_LIMITS.per_key.rate, "burst": DEFAULT_LIMITS.per_key.burst}));
    assert_eq!(r.body["maximums"]["per_user"]["rate"], 1000);

    let r = h.send(h.signed(Method::PUT, PATH, &ctx, Some(body((10, 20), (5, 5), (100, 200))))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["per_user"], json!({"rate": 5, "burst": 5}));
    let r = h.send(h.signed(Method::GET, PATH, &ctx, None)).await;
    assert_eq!(r.body["per_key"], json!({"rate": 10, "burst": 20}));
    assert_eq!(r.body["per_tenant"], json!({"rate": 100, "burst": 200}));
    let log = h.store.audit_log(&ctx.tenant_id, 1).await.unwrap();
    assert_eq!(log[0].action, "rate_limits.updated");
}

#[tokio::test]
async fn rate_limits_out_of_bounds_are_refused_naming_the_field() {
    let h = Harness::sqlite().await;
    let who = h.register("bounds@example.com").await;
    let ctx = h.dashboard(&who).await;
    for (sent, field) in [
        (body((0, 20), (5, 5), (100, 200)), "per_key.rate"),
        (body((10, 20), (5, -1), (100, 200)), "per_user.burst"),
        (body((10, 9), (5, 5), (100, 200)), "per_key.burst"),
        (body((10, 20), (5, 5), (100, 1_000_000)), "per_tenant.burst"),
        (body((10, 20), (1_001, 2_000), (100, 200)), "per_user.rate"),
    ] {
        let r = h.send(h.signed(Method::PUT, PATH, &ctx, Some(sent))).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_rate_limit"), "{field}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{}", r.text);
        assert!(r.body["error"]["message"].as_str().unwrap().starts_with(field), "{}", r.text);
    }
    let r = h.send(h.signed(Method::PUT, PATH, &ctx, Some(json!({"per_key": {"rate": 1, "burst": 1}})))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"), "{}", r.text);
    let r = h.send(h.signed(Method::PUT, PATH, &ctx, Some(json!({"per_key": {"rate": 1.5, "burst": 2}})))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Nothing of the refused writes was applied.
    let r = h.send(h.signed(Method::GET, PATH, &ctx, None)).await;
    assert_eq!(r.body["per_key"]["rate"], DEFAULT_LIMITS.per_key.rate);
    let r = h.send(get(PATH)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
