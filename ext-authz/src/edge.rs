//! The feed of the in-proxy filter (edge-wasm/): what it needs to decide
//! like a Check, served on the ops listener to the gateway alone.
//!
//! - `GET /edge/v1/changes?epoch=E&since=N&wait=W`: the credential changes
//!   this process has seen (from the bus and the durable change feed, the
//!   same messages its validator acts on) after cursor `N` of epoch `E`.
//!   With nothing new, the answer is held up to `W` ms (at most
//!   `MAX_WAIT_MS`) and sent the moment something is: a change, a resync,
//!   or the bus disconnecting — so a revocation reaches the filter about as
//!   fast as it reaches ext-authz, not a poll later. A filter
//!   whose epoch is not this process's, or whose cursor is older than what
//!   is still held (or older than a resync), gets `resync: true` with the
//!   verification material (JWT secrets, issuer, the context-signing
//!   secret, TRUSTED_PROXY_HOPS) and must drop everything it learnt. Every
//!   answer says whether this process is itself current (`current`: its
//!   change feed reads the database), so the filter stops deciding when
//!   ext-authz could not know of a revocation either; and every answer
//!   lists the address buckets ext-authz refuses for too many failed
//!   credentials (`refused`; `null` when too many to list), which the
//!   filter must not allow either.
//! - `GET /edge/v1/session/{id}`: one session as the validator sees it, the
//!   tenant's quotas and Origin whitelist, and the cursor taken before it
//!   was read (a change after that cursor still reaches the filter through
//!   the changes).
//! - `POST /edge/v1/keys`: API keys by the hashes the filter computed (at
//!   most 32 a call), each with its tenant's IP whitelist, as a Check finds
//!   them, and the cursor taken before the reads.
//! - `POST /edge/v1/lease`: end users' and keys' requests counted ahead of
//!   time in their quotas (the same buckets a Check counts in, shared
//!   through Redis as ever), for the filter to spend on requests it allows;
//!   it asks again before they run out, and sends a request it holds no
//!   lease for to ext_authz, which counts it as always. So the filter never
//!   admits more than a quota does. Leases come from the upper half of each
//!   burst (ext-authz/src/quota.rs), and what the filter stops holding
//!   unspent it gives back in the same call (`returned`), un-counted on
//!   every instance,
//!   so that a lease held idle does not make a quota refuse early.
//! - `POST /edge/v1/denials`: the refusals the filter answered itself (at
//!   most `MAX_DENIALS` a call; only `caas_rules::denial::EDGE_ANSWERS`):
//!   each is logged and counted as a Check's refusal is, marked as the
//!   filter's, so the log and `gateway_auth_failures_total` stay complete.
//! - `POST /edge/v1/spans`: the filter's decisions as spans (at most
//!   `MAX_SPANS` a call), when the material says spans are exported: each
//!   is exported as a Check's span is, marked `caas.decided_by: edge`, so a
//!   trace shows the gateway's decision whichever of the two made it.
//! - `POST /edge/v1/decisions`: how many allows and preflights the filter
//!   made on each policy's routes since its last call, added to
//!   `gateway_requests_total`, so that metric counts every decision, and
//!   how many requests it left to ext_authz, by reason.
//!
//! Only the gateway may read it: every request must carry the caller token
//! (EXT_AUTHZ_CALLER_TOKEN, header `x-caas-edge-token`), compared in constant
//! time. Without a configured token the feed refuses everything, and the
//! filter, never current, leaves every decision to ext_authz.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caas_core::bus::BusMessage;
use caas_core::events::Event;
use caas_core::feed::ChangeFeed;
use caas_core::secret::Secret;
use serde_json::json;

use crate::check::Authorizer;
use crate::quota::Holder;

