//! Handler tests: `app(state).oneshot(request)` on SQLite, contexts signed as
//! the gateway signs them.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use caas_core::context::{self, AuthType, ContextSigner, RequestContext};
use caas_core::id::{new_id, unix_now};
use caas_core::secret::Secret;
use caas_core::store::NewApiKey;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{AppState, ChatArgs, Config, app};

const SECRET: &str = "service-secret-service-secret-0001";

struct Harness {
    app: axum::Router,
    signer: ContextSigner,
}

async fn harness() -> (Harness, String, String) {
    let store = caas_core::testing::sqlite_store().await;
    let mut tenants = Vec::new();
    for email in ["a@example.com", "b@example.com"] {
        let key = caas_core::api_key::generate();
        let tenant = new_id("cl");
        let record = NewApiKey { id: new_id("key"), hash: key.hash, prefix: key.display_prefix };
        store.register_client(&tenant, "T", &new_id("acc"), email, "h", &record, None, unix_now()).await.unwrap();
        tenants.push(tenant);
    }
    let config = Config {
        chat: ChatArgs { chat_addr: SocketAddr::from(([127, 0, 0, 1], 0)) },
        storage: caas_core::testing::unused_storage(),
        service: caas_core::testing::service_args(SECRET, None),
    };
    let state = AppState::from_config(&config, caas_core::testing::local_backends(store));
    let b = tenants.pop().unwrap();
    let a = tenants.pop().unwrap();
    (Harness { app: app(state), signer: ContextSigner::new(&Secret::new(SECRET)) }, a, b)
}

