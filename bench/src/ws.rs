//! WebSocket load: hold many authenticated connections (memory, accept
//! rate), and receive fanned-out messages (deliveries per second, latency).
//!
//! Connections carry signed gateway context, as they do behind Envoy, so the
//! socket service is measured alone (no auth-api call per connection).
//!
//! `--protocol pusher` drives a Pusher-protocol server (sockudo) with the same
//! client code: subscribers of a public channel, messages published through
//! its signed HTTP API, the send time carried in the message the same way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caas_core::context::{AuthType, ContextSigner, RequestContext};
use caas_core::id::unix_now;
use caas_core::secret::Secret;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::Mac as _;
use md5::Digest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The server's protocol: CAAS's socket service or a Pusher server (sockudo).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Caas,
    Pusher,
}

#[derive(clap::Args)]
pub struct WsHoldArgs {
    #[arg(long, value_enum, default_value_t = Protocol::Caas)]
    protocol: Protocol,
    /// Socket service addresses (connections are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3009")]
    servers: Vec<SocketAddr>,
    #[arg(long)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// CAAS: the secret the gateway context is signed with.
    #[arg(long, default_value = "")]
    service_secret: String,
    #[arg(long, default_value = "")]
    tenant: String,
    #[arg(long, default_value = "bench-user")]
    user: String,
    #[arg(long, default_value = "")]
    session: String,
    /// Pusher: the app key in the connection path (`/app/{key}`).
    #[arg(long, default_value = "")]
    app_key: String,
    /// Subscribe every connection to this conversation (CAAS) or public
    /// channel (Pusher) and count deliveries.
    #[arg(long)]
    subscribe: Option<String>,
    /// Hold the connections this long after they are all open.
    #[arg(long, default_value_t = 10)]
    hold_seconds: u64,
    /// Local addresses to connect from, round-robin (more ephemeral ports).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
}

fn signed_request(
    server: SocketAddr,
    signer: &ContextSigner,
    args: &WsHoldArgs,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut request = format!("ws://{server}/v1/ws").into_client_request()?;
    let context = RequestContext {
        tenant_id: args.tenant.clone(),
        user_id: args.user.clone(),
        session_id: args.session.clone(),
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        client_ip: String::new(),
        request_id: caas_core::id::new_id("req"),
        token_expires_at: Some(unix_now() + 7200),
    };
    for (name, value) in signer.headers(&context, "GET", unix_now()) {
        if !value.is_empty() {
            request.headers_mut().insert(name, value.parse()?);
        }
    }
    request.headers_mut().insert("sec-websocket-protocol", "caas.v1".parse()?);
    Ok(request)
}

fn request(
    server: SocketAddr,
    signer: &ContextSigner,
    args: &WsHoldArgs,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    match args.protocol {
        Protocol::Caas => signed_request(server, signer, args),
        Protocol::Pusher => Ok(format!("ws://{server}/app/{}?protocol=7&client=caas-bench&version=1.0", args.app_key)
            .into_client_request()?),
    }
}

/// Where a delivered frame carries the send time (Unix nanoseconds): the
/// message body for CAAS, the event's data for Pusher.
fn sent_at(protocol: Protocol, text: &str) -> Option<u128> {
    let marker = match protocol {
        Protocol::Caas => "\"body\":\"",
        Protocol::Pusher => "\"data\":\"",
    };
    text.split(marker).nth(1).and_then(|b| b.split('"').next()).and_then(|b| b.parse::<u128>().ok())
}

