//! The in-proxy fast path (edge-wasm/): through real Envoy, the same
//! requests get the same answers with the filter on and off; a revoked
//! session, a revoked key and IP and Origin whitelist changes are refused
//! within a second; with the feed cut, ext_authz decides everything; and
//! nothing a client sends can skip ext_authz.

use std::collections::BTreeMap;
use std::time::Duration;

use caas_core::jwt::{Audience, Claims, JwtKeys};
use caas_core::secret::Secret;
use serde_json::Value;

use crate::harness::*;

/// One node with the fast path on; `None` (the test then does nothing)
/// where the harness has no Envoy or no module to run it with.
async fn fast_path_cluster(extra: &[&str]) -> Option<Cluster> {
    let cluster = cluster_modes(&[true], extra).await?;
    cluster.node().stack.fast_path.then_some(cluster)
}

/// An Envoy stat of the node (`caas_edge.*` are the filter's own).
async fn stat(node: &Node, name: &str) -> u64 {
    let admin = node.stack.envoy.as_ref().unwrap().admin;
    let body = caas::envoy::http_get(admin, &format!("/stats?filter={name}")).await.unwrap_or_default();
    caas::envoy::body_of(&body)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.ends_with(name))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// Whether Envoy's access log has a line `matches` within 5 s (Envoy writes
/// it a moment after the answer).
async fn logged_within(node: &Node, matches: impl Fn(&Value) -> bool) -> bool {
    let found = within(Duration::from_secs(5), || {
        let found =
            node.access_log().lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).any(|e| matches(&e));
        async move { found }
    })
    .await;
    found.is_some()
}

/// ext-authz's `gateway_auth_failures_total`, every label summed.
async fn auth_failures(node: &Node) -> u64 {
    ext_authz_sum(node, "gateway_auth_failures_total{").await
}

/// ext-authz's `gateway_requests_total` (every decision), every label summed.
async fn decisions(node: &Node) -> u64 {
    ext_authz_sum(node, "gateway_requests_total{").await
}

/// The filter's Envoy stats of what it did with each request: allowed,
/// answered (a preflight or a refusal) or left to ext_authz (by reason);
/// read after a tick, when the filter has added its counts.
async fn edge_stats(node: &Node) -> u64 {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut sum = 0;
    for name in ["caas_edge.allowed", "caas_edge.preflights", "caas_edge.denied"] {
        sum += stat(node, name).await;
    }
    for reason in ["not_current", "policy", "unusual", "refused", "unknown_session", "unknown_key", "address", "quota"]
    {
        sum += stat(node, &format!("caas_edge.forwarded.{reason}")).await;
    }
    sum
}

/// The same, as the filter reported it to ext-authz.
async fn edge_reports(node: &Node) -> u64 {
    ext_authz_sum(node, "gateway_edge_decisions_total{").await
        + ext_authz_sum(node, "gateway_edge_forwarded_total{").await
}

/// The sum of ext-authz's series whose line starts with `prefix`.
async fn ext_authz_sum(node: &Node, prefix: &str) -> u64 {
    let url = format!("http://{}/metrics", node.stack.ext_authz_ops);
    let text = client().get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The filter's allows so far: it adds its counts to Envoy's stats on its
/// 100 ms tick, so a tick is waited for first.
async fn allowed_by_filter(node: &Node) -> u64 {
    tokio::time::sleep(Duration::from_millis(150)).await;
    stat(node, "caas_edge.allowed").await
}

/// Waits until the node's filter has confirmed its feed (it decides).
async fn until_current(node: &Node, token: &str) {
    until_decided(node, "/v1/conversations", token).await;
}

/// Waits until the node's filter allows a GET of `path` with `token` itself.
async fn until_decided(node: &Node, path: &str, token: &str) {
    let http = client();
    let took = within(Duration::from_secs(10), || {
        let (http, url, token) = (http.clone(), node.url(path), token.to_string());
        async move {
            let before = allowed_by_filter(node).await;
            let r = send(http.get(url).bearer_auth(&token)).await;
            r.status == 200 && allowed_by_filter(node).await > before
        }
    })
    .await;
    assert!(took.is_some(), "the fast path never allowed a valid GET {path} on {}", node.gateway);
}

/// A tenant whose IP whitelist is 127.0.0.1 and its end user `user-1`'s
/// session, once the node's filter allows that user's requests itself:
/// the tenant, the session, its access token.
async fn decided_user(node: &Node, name: &str) -> (Tenant, Value, String) {
    let tenant = onboard(node, name).await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(node, &tenant, "user-1").await;
    let token = session["access_token"].as_str().unwrap().to_string();
    until_current(node, &token).await;
    (tenant, session, token)
}

/// What must be alike: status, error code, body (without the request id),
/// the headers a client sees, and for an allow the context a service got.
fn answer(r: &Reply) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("status".into(), r.status.to_string());
    let mut body = r.body.clone();
    if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
        error.remove("request_id");
    }
    if r.status != 200 {
        out.insert("body".into(), body.to_string());
    }
    for name in [
        "content-type",
        "www-authenticate",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
        "vary",
        "retry-after",
    ] {
        out.insert(name.into(), r.header(name).unwrap_or("-").to_string());
    }
    if r.status == 200 && r.body["headers"].is_object() {
        let ctx = r.verified_context();
        out.insert("context".into(), format!("{} {} {} {}", ctx.tenant_id, ctx.user_id, ctx.session_id, ctx.auth_type));
        let mut reached: Vec<&String> = r.upstream_headers().keys().filter(|k| k.starts_with("x-caas-")).collect();
        reached.sort();
        out.insert("service saw".into(), format!("{reached:?}"));
        for name in ["authorization", "x-api-key"] {
            out.insert(format!("service saw {name}"), r.upstream_headers().contains_key(name).to_string());
        }
    }
    out
}