/// The header the filter sends the caller token in.
pub const TOKEN_HEADER: &str = "x-caas-edge-token";
/// Changes held for filters that are behind; one further behind resyncs.
const HELD: usize = 8192;
/// Leases asked for in one call, and requests in one lease, at most.
pub const MAX_LEASES: usize = 256;
pub const MAX_LEASE: u32 = 1_000;
/// How long a `changes` call with nothing new is held, at most.
pub const MAX_WAIT_MS: u64 = 1_000;
/// A lease request's body, at most (256 leases of long ids fit).
const MAX_LEASE_BODY: usize = 256 * 1024;
/// Keys looked up in one call, at most.
pub const MAX_KEY_LOOKUPS: usize = 32;
const MAX_KEYS_BODY: usize = 16 * 1024;
/// A reported refusal's path, at most (the filter reports no longer one:
/// edge-wasm/src/decide.rs `MAX_REPORTED_PATH`).
const MAX_REPORTED_PATH: usize = 2048;
/// Refusals reported in one call, at most, and the body that carries them.
pub const MAX_DENIALS: usize = 512;
const MAX_DENIALS_BODY: usize = 512 * 1024;
/// Spans sent in one call, at most, and the body that carries them.
pub const MAX_SPANS: usize = 512;
const MAX_SPANS_BODY: usize = 512 * 1024;
/// Counts sent in one call, at most (one per policy and decision), the
/// largest count, and the body that carries them.
pub const MAX_COUNTS: usize = 64;
pub const MAX_COUNT: u64 = 1_000_000_000_000;
const MAX_COUNTS_BODY: usize = 16 * 1024;

pub use crate::material::EdgeMaterial;

/// Credential changes in the order this process received them.
pub struct EdgeFeed {
    /// Names this process's numbering: a filter that knew another restarts.
    epoch: String,
    inner: Mutex<Held>,
    token: Option<Secret>,
    material: EdgeMaterial,
    authorizer: Arc<Authorizer>,
    changes: Option<Arc<ChangeFeed>>,
    /// The bus the validator hears revocations on.
    bus: Arc<dyn caas_core::bus::EventBus>,
    /// A second listener on the bus, read by the handlers (`catch_up`).
    polled: Mutex<Listener>,
    /// Bumped on every change, resync and bus disconnection: wakes the
    /// `changes` calls held for news.
    news: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Held {
    /// How many of the bus's messages here have been heard, by either
    /// listener (`EdgeFeed::hear`).
    heard: u64,
    /// The cursor of the newest change (0: none yet).
    cursor: u64,
    /// Cursors at or below this are not all held: a filter there resyncs.
    floor: u64,
    changes: VecDeque<(u64, Arc<Event>)>,
}

impl EdgeFeed {
    /// Starts following `bus` (the process's, as its validator does). Must be
    /// called inside a Tokio runtime.
    pub fn start(
        material: EdgeMaterial,
        token: Option<Secret>,
        authorizer: Arc<Authorizer>,
        bus: &Arc<dyn caas_core::bus::EventBus>,
        changes: Option<Arc<ChangeFeed>>,
    ) -> Arc<Self> {
        // Both listeners subscribe before any message: their n-th messages are the same.
        let mut listener = Listener::on(bus.as_ref());
        let feed = Arc::new(Self {
            epoch: caas_core::id::new_id("edge"),
            inner: Mutex::new(Held::default()),
            token,
            material,
            authorizer,
            changes,
            bus: bus.clone(),
            polled: Mutex::new(Listener::on(bus.as_ref())),
            news: tokio::sync::watch::Sender::new(0),
        });
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            loop {
                let received = listener.rx.recv().await;
                let Some((nth, message)) = listener.took(received) else { return };
                let Some(feed) = weak.upgrade() else { return };
                feed.hear(nth, message);
            }
        });
        feed
    }

    /// Holds what the bus has delivered to this process that the feed's
    /// task has not heard yet. The task runs when the runtime gets to it;
    /// the validator applies a change before it is published, and auth-api
    /// publishes before it answers (a sign-out). A filter that holds a
    /// dashboard's requests until a poll sent after that answer is answered
    /// (edge-wasm decide.rs `as_dashboard`) must find the change in that
    /// answer, so every handler that gives a cursor catches up first.
    fn catch_up(&self) {
        let mut polled = self.polled.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let received = polled.rx.try_recv();
            let Some((nth, message)) = polled.took(received) else { return };
            self.hear(nth, message);
        }
    }

    /// The bus's `nth` message here, from either listener: held once.
    fn hear(&self, nth: u64, message: BusMessage) {
        {
            let mut held = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if nth <= held.heard {
                return;
            }
            held.heard = nth;
            match message {
                // Chat messages are not credential changes.
                BusMessage::Event(event) if matches!(*event, Event::MessageCreated { .. }) => return,
                BusMessage::Event(event) => {
                    held.cursor += 1;
                    let cursor = held.cursor;
                    held.changes.push_back((cursor, event));
                    if held.changes.len() > HELD
                        && let Some((dropped, _)) = held.changes.pop_front()
                    {
                        held.floor = dropped;
                    }
                }
                // Changes may have been missed: every filter starts over.
                BusMessage::Resync => {
                    held.cursor += 1;
                    held.changes.clear();
                    held.floor = held.cursor;
                }
                // Nothing to hold: the answer's `current` turns false.
                BusMessage::Disconnected => {}
            }
        }
        self.news.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn cursor(&self) -> u64 {
        self.catch_up();
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).cursor
    }

    /// Whether this process would itself hear of a revocation at once: its
    /// change feed reads the database (without one, only the bus carries
    /// them) and its bus is connected. With the bus down the validator stops
    /// trusting its caches and reads the database on every Check (core
    /// validate.rs); the filter, whose tables are such a cache, decides
    /// nothing meanwhile.
    fn current(&self) -> bool {
        self.bus.is_connected() && self.changes.as_ref().is_none_or(|feed| feed.metrics.current.get() == 1)
    }

    /// The address buckets ext-authz refuses for failed credentials, as
    /// text (`null`: too many to list; the filter then decides nothing).
    fn refused(&self) -> Option<Vec<String>> {
        self.authorizer.refusing().map(|buckets| buckets.iter().map(ToString::to_string).collect())
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers.get(TOKEN_HEADER).map(|v| v.as_bytes());
        matches!((&self.token, presented), (Some(token), Some(presented)) if token.matches(presented))
    }

    /// Whether a filter at cursor `since` of `epoch` has anything to hear:
    /// a change after it, or a resync (another epoch, or a cursor this
    /// process never gave out). Only `since` equal to the newest cursor of
    /// this epoch is up to date.
    fn has_news(&self, epoch: Option<&str>, since: u64) -> bool {
        epoch != Some(self.epoch.as_str()) || since != self.cursor()
    }

    pub(crate) fn changes_since(&self, epoch: Option<&str>, since: u64) -> serde_json::Value {
        self.catch_up();
        let held = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        if epoch != Some(self.epoch.as_str()) || since < held.floor || since > held.cursor {
            return json!({
                "epoch": self.epoch,
                "cursor": held.cursor,
                "current": current,
                "resync": true,
                "material": material_json(&self.material, self.authorizer.exporting(), self.authorizer.enforcing()),
                "refused": self.refused(),
            });
        }
        let changes: Vec<&Event> =
            held.changes.iter().filter(|(cursor, _)| *cursor > since).map(|(_, event)| event.as_ref()).collect();
        json!({ "epoch": self.epoch, "cursor": held.cursor, "current": current, "resync": false, "changes": changes,
                "refused": self.refused() })
    }
}

