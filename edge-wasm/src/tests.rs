//! The filter's state against the feed's answers (the decision itself is
//! held to the Check's in ext-authz/src/tests/edge.rs).

use caas_rules::jwt::{Audience, Claims, JwtKeys};
use caas_rules::policy::Policy;
use caas_rules::secret::Secret;
use serde_json::json;

use crate::decide::{Headers, Miss, Request, Verdict, decide};
use crate::lease::{IDLE_MS, LEASE_MS, MIN_LEASE};
use crate::state::{CURRENCY_MS, State};

const JWT: &str = "jwt-secret-jwt-secret-jwt-secret-0001";
const NOW: i64 = 1_800_000_000;
const NOW_MS: u64 = NOW as u64 * 1000;

/// A resync whose material says quotas are off (the lease test turns them on).
fn resync(epoch: &str, cursor: u64, current: bool) -> Vec<u8> {
    resync_with(epoch, cursor, current, false)
}

fn resync_with(epoch: &str, cursor: u64, current: bool, quotas: bool) -> Vec<u8> {
    json!({
        "epoch": epoch, "cursor": cursor, "current": current, "resync": true, "refused": [],
        "material": { "issuer": "caas", "jwt_secret": JWT, "jwt_secret_previous": null,
                      "service_secret": "service-secret-service-secret-0002", "trusted_proxy_hops": 0,
                      "quotas": quotas, "enforce": true }
    })
    .to_string()
    .into_bytes()
}

fn session(epoch: &str, cursor: u64, revoked: bool) -> Vec<u8> {
    json!({ "epoch": epoch, "cursor": cursor, "limits": null,
            "session": { "tenant_id": "cl_1", "subject": "u1", "audience": "caas-sdk", "revoked": revoked } })
    .to_string()
    .into_bytes()
}

fn token(sid: &str) -> String {
    token_for(sid, Audience::Sdk)
}

fn token_for(sid: &str, audience: Audience) -> String {
    signed(&claims_for(sid, audience), JWT)
}

fn claims_for(sid: &str, audience: Audience) -> Claims {
    Claims {
        iss: "caas".into(),
        aud: audience.as_str().into(),
        sub: "u1".into(),
        tid: "cl_1".into(),
        sid: sid.into(),
        jti: "j".into(),
        iat: NOW,
        exp: NOW + 900,
        nbf: None,
    }
}

fn signed(claims: &Claims, secret: &str) -> String {
    JwtKeys::new("caas", &Secret::new(secret), None).issue(claims)
}

/// The code of a refusal the filter answered itself (as ext-authz would).
fn refused(verdict: &Verdict) -> Option<&'static str> {
    match verdict {
        Verdict::Deny(deny) => Some(deny.report.reason),
        _ => None,
    }
}

fn verdict(state: &mut State, sid: &str, now_ms: u64) -> Verdict {
    verdict_from(state, sid, None, now_ms)
}

fn verdict_from(state: &mut State, sid: &str, origin: Option<&str>, now_ms: u64) -> Verdict {
    let origin: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    verdict_with(state, sid, &origin, now_ms)
}

/// An end user's GET with session `sid`'s token and `extra` headers.
fn verdict_with(state: &mut State, sid: &str, extra: &[(&str, &str)], now_ms: u64) -> Verdict {
    verdict_with_token(state, &token(sid), extra, now_ms)
}

/// An end user's GET with `token` and `extra` headers.
fn verdict_with_token(state: &mut State, token: &str, extra: &[(&str, &str)], now_ms: u64) -> Verdict {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str()), ("x-request-id", "r1")];
    headers.extend(extra);
    decide_on(state, "GET /v1/messages", "end_user", &headers, now_ms)
}

/// `request` ("METHOD /path") on a route of `policy` with `headers` from
/// 127.0.0.1, at `now_ms`.
fn decide_on(state: &mut State, request: &str, policy: &str, headers: &[(&str, &str)], now_ms: u64) -> Verdict {
    let (method, path) = request.split_once(' ').unwrap();
    let headers: Headers = headers.iter().copied().collect();
    let req = Request {
        method,
        path,
        policy: &|| Some(policy.to_string()),
        headers: &headers,
        peer: &|| Some("127.0.0.1".parse().unwrap()),
        sessions_ended_at: &|| 0,
    };
    decide(state, &req, NOW, now_ms)
}

#[test]
fn a_session_is_looked_up_on_first_sight_then_allowed_while_current() {
    let mut state = State::default();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::NotCurrent));
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Unknown));
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Unknown));
    assert_eq!(state.take_pending(), vec!["ses_1".to_string()], "asked for once");
    state.apply_session("ses_1", &session("e1", 5, false), NOW_MS).unwrap();
    let Verdict::Allow(allow) = verdict(&mut state, "ses_1", NOW_MS) else { unreachable!("not allowed") };
    assert!(allow.remove.contains(&"authorization".to_string()));
    // Currency lapses a second after the confirming poll was sent.
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS + CURRENCY_MS), Verdict::Forward(Miss::NotCurrent)));
}

