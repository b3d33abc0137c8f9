//! One WebSocket connection, from after the 101 until it closes. The
//! identity was established once, on the upgrade; every frame is checked
//! against it, never against a token again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use caas_core::chat::ChatError;
use caas_core::id::{new_id, unix_now};
use futures_util::SinkExt as _;
use futures_util::stream::{SplitSink, StreamExt as _};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::SocketState;
use crate::auth::Identity;
use crate::close::CloseReason;
use crate::protocol::{self, FrameError, Inbound};
use crate::registry::{ConnHandle, Outbound, node_micros};

/// A write that takes longer than this means the client stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// More invalid frames than this within a second closes the connection.
const BAD_FRAMES_PER_SECOND: u32 = 10;
/// Conversations remembered per connection as "the user is a member".
const MEMBERSHIP_CACHE: usize = 256;

type Sink = SplitSink<WebSocket, Message>;

/// Serves an accepted connection until it ends.
/// `ids` are the upgrade request's, so the connection's lines join its trace.
pub async fn run(
    state: SocketState,
    socket: WebSocket,
    identity: Identity,
    origin: Option<String>,
    ids: caas_http::RequestIds,
) {
    let (tx, mut outbound) = mpsc::channel(state.settings().send_queue);
    let handle = Arc::new(ConnHandle::new(
        state.registry().next_id(),
        new_id("sock"),
        identity.tenant_id.clone(),
        identity.user_id.clone(),
        tx,
    ));
    if let Err(reason) = state.registry().add(handle.clone(), &identity.session_id, state.settings().caps) {
        refuse(&state, socket, reason, &identity, ids).await;
        return;
    }
    state.presence().save(&handle.key, &identity).await;
    state.metrics().connections_total.inc();
    state.metrics().connections.inc();
    let caas_http::RequestIds { request_id, trace_id } = ids;
    tracing::info!(tenant_id = %identity.tenant_id, session_id = %identity.session_id, conn = %handle.key, request_id, trace_id, "socket connected");

    let mut connection = Connection {
        state: state.clone(),
        handle: handle.clone(),
        identity,
        origin,
        member_of: HashSet::new(),
        bucket: TokenBucket::new(state.settings().frames_per_second),
        bad_frames: Window::default(),
    };
    let (mut sink, stream) = socket.split();
    let reason = connection.serve(&mut sink, stream, &mut outbound).await;
    if let Some(reason) = reason {
        close_with(&state, &mut sink, reason).await;
    }
    state.registry().remove(handle.id);
    state.presence().remove(&handle.key, &connection.identity).await;
    state.metrics().connections.dec();
    tracing::info!(
        tenant_id = %connection.identity.tenant_id,
        conn = %handle.key,
        reason = reason.map_or("client", CloseReason::as_str),
        request_id,
        trace_id,
        "socket closed"
    );
}

/// Sends the server's close frame for `reason` (bounded wait) and counts it.
async fn close_with(state: &SocketState, sink: &mut Sink, reason: CloseReason) {
    let frame = CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.text()) };
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    state.metrics().closes.get_or_create(&[("reason", reason.as_str())]).inc();
}

/// Closes a connection over its user's or tenant's cap before it serves
/// anything; the client sees the cap's close code.
async fn refuse(
    state: &SocketState,
    socket: WebSocket,
    reason: CloseReason,
    identity: &Identity,
    ids: caas_http::RequestIds,
) {
    let (mut sink, _) = socket.split();
    close_with(state, &mut sink, reason).await;
    tracing::warn!(
        tenant_id = %identity.tenant_id,
        reason = reason.as_str(),
        request_id = ids.request_id,
        trace_id = ids.trace_id,
        "socket refused: connection cap reached"
    );
}

struct Connection {
    state: SocketState,
    handle: Arc<ConnHandle>,
    identity: Identity,
    origin: Option<String>,
    member_of: HashSet<String>,
    bucket: TokenBucket,
    bad_frames: Window,
}

/// When a token expiring at Unix second `at` expires, as an Instant.
fn deadline(at: i64) -> Instant {
    Instant::now() + Duration::from_secs(at.saturating_sub(unix_now()).max(0) as u64)
}

