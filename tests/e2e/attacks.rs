//! Attacks that must fail, each through real Envoy.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caas_core::id::unix_now;
use caas_core::jwt::{Audience, Claims, JwtKeys};
use caas_core::secret::Secret;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};

use crate::harness::*;

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn kid_of(token: &str) -> String {
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

fn forge_hs512(token: &str) -> String {
    let head = URL_SAFE_NO_PAD.encode(json!({"alg": "HS512", "typ": "JWT", "kid": kid_of(token)}).to_string());
    let body = token.split('.').nth(1).unwrap();
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "tokens").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(node, &tenant, "user-1").await;
    let token = session["access_token"].as_str().unwrap();
    let keys = JwtKeys::new("caas", &Secret::new(JWT_SECRET), None);
    let claims = claims_of(token);

    let parts: Vec<&str> = token.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid_of(token)}).to_string()),
        parts[1]
    );
    let mut other = claims.clone();
    other.sub = "someone-else".into();
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()), parts[2]);
    let expired = keys.issue(&Claims { iat: unix_now() - 3600, exp: unix_now() - 60, ..claims.clone() });
    let not_yet = keys.issue(&Claims { nbf: Some(unix_now() + 600), ..claims.clone() });
    let foreign = JwtKeys::new("caas", &Secret::new("some-other-deployment-secret-000000"), None).issue(&claims);

    let cases = [
        (alg_none, "algorithm_not_allowed"),
        (forge_hs512(token), "algorithm_not_allowed"),
        (tampered, "bad_signature"),
        (foreign, "bad_signature"),
        (expired, "token_expired"),
        (not_yet, "token_not_yet_valid"),
        (tenant.dashboard.clone(), "wrong_audience"),
    ];
    let http = client();
    for (candidate, code) in cases {
        let r = send(http.get(node.url("/v1/conversations")).bearer_auth(&candidate)).await;
        assert_eq!((r.status, r.code()), (401, code), "{r:?}");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    }
    // An end user's token on a dashboard route.
    let r = send(http.get(node.url("/v1/client/profile")).bearer_auth(token)).await;
    assert_eq!((r.status, r.code()), (401, "wrong_audience"));

    // Duplicate Authorization headers (Envoy joins them): refused.
    let r = send(
        http.get(node.url("/v1/conversations"))
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {token}")),
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "malformed_token"));
    // Oversized Authorization: refused (by Envoy's header limit or as malformed).
    let r = send(http.get(node.url("/v1/conversations")).bearer_auth("a".repeat(8000))).await;
    assert_eq!((r.status, r.code()), (401, "malformed_token"));
    let r = send(http.get(node.url("/v1/conversations")).bearer_auth("a".repeat(20_000))).await;
    assert_eq!(r.status, 431);
    let _ = Audience::Sdk;
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_api_keys_and_keys_in_urls_are_refused() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "keys").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let http = client();
    let session = |key: String| {
        let http = http.clone();
        async move {
            send(http.post(node.url("/v1/sdk/session")).header("x-api-key", key).json(&json!({"user_id": "u1"}))).await
        }
    };
    let mut typo = tenant.key.clone().into_bytes();
    typo[12] = if typo[12] == b'A' { b'B' } else { b'A' };
    for (key, code) in [
        ("not-a-key".to_string(), "invalid_api_key"),
        (tenant.key[..tenant.key.len() - 4].to_string(), "invalid_api_key"),
        (String::from_utf8(typo).unwrap(), "invalid_api_key"),
        (caas_core::api_key::generate().key, "invalid_api_key"),
    ] {
        let r = session(key).await;
        assert_eq!((r.status, r.code()), (401, code), "{r:?}");
    }
    // In the query string: refused even with the right key in the header too.
    for query in [format!("?api_key={}", tenant.key), format!("?key={}", tenant.key), format!("?x={}", tenant.key)] {
        let r = send(
            http.post(node.url(&format!("/v1/sdk/session{query}")))
                .header("x-api-key", &tenant.key)
                .json(&json!({"user_id": "u"})),
        )
        .await;
        assert_eq!((r.status, r.code()), (400, "credential_in_query"), "{query}");
    }
    assert!(!node.access_log().contains(&tenant.key), "a key reached the access log");

    // Rotated out: valid during the grace period, refused after it. (Grace
    // has one-second resolution, so 2 s is at least 1 s from now.)
    let rotated = send(
        http.post(node.url("/v1/client/api-keys/rotate"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({"grace_seconds": 2})),
    )
    .await;
    assert_eq!(rotated.status, 201);
    let new_key = rotated.body["key"].as_str().unwrap().to_string();
    assert_eq!(session(tenant.key.clone()).await.status, 201);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = session(tenant.key.clone()).await;
    assert_eq!((r.status, r.code()), (401, "api_key_expired"));
    assert_eq!(session(new_key.clone()).await.status, 201);
    // Revoked.
    let id = rotated.body["id"].as_str().unwrap();
    assert_eq!(
        send(http.delete(node.url(&format!("/v1/client/api-keys/{id}"))).bearer_auth(&tenant.dashboard)).await.status,
        204
    );
    let r = session(new_key).await;
    assert_eq!((r.status, r.code()), (401, "api_key_revoked"));
    cluster.shutdown().await;
}

