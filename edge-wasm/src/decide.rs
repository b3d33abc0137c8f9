//! The filter's decision: allow a request on any route (an end user's, an
//! API key's, a dashboard's, a refresh or a public one) exactly as ext-authz
//! would (ext-authz/src/check.rs, policies.rs,
//! response.rs), answer a CORS preflight or refuse a credential it verified
//! as ext-authz would, or leave the request to ext_authz. It refuses only
//! what ext-authz would refuse the same way and never a guess
//! (`caas_rules::denial::EDGE_ANSWERS`: expired, wrong audience, a revoked
//! session, a refused Origin or address, a revoked or expired key; the
//! answer from caas-rules' `denial::answered`, as ext-authz's). Every request
//! it cannot judge from what it holds, and every refusal it is not certain
//! of, goes on to ext_authz unchanged, which answers it as it always has.
//! Every allow and every refusal below passes the same caas-rules checks,
//! in the same order, as a Check's.

use std::net::IpAddr;

use caas_rules::context::{self, AuthType, CONTEXT_HEADERS, REQUEST_ID, RequestContext};
use caas_rules::cors;
use caas_rules::denial::{self, Denial, Reason};
use caas_rules::jwt::Audience;
use caas_rules::policy::{self, Policy};
use caas_rules::request::{self, API_KEY, AUTHORIZATION, TokenSource};
use caas_rules::session::{self, SessionView};
use caas_rules::trace::{TraceParent, new_span_id};
use caas_rules::{api_key, whitelist};

use crate::api_keys::KeyMiss;
use crate::lease::Kind;
use crate::lists::ListMiss;
use crate::reports::{Decision, DenialReport, EdgeSpan, Ids};
use crate::state::State;

/// A request's headers as Envoy presents them to the filter: names
/// lower-case, a repeated header joined with `,` as Envoy joins it for
/// ext_authz. A list, not a map: a request has a dozen headers, and
/// hashing each name cost more in V8 than scanning them.
#[derive(Debug, Default, Clone)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut joined: Vec<(String, String)> = Vec::with_capacity(16);
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            match joined.iter_mut().find(|(n, _)| *n == name) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(&value);
                }
                None => joined.push((name, value)),
            }
        }
        Headers(joined)
    }
}

/// A request as Envoy presents it to the filter.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The route's policy (route metadata `caas.policy`), asked for only
    /// when a decision needs it (a property lookup in Envoy, like `peer`).
    pub policy: &'a dyn Fn() -> Option<String>,
    pub headers: &'a Headers,
    /// The TCP peer, asked for only when a decision needs it (in Envoy
    /// each read is a property lookup through V8, which a request the
    /// filter leaves to ext_authz anyway should not pay).
    pub peer: &'a dyn Fn() -> Option<IpAddr>,
    /// When (ms, the filter's clock) this Envoy last answered a dashboard
    /// request that may have ended sessions (`may_end_sessions`), on any
    /// worker; asked for only on a dashboard route.
    pub sessions_ended_at: &'a dyn Fn() -> u64,
}

impl<'a> Request<'a> {
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name)
    }
}

caas_rules::names! {
    /// Why the filter left a request to ext_authz (the `reason` of its metric).
    pub enum Miss {
        /// The feed has not confirmed currency within a second.
        NotCurrent = "not_current",
        /// The route declares no policy (and the feed sent no table that names one).
        Policy = "policy",
        /// Not a request the filter judges: OPTIONS that is not a preflight, an upgrade
        /// other than a WebSocket's on an end-user route, a credential in the
        /// query, path not canonical, no client address, a header value that is
        /// not UTF-8.
        Unusual = "unusual",
        /// Would be refused, and ext-authz answers it: a guess (which it counts
        /// against the address), or any refusal in shadow mode or while spans
        /// are exported (`refuse`).
        Refused = "refused",
        /// The session, or its tenant's Origin whitelist for a request with an
        /// Origin, has not been looked up yet (it is being), or the whitelist
        /// changed within the last two seconds.
        Unknown = "unknown_session",
        /// The API key or its tenant's IP whitelist has not been looked up yet
        /// (it is being), or changed within the last two seconds.
        UnknownKey = "unknown_key",
        /// ext-authz refuses the client's address for failed credentials (or
        /// refuses too many addresses to list them).
        Address = "address",
        /// No leased request of this end user's or key's quota is left here
        /// (one is being asked for): ext-authz counts it, and refuses it if over.
        Quota = "quota",
    }
}