/// What the echo upstream saw of a WebSocket upgrade to `path` through
/// `node` (its first frame).
async fn echoed_upgrade(node: &Node, path: &str) -> Value {
    use futures_util::StreamExt as _;
    let url = format!("ws://{}{path}", node.gateway);
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.expect("the upgrade was refused");
    let frame = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(frame.to_text().unwrap()).unwrap()
}

fn token_with(claims: &Claims) -> String {
    JwtKeys::new("caas", &Secret::new(JWT_SECRET), None).issue(claims)
}

#[tokio::test]
async fn the_fast_path_answers_as_ext_authz_does() {
    let Some(cluster) = cluster_modes(&[true, false], &ECHO_CHAT).await else { return };
    let (fast, slow) = (&cluster.nodes[0], &cluster.nodes[1]);
    if !fast.stack.fast_path {
        return; // the module is not built (outside CI): nothing to compare
    }
    assert!(!slow.stack.fast_path);
    let tenant = onboard(fast, "edge").await;
    set_whitelists(fast, &tenant, &["127.0.0.1/32"], &["https://app.edge.example"]).await;
    let session = sdk_session(fast, &tenant, "user-1").await;
    let token = session["access_token"].as_str().unwrap().to_string();
    let revoked = sdk_session(fast, &tenant, "user-2").await;
    let revoked_token = revoked["access_token"].as_str().unwrap().to_string();
    until_current(fast, &token).await;
    until_current(fast, &revoked_token).await;
    let r = send(client().post(fast.url("/v1/sdk/logout")).bearer_auth(&revoked_token)).await;
    assert_eq!(r.status, 204, "{r:?}");
    // Every gateway refuses a revoked session within a second (the fast
    // path hears of it from the feed; end_user.rs holds ext_authz to the same).
    let refused = within(Duration::from_secs(1), || async {
        send(client().get(fast.url("/v1/messages")).bearer_auth(&revoked_token)).await.status == 401
    })
    .await;
    assert!(refused.is_some(), "the fast path still allowed a logged-out session after 1 s");

    let now = caas_core::id::unix_now();
    let claims: Claims = {
        let keys = JwtKeys::new("caas", &Secret::new(JWT_SECRET), None);
        keys.verify(&token, Audience::Sdk, now).unwrap()
    };
    let expired = token_with(&Claims { iat: now - 3600, exp: now - 1800, ..claims.clone() });
    let wrong_aud = token_with(&Claims { aud: Audience::Dashboard.as_str().into(), ..claims.clone() });
    let other_user = token_with(&Claims { sub: "someone-else".into(), ..claims.clone() });
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });

    // Each run's own email and address: auth-api counts failed sign-ins per
    // email and per address (in Redis, for 15 minutes), and the rest of the
    // suite signs in from 127.0.0.1.
    let nobody = format!("{}@edge.example", caas_core::id::new_id("nobody").to_lowercase());
    let octet = 16 + nobody.bytes().fold(0u8, |n, b| n.wrapping_mul(31).wrapping_add(b)) % 200;
    let stranger = format!("127.{octet}.9.1");
    let (nobody, stranger) = (nobody.as_str(), stranger.as_str());
    type Case<'a> = (&'a str, Box<dyn Fn(&reqwest::Client, &Node) -> reqwest::RequestBuilder + 'a>);
    let bearer = |t: String, path: &'static str| {
        Box::new(move |http: &reqwest::Client, n: &Node| http.get(n.url(path)).bearer_auth(&t))
            as Box<dyn Fn(&reqwest::Client, &Node) -> reqwest::RequestBuilder>
    };
    let preflight = |path: &'static str, asked: Option<&'static str>| {
        Box::new(move |http: &reqwest::Client, n: &Node| {
            let r = http
                .request(reqwest::Method::OPTIONS, n.url(path))
                .header("origin", "https://app.edge.example")
                .header("access-control-request-method", "POST");
            match asked {
                Some(asked) => r.header("access-control-request-headers", asked),
                None => r,
            }
        }) as Box<dyn Fn(&reqwest::Client, &Node) -> reqwest::RequestBuilder>
    };
    let cases: Vec<Case<'_>> = vec![
        ("valid", bearer(token.clone(), "/v1/messages")),
        ("valid, conversations", bearer(token.clone(), "/v1/conversations?limit=5")),
        ("expired", bearer(expired, "/v1/messages")),
        ("wrong audience", bearer(wrong_aud, "/v1/messages")),
        ("another subject on the session", bearer(other_user, "/v1/messages")),
        ("tampered", bearer(tampered, "/v1/messages")),
        ("revoked session", bearer(revoked_token.clone(), "/v1/messages")),
        ("dashboard token", bearer(tenant.dashboard.clone(), "/v1/messages")),
        ("missing token", Box::new(|http, n| http.get(n.url("/v1/messages")))),
        ("api key instead", Box::new(|http, n| http.get(n.url("/v1/messages")).header("x-api-key", &tenant.key))),
        (
            "allowed origin",
            Box::new(|http, n| {
                http.get(n.url("/v1/messages")).bearer_auth(&token).header("origin", "https://app.edge.example")
            }),
        ),
        (
            "refused origin",
            Box::new(|http, n| {
                http.get(n.url("/v1/messages")).bearer_auth(&token).header("origin", "https://evil.example")
            }),
        ),
        (
            "forged context and stray x-caas headers",
            Box::new(|http, n| {
                http.get(n.url("/v1/messages"))
                    .bearer_auth(&token)
                    .header("x-caas-tenant-id", "cl_other")
                    .header("x-caas-context-sig", "forged")
                    .header("x-caas-token-expires-at", "1")
                    .header("x-caas-whatever", "1")
            }),
        ),
        (
            "api key route",
            Box::new(|http, n| {
                http.post(n.url("/v1/sdk/session"))
                    .header("x-api-key", &tenant.key)
                    .json(&serde_json::json!({"user_id": "user-9"}))
            }),
        ),
        ("dashboard route", bearer(tenant.dashboard.clone(), "/v1/client/profile")),
        ("credential in query", bearer(token.clone(), "/v1/messages?api_key=caas_x")),
        ("preflight", preflight("/v1/messages", Some("Authorization, X-Evil"))),
        ("preflight asking no headers", preflight("/v1/conversations", None)),
        ("preflight, dashboard route", preflight("/v1/client/profile", Some("authorization"))),
        ("preflight, public route", preflight("/v1/client/login", Some("content-type"))),
        ("preflight, refresh route", preflight("/v1/sdk/refresh", Some("content-type"))),
        ("preflight, api key route", preflight("/v1/sdk/session", Some("x-api-key"))),
        // Public and refresh routes: anonymous unless a credential is sent,
        // the answer auth-api's.
        (
            "sign-in, wrong password",
            Box::new(|_, n| {
                client_from(stranger)
                    .post(n.url("/v1/client/login"))
                    .header("origin", "https://app.edge.example")
                    .json(&serde_json::json!({"email": nobody, "password": "not-the-password-1"}))
            }),
        ),
        (
            "refresh, unknown refresh token",
            Box::new(|http, n| {
                http.post(n.url("/v1/sdk/refresh"))
                    .header("origin", "https://app.edge.example")
                    .json(&serde_json::json!({"refresh_token": "rt_unknown"}))
            }),
        ),
        (
            "logout from a refused origin",
            Box::new(|http, n| {
                http.post(n.url("/v1/sdk/logout"))
                    .bearer_auth(&token)
                    .header("origin", "https://evil.example")
                    .json(&serde_json::json!({"refresh_token": "rt_unknown"}))
            }),
        ),
        ("the browser client module", Box::new(|http, n| http.get(n.url("/console/caas-client.js")))),
        (
            "OPTIONS that is not a preflight",
            Box::new(|http, n| http.request(reqwest::Method::OPTIONS, n.url("/v1/messages")).bearer_auth(&token)),
        ),
    ];
    let http = client();
    // The setup above took long enough for the filter to give back the
    // user's idle lease (after 1 s: docs/DESIGN.md, "Quotas: leased"):
    // the user is active again, as a user sending these would be.
    until_current(fast, &token).await;
    let before = allowed_by_filter(fast).await;
    let preflights = stat(fast, "caas_edge.preflights").await;
    let denied = stat(fast, "caas_edge.denied").await;
    let failures = auth_failures(fast).await;
    let decided_before = decisions(fast).await;
    let (edge_before, reported_before) = (edge_stats(fast).await, edge_reports(fast).await);
    for (name, request) in &cases {
        let on = send(request(&http, fast)).await;
        let off = send(request(&http, slow)).await;
        if *name == "api key route" {
            // Each creates a session: compare what a client sees of it.
            assert_eq!((on.status, off.status), (201, 201), "{name}: {on:?} / {off:?}");
            continue;
        }
        assert_eq!(answer(&on), answer(&off), "{name}: fast path {on:?}\next_authz {off:?}");
    }
    // The valid requests were the filter's (ext_authz never saw them), and
    // with the same context headers as ext_authz's.
    let decided = allowed_by_filter(fast).await - before;
    assert!(decided >= 3, "the filter decided {decided} of the requests");
    // The preflights on browser routes were answered by the filter (the
    // API-key route's 403 is ext_authz's), with ext_authz's headers.
    let answered = stat(fast, "caas_edge.preflights").await - preflights;
    assert_eq!(answered, 5, "the filter answered {answered} of the 5 preflights on browser routes");
    // The refusals of verified credentials were the filter's too, answered
    // as ext_authz answers them (compared above): at least the expired
    // token, both wrong audiences and the revoked session, which any
    // current worker knows (another subject on the session and the refused
    // Origins, on an end-user or a refresh route, are the filter's on a
    // worker that looked the session up: Envoy runs two). ext-authz counted
    // every refusal once, whoever answered it: the 12 above (the tampered
    // token, the missing one, the key instead, the credential in the query
    // and the API-key route's preflight are its own).
    let refused_here = stat(fast, "caas_edge.denied").await - denied;
    assert!(refused_here >= 4, "the filter answered {refused_here} of the refusals it is certain of");
    let counted = within(Duration::from_secs(2), || async { auth_failures(fast).await - failures >= 12 }).await;
    assert!(counted.is_some(), "ext-authz did not count the filter's refusals with its own");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(auth_failures(fast).await - failures, 12, "a refusal counted twice");
    // ext-authz's `gateway_requests_total` counted every request once,
    // whoever decided it: the filter sends its allows' and preflights'
    // counts (the refusal ratio's denominator, deploy/monitoring/alerts.yml).
    let all = cases.len() as u64;
    let counted = within(Duration::from_secs(2), || async { decisions(fast).await - decided_before >= all }).await;
    assert!(counted.is_some(), "ext-authz counted {} of {all} decisions", decisions(fast).await - decided_before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(decisions(fast).await - decided_before, all, "a decision counted twice");
    // And ext-authz's own view of the fast path (gateway_edge_decisions_total
    // and gateway_edge_forwarded_total) holds what the filter's Envoy stats
    // hold: every request it decided or left to ext_authz, once.
    let by_envoy = edge_stats(fast).await - edge_before;
    assert!(by_envoy >= all, "the filter's stats saw {by_envoy} of {all} requests");
    let reported =
        within(Duration::from_secs(2), || async { edge_reports(fast).await - reported_before >= by_envoy }).await;
    assert!(
        reported.is_some(),
        "ext-authz holds {} of the filter's {by_envoy}",
        edge_reports(fast).await - reported_before
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edge_reports(fast).await - reported_before, edge_stats(fast).await - edge_before);
    // The public and refresh routes' requests were the filter's (they need
    // nothing looked up), as Envoy's access log says.
    for path in ["/v1/client/login", "/v1/sdk/refresh", "/console/caas-client.js"] {
        let logged = logged_within(fast, |e| e["path"] == path && e["edge"] == "allow").await;
        assert!(logged, "{path}: not allowed by the filter, by Envoy's access log");
    }
    // And Envoy's access log says so (`edge`), as it says `allow` for an allow.
    let logged = logged_within(fast, |e| {
        e["method"] == "OPTIONS" && e["path"] == "/v1/client/login" && e["edge"] == "preflight" && e["status"] == 204
    })
    .await;
    assert!(logged, "no preflight answered by the filter in Envoy's access log");
    // A socket's upgrade (its token in the subprotocol, as browsers send
    // it) is the filter's too; realtime.rs runs every socket flow through it.
    // The checks above took long enough for the filter to give back the
    // user's idle lease again (after 1 s), as before the cases.
    until_current(fast, &token).await;
    let before = allowed_by_filter(fast).await;
    let socket = crate::ws::connect(&fast.ws(), Some(&token), None).await;
    assert!(socket.is_ok(), "the socket did not open through the fast path");
    assert!(allowed_by_filter(fast).await > before, "the filter did not decide the socket's upgrade");
    drop(socket);
    // With the token in the query instead: the filter's as well, and what
    // reaches the service is the path Envoy writes when ext-authz has it
    // take the token out (the rest of the query sorted by name).
    until_current(fast, &token).await;
    let before = allowed_by_filter(fast).await;
    let path = format!("/v1/messages?v=2&token={token}&a=1");
    let (on, off) = (echoed_upgrade(fast, &path).await, echoed_upgrade(slow, &path).await);
    assert_eq!(on["uri"], off["uri"], "the service got another path through the filter");
    assert_eq!(on["uri"], "/v1/messages?a=1&v=2");
    assert_eq!(on["headers"]["x-caas-user-id"], off["headers"]["x-caas-user-id"]);
    assert!(
        allowed_by_filter(fast).await > before,
        "the filter did not decide the upgrade with the token in the query"
    );
    let socket = crate::ws::connect(&format!("{}?token={token}", fast.ws()), None, None).await;
    assert!(socket.is_ok(), "the socket did not open with its token in the query");
    drop(socket);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_revoked_session_is_refused_by_the_fast_path_within_a_second() {
    let Some(cluster) = fast_path_cluster(&[]).await else { return };
    let node = cluster.node();
    let (tenant, _, token) = decided_user(node, "edge-logout").await;
    // Revoked by an operator-like path that does not go through the token:
    // the tenant's backend bans the user (every session of it).
    let r = send(client().post(node.url("/v1/sdk/users/user-1/revoke")).header("x-api-key", &tenant.key)).await;
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    let http = client();
    let took = within(Duration::from_secs(1), || {
        let (http, token, url) = (http.clone(), token.clone(), node.url("/v1/messages"));
        async move {
            let r = send(http.get(url).bearer_auth(&token)).await;
            r.status == 401 && r.code() == "session_revoked"
        }
    })
    .await;
    assert!(took.is_some(), "the fast path still allowed a revoked session after 1 s");
    cluster.shutdown().await;
}

#[tokio::test]
async fn with_the_feed_cut_ext_authz_decides_everything() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops = free.local_addr().unwrap();
    drop(free);
    let (feed, outage) = Outage::proxy(ops).await;
    let (ops_arg, feed_arg) = (ops.to_string(), feed.to_string());
    let extra =
        ["--ext-authz-ops-addr", ops_arg.as_str(), "--edge-feed-addr", feed_arg.as_str(), ECHO_CHAT[0], ECHO_CHAT[1]];
    let Some(cluster) = fast_path_cluster(&extra).await else { return };
    let node = cluster.node();
    let (tenant, session, token) = decided_user(node, "edge-cut").await;

    // Within a second of the last confirmation the filter stops deciding.
    // (It adds its counts to Envoy's stats on its 100 ms tick: counted
    // from the cut, not between two reads a tick may not fall between.)
    let before = stat(node, "caas_edge.forwarded.not_current").await;
    outage.cut();
    let http = client();
    let stale = within(Duration::from_secs(2), || {
        let (http, token, url) = (http.clone(), token.clone(), node.url("/v1/messages"));
        async move {
            send(http.get(url).bearer_auth(&token)).await;
            stat(node, "caas_edge.forwarded.not_current").await > before
        }
    })
    .await;
    assert!(stale.is_some(), "the filter still decides with its feed cut");
    let allowed = allowed_by_filter(node).await;
    // ext_authz is the composite filter's delegate (envoy/envoy.yaml): had
    // Envoy failed to create it, a request would go on unchecked. From here
    // it is created for each of the three requests the filter leaves to it.
    let created = stat(node, "composite.filter_delegation_success").await;
    let r = send(http.get(node.url("/v1/messages")).bearer_auth(&token)).await;
    assert_eq!(r.status, 200, "ext_authz still allows a valid token: {r:?}");
    assert_eq!(r.verified_context().session_id, session["session_id"].as_str().unwrap());
    assert_eq!(allowed_by_filter(node).await, allowed, "the filter decided with its feed cut");
    // A logout while the feed is cut: ext_authz refuses it at once.
    let r = send(http.post(node.url("/v1/sdk/logout")).bearer_auth(&token)).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = send(http.get(node.url("/v1/messages")).bearer_auth(&token)).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"), "{r:?}");
    assert!(stat(node, "composite.filter_delegation_success").await >= created + 3);
    assert_eq!(stat(node, "composite.filter_delegation_error").await, 0);

    // Back: the filter decides again (a fresh session), and still leaves
    // the revoked one to ext_authz.
    outage.restore();
    let fresh = sdk_session(node, &tenant, "user-2").await;
    until_current(node, fresh["access_token"].as_str().unwrap()).await;
    let r = send(http.get(node.url("/v1/messages")).bearer_auth(&token)).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"), "{r:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn nothing_a_client_sends_skips_ext_authz() {
    let Some(cluster) = fast_path_cluster(&ECHO_CHAT).await else { return };
    let node = cluster.node();
    decided_user(node, "edge-forge").await;
    let http = client();
    let marks = [
        ("wasm.caas_edge", "allow"),
        ("caas-edge", "allow"),
        ("x-caas-edge", "allow"),
        ("x-envoy-filter-state", "wasm.caas_edge=allow"),
        ("x-envoy-dynamic-metadata", "caas_edge=allow"),
        ("x-caas-auth-type", "jwt"),
    ];
    for (name, value) in marks {
        for (method, path) in [("GET", "/v1/messages"), ("GET", "/v1/client/profile"), ("POST", "/v1/sdk/session")] {
            let request = http.request(method.parse().unwrap(), node.url(path)).header(name, value);
            // Refused by ext_authz (401), or by Envoy before any filter (400).
            let r = send(request.bearer_auth("not-a-token")).await;
            assert!([400, 401].contains(&r.status), "{name}: {value} on {path}: {r:?}");
            let r = send(http.request(method.parse().unwrap(), node.url(path)).header(name, value)).await;
            assert!([400, 401].contains(&r.status), "{name}: {value} on {path} without a credential: {r:?}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_header_value_that_is_not_utf8_goes_to_ext_authz_and_the_filter_keeps_deciding() {
    let Some(cluster) = fast_path_cluster(&ECHO_CHAT).await else { return };
    let node = cluster.node();
    let (_, session, token) = decided_user(node, "edge-bytes").await;
    let http = client();
    // HTTP lets a header value carry any byte from 0x80 up (Latin-1 text, or
    // an attacker's): once, this stopped the module on its worker and every
    // later request there was answered 503.
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let unusual = stat(node, "caas_edge.forwarded.unusual").await;
    for _ in 0..5 {
        let r = send(http.get(node.url("/v1/messages")).bearer_auth(&token).header("x-note", latin1.clone())).await;
        assert_eq!(r.status, 200, "ext_authz decides it as any other: {r:?}");
        assert_eq!(r.verified_context().session_id, session["session_id"].as_str().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        stat(node, "caas_edge.forwarded.unusual").await >= unusual + 5,
        "the filter did not leave them to ext_authz"
    );
    // And the filter still runs, and decides.
    let before = allowed_by_filter(node).await;
    for _ in 0..5 {
        let r = send(http.get(node.url("/v1/messages")).bearer_auth(&token)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(allowed_by_filter(node).await > before, "the filter stopped deciding after a header it could not read");
    cluster.shutdown().await;
}

#[tokio::test]
async fn through_the_fast_path_a_quota_admits_what_it_admits_without_it() {
    let Some(cluster) = cluster_modes(&[true, false], &ECHO_CHAT).await else { return };
    let (fast, slow) = (&cluster.nodes[0], &cluster.nodes[1]);
    if !fast.stack.fast_path {
        return;
    }
    let tenant = onboard(fast, "edge-quota").await;
    set_whitelists(fast, &tenant, &["127.0.0.1/32"], &[]).await;
    let http = client();
    let mut tokens = Vec::new();
    for user in ["user-1", "user-2"] {
        let session = sdk_session(fast, &tenant, user).await;
        tokens.push(session["access_token"].as_str().unwrap().to_string());
    }
    // Room enough while the filter learns the sessions and takes its first leases.
    let limits = |rate: u32, burst: u32| {
        serde_json::json!({ "per_key": {"rate": 1000, "burst": 2000}, "per_user": {"rate": rate, "burst": burst},
                            "per_tenant": {"rate": 50000, "burst": 100000} })
    };
    let put = |body: serde_json::Value| {
        let (http, url, dashboard) = (http.clone(), fast.url("/v1/client/rate-limits"), tenant.dashboard.clone());
        async move { send(http.put(url).bearer_auth(&dashboard).json(&body)).await }
    };
    assert_eq!(put(limits(1000, 2000)).await.status, 200);
    for token in &tokens {
        until_current(fast, token).await;
    }
    // A burst of 10 at 1 request/s: as many requests as it takes, in a row,
    // through the filter (leased from ext-authz's bucket) or ext_authz.
    assert_eq!(put(limits(1, 10)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // the change reaches the filter (it drops old leases)
    let before = allowed_by_filter(fast).await;
    // The burst's first request goes to ext_authz and makes the filter ask
    // for a lease at its next tick, which it gets only from the upper half
    // of the burst (docs/DESIGN.md, "Quotas: leased"): a pause for the tick,
    // else requests in a row use that half up through ext_authz first.
    let first = send(http.get(fast.url("/v1/conversations")).bearer_auth(&tokens[0])).await;
    assert_eq!(first.status, 200, "{first:?}");
    let mut admitted = 1;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut refused = None;
    for _ in 0..40 {
        let r = send(http.get(fast.url("/v1/conversations")).bearer_auth(&tokens[0])).await;
        match r.status {
            200 => admitted += 1,
            _ => refused = Some(r),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let by_filter = allowed_by_filter(fast).await - before;
    eprintln!("fast path: {admitted} of 41 admitted under a burst of 10 at 1/s, {by_filter} of them by the filter");
    // The burst, plus what refilled over the ~0.9 s of the run; never a second burst.
    assert!((10..=11).contains(&admitted), "{admitted} admitted under a burst of 10");
    assert!(by_filter > 0, "the filter decided none of them: the test shows nothing");
    // Refused exactly as ext_authz refuses, with its headers.
    let refused = refused.expect("some refused");
    let off = {
        let mut last = None;
        for _ in 0..12 {
            last = Some(send(http.get(slow.url("/v1/conversations")).bearer_auth(&tokens[0])).await);
        }
        last.unwrap()
    };
    assert_eq!(answer(&refused), answer(&off), "fast path {refused:?}\next_authz {off:?}");
    // Another user of the tenant has its own bucket, through the filter too.
    let r = send(http.get(fast.url("/v1/conversations")).bearer_auth(&tokens[1])).await;
    assert_eq!(r.status, 200, "{r:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_api_key_is_decided_in_the_proxy_and_a_whitelist_change_or_its_revocation_applies_within_a_second() {
    let Some(cluster) = fast_path_cluster(&ECHO_CHAT).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "edge-keys").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let http = client();
    let with_key = |user: &'static str| {
        let (http, url, key) = (http.clone(), node.url("/v1/sdk/session"), tenant.key.clone());
        async move { send(http.post(url).header("x-api-key", key).json(&serde_json::json!({ "user_id": user }))).await }
    };
    // The filter learns the key (its hash and the tenant's whitelist) from
    // the first requests, which ext_authz decides, then decides it itself;
    // auth-api takes the context it signed (201: a session for the user).
    let decided = within(Duration::from_secs(10), || async {
        let before = allowed_by_filter(node).await;
        let r = with_key("user-1").await;
        assert_eq!(r.status, 201, "{r:?}");
        allowed_by_filter(node).await > before
    })
    .await;
    assert!(decided.is_some(), "the fast path never allowed the API key");

    // The tenant whitelists another network: refused within a second, and
    // from then on, as ext_authz refuses it (403 ip_not_allowed).
    set_whitelists(node, &tenant, &["10.0.0.0/8"], &[]).await;
    let took = within(Duration::from_secs(1), || async { with_key("user-2").await.code() == "ip_not_allowed" }).await;
    assert!(took.is_some(), "a whitelist change took more than a second through the fast path");
    for _ in 0..5 {
        let r = with_key("user-2").await;
        assert_eq!((r.status, r.code()), (403, "ip_not_allowed"), "{r:?}");
    }

    // Whitelisted again and decided by the filter again, then revoked.
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let decided = within(Duration::from_secs(10), || async {
        let before = allowed_by_filter(node).await;
        with_key("user-3").await.status == 201 && allowed_by_filter(node).await > before
    })
    .await;
    assert!(decided.is_some(), "the fast path never allowed the API key again");
    let r =
        send(http.delete(node.url(&format!("/v1/client/api-keys/{}", tenant.key_id))).bearer_auth(&tenant.dashboard))
            .await;
    assert_eq!(r.status, 204, "{r:?}");
    let took = within(Duration::from_secs(1), || async { with_key("user-4").await.code() == "api_key_revoked" }).await;
    assert!(took.is_some(), "a revoked key was still allowed after a second through the fast path");
    for _ in 0..5 {
        let r = with_key("user-4").await;
        assert_eq!((r.status, r.code()), (401, "api_key_revoked"), "{r:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_browsers_origin_is_decided_in_the_proxy_with_cors_and_a_whitelist_change_applies_within_a_second() {
    let Some(cluster) = fast_path_cluster(&ECHO_CHAT).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "edge-origin").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &["https://app.edge.example"]).await;
    let session = sdk_session(node, &tenant, "user-1").await;
    let token = session["access_token"].as_str().unwrap().to_string();
    let http = client();
    let from = |origin: &'static str| {
        let (http, url, token) = (http.clone(), node.url("/v1/messages"), token.clone());
        async move { send(http.get(url).bearer_auth(token).header("origin", origin)).await }
    };
    let decided = within(Duration::from_secs(10), || async {
        let before = allowed_by_filter(node).await;
        let r = from("https://app.edge.example").await;
        assert_eq!(r.status, 200, "{r:?}");
        // CORS as ext_authz answers it.
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.edge.example"), "{r:?}");
        assert_eq!(r.header("vary"), Some("Origin"), "{r:?}");
        allowed_by_filter(node).await > before
    })
    .await;
    assert!(decided.is_some(), "the fast path never allowed a request with an Origin");
    let r = from("https://evil.example").await;
    assert_eq!((r.status, r.code()), (403, "origin_not_allowed"), "{r:?}");
    // The tenant moves its app: the old Origin is refused within a second.
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &["https://new.edge.example"]).await;
    let took = within(Duration::from_secs(1), || async {
        from("https://app.edge.example").await.code() == "origin_not_allowed"
    })
    .await;
    assert!(took.is_some(), "an Origin whitelist change took more than a second through the fast path");
    for _ in 0..5 {
        let r = from("https://app.edge.example").await;
        assert_eq!((r.status, r.code()), (403, "origin_not_allowed"), "{r:?}");
    }
    let decided = within(Duration::from_secs(10), || async {
        let before = allowed_by_filter(node).await;
        from("https://new.edge.example").await.status == 200 && allowed_by_filter(node).await > before
    })
    .await;
    assert!(decided.is_some(), "the fast path never allowed the new Origin");
    cluster.shutdown().await;
}

/// Dashboards are decided in the proxy too, and the console's sign-out holds
/// at once: right after "sign out everywhere" answers, the account's other
/// session is refused on its next request, as ext-authz refuses it (it
/// learns in the process that ended the sessions; the filter, from its feed
/// a moment later, so meanwhile it leaves dashboards to ext_authz).
#[tokio::test]
async fn dashboards_are_decided_in_the_proxy_and_a_sign_out_holds_at_once() {
    let Some(cluster) = fast_path_cluster(&[]).await else { return };
    let node = cluster.node();
    let http = client();
    for round in 0..5 {
        let (email, _) = account(node, &format!("edge-dash-{round}")).await;
        let (this, other) = (dashboard_token(node, &email).await, dashboard_token(node, &email).await);
        // Until the filter allows the other session's reads itself.
        until_decided(node, "/v1/client/profile", &other).await;
        let r = send(http.post(node.url("/v1/client/logout-all")).bearer_auth(&this)).await;
        assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (200, Some(2)), "{r:?}");
        // On the connection that signed out, and on new ones (which Envoy
        // may give to its other worker).
        for token in [&other, &this] {
            for http in [http.clone(), client(), client()] {
                let r = send(http.get(node.url("/v1/client/profile")).bearer_auth(token)).await;
                assert_eq!((r.status, r.code()), (401, "session_revoked"), "round {round}: {r:?}");
            }
        }
    }
    // The context a service gets from the filter is ext-authz's: the
    // dashboard's, with the client's address.
    let (email, tenant_id) = account(node, "edge-dash-context").await;
    let token = dashboard_token(node, &email).await;
    until_decided(node, "/v1/client/profile", &token).await;
    let logged = logged_within(node, |e| {
        e["path"] == "/v1/client/profile"
            && e["edge"] == "allow"
            && e["status"] == 200
            && e["tenant_id"] == tenant_id.as_str()
    })
    .await;
    assert!(logged, "no dashboard request the filter allowed, with its tenant, in Envoy's access log");
    cluster.shutdown().await;
}

/// A metric's value in a Prometheus text exposition (`name` with its labels).
fn exposed(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn envoys_metrics_are_served_on_the_stats_listener_and_nothing_else_of_its_admin() {
    let Some(cluster) = fast_path_cluster(&ECHO_CHAT).await else { return };
    let node = cluster.node();
    decided_user(node, "edge-stats").await;
    let envoy = node.stack.envoy.as_ref().unwrap();
    let http = client();
    let scrape = || async { send(http.get(format!("http://{}/stats/prometheus", envoy.stats))).await };
    // What operators alert on (deploy/monitoring/alerts.yml): the feed is
    // current and recent, the filter decides, ext_authz is always created.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = scrape().await;
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.body.as_str().unwrap();
    assert_eq!(exposed(text, "caas_edge_current{}"), Some(1.0), "{text}");
    assert!(exposed(text, "caas_edge_feed_lag_ms{}").is_some_and(|lag| lag < 1000.0), "{text}");
    assert!(exposed(text, "caas_edge_allowed{}").is_some_and(|n| n > 0.0), "{text}");
    assert!(exposed(text, "caas_edge_forwarded_not_current{}").is_some(), "{text}");
    let delegation = "envoy_http_composite_filter_delegation_error{envoy_http_conn_manager_prefix=\"public\"}";
    assert_eq!(exposed(text, delegation), Some(0.0), "{text}");

    // Nothing else of the admin: not another method, path or spelling of it
    // (sent as written, not normalised by a client library; at once, as
    // Envoy closes each connection a second after its answer).
    let mut asked = tokio::task::JoinSet::new();
    for request in [
        "POST /stats/prometheus",
        "GET /stats",
        "GET /config_dump",
        "POST /quitquitquit",
        "POST /healthcheck/fail",
        "GET /stats/prometheus/../../config_dump",
        "GET /stats/prometheus/%2e%2e/%2e%2e/config_dump",
        "GET /stats/prometheus%2f..%2f..%2fconfig_dump",
        "GET //stats/prometheus/..//clusters",
    ] {
        let stats = envoy.stats;
        asked.spawn(async move {
            let (method, path) = request.split_once(' ').unwrap();
            (request, raw_request(stats, method, path).await)
        });
    }
    while let Some(answered) = asked.join_next().await {
        let (request, (status, body)) = answered.unwrap();
        assert!([400, 404].contains(&status), "{request}: {status} {body}");
        assert!(!body.contains("static_resources") && !body.contains("cx_active"), "{request}: {body}");
    }
    // Envoy was not stopped or failed by any of them.
    assert_eq!(scrape().await.status, 200);
    assert_eq!(send(http.get(node.url("/healthz"))).await.status, 200);

    // A flood of scrapes: beyond 10 a second, 429 before the admin is asked.
    let flood = (0..40).map(|_| scrape());
    let statuses: Vec<u16> = futures_util::future::join_all(flood).await.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert!(refused >= 10, "{refused} of 40 refused: {statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(scrape().await.status, 200, "scrapes again after a second");
    cluster.shutdown().await;
}