/// A receiver of the bus, and how many of its messages it has taken.
struct Listener {
    rx: tokio::sync::broadcast::Receiver<BusMessage>,
    taken: u64,
}

impl Listener {
    fn on(bus: &dyn caas_core::bus::EventBus) -> Self {
        Listener { rx: bus.subscribe(), taken: 0 }
    }

    /// A receive's message and its number; messages missed (this listener
    /// lagged) are a resync numbered as the last of them. None when there
    /// is nothing (more) to take.
    fn took<E: Into<Received>>(&mut self, received: Result<BusMessage, E>) -> Option<(u64, BusMessage)> {
        let message = match received.map_err(Into::into) {
            Ok(message) => message,
            Err(Received::Lagged(missed)) => {
                self.taken += missed - 1;
                BusMessage::Resync
            }
            Err(Received::Nothing) => return None,
        };
        self.taken += 1;
        Some((self.taken, message))
    }
}

/// Why a receive gave no message.
enum Received {
    Lagged(u64),
    /// Empty, or the bus is gone.
    Nothing,
}

impl From<tokio::sync::broadcast::error::RecvError> for Received {
    fn from(error: tokio::sync::broadcast::error::RecvError) -> Self {
        match error {
            tokio::sync::broadcast::error::RecvError::Lagged(missed) => Received::Lagged(missed),
            tokio::sync::broadcast::error::RecvError::Closed => Received::Nothing,
        }
    }
}

impl From<tokio::sync::broadcast::error::TryRecvError> for Received {
    fn from(error: tokio::sync::broadcast::error::TryRecvError) -> Self {
        match error {
            tokio::sync::broadcast::error::TryRecvError::Lagged(missed) => Received::Lagged(missed),
            _ => Received::Nothing,
        }
    }
}

