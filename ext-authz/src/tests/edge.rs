//! The differential test of the in-proxy fast path: a generated corpus of
//! requests through the filter's decision (edge-wasm/src/decide.rs) and the
//! Check. Where the filter allows, the Check must allow too, with the same
//! context headers and the same removals; where the filter forwards, the
//! Check decides (nothing to compare). The filter's state comes through the
//! feed's own JSON (crate::edge), so the two ends of the feed are tested
//! against each other too.

use std::collections::{BTreeSet, HashMap};

use caas_edge_wasm::decide::{Headers, Miss, Request, Verdict as EdgeVerdict, decide};
use caas_edge_wasm::state::State;
use caas_rules::trace::TraceParent;

use super::*;
use crate::edge::{EdgeMaterial, material_json, session_answer};

fn forge(claims: Claims) -> String {
    jwt().issue(&claims)
}

fn claims_of(token: &str) -> Claims {
    jwt().verify(token, Audience::Sdk, unix_now()).unwrap()
}

/// What ext-authz's feed would hand the filter with these settings.
fn material(quotas: bool, policy_table: Option<&str>) -> EdgeMaterial {
    EdgeMaterial {
        issuer: "caas".into(),
        jwt_secret: Secret::new("jwt-secret-jwt-secret-jwt-secret-0003"),
        jwt_secret_previous: None,
        service_secret: Secret::new(SERVICE),
        trusted_proxy_hops: 0,
        quotas,
        policy_table: policy_table.map(str::to_string),
    }
}

/// A filter that has read `material` from the feed (a resync) at `now_ms`.
fn filter_with(material: &EdgeMaterial, now_ms: u64) -> State {
    let mut state = State::default();
    let resync = serde_json::json!({
        "epoch": "e1", "cursor": 0, "current": true, "resync": true, "refused": [], "material": material_json(material, false, true)
    });
    state.apply_changes(resync.to_string().as_bytes(), now_ms).unwrap();
    state
}

/// The filter's verdict on `method path` with `headers` from `peer`, on a
/// route whose policy is `policy`, at `now_ms`.
fn edge_verdict(
    state: &mut State,
    method: &str,
    path: &str,
    policy: Option<&str>,
    headers: &[(&str, &str)],
    peer: &str,
    now_ms: u64,
) -> EdgeVerdict {
    let map: Headers = headers.iter().map(|(k, v)| (*k, *v)).collect();
    let req = Request {
        method,
        path,
        policy: &|| policy.map(str::to_string),
        headers: &map,
        peer: &|| Some(peer.parse().unwrap()),
        sessions_ended_at: &|| 0,
    };
    decide(state, &req, (now_ms / 1000) as i64, now_ms)
}

/// The filter learns session `sid` as the feed would serve it.
async fn learn(f: &Fixture, state: &mut State, sid: &str, now_ms: u64) {
    let validator = f.authorizer.validator();
    let session = validator.session_record(sid).await.unwrap();
    let (limits, origins) = match &session {
        Some(s) => (
            Some(validator.rate_limits(&s.tenant_id).await),
            Some(validator.origin_whitelist_entries(&s.tenant_id).await.unwrap()),
        ),
        None => (None, None),
    };
    let answer = session_answer("e1", 0, session.as_ref(), limits.as_ref(), origins);
    state.apply_session(sid, answer.to_string().as_bytes(), now_ms).unwrap();
}

/// The Check refused what the filter refused (or answered) itself, with the
/// same status, headers and body; the refusal's code.
fn assert_same_denial(edge: &EdgeVerdict, check: &Verdict, case: &str) -> &'static str {
    let EdgeVerdict::Deny(deny) = edge else { panic!("{case}: the filter answered {edge:?}") };
    assert_eq!(
        deny.report.status, check.status,
        "the filter refused with another status than the Check: {case}: {check:?}"
    );
    let ours: HashMap<String, String> = deny.headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(ours, check.response_headers, "{case}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&deny.body).unwrap(), check.body, "{case}");
    assert_eq!(deny.report.reason, check.code(), "{case}");
    deny.report.reason
}

/// The Check allowed what the filter allowed on `path`, with the same
/// context headers and the same removals, and nothing the filter does not
/// do: where the Check has Envoy take query parameters out, the filter
/// sets the path Envoy would have written.
fn assert_same_allow(edge: &caas_edge_wasm::decide::Allow, check: &Verdict, path: &str, case: &str) {
    assert_eq!(check.status, 200, "the filter allowed what the Check refuses: {case}: {check:?}");
    let mut set: HashMap<String, String> = edge.set.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let stripped: Vec<&str> = check.strip_query.iter().map(String::as_str).collect();
    let rewritten = (!stripped.is_empty()).then(|| caas_rules::request::without_query_params(path, &stripped));
    assert_eq!(set.remove(":path"), rewritten, "{case}: the path");
    // Signed at the same second: the same signature, unless a second passed.
    if set.get(context::CONTEXT_TS) != check.set.get(context::CONTEXT_TS) {
        set.remove(context::CONTEXT_SIG);
        set.remove(context::CONTEXT_TS);
        let mut theirs = check.set.clone();
        theirs.remove(context::CONTEXT_SIG);
        theirs.remove(context::CONTEXT_TS);
        assert_eq!(set, theirs, "{case}");
    } else {
        assert_eq!(set, check.set, "{case}");
    }
    let removed: BTreeSet<&String> = edge.remove.iter().collect();
    assert_eq!(removed, check.removed.iter().collect(), "{case}");
    let response: HashMap<String, String> = edge.response.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(response, check.response_headers, "{case}: CORS");
}

