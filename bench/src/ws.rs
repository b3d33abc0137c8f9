//! WebSocket load: hold many authenticated connections (memory, accept
//! rate), and receive fanned-out messages (deliveries per second, latency).
//!
//! Connections carry signed gateway context, as they do behind Envoy, so the
//! socket service is measured alone (no auth-api call per connection).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caas_core::context::{AuthType, ContextSigner, RequestContext};
use caas_core::id::unix_now;
use caas_core::secret::Secret;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[derive(clap::Args)]
pub struct WsHoldArgs {
    /// Socket service addresses (connections are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3009")]
    servers: Vec<SocketAddr>,
    #[arg(long)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    #[arg(long)]
    service_secret: String,
    #[arg(long)]
    tenant: String,
    #[arg(long, default_value = "bench-user")]
    user: String,
    #[arg(long)]
    session: String,
    /// Subscribe every connection to this conversation and count deliveries.
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
        let request = signed_request(server, &signer, &args)?;
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
            if let Some(conversation) = &subscribe {
                let frame = serde_json::json!({"type": "subscribe", "conversation_id": conversation}).to_string();
                let _ = sink.send(Message::text(frame)).await;
                let _ = stream.next().await; // the ack
            }
            let _ = open_tx.send(());
            let mut local = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    received.fetch_add(1, Ordering::Relaxed);
                    let at = origin.elapsed().as_nanos() as u64;
                    first.fetch_min(at, Ordering::Relaxed);
                    last.fetch_max(at, Ordering::Relaxed);
                    // Body of bench messages: the send time in Unix nanoseconds.
                    if let Some(sent) = text
                        .split("\"body\":\"")
                        .nth(1)
                        .and_then(|b| b.split('"').next())
                        .and_then(|b| b.parse::<u128>().ok())
                    {
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
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    conversation: String,
    /// Messages per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Publishes MessageCreated events on the Redis bus, as a chat node does
/// after storing a message, with the send time as the body.
pub async fn publish(args: WsPublishArgs) -> anyhow::Result<()> {
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