#[test]
fn revocations_resyncs_and_stale_lookups_never_bring_a_session_back() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 5, false), NOW_MS).unwrap();
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    let revoked = json!({ "epoch": "e1", "cursor": 6, "current": true, "resync": false, "refused": [],
                          "changes": [ { "type": "session_revoked", "tenant_id": "cl_1", "session_id": "ses_1" },
                                       { "type": "api_key_changed", "tenant_id": "cl_1", "key_id": "k", "key_hash": "h" } ] });
    state.apply_changes(revoked.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(refused(&verdict(&mut state, "ses_1", NOW_MS)), Some("session_revoked"));
    // A lookup read before the revocation does not undo it.
    state.apply_session("ses_1", &session("e1", 5, false), NOW_MS).unwrap();
    assert_eq!(refused(&verdict(&mut state, "ses_1", NOW_MS)), Some("session_revoked"));
    // A live session known, then a resync (ext-authz restarted): forgotten,
    // and a lookup from before the resync is dropped.
    state.apply_session("ses_2", &session("e1", 6, false), NOW_MS).unwrap();
    state.apply_changes(&resync("e2", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_2", &session("e1", 6, false), NOW_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_2", NOW_MS), Verdict::Forward(Miss::Unknown));
    // ext-authz behind its own change feed: the filter decides nothing.
    state.apply_changes(&resync("e3", 0, false), NOW_MS).unwrap();
    state.apply_session("ses_2", &session("e3", 0, false), NOW_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_2", NOW_MS), Verdict::Forward(Miss::NotCurrent));
    // A revoked or unknown session is ext-authz's to refuse.
    state.apply_changes(&resync("e4", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_3", &session("e4", 0, true), NOW_MS).unwrap();
    assert_eq!(refused(&verdict(&mut state, "ses_3", NOW_MS)), Some("session_revoked"));
    // Garbage from the feed changes nothing.
    assert!(state.apply_changes(b"not json", NOW_MS).is_err());
    assert!(state.apply_session("ses_3", b"{", NOW_MS).is_err());
}

#[test]
fn with_quotas_on_the_filter_allows_only_what_ext_authz_leased_it() {
    let mut state = State::default();
    state.apply_changes(&resync_with("e1", 0, true, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 0, false), NOW_MS).unwrap();
    // Nothing leased yet: ext-authz counts (and may refuse) this one.
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Quota));
    let (keys, body) = state.leases.asks(NOW_MS).expect("a lease is asked for");
    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        asked,
        json!({ "leases": [ { "tenant_id": "cl_1", "user_id": "u1", "want": MIN_LEASE } ], "returned": [], "used": [] })
    );
    assert!(state.leases.asks(NOW_MS).is_none(), "one ask in flight per end user");
    // ext-authz had room for one only: one allowed here, then ext_authz again.
    state.leases.apply(&keys, Some(br#"{"granted":[1]}"#), NOW_MS);
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Quota));
    // Asked again for twice the demand since the last ask, at least MIN_LEASE.
    let (keys, body) = state.leases.asks(NOW_MS).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["leases"][0]["want"], MIN_LEASE);
    for _ in 0..5 {
        assert!(verdict(&mut state, "ses_1", NOW_MS) != Verdict::Forward(Miss::NotCurrent));
    }
    state.leases.apply(&keys, Some(br#"{"granted":[4]}"#), NOW_MS);
    let (keys, body) = state.leases.asks(NOW_MS).expect("the demand meanwhile outran the lease");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["leases"][0]["want"], 10);
    state.leases.apply(&keys, Some(br#"{"granted":[0]}"#), NOW_MS);
    for _ in 0..4 {
        assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    }
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Quota));
    // A lease idle for IDLE_MS gives back what is left of it.
    let returned = |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).unwrap()["returned"].clone();
    let (keys, _) = state.leases.asks(NOW_MS).unwrap();
    state.leases.apply(&keys, Some(br#"{"granted":[8]}"#), NOW_MS);
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS + 1), Verdict::Allow(_)));
    assert!(state.leases.asks(NOW_MS + IDLE_MS).is_none(), "spent from within IDLE_MS");
    let (_, body) = state.leases.asks(NOW_MS + 1 + IDLE_MS).expect("an idle lease is given back");
    assert_eq!(returned(&body), json!([ { "tenant_id": "cl_1", "user_id": "u1", "n": 7 } ]));
    let confirmed = json!({ "epoch": "e1", "cursor": 0, "current": true, "resync": false, "refused": [] });
    state.apply_changes(confirmed.to_string().as_bytes(), NOW_MS + 1 + IDLE_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS + 1 + IDLE_MS), Verdict::Forward(Miss::Quota));
    // A lease not spent within its period is given back, not spent as a
    // burst later (however busy it kept).
    let (keys, _) = state.leases.asks(NOW_MS).unwrap();
    state.leases.apply(&keys, Some(br#"{"granted":[8]}"#), NOW_MS);
    state.apply_changes(confirmed.to_string().as_bytes(), NOW_MS + LEASE_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS + LEASE_MS), Verdict::Forward(Miss::Quota));
    let (keys, body) = state.leases.asks(NOW_MS + LEASE_MS).unwrap();
    assert_eq!(returned(&body), json!([ { "tenant_id": "cl_1", "user_id": "u1", "n": 8 } ]));
    // A failed ask is asked again (what it gave back is lost: the quota
    // refuses early, never late); a garbled answer grants nothing.
    state.leases.apply(&keys, None, NOW_MS + LEASE_MS);
    let (keys, _) = state.leases.asks(NOW_MS + LEASE_MS).unwrap();
    state.leases.apply(&keys, None, NOW_MS + LEASE_MS);
    let (keys, _) = state.leases.asks(NOW_MS + LEASE_MS).expect("asked again after a failure");
    state.leases.apply(&keys, Some(b"{"), NOW_MS + LEASE_MS);
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS + LEASE_MS), Verdict::Forward(Miss::Quota));
    // The tenant's limits changed: what was leased under the old ones is
    // not spent under the new, and is given back.
    let (keys, _) = state.leases.asks(NOW_MS + LEASE_MS).unwrap();
    state.leases.apply(&keys, Some(br#"{"granted":[8]}"#), NOW_MS + LEASE_MS);
    let changed = json!({ "epoch": "e1", "cursor": 1, "current": true, "resync": false, "refused": [],
                          "changes": [ { "type": "rate_limits_changed", "tenant_id": "cl_1" } ] });
    state.apply_changes(changed.to_string().as_bytes(), NOW_MS + LEASE_MS).unwrap();
    let (_, body) = state.leases.asks(NOW_MS + LEASE_MS).expect("the released lease is given back");
    assert_eq!(returned(&body), json!([ { "tenant_id": "cl_1", "user_id": "u1", "n": 8 } ]));
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS + LEASE_MS), Verdict::Forward(Miss::Quota));
    // An idle end user is forgotten after a lease period.
    let _ = state.leases.asks(NOW_MS + LEASE_MS);
    let _ = state.leases.asks(NOW_MS + 3 * LEASE_MS);
    assert!(state.leases.asks(NOW_MS + 3 * LEASE_MS).is_none());
}

#[test]
fn an_address_ext_authz_refuses_for_failed_credentials_is_left_to_it() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 0, false), NOW_MS).unwrap();
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    let poll = |refused: serde_json::Value| {
        json!({ "epoch": "e1", "cursor": 0, "current": true, "resync": false, "refused": refused }).to_string()
    };
    // The peer's bucket (127.0.0.1/32) refused: ext-authz answers its 429.
    state.apply_changes(poll(json!(["127.0.0.1/32", "2001:db8::/64"])).as_bytes(), NOW_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Address));
    // Another address refused: this one is decided again.
    state.apply_changes(poll(json!(["127.0.0.2/32"])).as_bytes(), NOW_MS).unwrap();
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    // Too many to list, or a list the filter cannot read: nothing with an address is decided.
    for refused in [json!(null), json!(["not a bucket"])] {
        state.apply_changes(poll(refused).as_bytes(), NOW_MS).unwrap();
        assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Address));
    }
}