#[derive(serde::Deserialize)]
pub struct Since {
    epoch: Option<String>,
    #[serde(default)]
    since: u64,
    /// Milliseconds to hold an answer with nothing new (0: answer at once).
    #[serde(default)]
    wait: u64,
}

fn refused() -> Response {
    (StatusCode::FORBIDDEN, Json(json!({ "error": { "code": "forbidden", "message": "gateway token required" } })))
        .into_response()
}

fn private(body: serde_json::Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub async fn changes(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, Query(q): Query<Since>) -> Response {
    if !feed.admits(&headers) {
        return refused();
    }
    // Subscribed before the look: news after it wakes the wait.
    let mut news = feed.news.subscribe();
    if q.wait > 0 && !feed.has_news(q.epoch.as_deref(), q.since) {
        let wait = std::time::Duration::from_millis(q.wait.min(MAX_WAIT_MS));
        let _ = tokio::time::timeout(wait, news.changed()).await;
    }
    private(feed.changes_since(q.epoch.as_deref(), q.since))
}

pub async fn session(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !feed.admits(&headers) {
        return refused();
    }
    // Taken before the read: a change after it reaches the filter as a change.
    let cursor = feed.cursor();
    let session = match feed.authorizer.validator().session_record(&id).await {
        Ok(session) => session,
        Err(_) => return unavailable(),
    };
    let (limits, origins) = match &session {
        Some(s) => {
            let validator = feed.authorizer.validator();
            match validator.origin_whitelist_entries(&s.tenant_id).await {
                Ok(origins) => (Some(validator.rate_limits(&s.tenant_id).await), Some(origins)),
                Err(_) => return unavailable(),
            }
        }
        None => (None, None),
    };
    private(session_answer(&feed.epoch, cursor, session.as_ref(), limits.as_ref(), origins))
}

/// Whose requests a lease or a give-back is for: an end user (whose token
/// the filter verified) or an API key (whose record it holds); exactly one.
#[derive(serde::Deserialize)]
pub struct LeaseHolder {
    pub tenant_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
}

impl LeaseHolder {
    fn holder(&self) -> Result<Holder<'_>, String> {
        let sane = |id: &str| !id.is_empty() && id.len() <= 256;
        let holder = match (&self.user_id, &self.key_id) {
            (Some(user_id), None) => Holder::User(user_id),
            (None, Some(key_id)) => Holder::Key(key_id),
            _ => return Err("exactly one of user_id and key_id".into()),
        };
        let (Holder::User(id) | Holder::Key(id)) = holder;
        if !sane(&self.tenant_id) || !sane(id) {
            return Err("tenant_id, user_id and key_id must be 1 to 256 bytes".into());
        }
        Ok(holder)
    }
}

/// One lease asked for: whose, and how many of its requests.
#[derive(serde::Deserialize)]
pub struct LeaseWanted {
    #[serde(flatten)]
    pub holder: LeaseHolder,
    pub want: u32,
}

/// Leased requests the filter gives back unspent.
#[derive(serde::Deserialize)]
pub struct LeaseReturned {
    #[serde(flatten)]
    pub holder: LeaseHolder,
    pub n: u32,
}

#[derive(serde::Deserialize)]
pub struct Leases {
    #[serde(default)]
    pub leases: Vec<LeaseWanted>,
    #[serde(default)]
    pub returned: Vec<LeaseReturned>,
    /// Keys the filter allowed requests with since it last said so (their
    /// last use is recorded as a Check records it).
    #[serde(default)]
    pub used: Vec<String>,
}

