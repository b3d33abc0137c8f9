//! Credential lifecycle routes: sign out (here and everywhere), password
//! change, the session list, and banning an end user; their refusals.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use caas_core::context::RequestContext;
use serde_json::{Value, json};

use super::harness::*;

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "an entirely new passphrase";
const LOGOUT: &str = "/api/v1/auth/client/logout";
const LOGOUT_ALL: &str = "/api/v1/auth/client/logout-all";
const CHANGE: &str = "/api/v1/auth/client/password";
const SESSIONS: &str = "/api/v1/auth/client/sessions";
const LOGIN: &str = "/api/v1/auth/client/login";

fn revoke_path(user: &str) -> String {
    format!("/api/v1/auth/sdk/users/{user}/revoke")
}

async fn revoked(h: &Harness, ctx: &RequestContext) -> bool {
    h.store.session(&ctx.session_id).await.unwrap().unwrap().revoked_at.is_some()
}

/// A signed request with `body` as raw bytes under `content_type`.
fn signed_raw(
    h: &Harness,
    method: Method,
    path: &str,
    ctx: &RequestContext,
    content_type: Option<&str>,
    body: &str,
) -> axum::http::Request<Body> {
    let mut request = h.signed(method, path, ctx, None);
    if let Some(content_type) = content_type {
        request.headers_mut().insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    }
    *request.body_mut() = Body::from(body.to_string());
    request
}