/// A POST on a route of `policy` with `headers`.
fn on_route(state: &mut State, policy: &str, headers: &[(&str, &str)]) -> Verdict {
    let headers: Vec<(&str, &str)> = headers.iter().copied().chain([("x-request-id", "r1")]).collect();
    decide_on(state, "POST /v1/sdk/refresh", policy, &headers, NOW_MS)
}

#[test]
fn public_and_refresh_routes_are_decided_here_and_only_a_refresh_minds_a_refused_address() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 0, false), NOW_MS).unwrap();
    let context = |verdict: &Verdict, name: &str| match verdict {
        Verdict::Allow(allow) => allow.set.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()),
        other => panic!("not allowed: {other:?}"),
    };
    // No credential: anonymous, vouching for the address; a credential
    // sent to a public route is taken off, unread.
    for policy in ["public", "refresh"] {
        let verdict = on_route(&mut state, policy, &[]);
        assert_eq!(context(&verdict, "x-caas-auth-type").as_deref(), Some("anonymous"), "{policy}");
        assert_eq!(context(&verdict, "x-caas-client-ip").as_deref(), Some("127.0.0.1"), "{policy}");
    }
    let Verdict::Allow(allow) = on_route(&mut state, "public", &[("authorization", "Bearer not-a-token")]) else {
        panic!("a public route reads no credential")
    };
    assert_eq!(allow.remove, ["authorization"]);
    // An end user's token on a refresh: checked as on an end-user route,
    // its Origin answered with CORS, and the address kept.
    let bearer = format!("Bearer {}", token("ses_1"));
    let verdict = on_route(&mut state, "refresh", &[("authorization", &bearer)]);
    assert_eq!(context(&verdict, "x-caas-session-id").as_deref(), Some("ses_1"));
    assert_eq!(context(&verdict, "x-caas-client-ip").as_deref(), Some("127.0.0.1"));
    let tampered = format!("{bearer}x");
    assert_eq!(on_route(&mut state, "refresh", &[("authorization", &tampered)]), Verdict::Forward(Miss::Refused));
    // ext-authz refuses the address for failed credentials: a refresh is
    // its to answer (429); signing in is not a credential it counts.
    let refused = json!({ "epoch": "e1", "cursor": 0, "current": true, "resync": false, "refused": ["127.0.0.1/32"] });
    state.apply_changes(refused.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(on_route(&mut state, "refresh", &[]), Verdict::Forward(Miss::Address));
    assert_eq!(on_route(&mut state, "refresh", &[("authorization", &bearer)]), Verdict::Forward(Miss::Address));
    assert!(matches!(on_route(&mut state, "public", &[]), Verdict::Allow(_)));
}

