//! The Envoy glue: a root context per worker that polls ext-authz's feed
//! and looks sessions up on a timer, and an HTTP context per request that
//! asks `decide` and applies its allow, answers its preflight or refusal, or
//! lets the request continue, unmarked, to ext_authz.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};
use serde::Deserialize;

use crate::decide::{Deny, Headers, Miss, Preflight, Request, Verdict, decide};
use crate::reports::{Decision, Tally};
use crate::state::State;

/// The filter state key (`wasm.` + this) that makes Envoy skip ext_authz
/// (envoy/envoy.yaml); only a filter can write filter state.
const MARK: &str = "caas_edge";
const MARK_VALUE: &[u8] = b"allow";
/// The same key's value on a preflight or a refusal the filter answered
/// (for the access log).
const PREFLIGHT_MARK: &[u8] = b"preflight";
const DENY_MARK: &[u8] = b"deny";
/// The timer: the next poll goes out on a tick; lookups, leases and the
/// stats every `CHORES_EVERY` ticks (100 ms).
const TICK: Duration = Duration::from_millis(10);
const CHORES_EVERY: u32 = 10;
/// How long ext-authz may hold a poll with nothing new (ms): it answers the
/// moment there is (ext-authz/src/edge.rs), so a revocation reaches the
/// filter about as soon as ext-authz hears of it; the next poll goes out
/// on the next tick. A feed that answered at once with nothing new (an
/// older ext-authz, one failing) is asked again only this much later, and
/// a stream of changes is fetched at most once a tick, never in a loop.
const WAIT_MS: u64 = 100;
/// Shared data (every worker of this Envoy reads it): when, in ms of the
/// filter's clock, a dashboard request that may have ended sessions was
/// last answered here (decide.rs `as_dashboard`).
const SESSIONS_ENDED: &str = "caas_edge.sessions_ended_at";
/// A poll or lookup not answered within this is given up (Envoy's callout timeout).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Lookups in flight at once, per worker.
const MAX_LOOKUPS: usize = 32;

#[allow(unsafe_code)]
mod entry {
    // proxy-wasm's entry point is an exported (`#[no_mangle]`) function.
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root::default())
        });
    }}
}

/// The plugin configuration (JSON, from envoy/envoy.yaml).
#[derive(Deserialize, Clone)]
struct Config {
    /// The Envoy cluster of ext-authz's ops listener.
    cluster: String,
    /// EXT_AUTHZ_CALLER_TOKEN: the feed serves only the gateway.
    token: String,
}

/// The filter's Envoy stats, defined once per worker. Requests only count
/// into `counts`; the tick adds them to Envoy's counters (a host call per
/// request cost more than the counting).
struct Metrics {
    allowed: u32,
    preflights: u32,
    denied: u32,
    denials_dropped: u32,
    /// By `Miss::index`.
    forwarded: Vec<u32>,
    lag_ms: u32,
    current: u32,
    spans_dropped: u32,
    counts_dropped: u32,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    allowed: Cell<u64>,
    preflights: Cell<u64>,
    denied: Cell<u64>,
    forwarded: [Cell<u64>; Miss::ALL.len()],
}

impl Metrics {
    fn define() -> Option<Self> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).ok();
        let mut forwarded = Vec::with_capacity(Miss::ALL.len());
        for miss in Miss::ALL {
            forwarded.push(counter(&format!("caas_edge.forwarded.{}", miss.as_str()))?);
        }
        Some(Self {
            allowed: counter("caas_edge.allowed")?,
            preflights: counter("caas_edge.preflights")?,
            denied: counter("caas_edge.denied")?,
            denials_dropped: counter("caas_edge.denials_dropped")?,
            forwarded,
            lag_ms: gauge("caas_edge.feed_lag_ms")?,
            current: gauge("caas_edge.current")?,
            spans_dropped: counter("caas_edge.spans_dropped")?,
            counts_dropped: counter("caas_edge.counts_dropped")?,
            counts: Counts::default(),
        })
    }

    fn forwarded(&self, miss: Miss) {
        let n = &self.counts.forwarded[miss.index()];
        n.set(n.get() + 1);
    }

    fn allowed(&self) {
        self.counts.allowed.set(self.counts.allowed.get() + 1);
    }

    fn preflight(&self) {
        self.counts.preflights.set(self.counts.preflights.get() + 1);
    }

    fn denied(&self) {
        self.counts.denied.set(self.counts.denied.get() + 1);
    }

    /// Adds what was counted since the last flush to Envoy's counters.
    fn flush(&self) {
        let add = |id: u32, count: &Cell<u64>| {
            let n = count.replace(0);
            if n > 0 {
                let _ = hostcalls::increment_metric(id, n as i64);
            }
        };
        add(self.allowed, &self.counts.allowed);
        add(self.preflights, &self.counts.preflights);
        add(self.denied, &self.counts.denied);
        for (id, count) in self.forwarded.iter().zip(&self.counts.forwarded) {
            add(*id, count);
        }
    }
}

