//! Flows 1 and 2: a client onboards, then its backend opens SDK sessions.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn onboarding_register_login_profile_rotate_whitelists() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "acme").await;
    let http = client();

    let profile = send(http.get(node.url("/v1/client/profile")).bearer_auth(&tenant.dashboard)).await;
    assert_eq!(profile.status, 200, "{profile:?}");
    assert_eq!(profile.body["client_id"], tenant.id.as_str());
    assert_eq!(profile.body["api_keys"][0]["id"], tenant.key_id.as_str());
    assert!(!profile.body.to_string().contains(&tenant.key));

    let rotated = send(
        http.post(node.url("/v1/client/api-keys/rotate"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({"grace_seconds": 600})),
    )
    .await;
    assert_eq!(rotated.status, 201, "{rotated:?}");
    assert_eq!(rotated.body["previous_key"]["id"], tenant.key_id.as_str());
    let keys = send(http.get(node.url("/v1/client/api-keys")).bearer_auth(&tenant.dashboard)).await;
    assert_eq!(keys.body["api_keys"].as_array().unwrap().len(), 2);

    set_whitelists(node, &tenant, &["127.0.0.1/32", "10.0.0.0/8"], &["https://app.acme.example"]).await;
    let bad = send(
        http.put(node.url("/v1/client/ip-whitelist"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({"cidrs": ["10.0.0.0/8", "nope"]})),
    )
    .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_cidr"));
    assert_eq!(bad.body["error"]["field"], "cidrs[1]");
    let profile = send(http.get(node.url("/v1/client/profile")).bearer_auth(&tenant.dashboard)).await;
    assert_eq!(profile.body["ip_whitelist"], json!(["127.0.0.1/32", "10.0.0.0/8"]));
    assert_eq!(profile.body["origin_whitelist"], json!(["https://app.acme.example"]));

    // Every request got an id from Envoy, which the access log records with
    // the tenant ext-authz vouched for.
    let id = profile.header("x-request-id");
    assert!(id.is_none_or(|id| !id.is_empty()));
    let needle = format!("\"tenant_id\":\"{}\"", tenant.id);
    let logged = within(std::time::Duration::from_secs(5), || {
        let found = node.access_log().contains(&needle);
        async move { found }
    })
    .await;
    assert!(logged.is_some(), "access log lacks the tenant: {}", node.access_log());
    cluster.shutdown().await;
}

#[tokio::test]
async fn sdk_sessions_only_from_whitelisted_addresses() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "sdk").await;
    // No whitelist yet: nobody may use the key.
    let r = send(
        client().post(node.url("/v1/sdk/session")).header("x-api-key", &tenant.key).json(&json!({"user_id": "u1"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed"));
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;

    let session = sdk_session(node, &tenant, "user-1").await;
    assert!(session["access_token"].as_str().is_some() && session["refresh_token"].as_str().is_some());
    assert_eq!(session["user_id"], "user-1");

    // From another address: refused, even when it claims to be forwarded for a whitelisted one.
    let elsewhere = client_from("127.0.0.2");
    let r = send(
        elsewhere.post(node.url("/v1/sdk/session")).header("x-api-key", &tenant.key).json(&json!({"user_id": "u1"})),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed"));
    let spoof = send(
        elsewhere
            .post(node.url("/v1/sdk/session"))
            .header("x-api-key", &tenant.key)
            .header("x-forwarded-for", "127.0.0.1")
            .header("x-real-ip", "127.0.0.1")
            .json(&json!({"user_id": "u1"})),
    )
    .await;
    assert_eq!((spoof.status, spoof.code()), (403, "ip_not_allowed"));

    // Refresh through the gateway rotates; the old token is then reuse.
    let r = send(client().post(node.url("/v1/sdk/refresh")).json(&json!({"refresh_token": session["refresh_token"]})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r2 = send(client().post(node.url("/v1/sdk/refresh")).json(&json!({"refresh_token": session["refresh_token"]})))
        .await;
    assert_eq!((r2.status, r2.code()), (401, "refresh_token_reused"));
    // A refresh with an API key from a non-whitelisted address is refused at the gateway.
    let r3 = send(
        elsewhere
            .post(node.url("/v1/sdk/refresh"))
            .header("x-api-key", &tenant.key)
            .json(&json!({"refresh_token": r.body["refresh_token"]})),
    )
    .await;
    assert_eq!((r3.status, r3.code()), (403, "ip_not_allowed"));
    cluster.shutdown().await;
}

#[tokio::test]
async fn trusted_proxy_hops_use_the_proxys_view_never_the_leftmost() {
    let Some(cluster) = cluster(1, &["--trusted-proxy-hops", "1"]).await else { return };
    let node = cluster.node();
    // Our TCP peer is the trusted proxy; it reports the client it saw.
    let dashboard_user = client_behind_proxy("198.51.100.20");
    let tenant = onboard_via(node, "proxied", &dashboard_user).await;
    set_whitelists_via(node, &tenant, &["203.0.113.7/32"], &[], &dashboard_user).await;
    let session = |xff: &'static str| {
        let tenant = tenant.clone();
        async move {
            send(
                client()
                    .post(node.url("/v1/sdk/session"))
                    .header("x-api-key", &tenant.key)
                    .header("x-forwarded-for", xff)
                    .json(&json!({"user_id": "u1"})),
            )
            .await
        }
    };
    // Without the proxy's header the client is unknown: refused, not guessed.
    let direct = send(
        client().post(node.url("/v1/sdk/session")).header("x-api-key", &tenant.key).json(&json!({"user_id": "u1"})),
    )
    .await;
    assert_eq!((direct.status, direct.code()), (403, "client_ip_unknown"));
    // The proxy (our TCP peer) saw 203.0.113.7 and appended it.
    assert_eq!(session("203.0.113.7").await.status, 201);
    // A client-written entry to the left of it is not believed.
    let r = session("203.0.113.7, 198.51.100.1").await;
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed"));
    cluster.shutdown().await;
}