#[test]
fn a_token_verified_once_still_expires_and_a_new_secret_verifies_it_afresh() {
    use caas_rules::jwt::TokenError;
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    let t = token("ses_1");
    assert_eq!(state.verify(&t, Audience::Sdk, NOW).unwrap().sid, "ses_1");
    // Kept as an end user's: on a dashboard route it is verified afresh, and refused.
    assert!(state.verify(&t, Audience::Dashboard, NOW).is_err());
    // Kept, but its times still apply (exp is NOW + 900, with 5 s of leeway).
    assert!(state.verify(&t, Audience::Sdk, NOW + 904).is_ok());
    assert_eq!(state.verify(&t, Audience::Sdk, NOW + 905), Err(TokenError::Expired));
    assert_eq!(state.verify(&t, Audience::Sdk, NOW - 600), Err(TokenError::NotYetValid));
    // A byte changed is another token: verified, and refused.
    let mut tampered = t.clone();
    tampered.pop();
    tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(state.verify(&tampered, Audience::Sdk, NOW), Err(TokenError::BadSignature));
    // New material (a secret rotated away): nothing kept is trusted.
    let rotated = json!({
        "epoch": "e2", "cursor": 0, "current": true, "resync": true, "refused": [],
        "material": { "issuer": "caas", "jwt_secret": "another-secret-another-secret-0004", "jwt_secret_previous": null,
                      "service_secret": "service-secret-service-secret-0002", "trusted_proxy_hops": 0 }
    });
    state.apply_changes(rotated.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(state.verify(&t, Audience::Sdk, NOW), Err(TokenError::BadSignature));
}

#[test]
fn repeated_headers_are_joined_as_envoy_joins_them_for_ext_authz() {
    let headers: Headers =
        [("x-forwarded-for", "1.1.1.1"), ("origin", "a"), ("x-forwarded-for", "2.2.2.2")].into_iter().collect();
    assert_eq!(headers.get("x-forwarded-for"), Some("1.1.1.1,2.2.2.2"));
    assert_eq!(headers.get("origin"), Some("a"));
    assert_eq!(headers.get("upgrade"), None);
    assert_eq!(headers.names().collect::<Vec<_>>(), ["x-forwarded-for", "origin"]);
}

/// A well-formed key (its checksum is right), stored nowhere.
const KEY: &str = "caas_0123456789abcdefghijklmnopqrstuv2CRUDD";
/// Another well-formed key.
const OTHER_KEY: &str = "caas_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef07kqpP";

fn with_key(state: &mut State, peer: &str, now_ms: u64) -> Verdict {
    let headers: Headers = [("x-api-key", KEY), ("x-request-id", "r1")].into_iter().collect();
    let req = Request {
        method: "POST",
        path: "/v1/sdk/session",
        policy: &|| Some("api_key".into()),
        headers: &headers,
        peer: &|| Some(peer.parse().unwrap()),
        sessions_ended_at: &|| 0,
    };
    decide(state, &req, NOW, now_ms)
}

fn key_answer(cursor: u64, revoked: bool, cidrs: &[&str]) -> Vec<u8> {
    let hash = caas_rules::api_key::parse(KEY).unwrap();
    json!({ "epoch": "e1", "cursor": cursor, "keys": [ {
        "hash": hash,
        "key": { "key_id": "key_1", "tenant_id": "cl_1", "expires_at": null, "revoked": revoked },
        "ip_whitelist": { "enforced": true, "entries": cidrs } } ] })
    .to_string()
    .into_bytes()
}

fn poll(cursor: u64, changes: serde_json::Value) -> Vec<u8> {
    json!({ "epoch": "e1", "cursor": cursor, "current": true, "resync": false, "refused": [], "changes": changes })
        .to_string()
        .into_bytes()
}

#[test]
fn an_api_key_is_looked_up_by_hash_and_a_change_to_it_or_its_whitelist_is_never_decided_stale() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    let hash = caas_rules::api_key::parse(KEY).unwrap();
    // Unknown: left to ext_authz and looked up by its hash, never the key.
    assert_eq!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Forward(Miss::UnknownKey));
    let asked = state.api_keys.lookups().expect("a lookup");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&asked).unwrap(), json!({ "hashes": [hash] }));
    assert!(!String::from_utf8(asked).unwrap().contains(KEY));
    state.apply_keys(&key_answer(0, false, &["127.0.0.1/32"]), NOW_MS).unwrap();
    assert!(matches!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Allow(_)));
    assert_eq!(refused(&with_key(&mut state, "10.0.0.1", NOW_MS)), Some("ip_not_allowed"));
    // The key changes (here: revoked): forwarded at once, and for HOLD_MS.
    state
        .apply_changes(
            &poll(
                3,
                json!([{ "type": "api_key_changed", "tenant_id": "cl_1", "key_id": "key_1",
                                          "key_hash": hash }]),
            ),
            NOW_MS,
        )
        .unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Forward(Miss::UnknownKey));
    // A lookup read before the change does not bring it back, after the hold
    // either; nor does one answered within the hold (ext-authz's caches may
    // not have heard of the change yet).
    state.apply_keys(&key_answer(2, false, &["127.0.0.1/32"]), NOW_MS).unwrap();
    state.apply_keys(&key_answer(3, false, &["127.0.0.1/32"]), NOW_MS + 100).unwrap();
    let later = NOW_MS + crate::lists::HOLD_MS;
    state.apply_changes(&poll(3, json!([])), later).unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", later), Verdict::Forward(Miss::UnknownKey));
    state.apply_keys(&key_answer(3, true, &["127.0.0.1/32"]), later).unwrap();
    assert_eq!(refused(&with_key(&mut state, "127.0.0.1", later)), Some("api_key_revoked"));
    // Unrevoked again (say, a restore), then the tenant's whitelist changes.
    state.apply_keys(&key_answer(4, false, &["127.0.0.1/32"]), later).unwrap();
    assert!(matches!(with_key(&mut state, "127.0.0.1", later), Verdict::Allow(_)));
    state
        .apply_changes(&poll(5, json!([{ "type": "ip_whitelist_changed", "tenant_id": "cl_1", "version": 2 }])), later)
        .unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", later), Verdict::Forward(Miss::UnknownKey));
    let after = later + crate::lists::HOLD_MS;
    state.apply_changes(&poll(5, json!([])), after).unwrap();
    state.apply_keys(&key_answer(4, false, &["127.0.0.1/32"]), after).unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", after), Verdict::Forward(Miss::UnknownKey), "a stale whitelist");
    state.apply_keys(&key_answer(5, false, &["10.0.0.0/8"]), after).unwrap();
    assert_eq!(refused(&with_key(&mut state, "127.0.0.1", after)), Some("ip_not_allowed"));
    assert!(matches!(with_key(&mut state, "10.0.0.1", after), Verdict::Allow(_)));
    // A whitelist ext-authz would not parse is not applied here either.
    state.apply_changes(&poll(6, json!([{ "type": "ip_whitelist_changed", "tenant_id": "cl_1" }])), after).unwrap();
    let last = after + crate::lists::HOLD_MS;
    state.apply_changes(&poll(6, json!([])), last).unwrap();
    state.apply_keys(&key_answer(6, false, &["not a network"]), last).unwrap();
    assert_eq!(with_key(&mut state, "10.0.0.1", last), Verdict::Forward(Miss::UnknownKey));
    // A resync forgets every key.
    state.apply_changes(&resync("e2", 0, true), last).unwrap();
    assert_eq!(with_key(&mut state, "10.0.0.1", last), Verdict::Forward(Miss::UnknownKey));
}

#[test]
fn a_key_ext_authz_has_not_read_lately_stays_unknown_and_is_asked_for_again() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    let hash = caas_rules::api_key::parse(KEY).unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Forward(Miss::UnknownKey));
    state.api_keys.lookups().expect("a lookup");
    let pending = json!({ "epoch": "e1", "cursor": 0, "keys": [ { "hash": hash, "pending": true } ] });
    state.apply_keys(pending.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Forward(Miss::UnknownKey));
    assert!(state.api_keys.lookups().is_some(), "asked again");
    // No such key: refused (by ext_authz), and not asked for again.
    let none = json!({ "epoch": "e1", "cursor": 0, "keys": [ { "hash": hash, "key": null } ] });
    state.apply_keys(none.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(with_key(&mut state, "127.0.0.1", NOW_MS), Verdict::Forward(Miss::Refused));
    assert!(state.api_keys.lookups().is_none());
}

fn session_with_origins(cursor: u64, origins: Option<&[&str]>) -> Vec<u8> {
    let list = origins.map(|entries| json!({ "enforced": true, "entries": entries }));
    json!({ "epoch": "e1", "cursor": cursor, "limits": null, "origin_whitelist": list,
            "session": { "tenant_id": "cl_1", "subject": "u1", "audience": "caas-sdk", "revoked": false } })
    .to_string()
    .into_bytes()
}