/// Writes the frames with one flush, then records each one's delivery time.
async fn send_all(
    sink: &mut Sink,
    frames: Vec<Outbound>,
    latency: &prometheus_client::metrics::histogram::Histogram,
) -> Result<(), ()> {
    let mut arrivals = Vec::with_capacity(frames.len());
    let write = async {
        for Outbound { frame, arrived } in frames {
            arrivals.push(arrived);
            sink.feed(Message::Text(frame)).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => {
            let now = node_micros();
            for arrived in arrivals {
                latency.observe(f64::from(now.wrapping_sub(arrived)) / 1e6);
            }
            Ok(())
        }
        _ => Err(()),
    }
}

async fn send(sink: &mut Sink, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

impl Connection {
    /// Returns why the server closes, or `None` when the client went away.
    async fn serve(
        &mut self,
        sink: &mut Sink,
        mut stream: futures_util::stream::SplitStream<WebSocket>,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Option<CloseReason> {
        let settings = self.state.settings().clone();
        let mut ping = tokio::time::interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
        let mut last_seen = Instant::now();
        let expiry = tokio::time::sleep_until(deadline(self.identity.expires_at));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = self.handle.notify.notified() => return Some(self.handle.close_reason().unwrap_or(CloseReason::GoingAway)),
                _ = &mut expiry => return Some(CloseReason::TokenExpired),
                frame = outbound.recv() => {
                    // Under load frames queue up: write them all with one flush.
                    let mut batch = vec![frame?];
                    while batch.len() < 64 && let Ok(next) = outbound.try_recv() {
                        batch.push(next);
                    }
                    send_all(sink, batch, &self.state.metrics().delivery_seconds).await.ok()?;
                }
                inbound = stream.next() => {
                    last_seen = Instant::now();
                    match inbound {
                        None => return None,
                        Some(Err(error)) => {
                            // tungstenite refuses frames over the limit before reading them.
                            return error.to_string().contains("too long").then_some(CloseReason::TooBig);
                        }
                        Some(Ok(Message::Text(text))) => {
                            let expires_at = self.identity.expires_at;
                            if let Some(reason) = self.on_text(sink, &text).await {
                                return Some(reason);
                            }
                            if self.identity.expires_at != expires_at {
                                expiry.as_mut().reset(deadline(self.identity.expires_at));
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if let Some(reason) = self.bad_frame(sink, FrameError::BinaryFrame, None).await {
                                return Some(reason);
                            }
                        }
                        Some(Ok(Message::Close(_))) => return None,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() >= settings.idle_timeout {
                        return Some(CloseReason::Idle);
                    }
                    send(sink, Message::Ping(Default::default())).await.ok()?;
                }
            }
        }
    }

    async fn bad_frame(&mut self, sink: &mut Sink, error: FrameError, id: Option<&str>) -> Option<CloseReason> {
        if self.bad_frames.hit() > BAD_FRAMES_PER_SECOND {
            return Some(CloseReason::InvalidFrames);
        }
        send(sink, Message::Text(protocol::error(error.code(), error.message(), id).into()))
            .await
            .err()
            .map(|()| CloseReason::SlowConsumer)
    }

    async fn reply(&self, sink: &mut Sink, text: String) -> Option<CloseReason> {
        send(sink, Message::Text(text.into())).await.err().map(|()| CloseReason::SlowConsumer)
    }

    async fn on_text(&mut self, sink: &mut Sink, text: &str) -> Option<CloseReason> {
        if !self.bucket.take() {
            if self.bucket.overdrawn() {
                return Some(CloseReason::RateLimited);
            }
            return self.reply(sink, protocol::error("rate_limited", "too many frames; slow down", None)).await;
        }
        let frame = match protocol::parse(text) {
            Ok(frame) => frame,
            Err(error) => return self.bad_frame(sink, error, None).await,
        };
        let reply = match frame {
            Inbound::Subscribe { conversation_id, id } => self.subscribe(&conversation_id, id.as_deref()).await,
            Inbound::Unsubscribe { conversation_id, id } => {
                self.state.registry().unsubscribe(self.handle.id, &conversation_id);
                protocol::ack("unsubscribe", id.as_deref(), json!({ "conversation_id": conversation_id }))
            }
            Inbound::Message { conversation_id, body, client_msg_id, id } => {
                self.post(&conversation_id, &body, &client_msg_id, id.as_deref()).await
            }
            Inbound::Refresh { token, id } => self.refresh(&token, id.as_deref()).await,
            Inbound::Ack => return None,
        };
        self.reply(sink, reply).await
    }

    /// Membership from the connection's cache, else the database.
    async fn is_member(&mut self, conversation_id: &str) -> Result<bool, ChatError> {
        if self.member_of.contains(conversation_id) {
            self.state.metrics().context_cache_hits.inc();
            return Ok(true);
        }
        let member =
            self.state.chat().is_member(&self.identity.tenant_id, conversation_id, &self.identity.user_id).await?;
        if member && self.member_of.len() < MEMBERSHIP_CACHE {
            self.member_of.insert(conversation_id.to_string());
        }
        Ok(member)
    }

    async fn subscribe(&mut self, conversation_id: &str, id: Option<&str>) -> String {
        match self.is_member(conversation_id).await {
            Ok(true) => {
                let limit = self.state.settings().max_subscriptions;
                if self.state.registry().subscribe(self.handle.id, conversation_id, limit) {
                    protocol::ack("subscribe", id, json!({ "conversation_id": conversation_id }))
                } else {
                    protocol::error(
                        "too_many_subscriptions",
                        &format!("at most {limit} subscriptions per connection"),
                        id,
                    )
                }
            }
            Ok(false) => protocol::error("conversation_not_found", "no such conversation", id),
            Err(error) => chat_error(&error, id),
        }
    }

    async fn post(&mut self, conversation_id: &str, body: &str, client_msg_id: &str, id: Option<&str>) -> String {
        match self.is_member(conversation_id).await {
            Ok(true) => {}
            Ok(false) => return protocol::error("conversation_not_found", "no such conversation", id),
            Err(error) => return chat_error(&error, id),
        }
        let (tenant, user) = (&self.identity.tenant_id, &self.identity.user_id);
        match self.state.chat().post(tenant, user, conversation_id, body, client_msg_id, unix_now()).await {
            Ok((message, created)) => protocol::ack(
                "message",
                id,
                json!({ "conversation_id": conversation_id, "message_id": message.id, "client_msg_id": client_msg_id, "duplicate": !created }),
            ),
            Err(error) => chat_error(&error, id),
        }
    }

    /// A new token for the same user and tenant replaces the expiry (it can
    /// never remove it); anyone else's token is refused.
    async fn refresh(&mut self, token: &str, id: Option<&str>) -> String {
        match self.state.validator().validate(token, self.origin.as_deref(), None).await {
            Ok(new) if new.tenant_id == self.identity.tenant_id && new.user_id == self.identity.user_id => {
                if new.session_id != self.identity.session_id {
                    self.state.registry().move_session(self.handle.id, &new.session_id);
                }
                self.identity = new;
                self.state.presence().save(&self.handle.key, &self.identity).await;
                protocol::ack("refresh", id, json!({ "expires_at": self.identity.expires_at }))
            }
            Ok(_) => {
                self.state.metrics().auth_failures.get_or_create(&[("reason", "refresh_other_user")]).inc();
                protocol::error("refresh_rejected", "the token is for another user", id)
            }
            Err(refusal) => {
                self.state.metrics().auth_failures.get_or_create(&[("reason", "refresh_invalid")]).inc();
                protocol::error(&refusal.code, &refusal.message, id)
            }
        }
    }
}

fn chat_error(error: &ChatError, id: Option<&str>) -> String {
    let code = error.code();
    match error {
        ChatError::NotFound => protocol::error(code, "no such conversation", id),
        ChatError::Invalid { field, message } => protocol::error(code, &format!("{field}: {message}"), id),
        ChatError::TooLarge => protocol::error(code, "message body is larger than 16 KiB", id),
        ChatError::Store(error) => {
            tracing::error!(%error, "chat storage failed for a socket frame");
            protocol::error(code, "storage is unavailable; retry", id)
        }
    }
}

/// Frames per second with bursts of twice that; far past it, the client is flooding.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    refused: Window,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self { rate, tokens: rate * 2.0, refilled: Instant::now(), refused: Window::default() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.rate * 2.0);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.refused.hit();
        false
    }

    /// Refused more than five times the rate within a second.
    fn overdrawn(&self) -> bool {
        f64::from(self.refused.count) > self.rate * 5.0
    }
}

/// Counts events in the current one-second window.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    count: u32,
}

impl Window {
    fn hit(&mut self) -> u32 {
        let now = Instant::now();
        match self.started {
            Some(started) if now.duration_since(started) < Duration::from_secs(1) => self.count += 1,
            _ => {
                self.started = Some(now);
                self.count = 1;
            }
        }
        self.count
    }
}