#[tokio::test]
async fn internal_and_unknown_routes_are_not_reachable() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let http = client();
    for path in [
        "/api/v1/auth/internal/validate",
        "/api/v1/auth/internal/validate-api-key",
        "/api/v1/auth/client/register",
        "/metrics",
        "/nope",
    ] {
        let r = send(
            http.post(node.url(path))
                .header("authorization", format!("Service {SERVICE_SECRET}"))
                .json(&json!({"token": "x"})),
        )
        .await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Other spellings of a path: sent as written (an HTTP client would
    // resolve the dot segments itself), they reach the route they resolve to,
    // under that route's policy, or are refused.
    for (path, status, code) in [
        ("/v1/client/../../api/v1/auth/internal/validate", 404, "not_found"),
        ("/v1/client/%2e%2e/%2E%2E/api/v1/auth/internal/validate", 404, "not_found"),
        ("/v1/ws/../client/profile", 401, "missing_credentials"),
        ("/v1/ws/%2e%2e/client/profile", 401, "missing_credentials"),
        ("//v1//client//profile", 401, "missing_credentials"),
        ("/v1/conversations/c%2E1", 401, "missing_credentials"),
        ("/v1/conversations%2F..%2F..%2Fapi/v1/auth/internal/validate", 400, ""),
        ("/v1/client/%5C..%5Cx", 400, ""),
    ] {
        let (got, body) = raw_request(node.gateway, "GET", path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(code), "{path}: {body}");
    }
    cluster.shutdown().await;
}

/// A client that trickles its request headers (slowloris) is cut off after
/// Envoy's `request_headers_timeout` (10 s), so such connections cannot hold
/// the connection cap; a client that finishes its headers is served as usual.
#[tokio::test]
async fn slow_header_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(node.gateway).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: caas\r\nx-slow: ").await.unwrap();
        slow.push(stream);
    }
    // Keep trickling a byte every second: an idle timeout alone would not end these.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for stream in &mut slow {
                let _ = stream.write_all(b"a").await;
            }
        }
    };
    let (status, _) = tokio::select! {
        _ = trickle => unreachable!("the trickle never ends"),
        answer = raw_request(node.gateway, "GET", "/healthz") => answer,
    };
    assert_eq!(status, 200, "a normal request is served beside the slow ones");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    for mut stream in slow {
        let mut response = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                let _ = stream.write_all(b"a").await;
                let mut chunk = [0u8; 512];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => response.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a slow-header connection was still open after {:?}", started.elapsed());
        let text = String::from_utf8_lossy(&response);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(17), "closed late: {:?}", started.elapsed());
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_made_up_keys_is_cut_off_without_touching_honest_tenants() {
    const LIMIT: u64 = 20;
    let Some(cluster) = cluster(1, &["--failed-auth-limit", "20"]).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "flooded").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let (honest, attacker) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    let session = |http: &reqwest::Client, key: &str| {
        send(http.post(node.url("/v1/sdk/session")).header("x-api-key", key).json(&json!({"user_id": "u1"})))
    };
    assert_eq!(session(&honest, &tenant.key).await.status, 201);
    let reads = || node.stack.validator.metrics().db_reads.get();
    // The honest tenant's own reads settle first: the whitelist change just
    // made reaches the caches through the bus and the filter's feed, and
    // each may read the new list once, after the session above.
    let settled = Instant::now();
    loop {
        let quiet = reads();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(session(&honest, &tenant.key).await.status, 201);
        if reads() == quiet {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(10), "the honest tenant's reads never settled");
    }
    let before = reads();
    let mut refused = 0;
    for i in 0..200 {
        let r = session(&attacker, &caas_core::api_key::generate().key).await;
        if (i as u64) < LIMIT {
            assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{i}: {r:?}");
        } else {
            assert_eq!((r.status, r.code()), (429, "too_many_failures"), "{i}: {r:?}");
            assert!(r.header("retry-after").is_some_and(|s| s.parse::<u32>().is_ok_and(|s| (1..=60).contains(&s))));
            refused += 1;
        }
        if i % 25 == 0 {
            assert_eq!(session(&honest, &tenant.key).await.status, 201, "the honest tenant is unaffected");
        }
    }
    assert_eq!(refused, 200 - LIMIT);
    assert!(reads() - before <= LIMIT, "{} database reads for the flood", reads() - before);
    assert_eq!(session(&honest, &tenant.key).await.status, 201);
    cluster.shutdown().await;
}