/// What an allow does to the request: ext-authz's OkHttpResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// The route's.
    pub policy: Policy,
    pub set: Vec<(&'static str, String)>,
    pub remove: Vec<String>,
    /// Set on the response (ext-authz's `response_headers_to_add`, which
    /// overwrite): CORS for an allowed Origin.
    pub response: Vec<(&'static str, String)>,
    pub tenant_id: String,
    /// This allow as a span, when spans are exported and the trace is
    /// sampled; its times are the filter's to fill in.
    pub span: Option<Box<EdgeSpan>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Allow),
    /// A CORS preflight on a route browsers may call, answered here as
    /// ext-authz answers it. It opens nothing.
    Preflight(Preflight),
    /// A refusal answered here (`Deny`).
    Deny(Box<Deny>),
    Forward(Miss),
}

/// The longest path a refusal's report carries (ext-authz/src/edge.rs,
/// `MAX_REPORTED_PATH`: it takes no longer one).
pub const MAX_REPORTED_PATH: usize = 2048;

/// An HTTP method as ext-authz takes one in a report: 1 to 16 capitals.
fn is_method(method: &str) -> bool {
    (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase())
}

/// Why `judge` did not allow.
enum NotAllowed {
    /// ext_authz's to decide.
    Forward(Miss),
    /// A credential the filter verified, refused as ext-authz refuses it
    /// (`refuse` decides whether it answers it itself).
    Refuse { denial: Denial, policy: Policy, tenant_id: Option<String> },
}

impl From<Miss> for NotAllowed {
    fn from(miss: Miss) -> Self {
        NotAllowed::Forward(miss)
    }
}

/// A token `verify` refused (a guess among them: `refuse` leaves those to
/// ext_authz, which counts them against the address).
fn token_refused(error: caas_rules::jwt::TokenError, policy: Policy) -> NotAllowed {
    NotAllowed::Refuse { denial: Denial::Token(error), policy, tenant_id: None }
}

/// A refusal the filter answers itself, exactly as ext-authz answers it
/// (caas_rules::denial::answered): of a credential it verified, never a
/// guess (which ext-authz counts against the address), never before the
/// address is told (ext-authz refuses a refused address first), never in
/// shadow mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// What ext-authz logs and counts of it, its status among them.
    pub report: DenialReport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// The route's.
    pub policy: Policy,
    /// Of the answer (status 204, no body).
    pub headers: Vec<(&'static str, String)>,
    /// The answer as a span, as `Allow::span`.
    pub span: Option<Box<EdgeSpan>>,
}

/// Decides `req` at `now` (Unix seconds; `now_ms` for currency).
pub fn decide(state: &mut State, req: &Request<'_>, now: i64, now_ms: u64) -> Verdict {
    if req.method == "OPTIONS" {
        return match preflight(state, req, now_ms) {
            Ok(headers) => Verdict::Preflight(headers),
            Err(miss) => Verdict::Forward(miss),
        };
    }
    match judge(state, req, now, now_ms) {
        Ok(allow) => Verdict::Allow(allow),
        Err(NotAllowed::Forward(miss)) => Verdict::Forward(miss),
        Err(NotAllowed::Refuse { denial, policy, tenant_id }) => refuse(state, req, denial, policy, tenant_id),
    }
}