#[test]
fn an_origin_is_allowed_against_the_tenants_whitelist_with_cors_and_a_change_is_never_decided_stale() {
    let app = Some("https://app.example");
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    // A session answer without the whitelist (an older ext-authz): the
    // request with an Origin is left to ext_authz and the session asked again.
    state.apply_session("ses_1", &session("e1", 0, false), NOW_MS).unwrap();
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    assert_eq!(verdict_from(&mut state, "ses_1", app, NOW_MS), Verdict::Forward(Miss::Unknown));
    assert_eq!(state.take_pending(), vec!["ses_1".to_string()]);
    state.apply_session("ses_1", &session_with_origins(0, Some(&["https://app.example"])), NOW_MS).unwrap();
    let Verdict::Allow(allow) = verdict_from(&mut state, "ses_1", app, NOW_MS) else { panic!("allowed") };
    assert_eq!(
        allow.response,
        [("access-control-allow-origin", "https://app.example".into()), ("vary", "Origin".into())]
    );
    let Verdict::Allow(allow) = verdict(&mut state, "ses_1", NOW_MS) else { panic!("allowed") };
    assert!(allow.response.is_empty(), "no Origin, no CORS");
    assert_eq!(
        refused(&verdict_from(&mut state, "ses_1", Some("https://evil.example"), NOW_MS)),
        Some("origin_not_allowed")
    );
    // The whitelist changes: Origins are left to ext_authz for the hold, and
    // no answer read before it or arriving within it is taken.
    let changed = poll(4, json!([{ "type": "origin_whitelist_changed", "tenant_id": "cl_1", "version": 3 }]));
    state.apply_changes(&changed, NOW_MS).unwrap();
    assert_eq!(verdict_from(&mut state, "ses_1", app, NOW_MS), Verdict::Forward(Miss::Unknown));
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)), "without an Origin, unaffected");
    state.apply_session("ses_1", &session_with_origins(4, Some(&["https://app.example"])), NOW_MS + 100).unwrap();
    let later = NOW_MS + crate::lists::HOLD_MS;
    state.apply_changes(&poll(4, json!([])), later).unwrap();
    assert_eq!(verdict_from(&mut state, "ses_1", app, later), Verdict::Forward(Miss::Unknown));
    state.apply_session("ses_1", &session_with_origins(3, Some(&["https://app.example"])), later).unwrap();
    assert_eq!(
        verdict_from(&mut state, "ses_1", app, later),
        Verdict::Forward(Miss::Unknown),
        "read before the change"
    );
    state.apply_session("ses_1", &session_with_origins(4, Some(&["https://other.example"])), later).unwrap();
    assert_eq!(refused(&verdict_from(&mut state, "ses_1", app, later)), Some("origin_not_allowed"));
    // Origins not checked (ORIGIN_VALIDATION_ENABLED=false): any is allowed, with CORS.
    let off = json!({ "epoch": "e1", "cursor": 5, "limits": null, "origin_whitelist": { "enforced": false, "entries": [] },
                      "session": { "tenant_id": "cl_1", "subject": "u1", "audience": "caas-sdk", "revoked": false } });
    state.apply_session("ses_1", off.to_string().as_bytes(), later).unwrap();
    assert!(matches!(verdict_from(&mut state, "ses_1", Some("https://evil.example"), later), Verdict::Allow(_)));
}

#[test]
fn a_socket_is_decided_here_on_end_user_routes_only_with_its_tokens_expiry() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 5, false), NOW_MS).unwrap();
    let subprotocol = format!("caas.v1, caas.bearer.{}", token("ses_1"));
    let ask = |state: &mut State, policy: &'static str, path: &str, headers: &[(&str, &str)]| {
        let headers: Vec<(&str, &str)> = headers.iter().copied().chain([("x-request-id", "r1")]).collect();
        decide_on(state, &format!("GET {path}"), policy, &headers, NOW_MS)
    };
    let socket = [("upgrade", "websocket"), ("sec-websocket-protocol", subprotocol.as_str())];
    let Verdict::Allow(allow) = ask(&mut state, "end_user", "/v1/ws", &socket) else { panic!("not allowed") };
    let set: std::collections::HashMap<_, _> = allow.set.iter().cloned().collect();
    assert_eq!(set.get("x-caas-token-expires-at"), Some(&(NOW + 900).to_string()));
    assert!(!set.contains_key(":path"), "the path is left as it is");
    // Not on another route, not another upgrade.
    assert_eq!(ask(&mut state, "api_key", "/v1/ws", &socket), Verdict::Forward(Miss::Unusual));
    let h2c = [("upgrade", "h2c"), ("sec-websocket-protocol", subprotocol.as_str())];
    assert_eq!(ask(&mut state, "end_user", "/v1/ws", &h2c), Verdict::Forward(Miss::Unusual));
    // A token in the query: taken out of the path on its way, as ext-authz
    // has Envoy do (the rest of the query as Envoy writes it back).
    let query = format!("/v1/ws?v=2&token={}&a=1", token("ses_1"));
    let Verdict::Allow(allow) = ask(&mut state, "end_user", &query, &[("upgrade", "websocket")]) else {
        panic!("a socket's token in the query is the filter's too")
    };
    let set: std::collections::HashMap<_, _> = allow.set.iter().cloned().collect();
    assert_eq!(set.get(":path").map(String::as_str), Some("/v1/ws?a=1&v=2"));
    assert_eq!(set.get("x-caas-token-expires-at"), Some(&(NOW + 900).to_string()));
    // A plain request carries no expiry.
    let bearer = format!("Bearer {}", token("ses_1"));
    let Verdict::Allow(allow) = ask(&mut state, "end_user", "/v1/messages", &[("authorization", bearer.as_str())])
    else {
        panic!("not allowed")
    };
    assert!(allow.set.iter().all(|(name, value)| *name != "x-caas-token-expires-at" || value.is_empty()));
}

#[test]
fn a_dashboard_is_decided_here_except_between_a_sign_out_and_the_next_poll() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    let dashboard = token_for("ses_d", Audience::Dashboard);
    let answer = json!({ "epoch": "e1", "cursor": 5, "limits": null,
        "session": { "tenant_id": "cl_1", "subject": "u1", "audience": "caas-dashboard", "revoked": false } });
    state.apply_session("ses_d", answer.to_string().as_bytes(), NOW_MS).unwrap();
    let ended = std::cell::Cell::new(0);
    let reads = std::cell::Cell::new(0);
    let ended_at = || {
        reads.set(reads.get() + 1);
        ended.get()
    };
    let ask = |state: &mut State, token: &str, policy: &'static str, now_ms| {
        let headers: Headers =
            [("authorization", format!("Bearer {token}")), ("x-request-id", "r1".into())].into_iter().collect();
        let req = Request {
            method: "GET",
            path: "/v1/client/profile",
            policy: &|| Some(policy.into()),
            headers: &headers,
            peer: &|| Some("127.0.0.1".parse().unwrap()),
            sessions_ended_at: &ended_at,
        };
        decide(state, &req, NOW, now_ms)
    };
    let Verdict::Allow(allow) = ask(&mut state, &dashboard, "dashboard", NOW_MS) else { panic!("not allowed") };
    let set: std::collections::HashMap<_, _> = allow.set.iter().cloned().collect();
    assert_eq!(set.get("x-caas-auth-type").map(String::as_str), Some("dashboard"));
    assert_eq!(set.get("x-caas-client-ip").map(String::as_str), Some("127.0.0.1"));
    // Each token only for its own audience; the time is read on dashboards only.
    assert_eq!(refused(&ask(&mut state, &token("ses_d"), "dashboard", NOW_MS)), Some("wrong_audience"));
    assert_eq!(refused(&ask(&mut state, &dashboard, "end_user", NOW_MS)), Some("wrong_audience"));
    assert_eq!(reads.get(), 1);
    // A sign-out answered after the last confirming poll was sent: ext_authz
    // decides until a poll sent later is answered.
    ended.set(NOW_MS + 5);
    assert_eq!(ask(&mut state, &dashboard, "dashboard", NOW_MS + 6), Verdict::Forward(Miss::NotCurrent));
    let quiet = |cursor: u64| {
        json!({ "epoch": "e1", "cursor": cursor, "current": true, "resync": false, "refused": [], "changes": [] })
            .to_string()
    };
    state.apply_changes(quiet(5).as_bytes(), NOW_MS + 5).unwrap();
    assert_eq!(ask(&mut state, &dashboard, "dashboard", NOW_MS + 7), Verdict::Forward(Miss::NotCurrent));
    state.apply_changes(quiet(5).as_bytes(), NOW_MS + 6).unwrap();
    assert!(matches!(ask(&mut state, &dashboard, "dashboard", NOW_MS + 8), Verdict::Allow(_)));
    // A shared time that cannot be read reads as the end of time.
    ended.set(u64::MAX);
    assert_eq!(ask(&mut state, &dashboard, "dashboard", NOW_MS + 9), Verdict::Forward(Miss::NotCurrent));
}