fn now() -> Duration {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

fn unix_nanos(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Root {
    config: Option<Config>,
    state: Rc<RefCell<State>>,
    metrics: Option<Rc<Metrics>>,
    /// The poll in flight and when it was sent (ms).
    poll: Option<(u32, u64)>,
    lookups: HashMap<u32, String>,
    /// The lease ask in flight, and the holders it asks for.
    leasing: Option<(u32, Vec<crate::lease::Holder>)>,
    /// The key lookup in flight.
    key_lookup: Option<u32>,
    /// The batch of spans in flight, and how many it carries.
    span_post: Option<(u32, usize)>,
    /// The batch of refusals in flight, and how many it carries.
    denial_post: Option<(u32, usize)>,
    /// The counts of decisions in flight.
    count_post: Option<(u32, Tally)>,
    /// Counts ext-authz refused (400) since the last tick.
    counts_dropped: u64,
    /// Whether the last poll was answered (for logging changes only).
    answering: bool,
    /// No poll before this (ms).
    poll_after: u64,
    ticks: u32,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status");
        let ok = status.as_deref() == Some("200");
        let body = if ok { self.get_http_call_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
        if let Some((poll, sent)) = self.poll
            && poll == token
        {
            self.poll = None;
            let asked = self.state.borrow().poll_query();
            let answered = ok && self.state.borrow_mut().apply_changes(&body, sent).is_ok();
            // Next tick after news or an answer that was held; else later.
            let held = now().as_millis() as u64 >= sent + WAIT_MS / 2;
            let news = self.state.borrow().poll_query() != asked;
            self.poll_after = if answered && (news || held) { 0 } else { sent + WAIT_MS };
            // Once per change, not per poll.
            if answered != self.answering {
                self.answering = answered;
                if answered {
                    log::warn!("caas_edge: the feed answers; deciding requests");
                } else {
                    log::warn!("caas_edge: the feed did not answer; every request goes to ext_authz until it does");
                }
            }
            return;
        }
        if let Some((_, holders)) = self.leasing.take_if(|(asked, _)| *asked == token) {
            let now_ms = now().as_millis() as u64;
            self.state.borrow_mut().leases.apply(&holders, ok.then_some(body.as_slice()), now_ms);
            return;
        }
        if let Some((_, n)) = self.span_post.take_if(|(sent, _)| *sent == token) {
            if !ok {
                self.state.borrow_mut().spans.lost(n);
            }
            return;
        }
        if let Some((_, n)) = self.denial_post.take_if(|(sent, _)| *sent == token) {
            if !ok {
                self.state.borrow_mut().denials.lost(n);
            }
            return;
        }
        if let Some((_, counts)) = self.count_post.take_if(|(sent, _)| *sent == token) {
            // Refused as malformed (an ext-authz older than this filter):
            // sent again it would be refused again; anything else (no
            // answer, 5xx) is sent again with the next counts.
            match status.as_deref() {
                Some("200") => {}
                Some("400") => self.counts_dropped += counts.total(),
                _ => self.state.borrow_mut().decisions.restore(counts),
            }
            return;
        }
        if self.key_lookup.take_if(|asked| *asked == token).is_some() {
            if ok {
                let _ = self.state.borrow_mut().apply_keys(&body, now().as_millis() as u64);
            }
            return;
        }
        if let Some(id) = self.lookups.remove(&token)
            && ok
        {
            let _ = self.state.borrow_mut().apply_session(&id, &body, now().as_millis() as u64);
        }
    }
}

impl Root {
    fn call(&self, config: &Config, path: &str) -> Option<u32> {
        self.dispatch_http_call(
            &config.cluster,
            vec![
                (":method", "GET"),
                (":path", path),
                (":authority", "ext-authz"),
                ("x-caas-edge-token", &config.token),
            ],
            None,
            vec![],
            CALL_TIMEOUT,
        )
        .ok()
    }

    fn post(&self, config: &Config, path: &str, body: &[u8]) -> Option<u32> {
        self.dispatch_http_call(
            &config.cluster,
            vec![
                (":method", "POST"),
                (":path", path),
                (":authority", "ext-authz"),
                ("content-type", "application/json"),
                ("x-caas-edge-token", &config.token),
            ],
            Some(body),
            vec![],
            CALL_TIMEOUT,
        )
        .ok()
    }

    /// Asks the feed for what changed (one poll in flight).
    fn send_poll(&mut self, now_ms: u64) {
        let Some(config) = &self.config else { return };
        if self.poll.is_some() {
            return;
        }
        let query = self.state.borrow().poll_query();
        if let Some(token) = self.call(config, &format!("/edge/v1/changes?{query}&wait={WAIT_MS}")) {
            self.poll = Some((token, now_ms));
        }
    }

    /// Asks ext-authz for the leases the state wants (one call in flight).
    fn ask_leases(&mut self, config: &Config, now_ms: u64) {
        if self.leasing.is_some() {
            return;
        }
        let Some((holders, body)) = self.state.borrow_mut().leases.asks(now_ms) else { return };
        match self.post(config, "/edge/v1/lease", &body) {
            Some(token) => self.leasing = Some((token, holders)),
            None => self.state.borrow_mut().leases.apply(&holders, None, now_ms),
        }
    }

    /// Sends the spans and refusals held to ext-authz (one batch of each in flight).
    fn send_reports(&mut self, config: &Config) {
        if self.span_post.is_none()
            && let Some((body, n)) = self.state.borrow_mut().spans.batch("spans")
        {
            match self.post(config, "/edge/v1/spans", &body) {
                Some(token) => self.span_post = Some((token, n)),
                None => self.state.borrow_mut().spans.lost(n),
            }
        }
        if self.denial_post.is_none()
            && let Some((body, n)) = self.state.borrow_mut().denials.batch("denials")
        {
            match self.post(config, "/edge/v1/denials", &body) {
                Some(token) => self.denial_post = Some((token, n)),
                None => self.state.borrow_mut().denials.lost(n),
            }
        }
        if self.count_post.is_none()
            && let Some((body, counts)) = self.state.borrow_mut().decisions.batch()
        {
            match self.post(config, "/edge/v1/decisions", &body) {
                Some(token) => self.count_post = Some((token, counts)),
                None => self.state.borrow_mut().decisions.restore(counts),
            }
        }
    }

    /// Looks up the keys the state wants (one call in flight).
    fn look_keys_up(&mut self, config: &Config) {
        if self.key_lookup.is_some() {
            return;
        }
        let Some(body) = self.state.borrow_mut().api_keys.lookups() else { return };
        self.key_lookup = self.post(config, "/edge/v1/keys", &body);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = self.get_plugin_configuration().and_then(|c| serde_json::from_slice::<Config>(&c).ok())
        else {
            // Without a configuration the filter still loads and decides nothing.
            log::error!("caas_edge: invalid plugin configuration; every request goes to ext_authz");
            return true;
        };
        self.config = Some(config);
        self.metrics = Metrics::define().map(Rc::new);
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config.clone() else { return };
        let now_ms = now().as_millis() as u64;
        if now_ms >= self.poll_after {
            self.send_poll(now_ms);
        }
        self.ticks = self.ticks.wrapping_add(1);
        if !self.ticks.is_multiple_of(CHORES_EVERY) {
            return;
        }
        if let Some(metrics) = &self.metrics {
            let state = self.state.borrow();
            let lag = state.lag_ms(now_ms).unwrap_or(u64::MAX >> 1);
            let _ = hostcalls::record_metric(metrics.lag_ms, lag);
            let _ = hostcalls::record_metric(metrics.current, u64::from(state.current(now_ms)));
            metrics.flush();
            drop(state);
            let mut state = self.state.borrow_mut();
            for (id, dropped) in [
                (metrics.spans_dropped, state.spans.take_dropped()),
                (metrics.denials_dropped, state.denials.take_dropped()),
                (metrics.counts_dropped, std::mem::take(&mut self.counts_dropped)),
            ] {
                if dropped > 0 {
                    let _ = hostcalls::increment_metric(id, dropped as i64);
                }
            }
        }
        self.send_reports(&config);
        self.ask_leases(&config, now_ms);
        self.look_keys_up(&config);
        let pending = self.state.borrow_mut().take_pending();
        for id in pending {
            if self.lookups.len() >= MAX_LOOKUPS {
                break;
            }
            // Session ids are ours (`ses_…`): nothing to escape; anything else is not looked up.
            if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                continue;
            }
            if let Some(token) = self.call(&config, &format!("/edge/v1/session/{id}")) {
                self.lookups.insert(token, id);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Edge {
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            response: Vec::new(),
            policy: std::cell::OnceCell::new(),
            may_end_sessions: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Edge {
    state: Rc<RefCell<State>>,
    metrics: Option<Rc<Metrics>>,
    /// An allow's response headers (CORS), set when the response comes.
    response: Vec<(&'static str, String)>,
    /// The route's policy, read at most once.
    policy: std::cell::OnceCell<Option<String>>,
    /// A dashboard request with a bearer token whose method may end
    /// sessions (decide.rs `may_end_sessions`): its answer closes the
    /// filter's dashboard decisions.
    may_end_sessions: bool,
}

impl Context for Edge {}

impl Edge {
    fn route_policy(&self) -> Option<String> {
        self.policy
            .get_or_init(|| {
                self.get_property(vec!["xds", "route_metadata", "filter_metadata", "caas", "policy"])
                    .and_then(|p| String::from_utf8(p).ok())
            })
            .clone()
    }
}

/// When a dashboard request that may have ended sessions was last answered
/// by this Envoy; unreadable reads as now (decide nothing on dashboards).
fn sessions_ended_at() -> u64 {
    match hostcalls::get_shared_data(SESSIONS_ENDED) {
        Ok((Some(bytes), _)) => bytes.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX),
        Ok((None, _)) => 0,
        Err(_) => u64::MAX,
    }
}

/// Moves the time above forward to `at_ms` (never back: another worker may
/// have written a later one); compare-and-swap, as workers write at once.
fn sessions_ended(at_ms: u64) {
    for _ in 0..8 {
        let Ok((value, cas)) = hostcalls::get_shared_data(SESSIONS_ENDED) else { break };
        let known = value.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
        if known >= at_ms || hostcalls::set_shared_data(SESSIONS_ENDED, Some(&at_ms.to_le_bytes()), cas).is_ok() {
            return;
        }
    }
    log::error!("caas_edge: cannot record a dashboard change in shared data; dashboard requests go to ext_authz");
}

impl HttpContext for Edge {
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // As ext_authz's `response_headers_to_add` (OverwriteIfExistsOrAdd).
        for (name, value) in std::mem::take(&mut self.response) {
            self.set_http_response_header(name, Some(&value));
        }
        if std::mem::take(&mut self.may_end_sessions) {
            sessions_ended(now().as_millis() as u64);
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let now = now();
        // As bytes: a value that is not UTF-8 (HTTP allows any byte from
        // 0x80 up) would make the SDK's text reader panic, and a panic stops
        // the module on this worker. Such a request is ext_authz's.
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut unusual = false;
        for (name, value) in self.get_http_request_headers_bytes() {
            match String::from_utf8(value) {
                Ok(value) => pairs.push((name, value)),
                Err(_) => unusual = true,
            }
        }
        let headers: Headers = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let method = headers.get(":method").unwrap_or_default();
        let path = headers.get(":path").unwrap_or_default();
        // Whatever becomes of it here, its answer may be a sign-out (the
        // route's policy is read here only for such a request, which a
        // decision would read anyway).
        if crate::decide::may_end_sessions(method) && headers.contains("authorization") {
            let policy = crate::decide::policy_of(&self.state.borrow(), self.route_policy().as_deref(), path);
            self.may_end_sessions = policy == Some(caas_rules::policy::Policy::Dashboard);
        }
        if unusual {
            return self.forward(Miss::Unusual);
        }
        // Properties are read only once the headers alone have not settled
        // the request (`decide`: screening, an unknown key, then the policy).
        let policy = || self.route_policy();
        let peer = || {
            self.get_property(vec!["source", "address"])
                .and_then(|a| String::from_utf8(a).ok())
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip())
        };
        let req = Request {
            method,
            path,
            policy: &policy,
            headers: &headers,
            peer: &peer,
            sessions_ended_at: &sessions_ended_at,
        };
        let verdict = decide(&mut self.state.borrow_mut(), &req, now.as_secs() as i64, now.as_millis() as u64);
        let mut allow = match verdict {
            Verdict::Allow(allow) => allow,
            Verdict::Preflight(preflight) => return self.answer_preflight(preflight, now),
            Verdict::Deny(deny) => return self.answer_denial(*deny),
            Verdict::Forward(miss) => return self.forward(miss),
        };
        // The mark first: if it cannot be set, nothing is changed and
        // ext_authz decides as if the filter were not there.
        if hostcalls::set_property(vec![MARK], Some(MARK_VALUE)).is_err() {
            log::error!("caas_edge: cannot set filter state; leaving the request to ext_authz");
            return self.forward(Miss::Unusual);
        }
        // One host call for every change, not one per header (each is a
        // trip through V8, and each clears Envoy's route cache): the
        // request's headers as they came, each repeated value kept, less
        // what is removed or replaced, plus what is set.
        let mut rewritten: Vec<(&str, &str)> = Vec::with_capacity(pairs.len() + allow.set.len());
        for (name, value) in &pairs {
            let replaced = allow.set.iter().any(|(set, _)| set == name);
            if !replaced && !allow.remove.iter().any(|removed| removed == name) {
                rewritten.push((name, value));
            }
        }
        rewritten.extend(allow.set.iter().map(|(name, value)| (*name, value.as_str())));
        self.set_http_request_headers(rewritten);
        self.response = allow.response;
        if let Some(metrics) = &self.metrics {
            metrics.allowed();
        }
        self.state.borrow_mut().decisions.add(allow.policy, Decision::Allow);
        self.keep(allow.span.take(), now);
        Action::Continue
    }
}

impl Edge {
    /// Answers a preflight as ext_authz would have had Envoy answer it
    /// (204, no body); the chain stops here.
    fn answer_preflight(&self, preflight: Preflight, now: Duration) -> Action {
        self.answer(PREFLIGHT_MARK, 204, &preflight.headers, None);
        if let Some(metrics) = &self.metrics {
            metrics.preflight();
        }
        self.state.borrow_mut().decisions.add(preflight.policy, Decision::Preflight);
        self.keep(preflight.span, now);
        Action::Pause
    }

    /// Answers a refusal as ext_authz would have had Envoy answer it, and
    /// reports it to ext-authz (its log line and metrics); the chain stops here.
    fn answer_denial(&self, deny: Deny) -> Action {
        self.answer(DENY_MARK, deny.report.status, &deny.headers, Some(deny.body.as_bytes()));
        if let Some(metrics) = &self.metrics {
            metrics.denied();
        }
        self.state.borrow_mut().denials.push(deny.report);
        Action::Pause
    }

    /// A local reply, the stream marked first so Envoy's access log says who
    /// answered (`edge`: envoy/envoy.yaml); the matcher skips ext_authz on
    /// `allow` only, and nothing follows here anyway.
    fn answer(&self, mark: &[u8], status: u16, headers: &[(&'static str, String)], body: Option<&[u8]>) {
        let _ = hostcalls::set_property(vec![MARK], Some(mark));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        self.send_http_response(u32::from(status), headers, body);
    }

    /// A decision's span (only when spans are exported), begun at `started`:
    /// one more clock read, for its end.
    fn keep(&self, span: Option<Box<crate::reports::EdgeSpan>>, started: Duration) {
        if let Some(mut span) = span {
            span.start_unix_nano = unix_nanos(started);
            span.end_unix_nano = unix_nanos(now());
            self.state.borrow_mut().spans.push(*span);
        }
    }

    fn forward(&self, miss: Miss) -> Action {
        if let Some(metrics) = &self.metrics {
            metrics.forwarded(miss);
        }
        self.state.borrow_mut().decisions.forwarded(miss);
        Action::Continue
    }
}