/// A verified credential's refusal, answered here when ext-authz would
/// answer it the same: one of `EDGE_ANSWERS` (never a guess), enforcing
/// (not shadow mode), spans not exported
/// (a refusal's span is ext-authz's to make), and the client's address
/// told and not refused (ext-authz answers that first: its 429).
fn refuse(state: &State, req: &Request<'_>, denial: Denial, policy: Policy, tenant_id: Option<String>) -> Verdict {
    let answers = state.keys.as_ref().is_some_and(|keys| keys.enforce && !keys.trace_export);
    if !answers || !denial::EDGE_ANSWERS.contains(&denial) {
        return Verdict::Forward(Miss::Refused);
    }
    if let Err(miss) = client(state, req) {
        return Verdict::Forward(miss);
    }
    // Checked by `judge` before any refusal.
    let Some(request_id) = req.header(REQUEST_ID) else { return Verdict::Forward(Miss::Unusual) };
    // Only what ext-authz takes a report of (ext-authz/src/edge.rs,
    // `EdgeDenial::read`): one it would not take would be missing from its
    // log and metrics, and would cost the rest of its batch.
    let path = request::path_only(req.path);
    if path.len() > MAX_REPORTED_PATH || !is_method(req.method) {
        return Verdict::Forward(Miss::Unusual);
    }
    let reason = Reason::Denied(denial);
    let status = reason.status();
    let (headers, body) = denial::answered(reason, status, req.header("origin"), request_id);
    let report = DenialReport {
        policy: policy.as_str(),
        reason: reason.code(),
        status,
        tenant_id: tenant_id.unwrap_or_default(),
        request_id: request_id.to_string(),
        trace_id: req.header("traceparent").and_then(TraceParent::parse).map(|t| t.trace_id).unwrap_or_default(),
        path: path.to_string(),
        method: req.method.to_string(),
    };
    Verdict::Deny(Box::new(Deny { headers, body, report }))
}

/// ext-authz check.rs `decide` as far as its `preflight`: a path that is
/// not canonical and a route without a policy are refused before it (left
/// to ext_authz here), and so is a preflight on a route browsers must not
/// call (`cors_not_allowed`); any other `OPTIONS` is checked in full, by
/// ext_authz. What a preflight is answered with comes from caas-rules
/// (`cors`), as the Check's does.
fn preflight(state: &mut State, req: &Request<'_>, now_ms: u64) -> Result<Preflight, Miss> {
    if !state.current(now_ms) {
        return Err(Miss::NotCurrent);
    }
    let asked = req.header("access-control-request-method");
    let Some(origin) = req.header("origin").filter(|origin| cors::is_preflight(req.method, Some(origin), asked)) else {
        return Err(Miss::Unusual);
    };
    if !policy::canonical(request::path_only(req.path)) {
        return Err(Miss::Unusual);
    }
    let named = (req.policy)();
    let policy = policy_of(state, named.as_deref(), req.path).ok_or(Miss::Policy)?;
    if !policy.browser_facing() {
        return Err(Miss::Refused);
    }
    let headers = cors::preflight_headers(origin, req.header("access-control-request-headers")).into();
    let span = match state.keys.as_ref().is_some_and(|keys| keys.trace_export) {
        true => {
            let request_id = req.header(REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 128).ok_or(Miss::Unusual)?;
            Traced::of(&mut state.ids, req).span(policy, Decision::Preflight, "", request_id)
        }
        false => None,
    };
    Ok(Preflight { policy, headers, span })
}

fn judge(state: &mut State, req: &Request<'_>, now: i64, now_ms: u64) -> Result<Allow, NotAllowed> {
    screen(state, req.method, req.path, req.headers, now_ms)?;
    if state.keys.is_none() {
        return Err(Miss::NotCurrent.into());
    }
    let key = key_without_token(state, req, now_ms)?;
    // ext-authz check.rs `policy_of`: the route's, else the table's by path.
    let named = (req.policy)();
    let policy = policy_of(state, named.as_deref(), req.path).ok_or(Miss::Policy)?;
    // Envoy's id (ext-authz incoming.rs takes it when it is this well-formed).
    let request_id = req.header(REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 128).ok_or(Miss::Unusual)?;
    // The checks run in ext-authz's order: which failure comes first is the
    // refusal's code. The client's address is told last, before a lease is
    // spent (`client`); a refusal tells it first (`refuse`), as ext-authz
    // refuses a refused address before any credential.
    // A socket is an end user's (policies.rs `end_user` is where an
    // upgrade means anything); on another route it is ext_authz's.
    if policy != Policy::EndUser && req.headers.contains("upgrade") {
        return Err(Miss::Unusual.into());
    }
    let mut token_in_query = false;
    let (ctx, cors_origin) = match policy {
        Policy::ApiKey => (with_api_key(state, req, key, Policy::ApiKey, now, now_ms)?, None),
        Policy::Dashboard => (as_dashboard(state, req, now)?, None),
        Policy::EndUser => {
            let (ctx, origin, source) = as_end_user(state, req, now, now_ms)?;
            token_in_query = source == TokenSource::Query;
            (ctx, origin)
        }
        Policy::Refresh => as_refresh(state, req, key, now, now_ms)?,
        Policy::Public => (anonymous(public_client(state, req)?), None),
    };
    let ctx = RequestContext { request_id: request_id.to_string(), ..ctx };
    // Held since the top (`current`); looked up again past the lease's write.
    let keys = state.keys.as_ref().ok_or(Miss::NotCurrent)?;
    let (mut set, mut remove) = mutations(&keys.signer, &ctx, req, now);
    // A socket's token in the query goes no further: taken out of the path
    // as ext-authz's answer (`strip_query`) has Envoy take it out.
    if token_in_query {
        set.push((":path", request::without_query_params(req.path, &[request::TOKEN_PARAM])));
    }
    let span = match keys.trace_export {
        true => {
            let traced = Traced::of(&mut state.ids, req);
            traced.pass_on(req, &mut set, &mut remove);
            traced.span(policy, Decision::Allow, &ctx.tenant_id, &ctx.request_id)
        }
        false => None,
    };
    let response = match cors_origin {
        Some(origin) => vec![("access-control-allow-origin", origin.to_string()), ("vary", "Origin".to_string())],
        None => Vec::new(),
    };
    Ok(Allow { policy, set, remove, response, tenant_id: ctx.tenant_id, span })
}