/// Answers `{"granted": [n, …]}` in the order asked; a malformed or
/// oversized request is refused whole (400), with the field named.
pub async fn lease(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let asked: Leases = match gateway_json(&feed, &headers, &body, "lease request") {
        Ok(asked) => asked,
        Err(refusal) => return *refusal,
    };
    if asked.leases.len() > MAX_LEASES || asked.returned.len() > MAX_LEASES || asked.used.len() > MAX_LEASES {
        return bad(format!("leases, returned, used: at most {MAX_LEASES} of each at once"));
    }
    let holders: Result<Vec<Holder<'_>>, String> = asked.leases.iter().map(|l| l.holder.holder()).collect();
    let leases = match holders {
        Ok(holders) => holders,
        Err(problem) => return bad(format!("leases: {problem}")),
    };
    let holders: Result<Vec<Holder<'_>>, String> = asked.returned.iter().map(|r| r.holder.holder()).collect();
    let returned = match holders {
        Ok(holders) => holders,
        Err(problem) => return bad(format!("returned: {problem}")),
    };
    if asked.returned.iter().any(|r| r.n > MAX_LEASE) {
        return bad(format!("returned: n is at most {MAX_LEASE} (no lease is larger)"));
    }
    if asked.used.iter().any(|id| id.is_empty() || id.len() > 256) {
        return bad("used: key ids must be 1 to 256 bytes".into());
    }
    let now = caas_core::id::unix_now();
    for key_id in &asked.used {
        feed.authorizer.validator().key_used(key_id, now);
    }
    // Given back first: what one returns may be what another asks for.
    for (given, holder) in asked.returned.iter().zip(returned) {
        feed.authorizer.give_back(&given.holder.tenant_id, holder, given.n).await;
    }
    let mut granted = Vec::with_capacity(leases.len());
    for (wanted, holder) in asked.leases.iter().zip(leases) {
        granted.push(feed.authorizer.lease(&wanted.holder.tenant_id, holder, wanted.want.min(MAX_LEASE)).await);
    }
    private(json!({ "granted": granted }))
}

/// One of the filter's decisions (edge-wasm/src/reports.rs, `EdgeSpan`).
#[derive(serde::Deserialize)]
pub struct EdgeSpan {
    pub trace_id: String,
    /// Empty: the trace began at the filter (the client sent none).
    #[serde(default)]
    pub parent_span_id: String,
    pub span_id: String,
    pub policy: String,
    /// `allow`, or `preflight` (a CORS preflight the filter answered).
    pub decision: String,
    /// Empty for a preflight.
    pub tenant_id: String,
    pub request_id: String,
    /// Unix time in nanoseconds, by the filter's clock.
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

#[derive(serde::Deserialize)]
pub struct EdgeSpans {
    pub spans: Vec<EdgeSpan>,
}

impl EdgeSpan {
    /// What a span must be to be exported: W3C ids, one of the policies
    /// the filter decides, ids no longer than a Check's, a time in order.
    fn problem(&self) -> Option<&'static str> {
        use caas_rules::trace::{is_span_id, is_trace_id};
        if !is_trace_id(&self.trace_id) || !is_span_id(&self.span_id) {
            return Some("trace_id and span_id must be W3C ids (32 and 16 lower-case hex digits)");
        }
        if !self.parent_span_id.is_empty() && !is_span_id(&self.parent_span_id) {
            return Some("parent_span_id must be empty or a W3C span id");
        }
        if made(&self.decision, &self.policy).is_none() {
            return Some(MADE);
        }
        if self.tenant_id.len() > 128 || self.request_id.len() > 128 {
            return Some("tenant_id and request_id are at most 128 bytes");
        }
        if self.end_unix_nano < self.start_unix_nano {
            return Some("end_unix_nano is before start_unix_nano");
        }
        None
    }
}

/// What a decision the filter reports must be.
const MADE: &str =
    "decision and policy must be ones the filter makes (allow on any policy; preflight where browsers may call)";

/// A decision the filter makes (`allow` on any route, `preflight` on one
/// browsers may call), as the policy and `gateway_requests_total`'s label.
fn made(decision: &str, policy: &str) -> Option<(caas_rules::policy::Policy, &'static str)> {
    let policy = caas_rules::policy::Policy::parse(policy)?;
    match decision {
        "allow" => Some((policy, "allow")),
        "preflight" if policy.browser_facing() => Some((policy, "preflight")),
        _ => None,
    }
}

/// How many of one kind of decision the filter made (edge-wasm/src/reports.rs, `Tally`).
#[derive(serde::Deserialize)]
pub struct EdgeCount {
    pub policy: String,
    pub decision: String,
    pub count: u64,
}

#[derive(serde::Deserialize)]
pub struct EdgeCounts {
    pub decisions: Vec<EdgeCount>,
    /// Absent from an older filter's.
    #[serde(default)]
    pub forwarded: Vec<EdgeForwards>,
}

/// How many requests the filter left to ext_authz for one reason.
#[derive(serde::Deserialize)]
pub struct EdgeForwards {
    pub reason: String,
    pub count: u64,
}

/// Why the filter leaves a request to ext_authz (edge-wasm/src/decide.rs,
/// `Miss::as_str`; a test holds the two to the same list): the only
/// `reason` labels `gateway_edge_forwarded_total` takes.
pub const FORWARD_REASONS: [&str; 8] =
    ["not_current", "policy", "unusual", "refused", "unknown_session", "unknown_key", "address", "quota"];