#[test]
fn properties_are_read_only_for_a_request_the_filter_could_allow() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    let (policies, peers) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let policy = || {
        policies.set(policies.get() + 1);
        Some("api_key".to_string())
    };
    let peer = || {
        peers.set(peers.get() + 1);
        Some("127.0.0.1".parse().unwrap())
    };
    let sent = |state: &mut State, method, headers: &[(&str, &str)]| {
        let headers: Headers = headers.iter().copied().collect();
        let req = Request {
            method,
            path: "/v1/sdk/session",
            policy: &policy,
            headers: &headers,
            peer: &peer,
            sessions_ended_at: &|| 0,
        };
        decide(state, &req, NOW, NOW_MS)
    };
    let ask = |state: &mut State, method| sent(state, method, &[("x-api-key", KEY), ("x-request-id", "r1")]);
    // A key not looked up yet (its lookup asked for), and a preflight: left
    // to ext_authz with nothing read (in Envoy, each read is a property
    // lookup through V8).
    assert_eq!(ask(&mut state, "POST"), Verdict::Forward(Miss::UnknownKey));
    let hash = caas_rules::api_key::parse(KEY).unwrap();
    assert!(state.api_keys.lookups().is_some_and(|body| String::from_utf8(body).unwrap().contains(&hash)));
    assert_eq!(ask(&mut state, "OPTIONS"), Verdict::Forward(Miss::Unusual));
    // A malformed key, and one ext-authz says does not exist: refused there
    // on any route.
    for (presented, answer) in [("caas_0123456789abcdefghijklmnopqrstuv2CRUDE", None), (OTHER_KEY, Some(OTHER_KEY))] {
        if let Some(absent) = answer {
            let hash = caas_rules::api_key::parse(absent).unwrap();
            let none = json!({ "epoch": "e1", "cursor": 0, "keys": [ { "hash": hash, "key": null } ] });
            state.apply_keys(none.to_string().as_bytes(), NOW_MS).unwrap();
        }
        let verdict = sent(&mut state, "POST", &[("x-api-key", presented), ("x-request-id", "r1")]);
        assert_eq!(verdict, Verdict::Forward(Miss::Refused), "{presented}");
    }
    assert_eq!((policies.get(), peers.get()), (0, 0));
    // Known: the route's policy, then the address for the whitelist.
    state.apply_keys(&key_answer(0, false, &["127.0.0.1/32"]), NOW_MS).unwrap();
    assert!(matches!(ask(&mut state, "POST"), Verdict::Allow(_)));
    assert_eq!((policies.get(), peers.get()), (1, 1));
    // With a bearer token beside the key, the route decides which one
    // counts: the policy is read first.
    let both = [("x-api-key", KEY), ("authorization", "Bearer x"), ("x-request-id", "r1")];
    assert!(matches!(sent(&mut state, "POST", &both), Verdict::Allow(_)));
    assert_eq!((policies.get(), peers.get()), (2, 2));
}

/// A small deterministic generator (xorshift): the same corpus every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// `text` with a few characters replaced, inserted or cut.
    fn mangle(&mut self, text: &str) -> String {
        const ODD: [&str; 12] = [".", "=", "%", "/", "\\", " ", "é", "🦀", "\u{0}", "..", "A", "_"];
        let mut chars: Vec<String> = text.chars().map(String::from).collect();
        for _ in 0..=self.below(3) {
            let at = self.below(chars.len() + 1);
            match self.below(3) {
                0 if at < chars.len() => chars[at] = self.pick(&ODD).to_string(),
                1 => chars.insert(at, self.pick(&ODD).to_string()),
                _ => chars.truncate(at),
            }
        }
        chars.concat()
    }
}