#[tokio::test]
async fn the_filter_allows_only_what_the_check_allows_with_the_same_context() {
    let f = fixture().await;
    let now = unix_now();
    let now_ms = now as u64 * 1000;
    // Quotas are held to the Check's in tests/quota.rs (leases): here the
    // filter allows without a lease, so every allow is compared; no table,
    // as the fixture's Check (see the mesh test for one).
    let material = material(false, None);
    let mut state = filter_with(&material, now_ms);

    let valid = claims_of(&f.token);
    let mut tokens: Vec<(&str, String)> = vec![
        ("valid", f.token.clone()),
        ("other tenant", f.other_token.clone()),
        ("dashboard", f.dashboard_token.clone()),
        ("expired", forge(Claims { iat: now - 3600, exp: now - 1800, ..valid.clone() })),
        ("not yet valid", forge(Claims { nbf: Some(now + 600), ..valid.clone() })),
        ("wrong issuer", {
            let other = JwtKeys::new("other", &Secret::new("jwt-secret-jwt-secret-jwt-secret-0003"), None);
            other.issue(&Claims { iss: "other".into(), ..valid.clone() })
        }),
        ("another subject", forge(Claims { sub: "user-2".into(), ..valid.clone() })),
        ("another tenant's claim", forge(Claims { tid: f.other_tenant.clone(), ..valid.clone() })),
        ("unknown session", forge(Claims { sid: new_id("ses"), ..valid.clone() })),
        ("foreign key", JwtKeys::new("caas", &Secret::new("x".repeat(40)), None).issue(&valid)),
    ];
    let mut tampered = f.token.clone();
    tampered.pop();
    tampered.push(if f.token.ends_with('A') { 'B' } else { 'A' });
    tokens.push(("tampered", tampered));

    // The filter learns each session as the feed would serve it.
    let unknown = tokens.iter().find(|(n, _)| *n == "unknown session").map(|(_, t)| claims_of(t).sid).unwrap();
    let dashboard = jwt().verify(&f.dashboard_token, Audience::Dashboard, now).unwrap().sid;
    for sid in [valid.sid.clone(), claims_of(&f.other_token).sid, dashboard, unknown] {
        learn(&f, &mut state, &sid, now_ms).await;
    }

    let origins = [None, Some("https://app.a.example"), Some("https://evil.example")];
    let paths = ["/v1/messages", "/v1/conversations?limit=5", "/v1/messages?token=x", "/v1/../v1/messages"];
    let policies = [Some("end_user"), Some("dashboard"), Some("api_key"), Some("refresh"), Some("public"), None];
    let extras: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-caas-tenant-id", "cl_forged"), ("x-caas-whatever", "1")],
        &[("upgrade", "websocket")],
        &[("x-api-key", "caas_not_a_key")],
    ];
    let (mut compared, mut allowed, mut with_origin) = (0, 0, 0);
    let mut denied = BTreeSet::new();
    let mut allowed_on = BTreeSet::new();
    for (name, token) in &tokens {
        for origin in origins {
            for path in paths {
                for policy in policies {
                    for extra in extras {
                        let authorization = format!("Bearer {token}");
                        let mut headers: Vec<(&str, &str)> =
                            vec![("authorization", authorization.as_str()), ("x-request-id", "req-edge-1")];
                        headers.extend(origin.map(|o| ("origin", o)));
                        headers.extend(extra.iter().copied());
                        let edge = edge_verdict(&mut state, "GET", path, policy, &headers, "127.0.0.1", now_ms);
                        if matches!(edge, EdgeVerdict::Forward(_)) {
                            continue;
                        }
                        let check = check(&f, request(policy, "GET", path, &headers, "127.0.0.1")).await;
                        let case = format!("{name}, origin {origin:?}, {path}, {policy:?}, {extra:?}");
                        let EdgeVerdict::Allow(edge) = edge else {
                            denied.insert(assert_same_denial(&edge, &check, &case));
                            continue;
                        };
                        allowed += 1;
                        assert_same_allow(&edge, &check, path, &case);
                        compared += 1;
                        with_origin += usize::from(origin.is_some());
                        allowed_on.insert(policy);
                    }
                }
            }
        }
    }
    assert!(allowed > 0 && compared == allowed, "the filter allowed {allowed} requests, {compared} compared");
    assert!(with_origin > 0, "the filter allowed no request with an Origin: CORS was not compared");
    // Each policy a bearer token can pass was compared (an API-key route
    // wants a key, and a route without a policy is never allowed).
    let passed = BTreeSet::from([Some("end_user"), Some("dashboard"), Some("refresh"), Some("public")]);
    assert_eq!(allowed_on, passed, "policies the filter allowed a token on");
    // Requests without a credential: a public route's, and a refresh's
    // (its refresh token is in the body, for auth-api), with and without an
    // Origin, with and without a forwarded-for header (not believed: no
    // proxy is trusted here).
    let mut anonymous = 0;
    for policy in [Some("public"), Some("refresh"), Some("end_user"), Some("api_key")] {
        for origin in origins {
            for forwarded in [None, Some("203.0.113.9")] {
                let mut headers: Vec<(&str, &str)> = vec![("x-request-id", "req-anon-1")];
                headers.extend(origin.map(|o| ("origin", o)));
                headers.extend(forwarded.map(|f| ("x-forwarded-for", f)));
                let edge = edge_verdict(&mut state, "POST", "/v1/sdk/refresh", policy, &headers, "127.0.0.1", now_ms);
                let case = format!("no credential, {policy:?}, origin {origin:?}, forwarded {forwarded:?}");
                let EdgeVerdict::Allow(edge) = edge else {
                    assert!(matches!(edge, EdgeVerdict::Forward(_)), "{case}: {edge:?}");
                    assert!(matches!(policy, Some("end_user" | "api_key")), "{case}: left to ext_authz");
                    continue;
                };
                let check = check(&f, request(policy, "POST", "/v1/sdk/refresh", &headers, "127.0.0.1")).await;
                assert_same_allow(&edge, &check, "/v1/sdk/refresh", &case);
                assert_eq!(check.set.get(context::AUTH_TYPE).map(String::as_str), Some("anonymous"), "{case}");
                anonymous += 1;
            }
        }
    }
    assert_eq!(anonymous, 2 * 3 * 2, "public and refresh, each Origin, each forwarded-for");
    // The refusals of verified tokens it answers itself, each compared.
    for code in [
        "token_expired",
        "token_not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "session_revoked",
        "origin_not_allowed",
    ] {
        assert!(denied.contains(code), "the filter answered no {code}: {denied:?}");
    }
    // Sockets: a WebSocket upgrade with its token in the subprotocol (as
    // browsers send it), in `authorization` or in the query (alone, or
    // among other parameters, which Envoy writes back sorted), with and
    // without an Origin; the context tells the socket when the token
    // expires. Another kind of upgrade is never the filter's.
    let (mut sockets, mut in_query) = (0, 0);
    for (name, token) in &tokens {
        for origin in origins {
            for (path, carrier) in [
                ("/v1/ws", "subprotocol"),
                ("/v1/ws", "authorization"),
                ("/v1/ws?token=T", "query"),
                ("/v1/ws?v=2&token=T&a=1&v=1", "query"),
            ] {
                for upgrade in ["websocket", "WebSocket", "h2c"] {
                    let subprotocol = format!("caas.v1, caas.bearer.{token}");
                    let authorization = format!("Bearer {token}");
                    let path = path.replace('T', token);
                    let mut headers: Vec<(&str, &str)> = vec![("upgrade", upgrade), ("x-request-id", "req-ws-1")];
                    match carrier {
                        "subprotocol" => headers.push(("sec-websocket-protocol", subprotocol.as_str())),
                        "authorization" => headers.push(("authorization", authorization.as_str())),
                        _ => {}
                    }
                    headers.extend(origin.map(|o| ("origin", o)));
                    let edge = edge_verdict(&mut state, "GET", &path, Some("end_user"), &headers, "127.0.0.1", now_ms);
                    if matches!(edge, EdgeVerdict::Forward(_)) {
                        continue;
                    }
                    assert!(upgrade != "h2c", "{name} {carrier} {upgrade}");
                    let check = check(&f, request(Some("end_user"), "GET", &path, &headers, "127.0.0.1")).await;
                    let case = format!("socket: {name}, {carrier}, {upgrade}, origin {origin:?}");
                    let EdgeVerdict::Allow(edge) = edge else {
                        assert_same_denial(&edge, &check, &case);
                        continue;
                    };
                    assert_same_allow(&edge, &check, &path, &case);
                    assert!(check.set.contains_key(context::TOKEN_EXPIRES_AT), "{case}");
                    sockets += 1;
                    in_query += usize::from(carrier == "query");
                }
            }
        }
    }
    assert!(sockets >= 4, "the filter allowed {sockets} socket upgrades");
    assert!(in_query >= 2, "the filter allowed {in_query} socket upgrades with the token in the query");
    // The common case is the filter's: a valid token, no Origin, an end-user route.
    let map: Headers =
        [("authorization", format!("Bearer {}", f.token)), ("x-request-id", "r".into())].into_iter().collect();
    let req = Request {
        method: "GET",
        path: "/v1/messages",
        policy: &|| Some("end_user".into()),
        headers: &map,
        peer: &|| Some("127.0.0.1".parse().unwrap()),
        sessions_ended_at: &|| 0,
    };
    assert!(matches!(decide(&mut state, &req, now, now_ms), EdgeVerdict::Allow(_)));
    // Without a confirmation within a second, it decides nothing.
    assert!(matches!(decide(&mut state, &req, now, now_ms + 1_000), EdgeVerdict::Forward(_)));
    // A revocation from the feed: refused at once (by the filter itself, as
    // the Check refuses a revoked session).
    let sid = claims_of(&f.token).sid;
    let revoked = serde_json::json!({
        "epoch": "e1", "cursor": 1, "current": true, "resync": false, "refused": [],
        "changes": [{ "type": "session_revoked", "tenant_id": f.tenant, "session_id": sid }]
    });
    state.apply_changes(revoked.to_string().as_bytes(), now_ms).unwrap();
    assert!(
        matches!(decide(&mut state, &req, now, now_ms), EdgeVerdict::Deny(d) if d.report.reason == "session_revoked")
    );
    // A lookup read before that revocation does not bring the session back.
    let stale = session_answer(
        "e1",
        0,
        f.authorizer.validator().session_record(&sid).await.unwrap().as_ref(),
        Some(&caas_rules::quota::DEFAULT_LIMITS),
        None,
    );
    state.apply_session(&sid, stale.to_string().as_bytes(), now_ms).unwrap();
    assert!(
        matches!(decide(&mut state, &req, now, now_ms), EdgeVerdict::Deny(d) if d.report.reason == "session_revoked")
    );
    // ext-authz saying it is itself behind stops the filter too.
    let mut other = State::default();
    let behind = serde_json::json!({
        "epoch": "e2", "cursor": 0, "current": false, "resync": true, "refused": [], "material": material_json(&material, false, true)
    });
    other.apply_changes(behind.to_string().as_bytes(), now_ms).unwrap();
    assert!(matches!(decide(&mut other, &req, now, now_ms), EdgeVerdict::Forward(_)));
}