/// A decision's place in a trace, when spans are exported (ext-authz
/// trace.rs `Traced`): the caller's trace, or a new one, and a span of its own.
struct Traced {
    trace: TraceParent,
    span_id: String,
    /// The trace began here: the caller's `tracestate` belongs to none we continue.
    new_trace: bool,
}

impl Traced {
    fn of(ids: &mut Ids, req: &Request<'_>) -> Self {
        let caller = req.header("traceparent").and_then(TraceParent::parse);
        let new_trace = caller.is_none();
        let trace = caller.unwrap_or_else(|| TraceParent::new_root(ids));
        Traced { trace, span_id: new_span_id(ids), new_trace }
    }

    /// An allowed request goes on with this decision as its parent
    /// (ext-authz response.rs `allowed`).
    fn pass_on(&self, req: &Request<'_>, set: &mut Vec<(&'static str, String)>, remove: &mut Vec<String>) {
        set.insert(0, ("traceparent", self.trace.child(&self.span_id)));
        if self.new_trace && req.headers.contains("tracestate") {
            remove.insert(0, "tracestate".to_string());
        }
    }

    /// The decision as a span, when the trace is sampled (ext-authz exports
    /// no other); its times are the filter's to fill in.
    fn span(self, policy: Policy, decision: Decision, tenant_id: &str, request_id: &str) -> Option<Box<EdgeSpan>> {
        self.trace.sampled.then(|| {
            Box::new(EdgeSpan {
                trace_id: self.trace.trace_id,
                parent_span_id: self.trace.parent_span_id,
                span_id: self.span_id,
                policy: policy.as_str(),
                decision,
                tenant_id: tenant_id.to_string(),
                request_id: request_id.to_string(),
                start_unix_nano: 0,
                end_unix_nano: 0,
            })
        })
    }
}

/// ext-authz check.rs `policy_of`: the route's (`named`), else the
/// table's by path (meshes).
pub fn policy_of(state: &State, named: Option<&str>, path: &str) -> Option<Policy> {
    match named {
        Some(name) => Policy::parse(name),
        None => state.keys.as_ref()?.policy_table.as_ref()?.lookup(path),
    }
}

