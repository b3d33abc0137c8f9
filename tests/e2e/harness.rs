//! Starting stacks and talking to them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::Request;
use caas::stack::{AccessLog, Stack, UpConfig};
use caas_core::context::ContextVerifier;
use caas_core::secret::Secret;
use caas_core::testing::SchemaGuard;
use clap_shim::parse_up;
use serde_json::{Value, json};

pub const JWT_SECRET: &str = "e2e-jwt-secret-e2e-jwt-secret-e2e-0001";
pub const SERVICE_SECRET: &str = "e2e-service-secret-e2e-service-0002";
pub const PASSWORD: &str = "correct horse battery staple";

mod clap_shim {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Up {
        #[command(flatten)]
        config: caas::stack::UpConfig,
    }

    pub fn parse_up(args: &[String]) -> caas::stack::UpConfig {
        let mut full = vec!["caas".to_string()];
        full.extend(args.iter().cloned());
        Up::try_parse_from(full).unwrap_or_else(|e| panic!("{e}")).config
    }
}

/// One node: Envoy, auth-api, ext-authz, chat and socket; with
/// `--chat-upstream ECHO`, Envoy sends chat paths to an echo service that
/// shows what reached it instead.
pub struct Node {
    pub stack: Stack,
    pub gateway: SocketAddr,
    pub dir: PathBuf,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    /// The WebSocket route through the gateway.
    pub fn ws(&self) -> String {
        format!("ws://{}/v1/ws", self.gateway)
    }

    /// Envoy's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

/// Nodes sharing one PostgreSQL schema and one Redis.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _schema: SchemaGuard,
}

impl Cluster {
    pub fn node(&self) -> &Node {
        &self.nodes[0]
    }

    pub async fn shutdown(self) {
        for node in self.nodes {
            node.stack.shutdown().await;
        }
    }
}

/// Starts `count` nodes with `extra` arguments, or `None` (outside CI) when
/// PostgreSQL or Redis is missing.
/// Extra arguments that route chat paths to the echo upstream.
pub const ECHO_CHAT: [&str; 2] = ["--chat-upstream", "ECHO"];

pub async fn cluster(count: usize, extra: &[&str]) -> Option<Cluster> {
    cluster_with(count, extra, |_, redis| redis.to_string()).await
}

/// As `cluster`, with the Redis URL node `i` uses: `redis_for(i, shared_url)`
/// (e.g. through an `Outage` link, to cut one node off the bus).
pub async fn cluster_with(count: usize, extra: &[&str], redis_for: impl Fn(usize, &str) -> String) -> Option<Cluster> {
    let redis_url = caas_core::testing::redis_url().await?;
    cluster_via(&redis_url, count, extra, redis_for).await
}

/// `cluster` on a Redis of the test's own (one it may stop and restart).
pub async fn cluster_on(redis_url: &str, count: usize, extra: &[&str]) -> Option<Cluster> {
    cluster_via(redis_url, count, extra, |_, redis| redis.to_string()).await
}

/// Whether the suite runs with the in-proxy fast path (edge-wasm/), as
/// `caas up` does: on unless `CAAS_E2E_FAST_PATH=false`, so every flow runs
/// through it (scripts/test.sh runs the suite once more with it off);
/// tests/e2e/fast_path.rs runs the same requests with it on and off side by
/// side.
pub fn fast_path_default() -> bool {
    std::env::var("CAAS_E2E_FAST_PATH").as_deref() != Ok("false")
}

/// The fast path's arguments: the module, which the test command builds
/// (`--profile edge`); outside CI a missing module runs the node without it.
pub fn fast_path_args(on: bool) -> Vec<String> {
    if !on {
        return vec!["--fast-path".into(), "false".into()];
    }
    match caas::envoy::find_edge_wasm(None) {
        Ok(wasm) => vec!["--fast-path".into(), "true".into(), "--edge-wasm".into(), wasm.display().to_string()],
        Err(error) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {error:#}");
            eprintln!("WITHOUT THE FAST PATH: {error:#}");
            vec!["--fast-path".into(), "false".into()]
        }
    }
}

/// As `cluster`, node `i` with the fast path on when `modes[i]` (one node
/// per entry): the same flows through both paths, on one database.
pub async fn cluster_modes(modes: &[bool], extra: &[&str]) -> Option<Cluster> {
    let redis_url = caas_core::testing::redis_url().await?;
    cluster_inner(&redis_url, modes, extra, &|_, redis| redis.to_string()).await
}

