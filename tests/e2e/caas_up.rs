//! `caas up` itself, as a user runs it: embedded default (SQLite, in-process
//! bus), generated secrets, Envoy as a child, clean stop, restart.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

/// `target/<profile>/caas`, built by scripts/test.sh before the tests.
fn caas_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join("caas");
    assert!(binary.is_file(), "{} missing: run `cargo build -p caas` first (scripts/test.sh does)", binary.display());
    binary
}

/// A running `caas up` and the addresses its welcome text names.
pub struct Up {
    pub child: Child,
    pub gateway: String,
    pub envoy_admin: String,
    /// Envoy's stats listener (`GET /stats/prometheus` only).
    pub envoy_stats: String,
    pub auth_api: String,
    pub ext_authz_ops: String,
    pub chat: String,
    _group: KillGroupOnPanic,
}

/// `caas up` runs in a process group of its own (with the Envoy it starts):
/// a test that panics takes the whole group down with it. `kill_on_drop`
/// alone reached `caas` but left its Envoy running, still polling a feed
/// that was gone.
struct KillGroupOnPanic(u32);

impl Drop for KillGroupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // bash's own kill: procps-ng's `kill -KILL -PGID` took the
            // negative id for something else and killed this test run.
            let group = self.0.to_string();
            let _ = std::process::Command::new("bash").args(["-c", "kill -KILL -- -\"$0\"", &group]).status();
        }
    }
}

