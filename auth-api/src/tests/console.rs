//! The console: its static files and headers, the activity page's audit
//! log, and test end-user sessions.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::harness::*;

const TEST_SESSIONS: &str = "/api/v1/auth/client/test-sessions";
const AUDIT_LOG: &str = "/api/v1/auth/client/audit-log";

#[tokio::test]
async fn console_files_are_served_with_their_types_and_a_strict_policy() {
    let h = Harness::sqlite().await;
    for (path, content_type, needle) in [
        ("/console/", "text/html; charset=utf-8", "<title>CAAS console</title>"),
        ("/console/console.js", "text/javascript; charset=utf-8", "from './caas-client.js'"),
        ("/console/caas-client.js", "text/javascript; charset=utf-8", "export class CaasClient"),
        ("/console/caas-client.d.ts", "application/typescript; charset=utf-8", "export class CaasClient"),
        ("/console/console.css", "text/css; charset=utf-8", ":focus-visible"),
    ] {
        let r = h.send(get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], content_type, "{path}");
        assert!(r.text.contains(needle), "{path}");
        assert_eq!(r.headers["content-security-policy"], crate::console::CONTENT_SECURITY_POLICY, "{path}");
        assert!(crate::console::CONTENT_SECURITY_POLICY.starts_with("default-src 'self';"));
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        assert_eq!(r.headers["cache-control"], "no-cache");
        // Apps on other origins import the client module; the console's own
        // files stay its own.
        let shared = path.starts_with("/console/caas-client");
        assert_eq!(r.headers.get("access-control-allow-origin").is_some(), shared, "{path}");
        let policy = if shared { "cross-origin" } else { "same-origin" };
        assert_eq!(r.headers["cross-origin-resource-policy"], policy, "{path}");
        // Revalidation with the ETag costs a 304 and no body.
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        let mut again = get(path);
        again.headers_mut().insert("if-none-match", etag.parse().unwrap());
        let r = h.send(again).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(r.text.is_empty());
    }
    for missing in ["/console/nope.js", "/console/..%2Fconsole.js"] {
        let r = h.send(get(missing)).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{missing}");
    }
}

#[tokio::test]
async fn console_has_no_inline_code_nor_other_hosts() {
    // CSP `default-src 'self'` would block them; this keeps the files honest.
    let h = Harness::sqlite().await;
    let html = h.send(get("/console/")).await.text;
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="), "inline code");
    // No event-handler attribute (` onclick=`, ` onsubmit=`, …).
    let handler = html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    });
    assert!(!handler, "inline event handler");
    for path in ["/console/", "/console/console.js", "/console/caas-client.js", "/console/console.css"] {
        let text = h.send(get(path)).await.text;
        // A URL in an attribute or a string would load from elsewhere (a
        // label's example text is fine).
        for quote in ['"', '\'', '`'] {
            for start in ["http:", "https:", "//", "ws:", "wss:"] {
                let external = format!("{quote}{start}");
                assert!(!text.contains(&external), "{path} mentions {external}");
            }
        }
        for external in ["@import", "url("] {
            assert!(!text.contains(external), "{path} mentions {external}");
        }
    }
}

