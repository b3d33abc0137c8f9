use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use caas_core::config::{JwtArgs, PolicyArgs};
use caas_core::context::{AuthType, ContextSigner, RequestContext};
use caas_core::id::unix_now;
use caas_core::jwt::{Audience, JwtKeys};
use caas_core::secret::Secret;
use caas_core::store::Store;
use caas_core::testing::SchemaGuard;
use caas_core::validate::Validator;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{AppState, AuthApiArgs, Config, app};

pub const SERVICE_SECRET: &str = "service-secret-service-secret-0001";
pub const PREVIOUS_SERVICE_SECRET: &str = "service-secret-previous-secret-0002";
pub const JWT_SECRET: &str = "jwt-secret-jwt-secret-jwt-secret-0003";

pub struct Harness {
    pub app: Router,
    pub store: Store,
    pub signer: ContextSigner,
    pub validator: Arc<Validator>,
    _guard: Option<SchemaGuard>,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// The flags' defaults, but for the test secrets and room for many
/// registrations from one address.
pub fn config() -> Config {
    Config {
        api: AuthApiArgs {
            auth_api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            login_max_failures_per_email: 5,
            login_max_failures_per_ip: 20,
            login_failure_window: Duration::from_secs(900),
            registrations_per_ip_per_hour: 1000,
            test_sessions_per_tenant_per_hour: 5,
            retention: crate::config::RetentionArgs {
                audit_retention: Duration::from_secs(90 * 86_400),
                purge_interval: Duration::from_secs(3600),
            },
            password_hash_concurrency: None,
        },
        storage: caas_core::testing::unused_storage(),
        jwt: JwtArgs {
            jwt_secret: Some(Secret::new(JWT_SECRET)),
            jwt_secret_previous: None,
            jwt_issuer: "caas".into(),
            jwt_expires_in: Duration::from_secs(900),
            jwt_refresh_expires_in: Duration::from_secs(7 * 86_400),
        },
        service: caas_core::testing::service_args(SERVICE_SECRET, Some(PREVIOUS_SERVICE_SECRET)),
        policy: PolicyArgs {
            ip_whitelist_enabled: true,
            origin_validation_enabled: true,
            auth_cache_capacity: 200_000,
            auth_negative_cache_capacity: 50_000,
        },
    }
}

pub fn jwt_keys() -> JwtKeys {
    JwtKeys::new("caas", &Secret::new(JWT_SECRET), None)
}

impl Harness {
    pub async fn sqlite() -> Self {
        Self::with(caas_core::testing::sqlite_store().await, None, config()).await
    }

    pub async fn sqlite_with(config: Config) -> Self {
        Self::with(caas_core::testing::sqlite_store().await, None, config).await
    }

    pub async fn postgres() -> Option<Self> {
        let (store, guard) = caas_core::testing::postgres_store().await?;
        Some(Self::with(store, Some(guard), config()).await)
    }

    async fn with(store: Store, guard: Option<SchemaGuard>, config: Config) -> Self {
        let backends = caas_core::testing::local_backends(store.clone());
        let validator = backends.validator(&config.jwt, &config.policy);
        let state = AppState::from_config(&config, backends, validator.clone());
        Self {
            app: app(state),
            store,
            signer: ContextSigner::new(&Secret::new(SERVICE_SECRET)),
            validator,
            _guard: guard,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let mut request = request;
        if request.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        }
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Response { status, headers, body, text }
    }

    /// A request as the gateway would forward it, with signed context.
    pub fn signed(&self, method: Method, path: &str, ctx: &RequestContext, body: Option<Value>) -> Request<Body> {
        let mut builder = Request::builder().method(method.clone()).uri(path);
        for (name, value) in self.signer.headers(ctx, method.as_str(), unix_now()) {
            builder = builder.header(name, value);
        }
        with_body(builder, body)
    }

    pub async fn register(&self, email: &str) -> Registered {
        let r = self
            .send(post(
                "/api/v1/auth/client/register",
                json!({"name": "Acme", "email": email, "password": "correct horse battery"}),
            ))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        Registered {
            client_id: r.body["client_id"].as_str().unwrap().into(),
            key: r.body["api_key"]["key"].as_str().unwrap().into(),
            key_id: r.body["api_key"]["id"].as_str().unwrap().into(),
            email: email.into(),
        }
    }

    /// Logs in and returns the dashboard context ext-authz would build.
    pub async fn dashboard(&self, who: &Registered) -> RequestContext {
        let r = self
            .send(post("/api/v1/auth/client/login", json!({"email": who.email, "password": "correct horse battery"})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let token = r.body["access_token"].as_str().unwrap();
        let claims = self.validator.validate_token(token, Audience::Dashboard, None, unix_now()).await.unwrap();
        RequestContext {
            tenant_id: claims.tid,
            user_id: claims.sub,
            session_id: claims.sid,
            auth_type: AuthType::Dashboard,
            key_id: String::new(),
            client_ip: "127.0.0.1".into(),
            request_id: "req-test".into(),
            token_expires_at: None,
        }
    }

    pub fn api_key_context(&self, who: &Registered) -> RequestContext {
        RequestContext {
            tenant_id: who.client_id.clone(),
            user_id: String::new(),
            session_id: String::new(),
            auth_type: AuthType::ApiKey,
            key_id: who.key_id.clone(),
            client_ip: "127.0.0.1".into(),
            request_id: "req-test".into(),
            token_expires_at: None,
        }
    }

    /// An SDK session created by the tenant's backend.
    pub async fn session(&self, who: &Registered, user_id: &str) -> Value {
        let r = self
            .send(self.signed(
                Method::POST,
                "/api/v1/auth/sdk/session",
                &self.api_key_context(who),
                Some(json!({"user_id": user_id})),
            ))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    pub async fn internal(&self, path: &str, body: Value) -> Response {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("authorization", format!("Service {SERVICE_SECRET}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    /// What the internal endpoint says of an end-user token.
    pub async fn token_verdict(&self, token: &str) -> Response {
        self.internal("/api/v1/auth/internal/validate", json!({ "token": token })).await
    }
}

pub struct Registered {
    pub client_id: String,
    pub key: String,
    pub key_id: String,
    pub email: String,
}

fn with_body(builder: axum::http::request::Builder, body: Option<Value>) -> Request<Body> {
    match body {
        Some(body) => builder.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

pub fn post(path: &str, body: Value) -> Request<Body> {
    with_body(Request::builder().method(Method::POST).uri(path), Some(body))
}

pub fn raw(method: Method, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.body(body.into()).unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}
