//! Failure rules: the gateway fails closed.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn ext_authz_down_means_503_never_allowed() {
    // Down means its feed too (as when its process dies): the in-proxy
    // filter reads it through a proxy this test cuts with the kill (a
    // killed task's open connections would otherwise go on answering).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops = free.local_addr().unwrap();
    drop(free);
    let (feed, outage) = Outage::proxy(ops).await;
    let (ops_arg, feed_arg) = (ops.to_string(), feed.to_string());
    let extra = ["--ext-authz-ops-addr", ops_arg.as_str(), "--edge-feed-addr", feed_arg.as_str()];
    let Some(cluster) = cluster(1, &extra).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "down").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let token = sdk_session(node, &tenant, "user-1").await["access_token"].as_str().unwrap().to_string();
    let http = client();
    assert_eq!(send(http.get(node.url("/v1/conversations")).bearer_auth(&token)).await.status, 200);

    node.stack.kill_ext_authz();
    outage.cut();
    // The in-proxy filter decides, as ext-authz would have, until its feed
    // has not answered for a second (docs/DESIGN.md, "The in-proxy fast
    // path"); from then on every request goes to the dead ext_authz.
    if node.stack.fast_path {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
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

/// Node one loses its link to Redis, so the logout it serves cannot be
/// published; node two (bus up, the session cached as valid) must still
/// refuse the token, and close the session's socket with 4003, within the
/// change feed's period (1 s, CHANGE_FEED_INTERVAL): the durable path, not
/// the cache's 60 s freshness.
#[tokio::test]
async fn a_logout_whose_bus_message_is_lost_still_reaches_every_node_within_the_feed_period() {
    let (link_addr, link) = Outage::proxy(address_of(&caas_core::testing::redis_test_url())).await;
    let Some(cluster) =
        cluster_with(2, &[], |i, url| if i == 0 { pointed_at(url, link_addr) } else { url.to_string() }).await
    else {
        return;
    };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let tenant = onboard(one, "lost-event").await;
    set_whitelists(one, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(one, &tenant, "bob").await;
    let token = session["access_token"].as_str().unwrap().to_string();
    let http = client();
    // Node two has seen the session valid (and caches that), and holds its socket.
    assert_eq!(send(http.get(two.url("/v1/conversations")).bearer_auth(&token)).await.status, 200);
    let mut socket = crate::ws::connect(&two.ws(), Some(&token), None).await.unwrap();
    let conv = {
        let r =
            send(http.post(two.url("/v1/conversations")).bearer_auth(&token).json(&json!({ "member_ids": [] }))).await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body["id"].as_str().unwrap().to_string()
    };
    socket.subscribe(&conv).await;

    link.cut();
    // Node one's subscription notices (heartbeat) and its publisher's
    // connection is gone: the logout's event cannot go out over Redis.
    let deaf = within(Duration::from_secs(10), || async { !one.stack.backends.bus.is_connected() }).await;
    assert!(deaf.is_some(), "node one still on the bus after the cut");
    let r = send(http.post(one.url("/v1/sdk/logout")).json(&json!({"refresh_token": session["refresh_token"]}))).await;
    assert_eq!(r.status, 204, "the logout is committed even though it cannot be published: {r:?}");
    let started = std::time::Instant::now();
    let refused = within(Duration::from_secs(5), || {
        let (http, url, token) = (http.clone(), two.url("/v1/conversations"), token.clone());
        async move {
            let r = send(http.get(url).bearer_auth(&token)).await;
            r.status == 401 && r.code() == "session_revoked"
        }
    })
    .await;
    let closed = socket.closed(Duration::from_secs(5)).await;
    println!(
        "lost bus message: node two refused the token after {refused:?}, closed its socket with {closed:?} after {:?}",
        started.elapsed()
    );
    let refused = refused.expect("node two kept accepting a logged-out token");
    assert!(refused < Duration::from_millis(2500), "refused after {refused:?}, beyond the feed's period");
    assert_eq!(closed, Some(4003));
    assert!(started.elapsed() < Duration::from_millis(2500));
    // Node one refuses it too, and recovers its bus once the link is back.
    assert_eq!(send(http.get(one.url("/v1/conversations")).bearer_auth(&token)).await.code(), "session_revoked");
    link.restore();
    let fresh = sdk_session(one, &tenant, "carol").await;
    let carol = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(send(http.get(two.url("/v1/conversations")).bearer_auth(&carol)).await.status, 200);
    cluster.shutdown().await;
}

/// With EXT_AUTHZ_CALLER_TOKEN, Envoy's configuration carries the token
/// (`caas envoy-config` / `caas up` put it there), so requests through the
/// gateway are decided as usual; a caller without it gets nothing from
/// ext-authz (ext-authz/src/tests.rs shows the refusal over gRPC).
#[tokio::test]
async fn with_a_caller_token_the_gateway_works_as_before() {
    let token = "caller-token-caller-token-caller-token-42";
    let Some(cluster) = cluster(1, &["--ext-authz-caller-token", token]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "caller-token").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(node, &tenant, "user-1").await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(send(client().get(node.url("/v1/conversations")).bearer_auth(access)).await.status, 200);
    assert_eq!(send(client().get(node.url("/v1/conversations"))).await.code(), "missing_credentials");
    cluster.shutdown().await;
}