#[test]
fn hostile_requests_never_panic_and_only_the_real_credential_is_allowed() {
    // Quotas off: a lease would only add `quota` forwards (tests above).
    let mut state = State::default();
    state.apply_changes(&resync("e1", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session_with_origins(0, Some(&["https://app.example"])), NOW_MS).unwrap();
    state.apply_keys(&key_answer(0, false, &["127.0.0.1/32", "::1/128"]), NOW_MS).unwrap();
    let good = token("ses_1");
    let paths = [
        "/v1/messages",
        "/v1/sdk/session",
        "/v1/messages/../client",
        "/v1/%2e%2e/x",
        "//v1/messages",
        "/v1/messages?access_token=x",
        "/v1/messages#x",
        "",
        "*",
        "/v1/mess%00ages",
        "/v1/messages/é",
    ];
    let methods = ["GET", "POST", "OPTIONS", "get", "", "CONNECT", "G\u{0}ET"];
    let peers = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "fe80::1"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut allowed, mut runs) = (0, 0);
    for _ in 0..20_000 {
        let authorization = match rng.below(4) {
            0 => format!("Bearer {good}"),
            1 => format!("Bearer {}", rng.mangle(&good)),
            2 => rng.mangle(&format!("Bearer {good}")),
            _ => format!("Bearer {}.{}", rng.mangle("eyJhbGciOiJub25lIn0"), rng.mangle(&good)),
        };
        let key = if rng.below(2) == 0 { KEY.to_string() } else { rng.mangle(KEY) };
        let id = "r".repeat(1 + rng.below(200));
        let mut headers = vec![
            ("x-request-id".to_string(), rng.mangle(&id)),
            ("x-forwarded-for".to_string(), rng.mangle("1.2.3.4, 127.0.0.1")),
        ];
        match rng.below(3) {
            0 => headers.push(("authorization".into(), authorization.clone())),
            1 => headers.push(("x-api-key".into(), key.clone())),
            _ => {
                headers.push(("authorization".into(), authorization.clone()));
                headers.push(("x-api-key".into(), key.clone()));
            }
        }
        for (name, value) in [("origin", "https://app.example"), ("upgrade", "websocket"), ("x-caas-user-id", "root")] {
            if rng.below(4) == 0 {
                headers.push((name.into(), if rng.below(2) == 0 { value.to_string() } else { rng.mangle(value) }));
            }
        }
        let headers: Headers = headers.into_iter().collect();
        let path = rng.pick(&paths);
        let path = if rng.below(3) == 0 { rng.mangle(path) } else { path.to_string() };
        let peer: std::net::IpAddr = rng.pick(&peers).parse().unwrap();
        let named = rng.pick(&["end_user", "api_key", "dashboard", "", "end_user\u{0}"]);
        let req = Request {
            method: rng.pick(&methods),
            path: &path,
            policy: &|| Some(named.to_string()),
            headers: &headers,
            peer: &|| Some(peer),
            sessions_ended_at: &|| 0,
        };
        runs += 1;
        if let Verdict::Allow(_) = decide(&mut state, &req, NOW, NOW_MS) {
            allowed += 1;
            let (token, presented) = (headers.get("authorization"), headers.get("x-api-key"));
            let ours = match Some(named) {
                Some("end_user") => token == Some(format!("Bearer {good}").as_str()),
                Some("api_key") => presented == Some(KEY),
                _ => false,
            };
            assert!(
                ours,
                "allowed what only the real credential may be: {req_path:?} {headers:?}",
                req_path = req.path
            );
        }
    }
    // The corpus reaches the allows too, not only the refusals.
    assert!(allowed > 100, "{allowed} of {runs} allowed");
}