#[tokio::test]
async fn dashboard_sessions_are_listed_changed_and_ended() {
    let h = Harness::sqlite().await;
    let who = h.register("life@example.com").await;
    let this = h.dashboard(&who).await;
    let other = h.dashboard(&who).await;
    let foreign = h.dashboard(&h.register("life-other@example.com").await).await;

    let r = h.send(h.signed(Method::GET, SESSIONS, &this, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let sessions = r.body["sessions"].as_array().unwrap();
    let mut ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = [this.session_id.as_str(), other.session_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "another tenant's session is not listed");
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], this.session_id.as_str());
    for session in sessions {
        assert_eq!(session["ip"], "127.0.0.1", "{session}");
        assert!(session["created_at"].as_i64().is_some() && session["last_used_at"].as_i64().is_some(), "{session}");
    }

    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let r = h.send(h.signed(Method::PUT, CHANGE, &this, Some(change))).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (StatusCode::OK, Some(1)), "{}", r.text);
    assert!(revoked(&h, &other).await);
    assert!(!revoked(&h, &this).await, "the caller's session stays");
    assert!(!revoked(&h, &foreign).await);
    assert_eq!(h.store.audit_log(&who.client_id, 1).await.unwrap()[0].action, "client.password_changed");
    let r = h.send(post(LOGIN, json!({"email": who.email, "password": PASSWORD}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    let r = h.send(post(LOGIN, json!({"email": who.email, "password": NEW_PASSWORD}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Everywhere: this session and the one just opened.
    let r = h.send(h.signed(Method::POST, LOGOUT_ALL, &this, None)).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (StatusCode::OK, Some(2)), "{}", r.text);
    assert!(revoked(&h, &this).await);
    assert!(!revoked(&h, &foreign).await);
    assert_eq!(h.store.audit_log(&who.client_id, 1).await.unwrap()[0].action, "session.logout_all");

    // Here only.
    let r = h.send(h.signed(Method::POST, LOGOUT, &foreign, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(revoked(&h, &foreign).await);
}

#[tokio::test]
async fn password_change_refuses_bad_input_without_changing_anything() {
    let h = Harness::sqlite().await;
    let who = h.register("pwbad@example.com").await;
    let this = h.dashboard(&who).await;
    let other = h.dashboard(&who).await;
    for (body, status, code, field) in [
        (
            json!({"current_password": "wrong wrong wrong", "new_password": NEW_PASSWORD}),
            StatusCode::FORBIDDEN,
            "invalid_current_password",
            None,
        ),
        (
            json!({"current_password": PASSWORD, "new_password": "short"}),
            StatusCode::BAD_REQUEST,
            "invalid_password",
            Some("new_password"),
        ),
        (json!({"current_password": PASSWORD}), StatusCode::BAD_REQUEST, "invalid_body", None),
        (
            json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "email": "x@example.com"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            None,
        ),
        (
            json!({"current_password": PASSWORD, "new_password": "x".repeat(70_000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ] {
        let r = h.send(h.signed(Method::PUT, CHANGE, &this, Some(body))).await;
        assert_eq!((r.status, r.code()), (status, code), "{}", r.text);
        if let Some(field) = field {
            assert_eq!(r.body["error"]["field"], field, "{}", r.text);
        }
        assert!(!r.text.contains(PASSWORD), "a password is echoed: {}", r.text);
    }
    let r = h.send(signed_raw(&h, Method::PUT, CHANGE, &this, None, "")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let r = h.send(signed_raw(&h, Method::PUT, CHANGE, &this, Some("application/json"), "{not json")).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    assert!(!revoked(&h, &other).await);
    let r = h.send(post(LOGIN, json!({"email": who.email, "password": PASSWORD}))).await;
    assert_eq!(r.status, StatusCode::OK, "the password is unchanged: {}", r.text);
    assert!(
        h.store
            .audit_log(&who.client_id, 10)
            .await
            .unwrap()
            .iter()
            .any(|a| a.action == "client.password_change_failed")
    );
}

#[tokio::test]
async fn dashboard_routes_refuse_other_credentials() {
    let h = Harness::sqlite().await;
    let who = h.register("dashonly@example.com").await;
    let key = h.api_key_context(&who);
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    for (method, path, body) in [
        (Method::POST, LOGOUT, None),
        (Method::POST, LOGOUT_ALL, None),
        (Method::PUT, CHANGE, Some(change.clone())),
        (Method::GET, SESSIONS, None),
    ] {
        let r = h.send(h.signed(method.clone(), path, &key, body.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "wrong_credential_type"), "{method} {path}");
        let mut bare = axum::http::Request::builder().method(method.clone()).uri(path);
        if body.is_some() {
            bare = bare.header(header::CONTENT_TYPE, "application/json");
        }
        let r = h.send(bare.body(Body::from(body.map(|b| b.to_string()).unwrap_or_default())).unwrap()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_context"), "{method} {path}");
    }
}

#[tokio::test]
async fn revoking_an_end_user_ends_their_sessions_in_the_callers_tenant_only() {
    let h = Harness::sqlite().await;
    let a = h.register("ban-a@example.com").await;
    let b = h.register("ban-b@example.com").await;
    let first = h.session(&a, "bob").await;
    let second = h.session(&a, "bob").await;
    let alice = h.session(&a, "alice").await;
    let other_bob = h.session(&b, "bob").await;
    let token = |s: &Value| s["access_token"].as_str().unwrap().to_string();

    let r = h.send(h.signed(Method::POST, &revoke_path("bob"), &h.api_key_context(&a), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"user_id": "bob", "revoked_sessions": 2}));
    for session in [&first, &second] {
        assert_eq!(h.token_verdict(&token(session)).await.code(), "session_revoked");
    }
    assert_eq!(h.token_verdict(&token(&alice)).await.status, StatusCode::OK);
    assert_eq!(h.token_verdict(&token(&other_bob)).await.status, StatusCode::OK, "another tenant's bob stays");
    let audit = h.store.audit_log(&a.client_id, 1).await.unwrap().remove(0);
    assert_eq!(audit.action, "end_user.revoked");
    assert!(h.store.audit_log(&b.client_id, 1).await.unwrap()[0].action != "end_user.revoked");

    // Idempotent.
    let r = h.send(h.signed(Method::POST, &revoke_path("bob"), &h.api_key_context(&a), None)).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (StatusCode::OK, Some(0)), "{}", r.text);
    // Percent-encoded ids are decoded first.
    let spaced = h.session(&a, "bob@example.com").await;
    let r = h.send(h.signed(Method::POST, &revoke_path("bob%40example.com"), &h.api_key_context(&a), None)).await;
    assert_eq!(r.body["revoked_sessions"], 1, "{}", r.text);
    assert_eq!(h.token_verdict(&token(&spaced)).await.code(), "session_revoked");
}

#[tokio::test]
async fn revoking_an_end_user_refuses_bad_ids_and_other_credentials() {
    let h = Harness::sqlite().await;
    let who = h.register("banbad@example.com").await;
    let key = h.api_key_context(&who);
    let kept = h.session(&who, "bob").await;
    for bad in ["has%20space", "tab%09", &"u".repeat(129), "%FF"] {
        let r = h.send(h.signed(Method::POST, &revoke_path(bad), &key, None)).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_user_id"), "{bad}: {}", r.text);
        assert_eq!(r.body["error"]["field"], "user_id", "{}", r.text);
    }
    let dashboard = h.dashboard(&who).await;
    let r = h.send(h.signed(Method::POST, &revoke_path("bob"), &dashboard, None)).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "wrong_credential_type"));
    let r = h.send(raw(Method::POST, &revoke_path("bob"), None, "")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_context"));
    let end_user = RequestContext {
        auth_type: caas_core::context::AuthType::Jwt,
        user_id: "bob".into(),
        session_id: kept["session_id"].as_str().unwrap().into(),
        ..key.clone()
    };
    let r = h.send(h.signed(Method::POST, &revoke_path("bob"), &end_user, None)).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "wrong_credential_type"));
    assert_eq!(h.token_verdict(kept["access_token"].as_str().unwrap()).await.status, StatusCode::OK);
    let r = h.send(h.signed(Method::GET, &revoke_path("bob"), &key, None)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