async fn cluster_via(
    redis_url: &str,
    count: usize,
    extra: &[&str],
    redis_for: impl Fn(usize, &str) -> String,
) -> Option<Cluster> {
    cluster_inner(redis_url, &vec![fast_path_default(); count], extra, &redis_for).await
}

async fn cluster_inner(
    redis_url: &str,
    modes: &[bool],
    extra: &[&str],
    redis_for: &dyn Fn(usize, &str) -> String,
) -> Option<Cluster> {
    if envoy_missing() {
        return None;
    }
    let (database_url, schema) = caas_core::testing::postgres_url().await?;
    let mut nodes = Vec::new();
    for (i, &fast_path) in modes.iter().enumerate() {
        let node_redis = redis_for(i, redis_url);
        let echo = start_echo().await.to_string();
        let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = [
            "--database-url",
            &database_url,
            "--database-max-connections",
            "4",
            "--redis-url",
            &node_redis,
            "--jwt-secret",
            JWT_SECRET,
            "--service-secret",
            SERVICE_SECRET,
            "--auth-api-addr",
            "127.0.0.1:0",
            "--ext-authz-addr",
            "127.0.0.1:0",
            "--ext-authz-ops-addr",
            "127.0.0.1:0",
            "--envoy-listen",
            "127.0.0.1:0",
            "--envoy-admin-port",
            "0",
            "--envoy-stats-port",
            "0",
            "--envoy-concurrency",
            "1",
            "--registrations-per-ip-per-hour",
            "10000",
            "--chat-addr",
            "127.0.0.1:0",
            "--socket-addr",
            "127.0.0.1:0",
            "--data-dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // An address given in `extra` replaces the default one.
        if let Some(at) = args.iter().position(|a| a == "--ext-authz-ops-addr")
            && extra.contains(&"--ext-authz-ops-addr")
        {
            args.drain(at..at + 2);
        }
        // `ECHO` stands for this node's echo upstream (which shows what reached it).
        args.extend(extra.iter().map(|s| if *s == "ECHO" { echo.clone() } else { s.to_string() }));
        if !extra.contains(&"--fast-path") {
            args.extend(fast_path_args(fast_path));
        }
        if !extra.contains(&"--ping-interval") {
            // Pings often enough to be seen in a test, idle close well beyond it.
            args.extend(["--ping-interval", "2s", "--idle-timeout", "20s"].map(String::from));
        }
        let config: UpConfig = parse_up(&args);
        config.check().unwrap();
        let stack = Stack::start(&config, AccessLog::File(dir.join("access.log")))
            .await
            .unwrap_or_else(|e| panic!("stack: {e:#}"));
        let gateway = stack.gateway().unwrap();
        nodes.push(Node { stack, gateway, dir });
    }
    Some(Cluster { nodes, _schema: schema })
}

/// An upstream that answers every request with what it received.
async fn start_echo() -> SocketAddr {
    use axum::extract::FromRequestParts as _;
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|request: Request| async move {
        let headers: HashMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let seen = json!({ "method": request.method().as_str(), "uri": request.uri().to_string(), "headers": headers });
        // A WebSocket upgrade is taken, and what reached it is its first frame.
        let (mut parts, _) = request.into_parts();
        if let Ok(upgrade) = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            return upgrade
                .on_upgrade(move |mut socket| async move {
                    let _ = socket.send(axum::extract::ws::Message::Text(seen.to_string().into())).await;
                })
                .into_response();
        }
        axum::Json(seen).into_response()
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// True (and a message, or a failure in CI) when no Envoy binary is found.
pub fn envoy_missing() -> bool {
    match caas::envoy::find_binary() {
        Ok(_) => false,
        Err(error) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {error}");
            eprintln!("SKIPPED: {error}");
            true
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// For the echo upstream: the headers that reached the service.
    pub fn upstream_headers(&self) -> &serde_json::Map<String, Value> {
        self.body["headers"].as_object().expect("not an echo reply")
    }

    /// The signed context the service received, verified as a service would.
    pub fn verified_context(&self) -> caas_core::context::RequestContext {
        let headers = self.upstream_headers();
        ContextVerifier::new(&Secret::new(SERVICE_SECRET), None)
            .verify(
                |name| headers.get(name).and_then(Value::as_str),
                self.body["method"].as_str().unwrap(),
                caas_core::id::unix_now(),
            )
            .expect("context did not verify")
    }
}

/// An HTTP client whose connections come from `source` (any 127.x.y.z).
pub fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client behind a trusted proxy that reports `forwarded_for` as the client.
pub fn client_behind_proxy(forwarded_for: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", forwarded_for.parse().unwrap());
    reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(10)).build().unwrap()
}

/// One HTTP/1.1 request with the path exactly as given (no client library
/// normalises it): the status (0 if none came within 5 s) and the body.
pub async fn raw_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: caas\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn client() -> reqwest::Client {
    client_from("127.0.0.1")
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// A registered client (tenant) with its dashboard token and first key.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub key: String,
    pub key_id: String,
    pub dashboard: String,
}

pub async fn onboard(node: &Node, name: &str) -> Tenant {
    onboard_via(node, name, &client()).await
}

pub async fn onboard_via(node: &Node, name: &str, http: &reqwest::Client) -> Tenant {
    let email = format!("{}@example.com", caas_core::id::new_id(name).to_lowercase());
    let r = send(
        http.post(node.url("/v1/client/register")).json(&json!({"name": name, "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let login =
        send(http.post(node.url("/v1/client/login")).json(&json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(login.status, 200, "{login:?}");
    Tenant {
        id: r.body["client_id"].as_str().unwrap().into(),
        key: r.body["api_key"]["key"].as_str().unwrap().into(),
        key_id: r.body["api_key"]["id"].as_str().unwrap().into(),
        dashboard: login.body["access_token"].as_str().unwrap().into(),
    }
}

/// A registered client's email and tenant id (no login yet).
pub async fn account(node: &Node, name: &str) -> (String, String) {
    let email = format!("{}@example.com", caas_core::id::new_id(name).to_lowercase());
    let r = send(
        client()
            .post(node.url("/v1/client/register"))
            .json(&json!({"name": name, "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    (email, r.body["client_id"].as_str().unwrap().into())
}

pub async fn login(node: &Node, email: &str, password: &str) -> Reply {
    send(client().post(node.url("/v1/client/login")).json(&json!({"email": email, "password": password}))).await
}

/// A dashboard session's access token for `email` (a sign-in).
pub async fn dashboard_token(node: &Node, email: &str) -> String {
    let r = login(node, email, PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["access_token"].as_str().unwrap().into()
}

/// The profile as `token` sees it through `node`: 200, or the denial's code.
pub async fn profile_status(node: &Node, token: &str) -> (u16, String) {
    let r = send(client().get(node.url("/v1/client/profile")).bearer_auth(token)).await;
    (r.status, r.code().to_string())
}

pub async fn set_whitelists(node: &Node, tenant: &Tenant, cidrs: &[&str], origins: &[&str]) {
    set_whitelists_via(node, tenant, cidrs, origins, &client()).await
}

pub async fn set_whitelists_via(
    node: &Node,
    tenant: &Tenant,
    cidrs: &[&str],
    origins: &[&str],
    http: &reqwest::Client,
) {
    let r = send(
        http.put(node.url("/v1/client/ip-whitelist")).bearer_auth(&tenant.dashboard).json(&json!({ "cidrs": cidrs })),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(
        http.put(node.url("/v1/client/origin-whitelist"))
            .bearer_auth(&tenant.dashboard)
            .json(&json!({ "origins": origins })),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// An end-user session created by the tenant's backend from 127.0.0.1.
pub async fn sdk_session(node: &Node, tenant: &Tenant, user: &str) -> Value {
    let r = send(
        client().post(node.url("/v1/sdk/session")).header("x-api-key", &tenant.key).json(&json!({ "user_id": user })),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body
}

/// Polls until `check` holds or `within` passes; returns how long it took.
pub async fn within<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of a dependency that can be cut (every connection
/// dropped, new ones closed at once) and restored: the dependency going down
/// and coming back, as the services see it.
#[derive(Clone, Default)]
pub struct Outage {
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Outage {
    pub async fn proxy(target: SocketAddr) -> (SocketAddr, Outage) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let outage = Outage::default();
        let this = outage.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if this.down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut connections = this.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        });
        (addr, outage)
    }

    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Where `url` points.
pub fn address_of(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs as _;
    let parsed = reqwest::Url::parse(url).unwrap();
    let (host, port) = (parsed.host_str().unwrap(), parsed.port().unwrap());
    (host, port).to_socket_addrs().unwrap().next().unwrap()
}

/// `url` pointing at `addr` instead.
pub fn pointed_at(url: &str, addr: SocketAddr) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    parsed.set_host(Some(&addr.ip().to_string())).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

/// True (with a SKIPPED message; a failure under CI=true) when the command
/// `tool` is not installed; `install` says how to get it.
pub fn tool_missing(tool: &str, install: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {tool} is not installed ({install})");
        eprintln!("SKIPPED: {tool} is not installed ({install})");
    }
    !found
}