/// Whether a request with `method` on a dashboard route may end sessions:
/// sign-out, sign-out everywhere, a password change, a session revoked from
/// the list, and whatever the dashboard gains later; every method that is
/// not a read, so no list of routes can fall behind.
pub fn may_end_sessions(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// What the filter can tell from the headers alone, before it reads any
/// property: whether it may decide at all (`current`), and ext-authz's
/// requests it never judges (check.rs `decide`: path, preflight, query).
/// Every OPTIONS that reaches it is left to ext-authz (`decide` answers
/// preflights before), and so is an upgrade to anything but a WebSocket.
fn screen(state: &State, method: &str, path: &str, headers: &Headers, now_ms: u64) -> Result<(), Miss> {
    if !state.current(now_ms) {
        return Err(Miss::NotCurrent);
    }
    if !policy::canonical(request::path_only(path))
        || method == "OPTIONS"
        || headers.get("upgrade").is_some_and(|u| !request::is_websocket_upgrade(Some(u)))
        || request::credential_in_query(path)
    {
        return Err(Miss::Unusual);
    }
    Ok(())
}

/// An API key sent without a bearer token, told before the route's policy
/// is read: unless the filter holds it as a valid key's, the request is
/// ext_authz's whatever the route (an `api_key` or `refresh` route refuses a
/// malformed or unknown key, an `end_user` or `dashboard` route wants a
/// bearer token; on a public route, where a key means nothing, such a
/// request is rare and its callout harmless). So the first request of a new key, and each of
/// a flood of made-up ones, costs no property read; a key not looked up yet
/// is asked for, as on an `api_key` route. The hash is kept for
/// `with_api_key` (SHA-256 is the costly part in V8).
fn key_without_token(state: &mut State, req: &Request<'_>, now_ms: u64) -> Result<Option<String>, Miss> {
    let (None, Some(presented)) = (req.header(AUTHORIZATION), req.header(API_KEY)) else { return Ok(None) };
    let hash = api_key::parse(presented).map_err(|_| Miss::Refused)?;
    match state.api_keys.lookup(&hash, now_ms) {
        Ok(_) => Ok(Some(hash)),
        Err(KeyMiss::Unknown) => Err(Miss::UnknownKey),
        Err(KeyMiss::Refused) => Err(Miss::Refused),
    }
}

/// The client's address as ext-authz tells it (`TRUSTED_PROXY_HOPS`), and
/// not one ext-authz refuses for failed credentials (its 429
/// `too_many_failures`, which it answers before any credential).
fn client(state: &State, req: &Request<'_>) -> Result<IpAddr, Miss> {
    // An address that cannot be told is refused (ext-authz: `client_ip_unknown`).
    let ip = public_client(state, req)?;
    if state.address_refused(ip) {
        return Err(Miss::Address);
    }
    Ok(ip)
}

/// ext-authz policies.rs `end_user`, for a token in `authorization`: the
/// context, and the Origin to answer CORS for (core validate.rs
/// `validate_token`: the Origin, when sent, against the tenant's whitelist).
fn as_end_user<'r>(
    state: &mut State,
    req: &Request<'r>,
    now: i64,
    now_ms: u64,
) -> Result<(RequestContext, Option<&'r str>, TokenSource), NotAllowed> {
    let (token, source) = request::end_user_token(|name| req.header(name), req.path).map_err(|_| Miss::Refused)?;
    let socket = request::is_websocket_upgrade(req.header("upgrade"));
    let (claims, origin) = sdk_token(state, req, token, Policy::EndUser, now, now_ms)?;
    client(state, req)?;
    // Last: a request is counted only once it would be allowed (ext-authz
    // check.rs counts after the grant, in the user's and the tenant's bucket).
    if quotas_on(state) && !state.leases.spend(Kind::User, &claims.tid, &claims.sub, now_ms) {
        return Err(Miss::Quota.into());
    }
    let ctx = RequestContext {
        tenant_id: claims.tid,
        user_id: claims.sub,
        session_id: claims.sid,
        auth_type: AuthType::Jwt,
        key_id: String::new(),
        // End-user routes do not carry the address (ext-authz policies.rs).
        client_ip: String::new(),
        request_id: String::new(),
        // A socket outlives its upgrade and closes when its token expires.
        token_expires_at: socket.then_some(claims.exp),
    };
    Ok((ctx, origin, source))
}

/// core validate.rs `validate_token` for an end user's token (aud
/// `caas-sdk`) on a route of `policy`: signature and times, the session,
/// and the Origin, when sent, against the tenant's whitelist. The claims,
/// and the Origin to answer CORS for.
fn sdk_token<'r>(
    state: &mut State,
    req: &Request<'r>,
    token: &str,
    policy: Policy,
    now: i64,
    now_ms: u64,
) -> Result<(caas_rules::jwt::Claims, Option<&'r str>), NotAllowed> {
    let claims = state.verify(token, Audience::Sdk, now).map_err(|e| token_refused(e, policy))?;
    check_session(state, &claims, Audience::Sdk, policy)?;
    let origin = req.header("origin");
    if let Some(origin) = origin {
        match state.origins(&claims.tid, now_ms) {
            Ok(Some(list)) if !list.allows(origin) => {
                let tenant_id = Some(claims.tid.clone());
                return Err(NotAllowed::Refuse { denial: Denial::OriginNotAllowed, policy, tenant_id });
            }
            Ok(_) => {}
            // Changed moments ago: looked up again once the hold is over.
            Err(ListMiss::Held) => return Err(Miss::Unknown.into()),
            // Not known here (a session looked up before Origins were
            // served): the session is looked up again, and brings it.
            Err(ListMiss::Unknown) => {
                state.want(&claims.sid);
                return Err(Miss::Unknown.into());
            }
        }
    }
    Ok((claims, origin))
}