async fn open(
    server: SocketAddr,
    source: IpAddr,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

pub async fn hold(args: WsHoldArgs) -> anyhow::Result<()> {
    if args.protocol == Protocol::Caas && (args.service_secret.is_empty() || args.tenant.is_empty()) {
        anyhow::bail!("--protocol caas needs --service-secret, --tenant and --session");
    }
    if args.protocol == Protocol::Pusher && args.app_key.is_empty() {
        anyhow::bail!("--protocol pusher needs --app-key");
    }
    let protocol = args.protocol;
    let signer = ContextSigner::new(&Secret::new(args.service_secret.clone()));
    let received = Arc::new(AtomicU64::new(0));
    // First and last delivery (ns since start): deliveries/s over that window.
    let origin = Instant::now();
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let server = args.servers[i % args.servers.len()];
        let source = args.sources[i % args.sources.len()];
        let request = request(server, &signer, &args)?;
        let permit = semaphore.clone().acquire_owned().await?;
        let (received, latencies, failures, open_tx) =
            (received.clone(), latencies.clone(), failures.clone(), open_tx.clone());
        let (first, last) = (first.clone(), last.clone());
        let subscribe = args.subscribe.clone();
        tasks.push(tokio::spawn(async move {
            let ws = match open(server, source, request).await {
                Ok(ws) => ws,
                Err(error) => {
                    if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first failed connection: {error}");
                    }
                    drop(permit);
                    let _ = open_tx.send(());
                    return;
                }
            };
            drop(permit);
            let (mut sink, mut stream) = ws.split();
            match (protocol, &subscribe) {
                (Protocol::Caas, Some(conversation)) => {
                    let frame = serde_json::json!({"type": "subscribe", "conversation_id": conversation}).to_string();
                    let _ = sink.send(Message::text(frame)).await;
                    let _ = stream.next().await; // the ack
                }
                (Protocol::Caas, None) => {}
                (Protocol::Pusher, subscribe) => {
                    let _ = stream.next().await; // pusher:connection_established
                    if let Some(channel) = subscribe {
                        let frame = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
                        let _ = sink.send(Message::text(frame.to_string())).await;
                        while let Some(Ok(message)) = stream.next().await {
                            if matches!(&message, Message::Text(t) if t.contains("subscription_succeeded")) {
                                break;
                            }
                        }
                    }
                }
            }
            let _ = open_tx.send(());
            let mut local = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    // Pusher's own events (pings) are not deliveries.
                    if protocol == Protocol::Pusher && text.contains("\"event\":\"pusher:") {
                        if text.contains("pusher:ping") {
                            let _ = sink.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#)).await;
                        }
                        continue;
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    let at = origin.elapsed().as_nanos() as u64;
                    first.fetch_min(at, Ordering::Relaxed);
                    last.fetch_max(at, Ordering::Relaxed);
                    // Bench messages carry the send time in Unix nanoseconds.
                    if let Some(sent) = sent_at(protocol, &text) {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos())
                            .unwrap_or(0);
                        local.push((now.saturating_sub(sent) / 1000) as u64);
                        if local.len() >= 16 {
                            latencies.lock().unwrap_or_else(|e| e.into_inner()).append(&mut local);
                        }
                    }
                }
            }
            latencies.lock().unwrap_or_else(|e| e.into_inner()).append(&mut local);
        }));
    }
    drop(open_tx);
    for _ in 0..args.connections {
        open_rx.recv().await;
    }
    let opened_in = started.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "event": "open",
            "connections": args.connections as u64 - failed,
            "failed": failed,
            "seconds": opened_in,
            "accepted_per_second": ((args.connections as u64 - failed) as f64 / opened_in).round(),
        })
    );
    let before = received.load(Ordering::Relaxed);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    let delivered = received.load(Ordering::Relaxed) - before;
    let window = (last
        .load(Ordering::Relaxed)
        .saturating_sub(first.load(Ordering::Relaxed).min(last.load(Ordering::Relaxed)))) as f64
        / 1e9;
    let mut sorted = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    sorted.sort_unstable();
    let pct = |q: f64| crate::percentile(&sorted, q);
    println!(
        "{}",
        serde_json::json!({
            "event": "held",
            "seconds": hold_started.elapsed().as_secs_f64(),
            "delivered": delivered,
            "delivery_window_seconds": window,
            "deliveries_per_second": if window > 0.0 { (delivered as f64 / window).round() } else { 0.0 },
            "latency_samples": sorted.len(),
            "p50_ms": pct(0.5) as f64 / 1000.0, "p99_ms": pct(0.99) as f64 / 1000.0, "max_ms": sorted.last().copied().unwrap_or(0) as f64 / 1000.0,
        })
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct WsPublishArgs {
    /// CAAS: events on the Redis bus; Pusher: the server's HTTP API.
    #[arg(long, value_enum, default_value_t = Protocol::Caas)]
    protocol: Protocol,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value = "")]
    tenant: String,
    /// The conversation (CAAS) or channel (Pusher).
    #[arg(long)]
    conversation: String,
    /// Pusher: the HTTP API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:6001")]
    api_url: String,
    #[arg(long, default_value = "")]
    app_id: String,
    #[arg(long, default_value = "")]
    app_key: String,
    #[arg(long, default_value = "")]
    app_secret: String,
    /// Pusher: requests in flight at most (a slow server is offered the rate
    /// without the publisher waiting for each answer).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Publishes MessageCreated events on the Redis bus, as a chat node does