/// A feed over `authorizer` whose gateway token the returned headers carry.
fn gateway_feed(authorizer: &Arc<Authorizer>) -> (Arc<crate::edge::EdgeFeed>, axum::http::HeaderMap) {
    gateway_feed_on(authorizer, Arc::new(LocalBus::new()))
}

/// The same, following `bus`.
fn gateway_feed_on(
    authorizer: &Arc<Authorizer>,
    bus: Arc<dyn caas_core::bus::EventBus>,
) -> (Arc<crate::edge::EdgeFeed>, axum::http::HeaderMap) {
    let token = Secret::new("edge-token-edge-token-edge-token-01");
    let feed = crate::edge::EdgeFeed::start(material(true, None), Some(token.clone()), authorizer.clone(), &bus, None);
    let mut gateway = axum::http::HeaderMap::new();
    gateway.insert(crate::edge::TOKEN_HEADER, token.expose().parse().unwrap());
    (feed, gateway)
}

/// One POST to a feed handler: its status and JSON body.
async fn post<F, Fut>(
    handler: F,
    feed: Arc<crate::edge::EdgeFeed>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (u16, serde_json::Value)
where
    F: Fn(axum::extract::State<Arc<crate::edge::EdgeFeed>>, axum::http::HeaderMap, axum::body::Bytes) -> Fut,
    Fut: std::future::Future<Output = axum::response::Response>,
{
    let response = handler(axum::extract::State(feed), headers, body.into()).await;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
}

/// A 400 whose message names the problem (`says`).
fn assert_bad_request((status, answer): (u16, serde_json::Value), body: &str, says: &str) {
    assert_eq!(status, 400, "{body}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}: {message}");
}

#[tokio::test]
async fn the_keys_endpoint_answers_by_hash_from_the_cache_only_and_serves_the_gateway_only() {
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let (feed, gateway) = gateway_feed(&authorizer);
    let call = |headers: axum::http::HeaderMap, body: String| post(crate::edge::keys, feed.clone(), headers, body);
    let hash = caas_core::api_key::parse(&f.key).unwrap();
    let unknown = caas_core::api_key::generate().hash;
    let asked = serde_json::json!({ "hashes": [hash, unknown] }).to_string();
    assert_eq!(call(axum::http::HeaderMap::new(), asked.clone()).await.0, 403);
    // Nothing read by a Check yet: pending, and not a database read.
    let reads = authorizer.validator().metrics().db_reads.get();
    let (status, body) = call(gateway.clone(), asked.clone()).await;
    assert_eq!(
        (status, body["keys"][0]["pending"].clone(), body["keys"][1]["pending"].clone()),
        (200, true.into(), true.into())
    );
    assert_eq!(authorizer.validator().metrics().db_reads.get(), reads);
    // After Checks of both, their records as the Check found them.
    for key in [f.key.as_str(), &caas_core::api_key::generate().key] {
        authorizer.check(request(Some("api_key"), "POST", "/v1/sdk/session", &[("x-api-key", key)], "127.0.0.1")).await;
    }
    let asked = serde_json::json!({ "hashes": [hash] }).to_string();
    let (status, body) = call(gateway.clone(), asked).await;
    assert_eq!(status, 200);
    let key = &body["keys"][0];
    assert_eq!(
        (key["key"]["key_id"].as_str(), key["key"]["revoked"].as_bool()),
        (Some(f.key_id.as_str()), Some(false))
    );
    assert_eq!(key["ip_whitelist"], serde_json::json!({ "enforced": true, "entries": ["127.0.0.1/32"] }));
    assert!(!body.to_string().contains(&f.key), "the key itself never leaves ext-authz");
    // Malformed or oversized: 400 naming the problem.
    let many: Vec<String> = (0..=crate::edge::MAX_KEY_LOOKUPS).map(|i| format!("{i:064}")).collect();
    for (body, says) in [
        ("{}".to_string(), "missing field"),
        (r#"{"hashes":["../x"]}"#.to_string(), "letters and digits"),
        (r#"{"hashes":[""]}"#.to_string(), "letters and digits"),
        (serde_json::json!({ "hashes": many }).to_string(), "at most 32"),
    ] {
        assert_bad_request(call(gateway.clone(), body.clone()).await, &body, says);
    }
}

#[tokio::test]
async fn the_lease_endpoint_serves_the_gateway_only_and_refuses_what_it_cannot_read() {
    use axum::http::HeaderMap;

    let f = fixture().await;
    let tenant = f.tenant.clone();
    let authorizer = Arc::new(f.authorizer);
    let (feed, gateway) = gateway_feed(&authorizer);
    let call = |headers: HeaderMap, body: String| post(crate::edge::lease, feed.clone(), headers, body);
    let asked = serde_json::json!({ "leases": [ { "tenant_id": tenant, "user_id": "user-1", "want": 3 },
                                                { "tenant_id": tenant, "user_id": "user-2", "want": 5_000 } ] });
    // Without the gateway's token: nothing, and nothing counted.
    let (status, _) = call(HeaderMap::new(), asked.to_string()).await;
    assert_eq!(status, 403);
    let mut wrong = HeaderMap::new();
    wrong.insert(crate::edge::TOKEN_HEADER, "not-the-token".parse().unwrap());
    assert_eq!(call(wrong, asked.to_string()).await.0, 403);
    assert_eq!(authorizer.metrics().edge_leased.get(), 0);
    // The gateway gets what fits, in order; an ask above the bound is cut to it
    // (then to the upper half of the default per-user burst of 100: 50).
    let (status, body) = call(gateway.clone(), asked.to_string()).await;
    assert_eq!((status, body["granted"].clone()), (200, serde_json::json!([3, 50])));
    let again = serde_json::json!({ "leases": [ { "tenant_id": tenant, "user_id": "user-2", "want": 50 } ] });
    assert_eq!(call(gateway.clone(), again.to_string()).await.1["granted"], serde_json::json!([0]));
    // What is given back unspent can be leased again (given back first, in the same call).
    let returned = serde_json::json!({ "returned": [ { "tenant_id": tenant, "user_id": "user-2", "n": 20 } ],
                                       "leases": again["leases"] });
    assert_eq!(call(gateway.clone(), returned.to_string()).await.1["granted"], serde_json::json!([20]));
    assert_eq!(authorizer.metrics().edge_returned.get(), 20);
    // A key's requests are leased from the key's bucket (the default per-key
    // burst of 2,000, upper half 1,000) and given back the same way.
    let key = serde_json::json!({ "leases": [ { "tenant_id": tenant, "key_id": f.key_id, "want": 5_000 } ],
                                  "used": [f.key_id] });
    assert_eq!(call(gateway.clone(), key.to_string()).await.1["granted"], serde_json::json!([1000]));
    let back = serde_json::json!({ "returned": [ { "tenant_id": tenant, "key_id": f.key_id, "n": 1000 } ],
                                   "leases": key["leases"] });
    assert_eq!(call(gateway.clone(), back.to_string()).await.1["granted"], serde_json::json!([1000]));
    // Malformed, wrongly typed, oversized or empty ids: 400 naming the problem.
    let too_many: Vec<_> = (0..=crate::edge::MAX_LEASES)
        .map(|i| serde_json::json!({"tenant_id": "t", "user_id": i.to_string(), "want": 1}))
        .collect();
    for (body, says) in [
        ("not json".to_string(), "not valid JSON"),
        (r#"{"leases":[{"tenant_id":"t","user_id":"u","want":"1"}]}"#.to_string(), "invalid type"),
        (r#"{"leases":[{"tenant_id":"","user_id":"u","want":1}]}"#.to_string(), "1 to 256 bytes"),
        (serde_json::json!({ "leases": too_many }).to_string(), "at most 256"),
        (r#"{"returned":[{"tenant_id":"t","user_id":"u","n":1001}]}"#.to_string(), "at most 1000"),
        (r#"{"returned":[{"tenant_id":"t","user_id":"","n":1}]}"#.to_string(), "1 to 256 bytes"),
        (r#"{"returned":[{"tenant_id":"t","user_id":"u","n":-1}]}"#.to_string(), "invalid value"),
        (r#"{"leases":[{"tenant_id":"t","user_id":"u","key_id":"k","want":1}]}"#.to_string(), "exactly one"),
        (r#"{"leases":[{"tenant_id":"t","want":1}]}"#.to_string(), "exactly one"),
        (serde_json::json!({ "used": vec!["key_1"; 257] }).to_string(), "at most 256"),
        (r#"{"used":[""]}"#.to_string(), "1 to 256 bytes"),
    ] {
        assert_bad_request(call(gateway.clone(), body.clone()).await, &body, says);
    }
}

#[tokio::test]
async fn in_a_mesh_the_filter_takes_the_policy_from_the_same_table_as_the_check() {
    let settings = AuthorizerSettings {
        policy_table: Some(caas_rules::policy::PolicyTable::builtin()),
        ..AuthorizerSettings::default()
    };
    let f = fixture_with(settings, Arc::new(MemoryCache::new())).await;
    let now = unix_now();
    let now_ms = now as u64 * 1000;
    let mut state = filter_with(&material(false, Some(caas_rules::policy::BUILTIN_TABLE)), now_ms);
    let sid = claims_of(&f.token).sid;
    let session = f.authorizer.validator().session_record(&sid).await.unwrap();
    state
        .apply_session(&sid, session_answer("e1", 0, session.as_ref(), None, None).to_string().as_bytes(), now_ms)
        .unwrap();
    let authorization = format!("Bearer {}", f.token);
    let headers = [("authorization", authorization.as_str()), ("x-request-id", "req-mesh-1")];
    // No route policy (Istio, Envoy Gateway): the table decides, in both.
    for (path, filter_allows) in [
        ("/v1/messages", true),
        ("/v1/conversations?limit=1", true),
        ("/v1/client/profile", false),
        ("/v1/nowhere", false),
    ] {
        let edge = edge_verdict(&mut state, "GET", path, None, &headers, "127.0.0.1", now_ms);
        let check = check(&f, request(None, "GET", path, &headers, "127.0.0.1")).await;
        assert_eq!(matches!(edge, EdgeVerdict::Allow(_)), filter_allows, "{path}: {edge:?}");
        if filter_allows {
            assert_eq!(check.status, 200, "{path}: the filter allowed what the Check refuses: {check:?}");
        }
    }
}

/// The keys of the API-key corpus: one valid, one rotated out and expired,
/// one revoked, another tenant's (whose whitelist is empty), one unknown,
/// malformed ones.
async fn key_corpus() -> (Fixture, Vec<(&'static str, String)>) {
    let store = caas_core::testing::sqlite_store().await;
    let (tenant, first, _) = register(&store, "keys@example.com").await;
    let (_, other_tenant_key, _) = register(&store, "other-keys@example.com").await;
    let audit = AuditEntry::new(caas_core::store::AuditAction::IpWhitelistUpdated);
    let now = unix_now();
    store.replace_whitelist(WhitelistKind::Ip, &tenant, &["127.0.0.1/32".into()], &audit, now).await.unwrap();
    // Rotated twice: the first key revoked, the second expired (no grace), a third primary.
    let rotate = async |grace: i64| {
        let generated = caas_core::api_key::generate();
        let key = NewApiKey { id: new_id("key"), hash: generated.hash, prefix: generated.display_prefix };
        let audit = AuditEntry::new(caas_core::store::AuditAction::ApiKeyRotated);
        store.rotate_api_key(&tenant, &key, grace, &audit, now - 10).await.unwrap();
        generated.key
    };
    let second = rotate(3600).await;
    let valid = rotate(0).await;
    let keys = vec![
        ("valid", valid),
        ("rotated out, expired", second),
        ("revoked", first),
        ("another tenant's, no whitelisted address", other_tenant_key),
        ("unknown", caas_core::api_key::generate().key),
        ("malformed", "caas_not_a_key".into()),
        ("not ours", "sk_live_0123456789".into()),
        ("two keys", "caas_a,caas_b".into()),
    ];
    let authorizer = authorizer_on(store, Arc::new(MemoryCache::new()), AuthorizerSettings::default());
    let f = Fixture {
        authorizer,
        tenant,
        other_tenant: String::new(),
        key: String::new(),
        key_id: String::new(),
        token: String::new(),
        other_token: String::new(),
        dashboard_token: String::new(),
    };
    (f, keys)
}

#[tokio::test]
async fn for_api_keys_too_the_filter_allows_only_what_the_check_allows() {
    let (f, keys) = key_corpus().await;
    let now = unix_now();
    let now_ms = now as u64 * 1000;
    let mut state = filter_with(&material(false, None), now_ms);
    // The feed answers keys a Check read lately, from the cache only: none yet.
    let hashes: Vec<String> = keys.iter().filter_map(|(_, k)| caas_core::api_key::parse(k).ok()).collect();
    let answer = crate::edge::key_answers(f.authorizer.validator(), "e1", 0, &hashes).await.unwrap();
    assert!(answer["keys"].as_array().unwrap().iter().all(|k| k["pending"] == true), "{answer}");
    // Each key's first request is the Check's, as through Envoy; then the
    // filter learns every key it can hash, as the feed serves it.
    for (_, key) in &keys {
        check(&f, request(Some("api_key"), "POST", "/v1/sdk/session", &[("x-api-key", key)], "127.0.0.1")).await;
    }
    let answer = crate::edge::key_answers(f.authorizer.validator(), "e1", 0, &hashes).await.unwrap();
    state.apply_keys(answer.to_string().as_bytes(), now_ms).unwrap();

    let peers = ["127.0.0.1", "10.1.2.3", "::ffff:127.0.0.1"];
    let paths = ["/v1/sdk/session", "/v1/sdk/session?api_key=x", "/v1/../v1/sdk/session"];
    let policies = [Some("api_key"), Some("end_user"), Some("refresh"), Some("public"), None];
    let extras: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-forwarded-for", "127.0.0.1")],
        &[("x-caas-key-id", "key_forged"), ("x-caas-whatever", "1")],
        &[("origin", "https://app.a.example")],
    ];
    // Allows compared, per policy: (all, of the valid key).
    let mut allowed: HashMap<Option<&str>, (usize, usize)> = HashMap::new();
    let mut key_denials = BTreeSet::new();
    for (name, key) in &keys {
        for peer in peers {
            for path in paths {
                for policy in policies {
                    for extra in extras {
                        let mut headers: Vec<(&str, &str)> = vec![("x-api-key", key), ("x-request-id", "req-key-1")];
                        headers.extend(extra.iter().copied());
                        let edge = edge_verdict(&mut state, "POST", path, policy, &headers, peer, now_ms);
                        if matches!(edge, EdgeVerdict::Forward(_)) {
                            continue;
                        }
                        let check = check(&f, request(policy, "POST", path, &headers, peer)).await;
                        let case = format!("{name}, from {peer}, {path}, {policy:?}, {extra:?}");
                        let EdgeVerdict::Allow(edge) = edge else {
                            key_denials.insert(assert_same_denial(&edge, &check, &case));
                            continue;
                        };
                        assert_same_allow(&edge, &check, path, &case);
                        let counts = allowed.entry(policy).or_default();
                        counts.0 += 1;
                        counts.1 += usize::from(*name == "valid");
                    }
                }
            }
        }
    }
    // The valid key from the whitelisted address (two spellings of
    // 127.0.0.1), on the API-key and refresh routes, in the canonical path,
    // with any of the extras: an Origin changes nothing for a key (no CORS),
    // and the forwarded-for header is not believed from an untrusted peer.
    // On a public route the key means nothing: any key the filter holds
    // (a made-up one is ext_authz's), from any address.
    assert_eq!(allowed.get(&Some("api_key")), Some(&(8, 8)), "{allowed:?}");
    assert_eq!(allowed.get(&Some("refresh")), Some(&(8, 8)), "{allowed:?}");
    assert!(allowed.get(&Some("public")).is_some_and(|&(all, valid)| all > valid && valid == 12), "{allowed:?}");
    assert_eq!(allowed.len(), 3, "{allowed:?}");
    // A known key's refusals it answers itself, each compared.
    let expected = BTreeSet::from(["api_key_expired", "api_key_revoked", "ip_not_allowed"]);
    assert_eq!(key_denials, expected, "the filter's refusals of known keys");
}

#[tokio::test]
async fn with_its_bus_down_ext_authz_tells_the_filter_it_is_not_current() {
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let token = Some(Secret::new("edge-token-edge-token-edge-token-01"));
    let up: Arc<dyn caas_core::bus::EventBus> = Arc::new(LocalBus::new());
    let feed = crate::edge::EdgeFeed::start(material(true, None), token.clone(), authorizer.clone(), &up, None);
    assert_eq!(feed.changes_since(None, 0)["current"], true);
    // Revocations from other processes would not arrive: the validator
    // trusts no cache, and the filter must not decide from its tables.
    let down: Arc<dyn caas_core::bus::EventBus> =
        Arc::new(caas_core::bus::RedisBus::start("redis://127.0.0.1:1").unwrap());
    let feed = crate::edge::EdgeFeed::start(material(true, None), token, authorizer, &down, None);
    assert_eq!(feed.changes_since(None, 0)["current"], false);
    let mut state = State::default();
    state.apply_changes(feed.changes_since(None, 0).to_string().as_bytes(), unix_now() as u64 * 1000).unwrap();
    assert!(!state.current(unix_now() as u64 * 1000));
}

/// One `GET /edge/v1/changes` from the gateway: its answer, and how long it
/// took to come.
async fn poll(
    feed: &Arc<crate::edge::EdgeFeed>,
    gateway: &axum::http::HeaderMap,
    query: &str,
) -> (serde_json::Value, Duration) {
    let started = std::time::Instant::now();
    let query = axum::extract::Query::try_from_uri(&format!("/edge/v1/changes?{query}").parse().unwrap()).unwrap();
    let response = crate::edge::changes(axum::extract::State(feed.clone()), gateway.clone(), query).await;
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (serde_json::from_slice(&bytes).unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_held_poll_is_answered_the_moment_a_revocation_arrives() {
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let bus = Arc::new(LocalBus::new());
    let (feed, gateway) = gateway_feed_on(&authorizer, bus.clone());
    let (first, _) = poll(&feed, &gateway, "since=0").await;
    let position = format!("epoch={}&since={}", first["epoch"].as_str().unwrap(), first["cursor"]);
    // Nothing new: held for the whole wait, then answered as current.
    let (quiet, took) = poll(&feed, &gateway, &format!("{position}&wait=200")).await;
    assert!(took >= Duration::from_millis(200), "answered after {took:?}");
    assert_eq!((quiet["resync"].clone(), quiet["changes"].clone()), (serde_json::json!(false), serde_json::json!([])));
    // Without `wait`, at once (an older filter's poll).
    let (_, took) = poll(&feed, &gateway, &position).await;
    assert!(took < Duration::from_millis(1_000), "{took:?}");
    // A logout during the wait ends it with the revocation, not a poll later.
    let publisher = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        caas_core::bus::EventBus::publish(publisher.as_ref(), caas_core::events::Event::session_revoked("t1", "ses_1"))
            .await
            .unwrap();
    });
    let (news, took) = poll(&feed, &gateway, &format!("{position}&wait=5000")).await;
    assert_eq!(news["changes"][0]["session_id"], "ses_1", "{news}");
    assert!(took < Duration::from_millis(2_500), "the revocation waited {took:?} for the end of the hold");
    // With news already there, and with a wait past the bound: at once.
    let (again, took) = poll(&feed, &gateway, &format!("{position}&wait=99999999")).await;
    assert_eq!(again["changes"].as_array().map(Vec::len), Some(1));
    assert!(took < Duration::from_millis(1_000), "{took:?}");
}

/// auth-api publishes a revocation before it answers the sign-out; the
/// filter holds a dashboard's requests until a poll sent after that answer
/// is answered (edge-wasm decide.rs `as_dashboard`). So a poll that arrives
/// after the publish must carry it, however late the feed's own task runs
/// (here: not at all, on this one-thread runtime, until the test yields).
#[tokio::test]
async fn a_poll_after_a_revocation_was_published_carries_it() {
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let bus = Arc::new(LocalBus::new());
    let (feed, gateway) = gateway_feed_on(&authorizer, bus.clone());
    let first = feed.changes_since(None, 0);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let cursor = first["cursor"].as_u64().unwrap();
    for (i, session) in ["ses_1", "ses_2"].into_iter().enumerate() {
        let revoked = caas_core::events::Event::session_revoked("t1", session);
        caas_core::bus::EventBus::publish(bus.as_ref(), revoked).await.unwrap();
        let answer = feed.changes_since(Some(&epoch), cursor);
        assert_eq!(answer["changes"].as_array().map(Vec::len), Some(i + 1), "{answer}");
        assert_eq!(answer["changes"][i]["session_id"], session, "{answer}");
    }
    // The feed's task hears the same messages later: each is held once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (answer, _) = poll(&feed, &gateway, &format!("epoch={epoch}&since={cursor}")).await;
    assert_eq!(answer["changes"].as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!(answer["cursor"].as_u64(), Some(cursor + 2), "{answer}");
}

#[tokio::test]
async fn a_held_poll_is_answered_not_current_the_moment_the_bus_drops() {
    let Some(redis_url) = caas_core::testing::redis_url().await else { return };
    // Redis behind a proxy this test can cut, as a network failure would.
    let target = redis_address(&redis_url);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let accepting = {
        let links = links.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links.lock().unwrap().push(link.abort_handle());
            }
        })
    };
    let bus = caas_core::bus::RedisBus::start(&format!("redis://{proxy}")).unwrap();
    assert!(bus.wait_connected(Duration::from_secs(5)).await, "the bus did not connect through the proxy");
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let (feed, gateway) = gateway_feed_on(&authorizer, Arc::new(bus));
    let (first, _) = poll(&feed, &gateway, "since=0").await;
    assert_eq!(first["current"], true);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let cut = Arc::new(std::sync::OnceLock::new());
    {
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            accepting.abort();
            for link in links.lock().unwrap().drain(..) {
                link.abort();
            }
            let _ = cut.set(std::time::Instant::now());
        });
    }
    // Other tests' changes on the shared Redis may end a hold first: poll
    // on, as the filter does, until the answer says not current.
    let mut since = first["cursor"].clone();
    loop {
        let (answer, _) = poll(&feed, &gateway, &format!("epoch={epoch}&since={since}&wait=5000")).await;
        if answer["current"] == false {
            let heard = cut.get().expect("not current before the cut").elapsed();
            assert!(
                heard < Duration::from_millis(2_500),
                "the filter heard of it only at the end of the hold: {heard:?}"
            );
            break;
        }
        since = answer["cursor"].clone();
    }
}

/// Where a `redis://host:port/…` URL points.
fn redis_address(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs as _;
    let rest = url.split("://").nth(1).unwrap();
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// With spans exported, the filter's allow continues the caller's trace (or
/// starts one) as the Check's does: a traceparent naming a span of its own,
/// the same trace and sampling, the same `tracestate` removal; the rest of
/// the allow is the Check's, header for header.
#[tokio::test]
async fn with_spans_exported_the_filter_passes_the_trace_on_as_the_check_does() {
    let mut f = fixture().await;
    f.authorizer =
        f.authorizer.with_exporter(Some(caas_runtime::otlp::SpanExporter::start("ext-authz", "http://127.0.0.1:9")));
    let now = unix_now();
    let now_ms = now as u64 * 1000;
    let mut state = State::default();
    let resync = serde_json::json!({
        "epoch": "e1", "cursor": 0, "current": true, "resync": true, "refused": [],
        "material": material_json(&material(false, None), f.authorizer.exporting(), true)
    });
    state.apply_changes(resync.to_string().as_bytes(), now_ms).unwrap();
    learn(&f, &mut state, &claims_of(&f.token).sid, now_ms).await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = caller.replace("-01", "-00");
    let bearer = format!("Bearer {}", f.token);
    let cases: [&[(&str, &str)]; 4] = [
        &[("traceparent", caller)],
        &[("traceparent", caller), ("tracestate", "vendor=x")],
        &[("tracestate", "vendor=x")],
        &[("traceparent", &unsampled), ("tracestate", "vendor=x")],
    ];
    for extra in cases {
        let mut headers: Vec<(&str, &str)> = vec![("authorization", bearer.as_str()), ("x-request-id", "req-trace-1")];
        headers.extend(extra.iter().copied());
        let edge = edge_verdict(&mut state, "GET", "/v1/messages", Some("end_user"), &headers, "127.0.0.1", now_ms);
        let EdgeVerdict::Allow(mut edge) = edge else { panic!("the filter did not allow {extra:?}") };
        let mut check = check(&f, request(Some("end_user"), "GET", "/v1/messages", &headers, "127.0.0.1")).await;
        let case = format!("{extra:?}");
        let position = edge.set.iter().position(|(n, _)| *n == "traceparent").expect(&case);
        let ours = TraceParent::parse(&edge.set.remove(position).1).expect(&case);
        let theirs = TraceParent::parse(&check.set.remove("traceparent").expect(&case)).unwrap();
        let given = extra.iter().find(|(n, _)| *n == "traceparent").and_then(|(_, v)| TraceParent::parse(v));
        match &given {
            Some(given) => {
                assert_eq!((&ours.trace_id, &theirs.trace_id), (&given.trace_id, &given.trace_id), "{case}");
                assert_ne!(ours.parent_span_id, given.parent_span_id, "{case}: the allow is a span of its own");
            }
            None => assert_ne!(ours.trace_id, theirs.trace_id, "{case}: each starts a trace of its own"),
        }
        assert_eq!(ours.sampled, theirs.sampled, "{case}");
        match &edge.span {
            Some(span) => {
                assert!(ours.sampled, "{case}");
                assert_eq!((&span.trace_id, &span.span_id), (&ours.trace_id, &ours.parent_span_id), "{case}");
                let parent = given.as_ref().map(|g| g.parent_span_id.clone()).unwrap_or_default();
                assert_eq!(span.parent_span_id, parent, "{case}");
            }
            None => assert!(!ours.sampled, "{case}: a sampled allow must be a span"),
        }
        assert_same_allow(&edge, &check, "/v1/messages", &case);
    }
}

/// The filter's spans are exported as a Check's, marked as the filter's;
/// only the gateway may send them, and a malformed batch is refused whole.
#[tokio::test]
async fn the_spans_endpoint_exports_the_filters_allows_and_serves_the_gateway_only() {
    let f = fixture().await;
    let exporter = caas_runtime::otlp::SpanExporter::start("ext-authz", "http://127.0.0.1:9");
    let authorizer = Arc::new(f.authorizer.with_exporter(Some(exporter)));
    let (feed, gateway) = gateway_feed(&authorizer);
    assert_eq!(feed.changes_since(None, 0)["material"]["trace_export"], true);
    let call = |headers: axum::http::HeaderMap, body: String| post(crate::edge::spans, feed.clone(), headers, body);
    let span = |trace_id: &str, span_id: &str, policy: &str| {
        serde_json::json!({ "trace_id": trace_id, "parent_span_id": "", "span_id": span_id, "policy": policy, "decision": "allow",
                            "tenant_id": "cl_1", "request_id": "r1", "start_unix_nano": 1, "end_unix_nano": 2 })
    };
    let good = span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "end_user");
    let batch = serde_json::json!({ "spans": [good.clone(), span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b8", "api_key")] });
    assert_eq!(call(axum::http::HeaderMap::new(), batch.to_string()).await.0, 403);
    assert_eq!(authorizer.metrics().edge_spans.get(), 0);
    let (status, answer) = call(gateway.clone(), batch.to_string()).await;
    assert_eq!((status, answer["exported"].as_u64()), (200, Some(2)));
    assert_eq!(authorizer.metrics().edge_spans.get(), 2);
    let mut backwards = good.clone();
    backwards["end_unix_nano"] = 0.into();
    let mut long = good.clone();
    long["tenant_id"] = "t".repeat(129).into();
    let mut preflight = span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b9", "public");
    preflight["decision"] = "preflight".into();
    preflight["tenant_id"] = "".into();
    let (status, answer) = call(gateway.clone(), serde_json::json!({ "spans": [preflight.clone()] }).to_string()).await;
    assert_eq!((status, answer["exported"].as_u64()), (200, Some(1)), "a preflight answered on a public route");
    let public = span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902ba", "public");
    let refresh = span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902bb", "refresh");
    let (status, answer) = call(gateway.clone(), serde_json::json!({ "spans": [public, refresh] }).to_string()).await;
    assert_eq!((status, answer["exported"].as_u64()), (200, Some(2)), "allows on public and refresh routes");
    let mut api_preflight = preflight.clone();
    api_preflight["policy"] = "api_key".into();
    let mut denied = good.clone();
    denied["decision"] = "deny".into();
    let mut parent = good.clone();
    parent["parent_span_id"] = "xyz".into();
    let many: Vec<serde_json::Value> = (0..=crate::edge::MAX_SPANS).map(|_| good.clone()).collect();
    for (body, says) in [
        ("{}".to_string(), "missing field"),
        (serde_json::json!({ "spans": [span("0".repeat(32).as_str(), "00f067aa0ba902b7", "end_user")] }).to_string(), "W3C ids"),
        (serde_json::json!({ "spans": [span("4bf92f3577b34da6a3ce929d0e0e4736", "00F067AA0BA902B7", "end_user")] }).to_string(), "W3C ids"),
        (serde_json::json!({ "spans": [good.clone(), span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "nope")] }).to_string(), "spans[1]: decision and policy"),
        (serde_json::json!({ "spans": [api_preflight] }).to_string(), "decision and policy"),
        (serde_json::json!({ "spans": [denied] }).to_string(), "decision and policy"),
        (serde_json::json!({ "spans": [parent] }).to_string(), "parent_span_id"),
        (serde_json::json!({ "spans": [long] }).to_string(), "at most 128 bytes"),
        (serde_json::json!({ "spans": [backwards] }).to_string(), "before start"),
        (serde_json::json!({ "spans": many }).to_string(), "at most 512"),
    ] {
        assert_bad_request(call(gateway.clone(), body.clone()).await, &body, says);
    }
    assert_eq!(authorizer.metrics().edge_spans.get(), 5, "a refused batch exports nothing");
    // Not exporting: nothing to export, and the material says so.
    let quiet = Arc::new(fixture().await.authorizer);
    let (feed, gateway) = gateway_feed(&quiet);
    assert_eq!(feed.changes_since(None, 0)["material"]["trace_export"], false);
    let (status, answer) = post(crate::edge::spans, feed, gateway, batch.to_string()).await;
    assert_eq!((status, answer["exported"].as_u64()), (200, Some(0)));
}

/// Preflights: wherever the filter answers one, the Check answers it the
/// same (204, the same headers, nothing else); everything else with
/// `OPTIONS` it leaves to ext_authz.
#[tokio::test]
async fn the_filter_answers_only_the_preflights_the_check_answers_with_the_same_headers() {
    let f = fixture().await;
    let now = unix_now();
    let now_ms = now as u64 * 1000;
    let mut state = filter_with(&material(false, None), now_ms);
    let policies = [Some("end_user"), Some("dashboard"), Some("api_key"), Some("refresh"), Some("public"), None];
    let paths = ["/v1/messages", "/v1/../v1/messages", "/v1/messages?token=x"];
    let origins = [None, Some("https://app.a.example"), Some("https://evil.example")];
    let asked = [None, Some("POST")];
    let asked_headers = [None, Some("Authorization, X-Evil"), Some("content-type,x-request-id")];
    let (mut answered, mut per_policy) = (0, BTreeSet::new());
    for policy in policies {
        for path in paths {
            for origin in origins {
                for method in asked {
                    for headers_asked in asked_headers {
                        let mut headers: Vec<(&str, &str)> = vec![("x-request-id", "req-pre-1")];
                        headers.extend(origin.map(|o| ("origin", o)));
                        headers.extend(method.map(|m| ("access-control-request-method", m)));
                        headers.extend(headers_asked.map(|h| ("access-control-request-headers", h)));
                        let edge = edge_verdict(&mut state, "OPTIONS", path, policy, &headers, "127.0.0.1", now_ms);
                        let edge = match &edge {
                            EdgeVerdict::Preflight(preflight) => preflight.clone(),
                            EdgeVerdict::Allow(_) | EdgeVerdict::Deny(_) => panic!("an OPTIONS decided: {edge:?}"),
                            EdgeVerdict::Forward(_) => continue,
                        };
                        let check = check(&f, request(policy, "OPTIONS", path, &headers, "127.0.0.1")).await;
                        let case = format!("{policy:?} {path} {origin:?} {method:?} {headers_asked:?}");
                        assert_eq!(check.status, 204, "the filter answered what the Check does not: {case}: {check:?}");
                        let ours: HashMap<String, String> =
                            edge.headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                        assert_eq!(ours, check.response_headers, "{case}");
                        assert!(edge.span.is_none(), "{case}: spans are not exported here");
                        answered += 1;
                        per_policy.insert(policy);
                    }
                }
            }
        }
    }
    // Every browser-facing route's preflights, each way of asking for headers.
    assert_eq!(per_policy.len(), 4, "{per_policy:?}");
    assert!(answered >= 4 * 2 * 3, "the filter answered {answered} preflights");
}

/// The refusals the filter answered are logged and counted as a Check's;
/// only the gateway may report them, and only refusals the filter answers,
/// with the status ext-authz gives them.
#[tokio::test]
async fn the_denials_endpoint_counts_the_filters_refusals_as_the_checks_and_serves_the_gateway_only() {
    let f = fixture().await;
    let authorizer = Arc::new(f.authorizer);
    let (feed, gateway) = gateway_feed(&authorizer);
    assert_eq!(feed.changes_since(None, 0)["material"]["enforce"], true);
    let call = |headers: axum::http::HeaderMap, body: String| post(crate::edge::denials, feed.clone(), headers, body);
    let denial = |policy: &str, reason: &str, status: u16| {
        serde_json::json!({ "policy": policy, "reason": reason, "status": status, "tenant_id": "cl_1",
                            "request_id": "r1", "trace_id": "", "path": "/v1/messages", "method": "GET" })
    };
    let failures = |policy: &'static str, reason: &'static str| {
        authorizer.metrics().auth_failures.get_or_create(&[("policy", policy), ("reason", reason)]).get()
    };
    let batch = serde_json::json!({ "denials": [
        denial("end_user", "token_expired", 401),
        denial("end_user", "origin_not_allowed", 403),
        denial("api_key", "ip_not_allowed", 403),
        denial("refresh", "api_key_revoked", 401),
    ] });
    assert_eq!(call(axum::http::HeaderMap::new(), batch.to_string()).await.0, 403);
    assert_eq!(failures("end_user", "token_expired"), 0);
    let (status, answer) = call(gateway.clone(), batch.to_string()).await;
    assert_eq!((status, answer["recorded"].as_u64()), (200, Some(4)));
    assert_eq!(failures("refresh", "api_key_revoked"), 1);
    assert_eq!((failures("end_user", "token_expired"), failures("end_user", "origin_not_allowed")), (1, 1));
    assert_eq!(failures("api_key", "ip_not_allowed"), 1);
    assert_eq!(authorizer.metrics().origin_rejections.get(), 1);
    assert_eq!(authorizer.metrics().ip_whitelist_rejections.get(), 1);
    let mut traced = denial("end_user", "session_revoked", 401);
    traced["trace_id"] = "zz".into();
    let mut method = denial("end_user", "session_revoked", 401);
    method["method"] = "get it".into();
    for (body, says) in [
        ("{}".to_string(), "missing field"),
        (serde_json::json!({ "denials": [denial("public", "token_expired", 401)] }).to_string(), "policy"),
        (serde_json::json!({ "denials": [denial("end_user", "bad_signature", 401)] }).to_string(), "reason"),
        (serde_json::json!({ "denials": [denial("end_user", "too_many_failures", 429)] }).to_string(), "reason"),
        (serde_json::json!({ "denials": [denial("end_user", "token_expired", 403)] }).to_string(), "status"),
        (serde_json::json!({ "denials": [traced] }).to_string(), "trace_id"),
        (serde_json::json!({ "denials": [method] }).to_string(), "method"),
    ] {
        assert_bad_request(call(gateway.clone(), body.clone()).await, &body, says);
    }
    assert_eq!(failures("end_user", "session_revoked"), 0, "a refused batch counts nothing");
}

/// The filter's allows and preflights are counted in `gateway_requests_total`
/// with the Checks' (so a ratio over it sees every decision); only the
/// gateway may report them, and only decisions the filter makes.
#[tokio::test]
async fn the_decisions_endpoint_counts_the_filters_allows_with_the_checks_and_serves_the_gateway_only() {
    let f = fixture().await;
    let token = f.token.clone();
    let authorizer = Arc::new(f.authorizer);
    let (feed, gateway) = gateway_feed(&authorizer);
    let call = |headers: axum::http::HeaderMap, body: String| post(crate::edge::decisions, feed.clone(), headers, body);
    let requests = |policy: &'static str, decision: &'static str| {
        authorizer.metrics().requests.get_or_create(&[("policy", policy), ("decision", decision)]).get()
    };
    let count = |policy: &str, decision: &str, count: u64| serde_json::json!({ "policy": policy, "decision": decision, "count": count });
    let batch = serde_json::json!({ "decisions": [
        count("end_user", "allow", 40),
        count("public", "allow", 2),
        count("refresh", "preflight", 3),
    ] });
    assert_eq!(call(axum::http::HeaderMap::new(), batch.to_string()).await.0, 403);
    assert_eq!(requests("end_user", "allow"), 0);
    let (status, answer) = call(gateway.clone(), batch.to_string()).await;
    assert_eq!((status, answer["counted"].as_u64()), (200, Some(45)));
    assert_eq!(
        (requests("end_user", "allow"), requests("public", "allow"), requests("refresh", "preflight")),
        (40, 2, 3)
    );
    // With the Checks': one allowed by ext-authz itself adds to the same series.
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str()), ("x-request-id", "r1")];
    authorizer.check(request(Some("end_user"), "GET", "/v1/messages", &headers, "127.0.0.1")).await;
    assert_eq!(requests("end_user", "allow"), 41);
    // What the filter sends (edge-wasm/src/reports.rs) is what this takes.
    let mut tally = caas_edge_wasm::reports::Tally::default();
    tally.add(caas_rules::policy::Policy::Dashboard, caas_edge_wasm::reports::Decision::Allow);
    tally.add(caas_rules::policy::Policy::EndUser, caas_edge_wasm::reports::Decision::Preflight);
    for miss in [Miss::NotCurrent, Miss::NotCurrent, Miss::UnknownKey] {
        tally.forwarded(miss);
    }
    let (sent, _) = tally.batch().unwrap();
    let (status, answer) = call(gateway.clone(), String::from_utf8(sent).unwrap()).await;
    assert_eq!((status, answer["counted"].as_u64()), (200, Some(2)));
    assert_eq!((requests("dashboard", "allow"), requests("end_user", "preflight")), (1, 1));
    // Counted as the filter's too, with the requests it left to ext_authz.
    let edge = |policy: &'static str, decision: &'static str| {
        authorizer.metrics().edge_decisions.get_or_create(&[("policy", policy), ("decision", decision)]).get()
    };
    let forwarded =
        |reason: &'static str| authorizer.metrics().edge_forwarded.get_or_create(&[("reason", reason)]).get();
    assert_eq!((edge("end_user", "allow"), edge("dashboard", "allow")), (40, 1), "not the Check's own");
    assert_eq!((forwarded("not_current"), forwarded("unknown_key"), forwarded("quota")), (2, 1, 0));
    // Every reason the filter gives is one ext-authz takes.
    let reasons: Vec<&str> = Miss::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(reasons, crate::edge::FORWARD_REASONS);
    let many: Vec<serde_json::Value> = (0..=crate::edge::MAX_COUNTS).map(|_| count("end_user", "allow", 1)).collect();
    let body = |decisions: Vec<serde_json::Value>| serde_json::json!({ "decisions": decisions }).to_string();
    for (body, says) in [
        ("{}".to_string(), "missing field"),
        (body(vec![count("api_key", "preflight", 1)]), "decision and policy"),
        (body(vec![count("nope", "allow", 1)]), "decision and policy"),
        (body(vec![count("end_user", "allow", 5), count("end_user", "deny", 1)]), "decisions[1]: decision and policy"),
        (body(vec![count("end_user", "allow", 0)]), "count must be"),
        (body(vec![count("end_user", "allow", crate::edge::MAX_COUNT + 1)]), "count must be"),
        (body(many), "at most 64"),
        (
            serde_json::json!({ "decisions": [], "forwarded": [{ "reason": "made_up", "count": 1 }] }).to_string(),
            "forwarded[0]: reason must be one of",
        ),
        (
            serde_json::json!({ "decisions": [], "forwarded": [{ "reason": "quota", "count": 0 }] }).to_string(),
            "forwarded[0]: count must be",
        ),
    ] {
        assert_bad_request(call(gateway.clone(), body.clone()).await, &body, says);
    }
    assert_eq!(requests("end_user", "allow"), 41, "a refused batch counts nothing");
    assert_eq!(forwarded("quota"), 0, "a refused batch counts nothing");
}