/// ext-authz policies.rs `refresh`: the refresh token travels in the body,
/// for auth-api to check. An API key, when sent, is checked as on an
/// `api_key` route (and counted in its quota); else an access token, when
/// sent, as an end user's, with its Origin (no quota counts it, and the
/// context keeps the address); else the request is anonymous. Unlike a
/// public route, a refused address is refused (`client`).
fn as_refresh<'r>(
    state: &mut State,
    req: &Request<'r>,
    key: Option<String>,
    now: i64,
    now_ms: u64,
) -> Result<(RequestContext, Option<&'r str>), NotAllowed> {
    if req.header(API_KEY).is_some() {
        return Ok((with_api_key(state, req, key, Policy::Refresh, now, now_ms)?, None));
    }
    let Some(authorization) = req.header(AUTHORIZATION) else {
        return Ok((anonymous(client(state, req)?), None));
    };
    let token = request::bearer(Some(authorization)).map_err(|_| Miss::Refused)?;
    let (claims, origin) = sdk_token(state, req, token, Policy::Refresh, now, now_ms)?;
    let ip = client(state, req)?;
    let ctx = RequestContext {
        tenant_id: claims.tid,
        user_id: claims.sub,
        session_id: claims.sid,
        auth_type: AuthType::Jwt,
        ..anonymous(ip)
    };
    Ok((ctx, origin))
}

/// ext-authz policies.rs `public`: no credential; the context vouches only
/// for the address (and the request id, set by `judge`).
fn anonymous(ip: IpAddr) -> RequestContext {
    RequestContext {
        tenant_id: String::new(),
        user_id: String::new(),
        session_id: String::new(),
        auth_type: AuthType::Anonymous,
        key_id: String::new(),
        client_ip: whitelist::canonical_ip(ip).to_string(),
        request_id: String::new(),
        token_expires_at: None,
    }
}

/// The client's address on a public route: as `client`, but an address
/// refused for failed credentials is not refused here (ext-authz check.rs
/// refuses it on every route but a public one: signing up and signing in
/// are not credentials it counts).
fn public_client(state: &State, req: &Request<'_>) -> Result<IpAddr, Miss> {
    let keys = state.keys.as_ref().ok_or(Miss::NotCurrent)?;
    let peer = (req.peer)().ok_or(Miss::Unusual)?;
    caas_rules::net::client_ip(peer, req.header("x-forwarded-for"), keys.trusted_proxy_hops).ok_or(Miss::Unusual)
}

/// ext-authz policies.rs `dashboard`: the bearer token for
/// `caas-dashboard` (core validate.rs `validate_token`, no Origin), its
/// session; the context carries the client's address, and no quota counts
/// it. One more rule, for what ext-authz knows at once and the feed a moment
/// later: a console signs out (or everywhere, or changes its password) and
/// its next request must be refused. ext-authz, in the process that ended
/// the sessions, refuses it at once; so the filter decides no dashboard
/// request until a poll sent after that answer passed through this Envoy
/// has been answered (`State::confirmed_after`: ext-authz received it after
/// the change, so its answer carries it).
fn as_dashboard(state: &mut State, req: &Request<'_>, now: i64) -> Result<RequestContext, NotAllowed> {
    let token = request::bearer(req.header(AUTHORIZATION)).map_err(|_| Miss::Refused)?;
    let claims = state.verify(token, Audience::Dashboard, now).map_err(|e| token_refused(e, Policy::Dashboard))?;
    check_session(state, &claims, Audience::Dashboard, Policy::Dashboard)?;
    if !state.confirmed_after((req.sessions_ended_at)()) {
        return Err(Miss::NotCurrent.into());
    }
    let ip = client(state, req)?;
    Ok(RequestContext {
        tenant_id: claims.tid,
        user_id: claims.sub,
        session_id: claims.sid,
        auth_type: AuthType::Dashboard,
        key_id: String::new(),
        client_ip: whitelist::canonical_ip(ip).to_string(),
        request_id: String::new(),
        token_expires_at: None,
    })
}