impl EdgeForwards {
    fn read(&self) -> Result<(&'static str, u64), String> {
        let reason = FORWARD_REASONS
            .into_iter()
            .find(|r| *r == self.reason)
            .ok_or_else(|| format!("reason must be one of {FORWARD_REASONS:?}"))?;
        Ok((reason, a_count(self.count)?))
    }
}

/// A count the filter could have sent: 1 to `MAX_COUNT`.
fn a_count(count: u64) -> Result<u64, String> {
    if (1..=MAX_COUNT).contains(&count) { Ok(count) } else { Err(format!("count must be 1 to {MAX_COUNT}")) }
}

impl EdgeCount {
    /// The decision it counts, and how many, if it is one the filter makes
    /// and a count it could have made.
    fn read(&self) -> Result<((caas_rules::policy::Policy, &'static str), u64), String> {
        let made = made(&self.decision, &self.policy).ok_or(MADE)?;
        Ok((made, a_count(self.count)?))
    }
}

/// A handler's answer: its own, or the refusal that cut it short.
fn answered(handle: impl FnOnce() -> Result<Response, Box<Response>>) -> Response {
    handle().unwrap_or_else(|refusal| *refusal)
}

/// Each of a batch's `field` items (at most `max`) as `read` reads it; the
/// first problem refuses the batch whole (400, naming the item).
fn read_batch<T, R, E: std::fmt::Display>(
    items: &[T],
    field: &str,
    max: usize,
    read: impl Fn(&T) -> Result<R, E>,
) -> Result<Vec<R>, Box<Response>> {
    if items.len() > max {
        return Err(Box::new(bad(format!("{field}: at most {max} at once"))));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| read(item).map_err(|problem| Box::new(bad(format!("{field}[{i}]: {problem}")))))
        .collect()
}

/// Counts the filter's allows and preflights in `gateway_requests_total`
/// with the Checks', so that metric (and the refusal-ratio alert over it,
/// deploy/monitoring/alerts.yml) sees every decision whoever made it, and
/// in `gateway_edge_decisions_total`; and the requests it left to ext_authz
/// in `gateway_edge_forwarded_total` by reason (what the fast path does,
/// seen without scraping Envoy). A malformed or oversized batch is refused
/// whole (400), with the problem named; the filter then keeps its counts
/// for the next call. Answers `{"counted": n}` (the decisions counted).
pub async fn decisions(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    answered(|| {
        let sent: EdgeCounts = gateway_json(&feed, &headers, &body, "decision counts")?;
        let read = read_batch(&sent.decisions, "decisions", MAX_COUNTS, EdgeCount::read)?;
        let forwards = read_batch(&sent.forwarded, "forwarded", MAX_COUNTS, EdgeForwards::read)?;
        for (reason, count) in forwards {
            feed.authorizer.count_edge_forwards(reason, count);
        }
        let mut counted = 0;
        for ((policy, decision), count) in read {
            feed.authorizer.count_edge_decisions(policy, decision, count);
            counted += count;
        }
        Ok(private(json!({ "counted": counted })))
    })
}

/// Exports the filter's decisions as spans; a malformed or oversized batch is
/// refused whole (400), with the problem named. Answers `{"exported": n}`
/// (0 when spans are not exported here).
pub async fn spans(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    answered(|| {
        let sent: EdgeSpans = gateway_json(&feed, &headers, &body, "span batch")?;
        read_batch(&sent.spans, "spans", MAX_SPANS, |s| s.problem().map_or(Ok(()), Err))?;
        let exported = feed.authorizer.export_edge_spans(sent.spans);
        Ok(private(json!({ "exported": exported })))
    })
}

/// A refusal the filter answered (edge-wasm/src/reports.rs, `DenialReport`).
#[derive(serde::Deserialize)]
pub struct EdgeDenial {
    pub policy: String,
    pub reason: String,
    pub status: u16,
    pub tenant_id: String,
    pub request_id: String,
    /// Empty when the caller sent no valid traceparent.
    #[serde(default)]
    pub trace_id: String,
    pub path: String,
    pub method: String,
}

#[derive(serde::Deserialize)]
pub struct EdgeDenials {
    pub denials: Vec<EdgeDenial>,
}

impl EdgeDenial {
    /// The policy and refusal it reports, if they are ones the filter
    /// answers, with the status ext-authz gives it, and fields of a sane size.
    fn read(&self) -> Result<(caas_rules::policy::Policy, caas_rules::denial::Denial), &'static str> {
        use caas_rules::denial::{EDGE_ANSWERS, Reason};
        use caas_rules::policy::Policy;
        let policy = Policy::parse(&self.policy)
            .filter(|p| p.takes_credentials())
            .ok_or("policy must be one that takes credentials (any but public)")?;
        let denial = EDGE_ANSWERS
            .into_iter()
            .find(|d| d.code() == self.reason)
            .ok_or("reason must be one the filter answers (caas_rules::denial::EDGE_ANSWERS)")?;
        if Reason::Denied(denial).status() != self.status {
            return Err("status is not the one this reason is answered with");
        }
        if self.tenant_id.len() > 128 || self.request_id.len() > 128 || self.path.len() > MAX_REPORTED_PATH {
            return Err("tenant_id and request_id are at most 128 bytes, path 2048");
        }
        if self.method.is_empty() || self.method.len() > 16 || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("method must be an HTTP method");
        }
        if !self.trace_id.is_empty() && !caas_rules::trace::is_trace_id(&self.trace_id) {
            return Err("trace_id must be empty or a W3C trace id");
        }
        Ok((policy, denial))
    }
}