/// With spans exported (the material says so), an allow continues the
/// caller's trace with a span of its own, or starts one; only a sampled
/// trace's span is kept for ext-authz.
#[test]
fn with_spans_exported_an_allow_is_a_span_and_the_request_its_child() {
    let mut state = State::default();
    let mut material: serde_json::Value = serde_json::from_slice(&resync("e1", 5, true)).unwrap();
    material["material"]["trace_export"] = json!(true);
    state.apply_changes(material.to_string().as_bytes(), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 5, false), NOW_MS).unwrap();
    let allow = |state: &mut State, extra: &[(&str, &str)]| match verdict_with(state, "ses_1", extra, NOW_MS) {
        Verdict::Allow(allow) => allow,
        other => panic!("not allowed: {other:?}"),
    };
    let passed = |allow: &crate::decide::Allow| {
        let value = &allow.set.iter().find(|(n, _)| *n == "traceparent").expect("a traceparent").1;
        caas_rules::trace::TraceParent::parse(value).expect("a valid traceparent")
    };

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = allow(&mut state, &[("traceparent", caller), ("tracestate", "vendor=x")]);
    let span = a.span.clone().expect("a sampled trace's span");
    let sent = passed(&a);
    assert_eq!((sent.trace_id.as_str(), sent.parent_span_id.as_str()), (span.trace_id.as_str(), span.span_id.as_str()));
    assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
    assert_eq!((span.policy, span.tenant_id.as_str(), span.request_id.as_str()), ("end_user", "cl_1", "r1"));
    assert!(!a.remove.contains(&"tracestate".to_string()), "the caller's trace goes on with its state");

    // No traceparent: a new trace, whose state the caller's is not.
    let b = allow(&mut state, &[("tracestate", "vendor=x")]);
    let span = b.span.clone().expect("a new trace is sampled");
    assert!(caas_rules::trace::is_trace_id(&span.trace_id) && span.parent_span_id.is_empty(), "{span:?}");
    assert_eq!(passed(&b).parent_span_id, span.span_id);
    assert!(b.remove.contains(&"tracestate".to_string()));
    assert_ne!(span.span_id, a.span.unwrap().span_id, "each allow is its own span");

    // Not sampled: the request still names its parent, no span is kept.
    let c = allow(&mut state, &[("traceparent", &caller.replace("-01", "-00"))]);
    assert!(c.span.is_none());
    assert!(!passed(&c).sampled);

    // Export off (a resync says so): nothing is added.
    state.apply_changes(&resync("e2", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e2", 0, false), NOW_MS).unwrap();
    let d = allow(&mut state, &[("traceparent", caller)]);
    assert!(d.span.is_none() && !d.set.iter().any(|(n, _)| *n == "traceparent"), "{d:?}");
}

#[test]
fn spans_are_sent_in_bounded_batches_and_what_cannot_be_held_is_counted() {
    use crate::reports::{EdgeSpan, MAX_BATCH, MAX_HELD, Spans};
    let span = EdgeSpan {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        parent_span_id: String::new(),
        span_id: "00f067aa0ba902b7".into(),
        policy: "end_user",
        decision: crate::reports::Decision::Allow,
        tenant_id: "cl_1".into(),
        request_id: "r1".into(),
        start_unix_nano: 1,
        end_unix_nano: 2,
    };
    let mut spans = Spans::default();
    assert!(spans.batch("spans").is_none());
    for _ in 0..MAX_HELD + 3 {
        spans.push(span.clone());
    }
    assert_eq!(spans.take_dropped(), 3);
    let (body, n) = spans.batch("spans").unwrap();
    assert_eq!(n, MAX_BATCH);
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["spans"].as_array().unwrap().len(), MAX_BATCH);
    assert_eq!(sent["spans"][0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    spans.lost(n);
    assert_eq!(spans.take_dropped(), MAX_BATCH as u64);
    let mut left = 0;
    while let Some((_, n)) = spans.batch("spans") {
        left += n;
    }
    assert_eq!(left, MAX_HELD - MAX_BATCH);
}

#[test]
fn preflights_on_browser_routes_are_answered_here_while_current_and_are_spans_when_exported() {
    let preflight = |state: &mut State, policy: &'static str, headers: &[(&str, &str)]| {
        decide_on(state, "OPTIONS /v1/messages", policy, headers, NOW_MS)
    };
    let asked = [("origin", "https://a.example"), ("access-control-request-method", "POST"), ("x-request-id", "r1")];
    let mut state = State::default();
    assert_eq!(preflight(&mut state, "end_user", &asked), Verdict::Forward(Miss::NotCurrent));
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    let Verdict::Preflight(answer) = preflight(&mut state, "end_user", &asked) else { panic!("not answered") };
    assert!(answer.headers.contains(&("access-control-allow-origin", "https://a.example".to_string())));
    assert!(answer.span.is_none());
    // API-key routes refuse preflights (ext-authz's 403), and an OPTIONS
    // that is not a preflight is checked in full: both ext_authz's.
    assert_eq!(preflight(&mut state, "api_key", &asked), Verdict::Forward(Miss::Refused));
    assert_eq!(preflight(&mut state, "end_user", &asked[..1]), Verdict::Forward(Miss::Unusual));
    // Spans exported: the answer is a span of the caller's trace.
    let mut material: serde_json::Value = serde_json::from_slice(&resync("e2", 0, true)).unwrap();
    material["material"]["trace_export"] = json!(true);
    state.apply_changes(material.to_string().as_bytes(), NOW_MS).unwrap();
    let traced = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
    let Verdict::Preflight(answer) = preflight(&mut state, "public", &[&asked[..], &traced[..]].concat()) else {
        panic!("not answered")
    };
    let span = answer.span.expect("a span");
    assert_eq!(
        (span.decision, span.policy, span.tenant_id.as_str()),
        (crate::reports::Decision::Preflight, "public", "")
    );
    assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
    assert!(!answer.headers.iter().any(|(n, _)| *n == "traceparent"), "a preflight goes nowhere");
}

/// The filter answers a verified credential's refusal itself only where
/// ext-authz answers it the same: not in shadow mode (ext-authz lets it
/// through), not while spans are exported (the refusal's span is ext-authz's),
/// and never for an address ext-authz refuses first (its 429).
#[test]
fn refusals_are_answered_here_only_where_ext_authz_would_answer_them_the_same() {
    let with_material = |enforce: Option<bool>, trace_export: bool, refused: serde_json::Value| {
        let mut state = State::default();
        let mut resync: serde_json::Value = serde_json::from_slice(&resync("e1", 5, true)).unwrap();
        match enforce {
            Some(enforce) => resync["material"]["enforce"] = json!(enforce),
            // An ext-authz that does not say (nor takes the filter's reports).
            None => _ = resync["material"].as_object_mut().unwrap().remove("enforce"),
        }
        resync["material"]["trace_export"] = json!(trace_export);
        resync["refused"] = refused;
        state.apply_changes(resync.to_string().as_bytes(), NOW_MS).unwrap();
        state.apply_session("ses_1", &session("e1", 5, true), NOW_MS).unwrap();
        state
    };
    let mut state = with_material(Some(true), false, json!([]));
    let answered = verdict(&mut state, "ses_1", NOW_MS);
    let Verdict::Deny(deny) = &answered else { panic!("not refused here: {answered:?}") };
    assert_eq!((deny.report.status, deny.report.reason, deny.report.policy), (401, "session_revoked", "end_user"));
    assert_eq!((deny.report.tenant_id.as_str(), deny.report.path.as_str()), ("cl_1", "/v1/messages"));
    for (enforce, trace_export, refused, miss) in [
        (Some(false), false, json!([]), Miss::Refused),
        (None, false, json!([]), Miss::Refused),
        (Some(true), true, json!([]), Miss::Refused),
        (Some(true), false, json!(["127.0.0.1/32"]), Miss::Address),
        (Some(true), false, json!(null), Miss::Address),
    ] {
        let mut state = with_material(enforce, trace_export, refused);
        assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(miss), "{enforce:?} {trace_export}");
    }
    // A refusal ext-authz would take no report of (a method it does not
    // take, a path longer than it takes) is left to it, so none goes unlogged.
    let mut state = with_material(Some(true), false, json!([]));
    let long = format!("/v1/messages/{}", "x".repeat(crate::decide::MAX_REPORTED_PATH));
    let bearer = format!("Bearer {}", token("ses_1"));
    let headers = [("authorization", bearer.as_str()), ("x-request-id", "r1")];
    for request in ["get /v1/messages".to_string(), format!("GET {long}")] {
        let verdict = decide_on(&mut state, &request, "end_user", &headers, NOW_MS);
        assert_eq!(verdict, Verdict::Forward(Miss::Unusual), "{}", &request[..16]);
    }
    // A token signed right but expired: refused here, on its times alone
    // the second time (its signature is not checked again).
    let mut state = with_material(Some(true), false, json!([]));
    let expired = signed(&Claims { iat: NOW - 7200, exp: NOW - 3600, ..claims_for("ses_1", Audience::Sdk) }, JWT);
    for _ in 0..2 {
        assert_eq!(refused(&verdict_with_token(&mut state, &expired, &[], NOW_MS)), Some("token_expired"));
    }
    // A guess (a bad signature) is ext-authz's, which counts it.
    let forged = signed(&claims_for("ses_1", Audience::Sdk), &"x".repeat(40));
    assert_eq!(verdict_with_token(&mut state, &forged, &[], NOW_MS), Verdict::Forward(Miss::Refused));
}

#[test]
fn decisions_and_forwards_are_counted_and_kept_until_ext_authz_takes_them() {
    use crate::reports::{Decision, Tally};
    let mut tally = Tally::default();
    assert!(tally.batch().is_none(), "nothing to send");
    for _ in 0..3 {
        tally.add(Policy::EndUser, Decision::Allow);
    }
    tally.add(Policy::Public, Decision::Preflight);
    tally.forwarded(Miss::NotCurrent);
    assert_eq!(tally.total(), 5);
    let (body, taken) = tally.batch().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        sent,
        json!({ "decisions": [
            { "policy": "public", "decision": "preflight", "count": 1 },
            { "policy": "end_user", "decision": "allow", "count": 3 },
        ], "forwarded": [ { "reason": "not_current", "count": 1 } ] })
    );
    assert!(tally.batch().is_none(), "taken with the batch");
    // Not taken (ext-authz did not answer 200): added to what came since.
    tally.add(Policy::EndUser, Decision::Allow);
    tally.restore(taken);
    let (body, _) = tally.batch().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["decisions"][1], json!({ "policy": "end_user", "decision": "allow", "count": 4 }));
    assert_eq!(sent["forwarded"], json!([ { "reason": "not_current", "count": 1 } ]));
    // Forwards alone are a batch too.
    tally.forwarded(Miss::UnknownKey);
    let (body, _) = tally.batch().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent, json!({ "decisions": [], "forwarded": [ { "reason": "unknown_key", "count": 1 } ] }));
}
