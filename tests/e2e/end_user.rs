//! Flow 3: end users through the gateway; context reaches services signed;
//! logout is enforced by every gateway within a second.

use std::time::Duration;

use caas_core::context::AuthType;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn end_users_with_origins_cors_and_signed_context() {
    let Some(cluster) = cluster(1, &ECHO_CHAT).await else { return };
    let node = cluster.node();
    let a = onboard(node, "alpha").await;
    let b = onboard(node, "beta").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &["https://app.alpha.example", "https://*.alpha.example"]).await;
    set_whitelists(node, &b, &["127.0.0.1/32"], &["https://app.beta.example"]).await;
    let session = sdk_session(node, &a, "user-1").await;
    let token = session["access_token"].as_str().unwrap();
    let http = client_from("127.0.0.9");

    // Allowed Origin: forwarded, with CORS headers on the response.
    let r = send(
        http.get(node.url("/v1/conversations?limit=5"))
            .bearer_auth(token)
            .header("origin", "https://chat.alpha.example")
            .header("x-caas-tenant-id", &b.id)
            .header("x-caas-context-sig", "forged")
            .header("x-caas-whatever", "1"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://chat.alpha.example"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let ctx = r.verified_context();
    assert_eq!((ctx.tenant_id.as_str(), ctx.user_id.as_str(), ctx.auth_type), (a.id.as_str(), "user-1", AuthType::Jwt));
    // End-user routes do not carry the address (services there do not use it).
    assert_eq!(ctx.client_ip, "");
    assert!(!r.upstream_headers().contains_key("x-caas-client-ip"));
    assert_eq!(ctx.session_id, session["session_id"].as_str().unwrap());
    let upstream = r.upstream_headers();
    assert!(!upstream.contains_key("authorization"), "the token must not reach services");
    assert!(!upstream.contains_key("x-caas-whatever"));
    assert_eq!(upstream["x-caas-tenant-id"], a.id.as_str());

    // No Origin (a mobile app): allowed, no CORS headers.
    let r = send(http.get(node.url("/v1/messages")).bearer_auth(token)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());

    // Denied Origins, including the one only tenant B allows.
    for origin in ["https://evil.example", "https://app.beta.example", "null", "https://alpha.example"] {
        let r = send(http.get(node.url("/v1/messages")).bearer_auth(token).header("origin", origin)).await;
        assert_eq!((r.status, r.code()), (403, "origin_not_allowed"), "{origin}");
        assert!(r.header("access-control-allow-origin").is_none());
    }

    // A browser's preflight is answered by the gateway and opens nothing.
    let pre = send(
        http.request(reqwest::Method::OPTIONS, node.url("/v1/messages"))
            .header("origin", "https://app.alpha.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type"),
    )
    .await;
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some("https://app.alpha.example"));
    assert_eq!(pre.header("access-control-allow-headers"), Some("authorization, content-type"));
    let r =
        send(http.post(node.url("/v1/messages")).header("origin", "https://app.alpha.example").json(&json!({}))).await;
    assert_eq!((r.status, r.code()), (401, "missing_credentials"));
    // A browser may read why (to refresh its token).
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.alpha.example"));
    assert!(r.header("www-authenticate").is_some());
    cluster.shutdown().await;
}

#[tokio::test]
async fn logout_is_denied_by_every_gateway_within_a_second() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let tenant = onboard(one, "logout").await;
    set_whitelists(one, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(one, &tenant, "user-1").await;
    let token = session["access_token"].as_str().unwrap().to_string();
    let http = client();
    // Both gateways have the session cached as valid.
    for node in [one, two] {
        for _ in 0..3 {
            assert_eq!(send(http.get(node.url("/v1/conversations")).bearer_auth(&token)).await.status, 200);
        }
    }
    // The end user logs out through gateway one, with its access token.
    let r = send(http.post(one.url("/v1/sdk/logout")).bearer_auth(&token)).await;
    assert_eq!(r.status, 204, "{r:?}");
    for node in [one, two] {
        let took = within(Duration::from_secs(1), || {
            let (http, token, url) = (http.clone(), token.clone(), node.url("/v1/conversations"));
            async move {
                let r = send(http.get(url).bearer_auth(&token)).await;
                r.status == 401 && r.code() == "session_revoked"
            }
        })
        .await;
        assert!(took.is_some(), "gateway {} still accepted a logged-out token after 1 s", node.gateway);
    }
    // The refresh token is dead too.
    let r = send(http.post(two.url("/v1/sdk/refresh")).json(&json!({"refresh_token": session["refresh_token"]}))).await;
    assert_eq!(r.status, 401);

    // A key revoked on one node is refused by the other within a second.
    let _ = send(http.get(two.url("/v1/conversations"))).await;
    let session = sdk_session(two, &tenant, "user-2").await;
    assert!(session["access_token"].is_string());
    let r =
        send(http.delete(one.url(&format!("/v1/client/api-keys/{}", tenant.key_id))).bearer_auth(&tenant.dashboard))
            .await;
    assert_eq!(r.status, 204, "{r:?}");
    let took = within(Duration::from_secs(1), || {
        let (http, url, key) = (http.clone(), two.url("/v1/sdk/session"), tenant.key.clone());
        async move {
            send(http.post(url).header("x-api-key", key).json(&json!({"user_id": "u"}))).await.code()
                == "api_key_revoked"
        }
    })
    .await;
    assert!(took.is_some(), "revoked key still accepted by the other gateway");
    cluster.shutdown().await;
}