/// Logs and counts the refusals the filter answered, as a Check's; a
/// malformed or oversized batch is refused whole (400), with the problem
/// named. Answers `{"recorded": n}`.
pub async fn denials(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    answered(|| {
        let sent: EdgeDenials = gateway_json(&feed, &headers, &body, "denial batch")?;
        let read = read_batch(&sent.denials, "denials", MAX_DENIALS, EdgeDenial::read)?;
        for (report, (policy, denial)) in sent.denials.iter().zip(read) {
            feed.authorizer.record_edge_denial(report, policy, denial);
        }
        Ok(private(json!({ "recorded": sent.denials.len() })))
    })
}

#[derive(serde::Deserialize)]
pub struct KeyLookups {
    pub hashes: Vec<String>,
}

/// Answers each key as a Check would find it, by the hash the filter
/// computed from the presented key (never the key itself): its record
/// (`null`: no such key) and its tenant's IP whitelist, with the cursor
/// taken before the reads (a change after it reaches the filter as a
/// change). Keys come from the validator's cache only (`pending: true` when
/// no Check read one lately): the filter's lookups never read the database
/// for a key. A store that cannot be read fails the call (503): the filter
/// then leaves those keys to ext_authz.
pub async fn keys(State(feed): State<Arc<EdgeFeed>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let asked: KeyLookups = match gateway_json(&feed, &headers, &body, "key lookup") {
        Ok(asked) => asked,
        Err(refusal) => return *refusal,
    };
    if asked.hashes.len() > MAX_KEY_LOOKUPS {
        return bad(format!("hashes: at most {MAX_KEY_LOOKUPS} at once"));
    }
    if asked.hashes.iter().any(|h| h.is_empty() || h.len() > 128 || !h.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return bad("hashes: each is 1 to 128 letters and digits".into());
    }
    let cursor = feed.cursor();
    match key_answers(feed.authorizer.validator(), &feed.epoch, cursor, &asked.hashes).await {
        Ok(answer) => private(answer),
        Err(_) => unavailable(),
    }
}

/// The keys under `hashes` as the filter reads them (edge-wasm/src/api_keys.rs,
/// `KeysAnswer`), at `cursor` of `epoch`.
pub async fn key_answers(
    validator: &caas_core::validate::Validator,
    epoch: &str,
    cursor: u64,
    hashes: &[String],
) -> Result<serde_json::Value, caas_core::validate::Denial> {
    let mut answers = Vec::with_capacity(hashes.len());
    for hash in hashes {
        let key = match validator.key_record_cached(hash) {
            // Not read by a Check lately: the filter asks again later.
            None => {
                answers.push(json!({ "hash": hash, "pending": true }));
                continue;
            }
            Some(None) => {
                answers.push(json!({ "hash": hash, "key": null }));
                continue;
            }
            Some(Some(key)) => key,
        };
        let list = validator.ip_whitelist_entries(&key.tenant_id).await?;
        let ip_whitelist = json!({ "enforced": list.is_some(), "entries": list.unwrap_or_default() });
        answers.push(json!({ "hash": hash, "key": key, "ip_whitelist": ip_whitelist }));
    }
    Ok(json!({ "epoch": epoch, "cursor": cursor, "keys": answers }))
}

