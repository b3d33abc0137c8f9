//! Failure rules: the gateway fails closed.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn ext_authz_down_means_503_never_allowed() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "down").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let token = sdk_session(node, &tenant, "user-1").await["access_token"].as_str().unwrap().to_string();
    let http = client();
    assert_eq!(send(http.get(node.url("/v1/conversations")).bearer_auth(&token)).await.status, 200);

    node.stack.kill_ext_authz();
    let refused = within(Duration::from_secs(5), || {
        let (http, url, token) = (http.clone(), node.url("/v1/conversations"), token.clone());
        async move { send(http.get(url).bearer_auth(&token)).await.status == 503 }
    })
    .await;
    assert!(refused.is_some(), "gateway did not fail closed");
    for request in [
        http.get(node.url("/v1/conversations")).bearer_auth(&token),
        http.post(node.url("/v1/client/register"))
            .json(&json!({"name": "x", "email": "x@example.com", "password": PASSWORD})),
        http.post(node.url("/v1/sdk/session")).header("x-api-key", &tenant.key).json(&json!({"user_id": "u"})),
    ] {
        assert_eq!(send(request).await.status, 503);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn shadow_mode_logs_and_lets_requests_through_with_their_credentials() {
    let Some(cluster) = cluster(1, &["--use-auth-service", "false", ECHO_CHAT[0], ECHO_CHAT[1]]).await else { return };
    let node = cluster.node();
    let r = send(
        client().get(node.url("/v1/conversations")).bearer_auth("not-a-token").header("x-caas-tenant-id", "cl_evil"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let upstream = r.upstream_headers();
    assert!(upstream.keys().all(|k| !k.starts_with("x-caas-")), "{upstream:?}");
    assert!(upstream.contains_key("authorization"), "in shadow mode services still validate themselves");
    // A request the gateway would allow carries the signed context for
    // services that have moved, and its credential for those that have not.
    let tenant = onboard(node, "Shadow").await;
    set_whitelists(node, &tenant, &["127.0.0.1"], &[]).await;
    let token = sdk_session(node, &tenant, "user-1").await["access_token"].as_str().unwrap().to_string();
    let r = send(client().get(node.url("/v1/conversations")).bearer_auth(&token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.verified_context().tenant_id, tenant.id);
    assert_eq!(r.upstream_headers()["authorization"], format!("Bearer {token}"));
    cluster.shutdown().await;
}