/// Starts `caas up` in `dir` on free ports, on the embedded default unless
/// `configure` says otherwise (it may also redirect stdout, where the logs go);
/// returns once the welcome text says it is up.
pub async fn start(dir: &std::path::Path, configure: impl FnOnce(&mut Command)) -> Up {
    let mut command = Command::new(caas_binary());
    command
        .arg("up")
        .args(["--auth-api-addr", "127.0.0.1:0", "--ext-authz-addr", "127.0.0.1:0"])
        .args(["--ext-authz-ops-addr", "127.0.0.1:0", "--chat-addr", "127.0.0.1:0", "--socket-addr", "127.0.0.1:0"])
        .args(["--envoy-listen", "127.0.0.1:0", "--envoy-admin-port", "0", "--envoy-stats-port", "0"])
        .args(["--envoy-concurrency", "1"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .env_remove("SERVICE_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let group = KillGroupOnPanic(child.id().unwrap());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // "  gateway    http://G   (Envoy admin http://A, metrics http://S/stats/prometheus)" and
    // "  auth-api   http://H   ext-authz grpc X, metrics http://O/metrics", then chat.
    let urls = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches([')', ',']).trim_end_matches("/metrics").trim_end_matches("/stats/prometheus"))
            .map(str::to_string)
            .collect()
    };
    let (gateway, auth, chat) = tokio::time::timeout(Duration::from_secs(60), async {
        let (mut gateway, mut auth) = (Vec::new(), Vec::new());
        while let Some(line) = lines.next_line().await.unwrap() {
            let line = line.trim();
            if line.starts_with("gateway") {
                gateway = urls(line);
            } else if line.starts_with("auth-api") {
                auth = urls(line);
            } else if line.starts_with("chat") {
                return (gateway, auth, urls(line));
            }
        }
        panic!("caas up exited before it was ready");
    })
    .await
    .expect("caas up did not become ready within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let [gateway, envoy_admin, envoy_stats] = <[String; 3]>::try_from(gateway).expect("gateway line");
    let [auth_api, ext_authz_ops] = <[String; 2]>::try_from(auth).expect("auth-api line");
    Up { child, gateway, envoy_admin, envoy_stats, auth_api, ext_authz_ops, chat: chat[0].clone(), _group: group }
}

async fn caas_up(dir: &std::path::Path) -> (Child, String) {
    let up = start(dir, |_| {}).await;
    (up.child, up.gateway)
}

pub async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("caas up did not stop within 20 s")
        .unwrap();
    assert!(status.success(), "caas up exited with {status}");
}

#[tokio::test]
async fn caas_up_serves_through_envoy_stops_cleanly_and_keeps_secrets() {
    if crate::harness::envoy_missing() {
        return;
    }
    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-up"));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, gateway) = caas_up(&dir).await;
    let http = client();
    let r = send(http.get(format!("{gateway}/healthz"))).await;
    assert_eq!(r.status, 200);
    let email = "up@example.com";
    let r = send(
        http.post(format!("{gateway}/v1/client/register"))
            .json(&json!({"name": "Up", "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let login =
        send(http.post(format!("{gateway}/v1/client/login")).json(&json!({"email": email, "password": PASSWORD})))
            .await;
    let token = login.body["access_token"].as_str().unwrap().to_string();
    assert!(dir.join("data/caas.db").exists() && dir.join("data/dev-secrets.json").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("data/dev-secrets.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "dev secrets must be private to their owner");
    }
    stop(child).await;

    // Restarted on the same data: the dashboard token issued before still works.
    let (child, gateway) = caas_up(&dir).await;
    let r = send(http.get(format!("{gateway}/v1/client/profile")).bearer_auth(&token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["email"], email);
    stop(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A stand-in OTLP/HTTP collector: keeps every JSON body posted to /v1/traces.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test]
async fn a_clients_trace_id_reaches_every_log_and_the_collector() {
    if crate::harness::envoy_missing() {
        return;
    }
    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-trace"));
    std::fs::create_dir_all(&dir).unwrap();
    let (collector_url, spans) = collector().await;
    let log = dir.join("stdout.log");
    let up = start(&dir, |command| {
        command
            .env("RUST_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url)
            .stdout(std::fs::File::create(&log).unwrap());
    })
    .await;
    let (child, gateway) = (up.child, up.gateway);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let http = client();
    let r = send(
        http.post(format!("{gateway}/v1/client/register"))
            .header("traceparent", &traceparent)
            .json(&json!({"name": "Traced", "email": "trace@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");

    let found = crate::harness::within(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let spans = spans.lock().unwrap().clone();
        async move {
            let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let with_trace = |pred: &dyn Fn(&serde_json::Value) -> bool| {
                lines.iter().any(|l| l.to_string().contains(trace_id) && pred(l))
            };
            let envoy = with_trace(&|l| l["component"] == "envoy");
            // Whoever decided logged it with the trace: ext-authz's `check`
            // line, or (the in-proxy filter decides public routes too, once
            // its feed is current) Envoy's line marked `edge: allow`; either
            // way ext-authz exports the decision's span (below).
            let authz = with_trace(&|l| {
                l["target"].as_str().is_some_and(|t| t.starts_with("caas_ext_authz"))
                    && l["fields"]["decision"] == "allow"
            }) || with_trace(&|l| l["component"] == "envoy" && l["edge"] == "allow");
            let service = with_trace(&|l| l["fields"]["service"] == "auth-api" && l["fields"]["trace_id"] == trace_id);
            let exported: Vec<String> = spans
                .iter()
                .flat_map(|body| body["resourceSpans"].as_array().cloned().unwrap_or_default())
                .filter(|rs| rs.to_string().contains(trace_id))
                .filter_map(|rs| rs["resource"]["attributes"][0]["value"]["stringValue"].as_str().map(String::from))
                .collect();
            envoy
                && authz
                && service
                && exported.contains(&"ext-authz".to_string())
                && exported.contains(&"auth-api".to_string())
        }
    })
    .await;
    assert!(
        found.is_some(),
        "trace id missing somewhere; logs:\n{}\nspans: {:?}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        spans.lock().unwrap()
    );

    // A client that sends no traceparent: the gateway starts the trace
    // (ext-authz, or the filter in its place), and Envoy's line and the
    // service's carry it.
    let r = send(
        http.post(format!("{gateway}/v1/client/register"))
            .json(&json!({"name": "Untraced", "email": "untraced@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let request_id = r.header("x-request-id").unwrap().to_string();
    let joined = crate::harness::within(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let request_id = request_id.clone();
        async move {
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|l: &serde_json::Value| l.to_string().contains(&request_id))
                .collect();
            // ext-authz's `check` line names it; a request the filter
            // allowed has none, and the trace is the one its traceparent names.
            let checked = lines.iter().find(|l| l["fields"]["message"] == "check");
            let passed_on = lines
                .iter()
                .find(|l| l["component"] == "envoy" && l["edge"] == "allow")
                .and_then(|l| l["traceparent"].as_str()?.split('-').nth(1));
            let trace_id = checked
                .and_then(|l| l["fields"]["trace_id"].as_str())
                .or(passed_on)
                .filter(|t| t.len() == 32)
                .unwrap_or("none");
            let service =
                lines.iter().any(|l| l["fields"]["service"] == "auth-api" && l["fields"]["trace_id"] == trace_id);
            let envoy = lines
                .iter()
                .any(|l| l["component"] == "envoy" && l["traceparent"].as_str().is_some_and(|t| t.contains(trace_id)));
            service && envoy
        }
    })
    .await;
    assert!(
        joined.is_some(),
        "no common trace for {request_id}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A request the in-proxy filter decides (`caas up` runs it; a dashboard
    // GET, once it has looked the session up): its allow is a span of the
    // caller's trace too, exported by ext-authz as the filter's, and the
    // service's span is its child, as with a Check.
    let login = send(
        http.post(format!("{gateway}/v1/client/login"))
            .json(&json!({"email": "untraced@example.com", "password": PASSWORD})),
    )
    .await;
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let (trace_id, caller_span) = ("5bf92f3577b34da6a3ce929d0e0e4737", "00f067aa0ba902b7");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let edge = loop {
        let r = send(
            http.get(format!("{gateway}/v1/client/profile"))
                .bearer_auth(&token)
                .header("traceparent", format!("00-{trace_id}-{caller_span}-01")),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        let found = exported_spans(&spans.lock().unwrap(), trace_id);
        let edge = found.iter().find(|(service, span)| {
            service == "ext-authz"
                && span["attributes"].to_string().contains(r#""key":"caas.decided_by","value":{"stringValue":"edge"}"#)
        });
        // The service's span, the child of the filter's (not of a Check's).
        if let Some((_, edge)) = edge
            && found.iter().any(|(service, span)| service == "auth-api" && span["parentSpanId"] == edge["spanId"])
        {
            break edge.clone();
        }
        let seen: Vec<String> = found
            .iter()
            .map(|(service, span)| format!("{service} {} {} ← {}", span["name"], span["spanId"], span["parentSpanId"]))
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "no span of the filter's with the service's as its child; spans of the trace: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(edge["parentSpanId"], caller_span, "the filter's span continues the caller's");
    assert_eq!(edge["name"], "check dashboard");
    stop(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Every span exported under `trace_id`, with the name of the service that exported it.
fn exported_spans(bodies: &[serde_json::Value], trace_id: &str) -> Vec<(String, serde_json::Value)> {
    let mut found = Vec::new();
    for resource in bodies.iter().flat_map(|body| body["resourceSpans"].as_array().cloned().unwrap_or_default()) {
        let service = resource["resource"]["attributes"][0]["value"]["stringValue"].as_str().unwrap_or("").to_string();
        for scope in resource["scopeSpans"].as_array().cloned().unwrap_or_default() {
            for span in scope["spans"].as_array().cloned().unwrap_or_default() {
                if span["traceId"] == trace_id {
                    found.push((service.clone(), span));
                }
            }
        }
    }
    found
}