/// A key over its quota gets 429 `rate_limited` with the rate-limit headers,
/// while another key of the same tenant keeps working; the quota is the one
/// the tenant set through the dashboard API.
#[tokio::test]
async fn a_key_over_its_quota_is_refused_while_another_key_of_the_tenant_is_not() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let http = client();
    let tenant = onboard(node, "quota").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let limits = json!({
        "per_key": {"rate": 1, "burst": 3},
        "per_user": {"rate": 50, "burst": 100},
        "per_tenant": {"rate": 1000, "burst": 2000},
    });
    let put = send(http.put(node.url("/v1/client/rate-limits")).bearer_auth(&tenant.dashboard).json(&limits)).await;
    assert_eq!(put.status, 200, "{put:?}");
    let got = send(http.get(node.url("/v1/client/rate-limits")).bearer_auth(&tenant.dashboard)).await;
    assert_eq!(got.body["per_key"], limits["per_key"]);
    // A second key of the same tenant: the rotated-out one stays valid for its grace.
    let rotated = send(
        http.post(node.url("/v1/client/api-keys/rotate"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({"grace_seconds": 600})),
    )
    .await;
    assert_eq!(rotated.status, 201);
    let other_key = rotated.body["key"].as_str().unwrap().to_string();
    let session = |key: &str| {
        send(http.post(node.url("/v1/sdk/session")).header("x-api-key", key).json(&json!({"user_id": "q1"})))
    };
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(session(&tenant.key).await);
    }
    let refused: Vec<&Reply> = answers.iter().filter(|r| r.status == 429).collect();
    assert!(answers.iter().take(3).all(|r| r.status == 201), "the burst of 3 passes: {answers:?}");
    assert!(!refused.is_empty(), "a key past its burst was never refused: {answers:?}");
    let r = refused[0];
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s >= 1)), "{r:?}");
    assert!(r.header("ratelimit-policy").is_some_and(|p| p.contains("\"key\"") && p.contains("q=1")), "{r:?}");
    assert!(r.header("ratelimit").is_some_and(|p| p.contains("r=0")), "{r:?}");
    assert_eq!(session(&other_key).await.status, 201, "another key of the tenant is unaffected");
    cluster.shutdown().await;
}