fn user(tenant: &str, user: &str) -> RequestContext {
    RequestContext {
        tenant_id: tenant.into(),
        user_id: user.into(),
        session_id: "ses_1".into(),
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        client_ip: String::new(),
        request_id: "req-1".into(),
        token_expires_at: None,
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn signed(&self, method: Method, uri: &str, ctx: &RequestContext, body: Option<String>) -> Request<Body> {
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in self.signer.headers(ctx, method.as_str(), unix_now()) {
            if !value.is_empty() {
                builder = builder.header(name, value);
            }
        }
        match body {
            Some(body) => builder.header("content-type", "application/json").body(Body::from(body)).unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    async fn call(&self, method: Method, uri: &str, ctx: &RequestContext, body: Option<Value>) -> (StatusCode, Value) {
        self.send(self.signed(method, uri, ctx, body.map(|b| b.to_string()))).await
    }
}

#[tokio::test]
async fn only_signed_end_user_context_is_accepted() {
    let (h, a, _) = harness().await;
    let (status, body) = h.send(Request::builder().uri("/v1/conversations").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_context")));
    // Bare headers a client could send.
    let bare = Request::builder()
        .uri("/v1/conversations")
        .header(context::TENANT_ID, &a)
        .header(context::USER_ID, "ann")
        .header(context::AUTH_TYPE, "jwt")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(bare).await.0, StatusCode::UNAUTHORIZED);
    // A valid signature over other values.
    let mut forged = h.signed(Method::GET, "/v1/conversations", &user(&a, "ann"), None);
    forged.headers_mut().insert(context::USER_ID, "mallory".parse().unwrap());
    let (status, body) = h.send(forged).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_context")));
    // Signed by someone else's secret.
    let other = ContextSigner::new(&Secret::new("another-secret-another-secret-0099"));
    let mut foreign = Request::builder().uri("/v1/conversations");
    for (name, value) in other.headers(&user(&a, "ann"), "GET", unix_now()) {
        if !value.is_empty() {
            foreign = foreign.header(name, value);
        }
    }
    assert_eq!(h.send(foreign.body(Body::empty()).unwrap()).await.0, StatusCode::UNAUTHORIZED);
    // A dashboard or API-key context is the wrong credential here.
    let mut dashboard = user(&a, "acc_1");
    dashboard.auth_type = AuthType::Dashboard;
    assert_eq!(h.call(Method::GET, "/v1/conversations", &dashboard, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(h.call(Method::GET, "/v1/conversations", &user(&a, "ann"), None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn conversations_and_messages_for_members_of_the_tenant_only() {
    let (h, a, b) = harness().await;
    let ann = user(&a, "ann");
    let (status, conversation) =
        h.call(Method::POST, "/v1/conversations", &ann, Some(json!({"member_ids": ["bob"], "title": "Plans"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    assert_eq!(conversation["member_ids"], json!(["ann", "bob"]));

    let post = |ctx: RequestContext, cid: String, body: &str, client_msg_id: &str| {
        let body = json!({"conversation_id": cid, "body": body, "client_msg_id": client_msg_id});
        let h = &h;
        async move { h.call(Method::POST, "/v1/messages", &ctx, Some(body)).await }
    };
    let (status, first) = post(ann.clone(), id.clone(), "hello", "m-1").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, retry) = post(ann.clone(), id.clone(), "hello", "m-1").await;
    assert_eq!((status, &retry), (StatusCode::OK, &first), "a retry returns the stored message");
    let (status, _) = post(user(&a, "bob"), id.clone(), "hi ann", "m-1").await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, page) =
        h.call(Method::GET, &format!("/v1/messages?conversation_id={id}&limit=1"), &user(&a, "bob"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"][0]["body"], "hi ann", "newest first");
    let before = page["next_before"].as_str().unwrap();
    let (_, older) = h
        .call(Method::GET, &format!("/v1/messages?conversation_id={id}&before={before}"), &user(&a, "bob"), None)
        .await;
    assert_eq!(older["messages"].as_array().unwrap().len(), 1);
    assert_eq!(older["messages"][0]["id"], first["id"]);

    // Not a member; another tenant naming this conversation: 404, nothing leaked.
    for ctx in [user(&a, "carol"), user(&b, "ann"), user(&b, "bob")] {
        let (status, body) = post(ctx.clone(), id.clone(), "x", "m-9").await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("conversation_not_found")));
        let (status, _) = h.call(Method::GET, &format!("/v1/messages?conversation_id={id}"), &ctx, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, theirs) = h.call(Method::GET, "/v1/conversations", &user(&b, "bob"), None).await;
    assert_eq!(theirs["conversations"], json!([]));
    let (_, mine) = h.call(Method::GET, "/v1/conversations", &user(&a, "bob"), None).await;
    assert_eq!(mine["conversations"][0]["id"], id.as_str());
}

#[tokio::test]
async fn bad_input() {
    let (h, a, _) = harness().await;
    let ann = user(&a, "ann");
    let (_, conversation) = h.call(Method::POST, "/v1/conversations", &ann, Some(json!({"member_ids": []}))).await;
    let id = conversation["id"].as_str().unwrap();
    let big = json!({"conversation_id": id, "body": "x".repeat(16 * 1024 + 1), "client_msg_id": "m-big"});
    let (status, body) = h.call(Method::POST, "/v1/messages", &ann, Some(big)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
    let huge = json!({"conversation_id": id, "body": "x".repeat(200 * 1024), "client_msg_id": "m-huge"});
    assert_eq!(h.call(Method::POST, "/v1/messages", &ann, Some(huge)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let exact = json!({"conversation_id": id, "body": "x".repeat(16 * 1024), "client_msg_id": "m-max"});
    assert_eq!(h.call(Method::POST, "/v1/messages", &ann, Some(exact)).await.0, StatusCode::CREATED);
    for (body, code) in [
        (json!({"conversation_id": id, "body": "x"}), "invalid_body"),
        (json!({"conversation_id": id, "body": 5, "client_msg_id": "m"}), "invalid_body"),
        (json!({"conversation_id": id, "body": "", "client_msg_id": "m"}), "invalid_field"),
        (json!({"conversation_id": id, "body": "x", "client_msg_id": "m", "sender_id": "bob"}), "invalid_body"),
    ] {
        let (status, reply) = h.call(Method::POST, "/v1/messages", &ann, Some(body)).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{reply}");
    }
    let (status, reply) = h.send(h.signed(Method::POST, "/v1/messages", &ann, Some("{nope".into()))).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
    for uri in [
        "/v1/messages",
        "/v1/messages?conversation_id=x&limit=0",
        "/v1/conversations?limit=abc",
        "/v1/conversations?cursor=%20bad",
    ] {
        let (status, _) = h.call(Method::GET, uri, &ann, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let (status, _) = h.call(Method::POST, "/v1/conversations", &ann, Some(json!({"member_ids": ["a b"]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let (h, _, _) = harness().await;
    let (status, spec) = h.send(Request::builder().uri("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(path.as_str())
                .body(Body::empty())
                .unwrap();
            let (status, reply) = h.send(request).await;
            // Routed: the handler refuses the missing context, not the fallback.
            assert_eq!(
                (status, reply["error"]["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("missing_context")),
                "{method} {path}"
            );
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        ["GET /v1/conversations", "GET /v1/messages", "POST /v1/conversations", "POST /v1/messages"]
    );
    for name in ["Conversation", "Message", "ConversationList", "MessageList", "ErrorBody"] {
        assert!(spec["components"]["schemas"].get(name).is_some(), "{name} missing");
    }
    let params: Vec<&str> = spec["paths"]["/v1/messages"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["conversation_id", "before", "limit"]);
    // Pages are query parameters (declared as path parameters, the document was invalid).
    for path in ["/v1/messages", "/v1/conversations"] {
        for param in spec["paths"][path]["get"]["parameters"].as_array().unwrap() {
            assert_eq!(param["in"], "query", "{path}: {param}");
        }
    }
    // Every body route declares what the shared edge answers.
    for path in ["/v1/messages", "/v1/conversations"] {
        let responses = spec["paths"][path]["post"]["responses"].as_object().unwrap();
        for status in ["400", "413", "415", "503"] {
            assert!(responses.contains_key(status), "POST {path} does not declare {status}");
        }
    }
    assert_eq!(serde_json::to_value(crate::openapi()).unwrap(), spec);
}