/// after storing a message, with the send time as the body; or, for a
/// Pusher server, events through its HTTP API with the send time as data.
pub async fn publish(args: WsPublishArgs) -> anyhow::Result<()> {
    if args.protocol == Protocol::Pusher {
        return publish_pusher(args).await;
    }
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let total = args.rate * args.seconds;
    for i in 0..total {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / args.rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let envelope = serde_json::json!({
            "node": "bench",
            "event": {
                "type": "message_created",
                "tenant_id": args.tenant,
                "message": {
                    "id": format!("msg_bench_{i}"),
                    "conversation_id": args.conversation,
                    "sender_id": "bench-sender",
                    "body": sent.to_string(),
                    "client_msg_id": format!("bench-{i}"),
                    "created_at": unix_now(),
                }
            }
        });
        let _: i64 = redis::cmd("PUBLISH").arg("caas:events").arg(envelope.to_string()).query_async(&mut conn).await?;
    }
    println!(
        "{}",
        serde_json::json!({"event": "published", "messages": total, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// The URL of a signed `POST /apps/{id}/events` (Pusher's HTTP API auth:
/// HMAC-SHA256 over method, path and the sorted query, with the body's MD5).
fn pusher_events_url(
    api_url: &str,
    app_id: &str,
    key: &str,
    secret: &str,
    body: &str,
    now: i64,
) -> anyhow::Result<String> {
    let body_md5 = hex::encode(md5::Md5::digest(body.as_bytes()));
    let path = format!("/apps/{app_id}/events");
    let query = format!("auth_key={key}&auth_timestamp={now}&auth_version=1.0&body_md5={body_md5}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    Ok(format!("{api_url}{path}?{query}&auth_signature={signature}"))
}

async fn publish_pusher(args: WsPublishArgs) -> anyhow::Result<()> {
    if args.app_id.is_empty() || args.app_key.is_empty() || args.app_secret.is_empty() {
        anyhow::bail!("--protocol pusher needs --app-id, --app-key and --app-secret");
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.in_flight).build()?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let mut requests = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / args.rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight.clone().acquire_owned().await?;
        let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let body =
            serde_json::json!({"name": "bench", "channels": [args.conversation], "data": sent.to_string()}).to_string();
        let url = pusher_events_url(&args.api_url, &args.app_id, &args.app_key, &args.app_secret, &body, unix_now())?;
        let (http, failed) = (http.clone(), failed.clone());
        requests.push(tokio::spawn(async move {
            let answer = http.post(url).header("content-type", "application/json").body(body).send().await;
            match answer {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first refused publish: {}", response.status());
                    }
                }
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first failed publish: {error}");
                    }
                }
            }
            drop(permit);
        }));
    }
    for request in requests {
        request.await?;
    }
    println!(
        "{}",
        serde_json::json!({"event": "published", "messages": total, "failed": failed.load(Ordering::Relaxed), "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Pusher's HTTP API documentation (authenticating
    /// requests): same key, secret, timestamp and body give its signature.
    #[test]
    fn pusher_signature_matches_the_documented_example() -> anyhow::Result<()> {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let url = pusher_events_url("http://h", "3", "278d425bdf160c739803", "7ad3773142a6692b25b8", body, 1353088179)?;
        assert_eq!(
            url,
            "http://h/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        Ok(())
    }

    #[test]
    fn send_time_is_read_from_either_protocol() {
        let caas = r#"{"type":"message","message":{"id":"m","body":"1700000000000000000","sender_id":"s"}}"#;
        let pusher = r#"{"event":"bench","channel":"bench","data":"1700000000000000001"}"#;
        assert_eq!(sent_at(Protocol::Caas, caas), Some(1_700_000_000_000_000_000));
        assert_eq!(sent_at(Protocol::Pusher, pusher), Some(1_700_000_000_000_000_001));
        assert_eq!(sent_at(Protocol::Pusher, caas), None);
    }
}