/// A POST body from the gateway: 403 without its token, 400 naming the
/// problem when it is not the JSON expected.
fn gateway_json<T: serde::de::DeserializeOwned>(
    feed: &EdgeFeed,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, Box<Response>> {
    if !feed.admits(headers) {
        return Err(Box::new(refused()));
    }
    serde_json::from_slice(body)
        .map_err(|error| Box::new(bad(format!("{what} is not valid JSON of the expected shape: {error}"))))
}

fn bad(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": { "code": "invalid_request", "message": message } })))
        .into_response()
}

fn unavailable() -> Response {
    let body = json!({ "error": { "code": "unavailable", "message": "credential store is unavailable" } });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The material as the filter reads it (edge-wasm/src/state.rs, `Material`);
/// `trace_export`: spans are exported, so the filter makes each of its allows
/// a span as a Check is one, and sends them here (`spans`).
/// `enforce`: refusals are enforced (not shadow mode), so the filter may
/// answer the ones it is certain of itself.
pub fn material_json(m: &EdgeMaterial, trace_export: bool, enforce: bool) -> serde_json::Value {
    json!({
        "issuer": m.issuer,
        "jwt_secret": m.jwt_secret.expose(),
        "jwt_secret_previous": m.jwt_secret_previous.as_ref().map(Secret::expose),
        "service_secret": m.service_secret.expose(),
        "trusted_proxy_hops": m.trusted_proxy_hops,
        "quotas": m.quotas,
        "policy_table": m.policy_table,
        "trace_export": trace_export,
        "enforce": enforce,
    })
}

/// A session lookup's answer as the filter reads it (`SessionAnswer`):
/// `origins` is its tenant's Origin whitelist (`Some(None)`: Origins are
/// not checked).
pub fn session_answer(
    epoch: &str,
    cursor: u64,
    session: Option<&caas_core::validate::EdgeSession>,
    limits: Option<&caas_rules::quota::Limits>,
    origins: Option<Option<Vec<String>>>,
) -> serde_json::Value {
    let origin_whitelist =
        origins.map(|list| json!({ "enforced": list.is_some(), "entries": list.unwrap_or_default() }));
    json!({ "epoch": epoch, "cursor": cursor, "session": session, "limits": limits,
            "origin_whitelist": origin_whitelist })
}

pub fn router(feed: Arc<EdgeFeed>) -> axum::Router {
    axum::Router::new()
        .route("/edge/v1/changes", axum::routing::get(changes))
        .route("/edge/v1/session/{id}", axum::routing::get(session))
        .route("/edge/v1/lease", axum::routing::post(lease).layer(axum::extract::DefaultBodyLimit::max(MAX_LEASE_BODY)))
        .route("/edge/v1/keys", axum::routing::post(keys).layer(axum::extract::DefaultBodyLimit::max(MAX_KEYS_BODY)))
        .route("/edge/v1/spans", axum::routing::post(spans).layer(axum::extract::DefaultBodyLimit::max(MAX_SPANS_BODY)))
        .route(
            "/edge/v1/denials",
            axum::routing::post(denials).layer(axum::extract::DefaultBodyLimit::max(MAX_DENIALS_BODY)),
        )
        .route(
            "/edge/v1/decisions",
            axum::routing::post(decisions).layer(axum::extract::DefaultBodyLimit::max(MAX_COUNTS_BODY)),
        )
        .with_state(feed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two listeners number the same message alike, a lagging one too: what
    /// it missed is a resync numbered as the last message it missed.
    #[test]
    fn listeners_number_messages_alike_and_a_lag_as_its_last_message() {
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        let mut listener = Listener { rx, taken: 0 };
        let event = |n: usize| BusMessage::Event(Arc::new(Event::session_revoked("t1", &format!("ses_{n}"))));
        for n in 1..=5 {
            tx.send(event(n)).unwrap();
        }
        let mut got = Vec::new();
        loop {
            let received = listener.rx.try_recv();
            let Some((nth, message)) = listener.took(received) else { break };
            got.push((nth, matches!(message, BusMessage::Resync)));
        }
        // 1–3 were overwritten (capacity 2); 4 and 5 are read.
        assert_eq!(got, [(3, true), (4, false), (5, false)]);
    }
}
