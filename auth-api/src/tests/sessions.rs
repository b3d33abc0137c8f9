use std::sync::Arc;

use axum::http::{Method, StatusCode};
use caas_core::context::{AuthType, RequestContext};
use serde_json::json;

use super::harness::*;

const SESSION: &str = "/api/v1/auth/sdk/session";
const REFRESH: &str = "/api/v1/auth/refresh";
const LOGOUT: &str = "/api/v1/auth/logout";

#[tokio::test]
async fn sdk_session_issues_tokens_for_the_callers_tenant() {
    let h = Harness::sqlite().await;
    let who = h.register("sdk@example.com").await;
    let r = h
        .send(h.signed(
            Method::POST,
            SESSION,
            &h.api_key_context(&who),
            Some(json!({"user_id": "user-1", "name": "Ada", "metadata": {"plan": "pro"}})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for field in ["access_token", "refresh_token", "session_id"] {
        assert!(r.body[field].as_str().is_some_and(|v| !v.is_empty()), "{field}");
    }
    assert_eq!(
        (r.body["token_type"].as_str(), r.body["expires_in"].as_i64(), r.body["user_id"].as_str()),
        (Some("Bearer"), Some(900), Some("user-1"))
    );
    assert_eq!(r.body["refresh_expires_in"].as_i64(), Some(7 * 86_400));
    let verdict = h.token_verdict(r.body["access_token"].as_str().unwrap()).await;
    assert_eq!(verdict.status, StatusCode::OK, "{}", verdict.text);
    assert_eq!(verdict.body["tenant_id"], who.client_id.as_str());
    assert_eq!(verdict.body["user_id"], "user-1");
    assert_eq!(h.store.audit_log(&who.client_id, 1).await.unwrap()[0].action, "session.created");
}

#[tokio::test]
async fn sdk_session_refuses_bad_input_and_wrong_callers() {
    let h = Harness::sqlite().await;
    let who = h.register("bad@example.com").await;
    let ctx = h.api_key_context(&who);
    for (body, code) in [
        (json!({"user_id": ""}), "invalid_user_id"),
        (json!({"user_id": "has space"}), "invalid_user_id"),
        (json!({"user_id": "u".repeat(129)}), "invalid_user_id"),
        (json!({"user_id": "u1", "metadata": [1, 2]}), "invalid_metadata"),
        (json!({"user_id": "u1", "metadata": {"blob": "x".repeat(5000)}}), "invalid_metadata"),
        (json!({"user_id": "u1", "tenant_id": "cl_other"}), "invalid_body"),
    ] {
        let r = h.send(h.signed(Method::POST, SESSION, &ctx, Some(body))).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, code), "{}", r.text);
    }
    let r = h.send(post(SESSION, json!({"user_id": "u1"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_context"));
    let dashboard = h.dashboard(&who).await;
    let r = h.send(h.signed(Method::POST, SESSION, &dashboard, Some(json!({"user_id": "u1"})))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "wrong_credential_type"));
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let h = Harness::sqlite().await;
    let who = h.register("rot@example.com").await;
    let first = h.session(&who, "user-1").await;
    let r = h.send(post(REFRESH, json!({"refresh_token": first["refresh_token"]}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_ne!(r.body["refresh_token"], first["refresh_token"]);
    assert_eq!(r.body["session_id"], first["session_id"]);
    let second_access = r.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(h.token_verdict(&second_access).await.status, StatusCode::OK);

    // The used token again: reuse. The family dies, including new tokens.
    let r = h.send(post(REFRESH, json!({"refresh_token": first["refresh_token"]}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "refresh_token_reused"));
    let verdict = h.token_verdict(&second_access).await;
    assert_eq!((verdict.status, verdict.code()), (StatusCode::UNAUTHORIZED, "session_revoked"));
    let verdict = h.token_verdict(first["access_token"].as_str().unwrap()).await;
    assert_eq!(verdict.code(), "session_revoked");

    for bad in [
        json!({"refresh_token": "caas_rt_short"}),
        json!({"refresh_token": ""}),
        json!({"refresh_token": caas_core::refresh_token::generate().0}),
    ] {
        let r = h.send(post(REFRESH, bad)).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
        assert!(r.headers.get("www-authenticate").is_some());
    }
}

#[tokio::test]
async fn refresh_by_another_tenants_backend_is_refused_and_does_not_consume() {
    let h = Harness::sqlite().await;
    let a = h.register("ta@example.com").await;
    let b = h.register("tb@example.com").await;
    let session = h.session(&a, "user-1").await;
    let r = h
        .send(h.signed(
            Method::POST,
            REFRESH,
            &h.api_key_context(&b),
            Some(json!({"refresh_token": session["refresh_token"]})),
        ))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
    let r = h
        .send(h.signed(
            Method::POST,
            REFRESH,
            &h.api_key_context(&a),
            Some(json!({"refresh_token": session["refresh_token"]})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn concurrent_refresh_over_http_has_exactly_one_winner() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    let h = Arc::new(h);
    let who = h.register("race@example.com").await;
    let session = h.session(&who, "user-1").await;
    let token = session["refresh_token"].clone();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (h, token) = (h.clone(), token.clone());
            tokio::spawn(async move { h.send(post(REFRESH, json!({"refresh_token": token}))).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        statuses.push((r.status, r.code().to_string()));
    }
    assert_eq!(statuses.iter().filter(|(s, _)| *s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|(s, c)| *s == StatusCode::OK || c == "refresh_token_reused"), "{statuses:?}");
}

#[tokio::test]
async fn logout_by_refresh_token_or_by_access_context() {
    let h = Harness::sqlite().await;
    let who = h.register("out@example.com").await;
    let one = h.session(&who, "user-1").await;
    let r = h.send(post(LOGOUT, json!({"refresh_token": one["refresh_token"]}))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(h.token_verdict(one["access_token"].as_str().unwrap()).await.code(), "session_revoked");
    let r = h.send(post(REFRESH, json!({"refresh_token": one["refresh_token"]}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Idempotent.
    assert_eq!(
        h.send(post(LOGOUT, json!({"refresh_token": one["refresh_token"]}))).await.status,
        StatusCode::NO_CONTENT
    );

    let two = h.session(&who, "user-2").await;
    let ctx = RequestContext {
        tenant_id: who.client_id.clone(),
        user_id: "user-2".into(),
        session_id: two["session_id"].as_str().unwrap().into(),
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        client_ip: "127.0.0.1".into(),
        request_id: "r".into(),
        token_expires_at: None,
    };
    let r = h.send(h.signed(Method::POST, LOGOUT, &ctx, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(h.token_verdict(two["access_token"].as_str().unwrap()).await.code(), "session_revoked");
    let log = h.store.audit_log(&who.client_id, 1).await.unwrap();
    assert_eq!((log[0].action.as_str(), log[0].ip.as_deref()), ("session.logout", Some("127.0.0.1")));

    let r = h.send(raw(Method::POST, LOGOUT, None, "")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_credentials"));
    // Another tenant's backend cannot end this tenant's sessions.
    let other = h.register("other@example.com").await;
    let three = h.session(&who, "user-3").await;
    let r = h
        .send(h.signed(
            Method::POST,
            LOGOUT,
            &h.api_key_context(&other),
            Some(json!({"refresh_token": three["refresh_token"]})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.token_verdict(three["access_token"].as_str().unwrap()).await.status, StatusCode::OK);
}
