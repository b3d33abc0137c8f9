//! `legacy-gateway`: the flow the auth refactor replaced, as a baseline for
//! bench/refactor.sh. Every request's token is validated by an HTTP call to
//! auth-api's internal endpoint (`POST /api/v1/auth/internal/validate`), the
//! way each service used to ask the auth service, and only then forwarded
//! to the service. The forwarded request carries the signed context so that
//! the very same chat handler does the very same work in both flows: what
//! differs is only who validates and how.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caas_core::context::{AuthType, ContextSigner, RequestContext};
use caas_core::id::{new_id, unix_now};
use caas_core::secret::Secret;

#[derive(clap::Args)]
pub struct LegacyArgs {
    #[arg(long, default_value = "127.0.0.1:18100")]
    addr: std::net::SocketAddr,
    /// auth-api base URL (its internal endpoint validates every request).
    #[arg(long)]
    auth_api: String,
    /// The service requests go to once validated (e.g. chat's base URL).
    #[arg(long)]
    upstream: String,
    #[arg(long)]
    service_secret: String,
}

struct Legacy {
    http: reqwest::Client,
    validate_url: String,
    upstream: String,
    service_secret: String,
    signer: ContextSigner,
    validations: AtomicU64,
}

pub async fn legacy_gateway(args: LegacyArgs) -> anyhow::Result<()> {
    let state = Arc::new(Legacy {
        http: reqwest::Client::builder().pool_max_idle_per_host(256).build()?,
        validate_url: format!("{}/api/v1/auth/internal/validate", args.auth_api.trim_end_matches('/')),
        upstream: args.upstream.trim_end_matches('/').to_string(),
        signer: ContextSigner::new(&Secret::new(args.service_secret.clone())),
        service_secret: args.service_secret,
        validations: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route(
            "/legacy/validations",
            axum::routing::get(|State(s): State<Arc<Legacy>>| async move {
                s.validations.load(Ordering::Relaxed).to_string()
            }),
        )
        .fallback(forward)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn reply(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, body.into()).into_response()
}

async fn forward(State(s): State<Arc<Legacy>>, request: Request) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    s.validations.fetch_add(1, Ordering::Relaxed);
    let validated = s
        .http
        .post(&s.validate_url)
        .header("authorization", format!("Service {}", s.service_secret))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await;
    let validated = match validated {
        Ok(response) if response.status().is_success() => response.json::<serde_json::Value>().await,
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return reply(status, response.bytes().await.unwrap_or_default());
        }
        Err(_) => return reply(StatusCode::SERVICE_UNAVAILABLE, "auth service unreachable"),
    };
    let Ok(identity) = validated else { return reply(StatusCode::BAD_GATEWAY, "bad validation answer") };
    let field = |name: &str| identity[name].as_str().unwrap_or_default().to_string();
    let method = request.method().clone();
    let context = RequestContext {
        tenant_id: field("tenant_id"),
        user_id: field("user_id"),
        session_id: field("session_id"),
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        client_ip: "127.0.0.1".into(),
        request_id: new_id("req"),
        token_expires_at: identity["expires_at"].as_i64(),
    };
    let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
    let mut upstream = s
        .http
        .request(
            reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET),
            format!("{}{path}", s.upstream),
        )
        .body(body);
    for (name, value) in s.signer.headers(&context, method.as_str(), unix_now()) {
        upstream = upstream.header(name, value);
    }
    match upstream.header("content-type", "application/json").send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            reply(status, response.bytes().await.unwrap_or_default())
        }
        Err(_) => reply(StatusCode::BAD_GATEWAY, "upstream unreachable"),
    }
}