#[tokio::test]
async fn test_sessions_are_for_a_dashboard_caller_flagged_audited_and_throttled() {
    let h = Harness::sqlite().await;
    let who = h.register("try@example.com").await;
    let ctx = h.dashboard(&who).await;
    let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({"name": "alice"})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], "test:alice");
    let access = r.body["access_token"].as_str().unwrap();
    assert!(r.body["refresh_token"].as_str().unwrap().starts_with("caas_rt_"));
    // An ordinary end-user token of this tenant.
    let verdict = h.token_verdict(access).await;
    assert_eq!(verdict.body["valid"], true, "{}", verdict.text);
    assert_eq!(verdict.body["tenant_id"], who.client_id.as_str(), "{}", verdict.text);
    // Audited as a test session, by the dashboard account.
    let log = h.store.audit_log(&who.client_id, 1).await.unwrap();
    assert_eq!(log[0].action, "session.test_created");
    assert_eq!(log[0].actor.as_deref(), Some(ctx.user_id.as_str()));
    let detail: serde_json::Value = serde_json::from_str(log[0].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["test"], true);
    assert_eq!(detail["user_id"], "test:alice");

    // A shorter first token, within bounds.
    let r = h
        .send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({"name": "short", "access_ttl_seconds": 30}))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["expires_in"], 30);
    for ttl in [19, 901, -1] {
        let r = h
            .send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({"name": "ttl", "access_ttl_seconds": ttl}))))
            .await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_access_ttl"), "{ttl}: {}", r.text);
        assert_eq!(r.body["error"]["field"], "access_ttl_seconds");
    }

    // Bad names.
    for name in ["", "with space", &"x".repeat(200)] {
        let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({ "name": name })))).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_user_id"), "{name}: {}", r.text);
    }
    // An API key cannot ask for one, nor can anybody without a context.
    let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &h.api_key_context(&who), Some(json!({"name": "a"})))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = h.send(post(TEST_SESSIONS, json!({"name": "a"}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    // The harness allows 5 per tenant per hour: two used above (refused
    // requests are checked before anything is counted).
    for i in 0..3 {
        let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({ "name": format!("u{i}") })))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{i}: {}", r.text);
    }
    let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &ctx, Some(json!({"name": "one-too-many"})))).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    // Per tenant: another tenant is not throttled by this one.
    let other = h.register("other@example.com").await;
    let other_ctx = h.dashboard(&other).await;
    let r = h.send(h.signed(Method::POST, TEST_SESSIONS, &other_ctx, Some(json!({"name": "alice"})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn a_backend_cannot_create_a_user_under_the_test_prefix() {
    let h = Harness::sqlite().await;
    let who = h.register("reserved@example.com").await;
    let r = h
        .send(h.signed(
            Method::POST,
            "/api/v1/auth/sdk/session",
            &h.api_key_context(&who),
            Some(json!({"user_id": "test:alice"})),
        ))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_user_id"), "{}", r.text);
    assert!(r.text.contains("reserved"), "{}", r.text);
    // Anything else still works.
    h.session(&who, "testing-alice").await;
}

#[tokio::test]
async fn the_audit_log_pages_newest_first_for_the_callers_tenant_only() {
    let h = Harness::sqlite().await;
    let who = h.register("activity@example.com").await;
    let ctx = h.dashboard(&who).await;
    // registered, login, then five whitelist updates.
    for i in 0..5 {
        let cidr = format!("10.0.{i}.0/24");
        let r = h
            .send(h.signed(Method::PUT, "/api/v1/auth/client/ip-whitelist", &ctx, Some(json!({ "cidrs": [cidr] }))))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let other = h.register("elsewhere@example.com").await;
    h.dashboard(&other).await;

    let r = h.send(h.signed(Method::GET, &format!("{AUDIT_LOG}?limit=3"), &ctx, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let entries = r.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["action"] == "ip_whitelist.updated"), "{}", r.text);
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let cursor = r.body["next_before"].as_i64().unwrap();
    assert_eq!(cursor, ids[2]);

    let r = h.send(h.signed(Method::GET, &format!("{AUDIT_LOG}?limit=3&before={cursor}"), &ctx, None)).await;
    let actions: Vec<&str> =
        r.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["ip_whitelist.updated", "ip_whitelist.updated", "client.login"], "{}", r.text);
    let cursor = r.body["next_before"].as_i64().unwrap();
    let r = h.send(h.signed(Method::GET, &format!("{AUDIT_LOG}?before={cursor}"), &ctx, None)).await;
    let actions: Vec<&str> =
        r.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["client.registered"], "only this tenant's rows: {}", r.text);
    assert!(r.body["next_before"].is_null());

    for bad in ["?limit=0", "?limit=101", "?limit=x", "?nope=1"] {
        let r = h.send(h.signed(Method::GET, &format!("{AUDIT_LOG}{bad}"), &ctx, None)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    let r = h.send(get(AUDIT_LOG)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