/// The session behind a verified token, as ext-authz's validator judges it
/// (`caas_rules::session::check`); one not looked up yet is asked for.
fn check_session(
    state: &mut State,
    claims: &caas_rules::jwt::Claims,
    audience: Audience,
    policy: Policy,
) -> Result<(), NotAllowed> {
    let revoked = || NotAllowed::Refuse { denial: Denial::SessionRevoked, policy, tenant_id: Some(claims.tid.clone()) };
    if state.revoked(&claims.sid) {
        return Err(revoked());
    }
    let Some(known) = state.session(&claims.sid) else {
        state.want(&claims.sid);
        return Err(Miss::Unknown.into());
    };
    let view = known.record.as_ref().map(|r| SessionView {
        tenant_id: &r.tenant_id,
        subject: &r.subject,
        audience: r.audience,
        revoked: r.revoked,
    });
    session::check(claims, audience, view.as_ref()).map_err(|_| revoked())
}

/// ext-authz policies.rs `api_key` (core validate.rs `validate_api_key`):
/// the key by its hash, revoked, expired, then the address against the
/// tenant's IP whitelist.
fn with_api_key(
    state: &mut State,
    req: &Request<'_>,
    hash: Option<String>,
    policy: Policy,
    now: i64,
    now_ms: u64,
) -> Result<RequestContext, NotAllowed> {
    let hash = match hash {
        Some(hash) => hash,
        None => api_key::parse(req.header(API_KEY).ok_or(Miss::Refused)?).map_err(|_| Miss::Refused)?,
    };
    let (tenant_id, key_id) = {
        let (record, _) = state.api_keys.lookup(&hash, now_ms).map_err(|miss| match miss {
            KeyMiss::Unknown => Miss::UnknownKey,
            KeyMiss::Refused => Miss::Refused,
        })?;
        let refused = |denial| NotAllowed::Refuse { denial, policy, tenant_id: Some(record.tenant_id.clone()) };
        if record.revoked {
            return Err(refused(Denial::ApiKeyRevoked));
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(refused(Denial::ApiKeyExpired));
        }
        (record.tenant_id.clone(), record.key_id.clone())
    };
    let client_ip = client(state, req)?;
    // `lookup` found the tenant's list current: not admitted is refused.
    if !state.api_keys.admits(&tenant_id, client_ip, now_ms) {
        return Err(NotAllowed::Refuse { denial: Denial::IpNotAllowed, policy, tenant_id: Some(tenant_id) });
    }
    if quotas_on(state) && !state.leases.spend(Kind::Key, &tenant_id, &key_id, now_ms) {
        return Err(Miss::Quota.into());
    }
    state.leases.key_used(&key_id, now_ms);
    Ok(RequestContext {
        tenant_id,
        user_id: String::new(),
        session_id: String::new(),
        auth_type: AuthType::ApiKey,
        key_id,
        client_ip: whitelist::canonical_ip(client_ip).to_string(),
        request_id: String::new(),
        token_expires_at: None,
    })
}

fn quotas_on(state: &State) -> bool {
    state.keys.as_ref().is_some_and(|keys| keys.quotas)
}

/// ext-authz's `response::allowed` for a grant without trace or CORS.
fn mutations(
    signer: &context::ContextSigner,
    ctx: &RequestContext,
    req: &Request<'_>,
    now: i64,
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let present = |name: &str| req.headers.contains(name);
    let mut set = Vec::with_capacity(8);
    let mut remove = Vec::new();
    for (name, value) in signer.headers(ctx, req.method, now) {
        if value.is_empty() {
            if present(name) {
                remove.push(name.to_string());
            }
        } else if name == REQUEST_ID && req.header(REQUEST_ID) == Some(value.as_str()) {
            // Envoy's own id, already on the request (and signed).
        } else {
            set.push((name, value));
        }
    }
    for name in req.headers.names() {
        if name.starts_with("x-caas-") && !remove.iter().any(|r| r == name) && !CONTEXT_HEADERS.contains(&name) {
            remove.push(name.to_string());
        }
    }
    remove.extend([AUTHORIZATION, API_KEY].into_iter().filter(|h| present(h)).map(String::from));
    (set, remove)
}
