//! The filter's state against the feed's answers (the decision itself is
//! held to the Check's in ext-authz/src/tests/edge.rs).

use std::collections::HashMap;

use caas_rules::jwt::{Audience, Claims, JwtKeys};
use caas_rules::secret::Secret;
use serde_json::json;

use crate::decide::{Miss, Request, Verdict, decide};
use crate::state::{CURRENCY_MS, State};

const JWT: &str = "jwt-secret-jwt-secret-jwt-secret-0001";
const NOW: i64 = 1_800_000_000;
const NOW_MS: u64 = NOW as u64 * 1000;

fn resync(epoch: &str, cursor: u64, current: bool) -> Vec<u8> {
    json!({
        "epoch": epoch, "cursor": cursor, "current": current, "resync": true,
        "material": { "issuer": "caas", "jwt_secret": JWT, "jwt_secret_previous": null,
                      "service_secret": "service-secret-service-secret-0002", "trusted_proxy_hops": 0 }
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
    JwtKeys::new("caas", &Secret::new(JWT), None).issue(&Claims {
        iss: "caas".into(),
        aud: Audience::Sdk.as_str().into(),
        sub: "u1".into(),
        tid: "cl_1".into(),
        sid: sid.into(),
        jti: "j".into(),
        iat: NOW,
        exp: NOW + 900,
        nbf: None,
    })
}

fn verdict(state: &mut State, sid: &str, now_ms: u64) -> Verdict {
    let headers: HashMap<String, String> =
        [("authorization".to_string(), format!("Bearer {}", token(sid))), ("x-request-id".into(), "r1".into())]
            .into_iter()
            .collect();
    let req = Request {
        method: "GET",
        path: "/v1/messages",
        policy: Some("end_user"),
        headers: &headers,
        peer: Some("127.0.0.1".parse().unwrap()),
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
    state.apply_session("ses_1", &session("e1", 5, false)).unwrap();
    let Verdict::Allow(allow) = verdict(&mut state, "ses_1", NOW_MS) else { unreachable!("not allowed") };
    assert!(allow.remove.contains(&"authorization".to_string()));
    assert_eq!(allow.buckets.len(), 2, "the user's and the tenant's quotas");
    // Currency lapses a second after the confirming poll was sent.
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS + CURRENCY_MS), Verdict::Forward(Miss::NotCurrent)));
}

#[test]
fn revocations_resyncs_and_stale_lookups_never_bring_a_session_back() {
    let mut state = State::default();
    state.apply_changes(&resync("e1", 5, true), NOW_MS).unwrap();
    state.apply_session("ses_1", &session("e1", 5, false)).unwrap();
    assert!(matches!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Allow(_)));
    let revoked = json!({ "epoch": "e1", "cursor": 6, "current": true, "resync": false,
                          "changes": [ { "type": "session_revoked", "tenant_id": "cl_1", "session_id": "ses_1" },
                                       { "type": "api_key_changed", "tenant_id": "cl_1", "key_id": "k", "key_hash": "h" } ] });
    state.apply_changes(revoked.to_string().as_bytes(), NOW_MS).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Refused));
    // A lookup read before the revocation does not undo it.
    state.apply_session("ses_1", &session("e1", 5, false)).unwrap();
    assert_eq!(verdict(&mut state, "ses_1", NOW_MS), Verdict::Forward(Miss::Refused));
    // A live session known, then a resync (ext-authz restarted): forgotten,
    // and a lookup from before the resync is dropped.
    state.apply_session("ses_2", &session("e1", 6, false)).unwrap();
    state.apply_changes(&resync("e2", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_2", &session("e1", 6, false)).unwrap();
    assert_eq!(verdict(&mut state, "ses_2", NOW_MS), Verdict::Forward(Miss::Unknown));
    // ext-authz behind its own change feed: the filter decides nothing.
    state.apply_changes(&resync("e3", 0, false), NOW_MS).unwrap();
    state.apply_session("ses_2", &session("e3", 0, false)).unwrap();
    assert_eq!(verdict(&mut state, "ses_2", NOW_MS), Verdict::Forward(Miss::NotCurrent));
    // A revoked or unknown session is ext-authz's to refuse.
    state.apply_changes(&resync("e4", 0, true), NOW_MS).unwrap();
    state.apply_session("ses_3", &session("e4", 0, true)).unwrap();
    assert_eq!(verdict(&mut state, "ses_3", NOW_MS), Verdict::Forward(Miss::Refused));
    // Garbage from the feed changes nothing.
    assert!(state.apply_changes(b"not json", NOW_MS).is_err());
    assert!(state.apply_session("ses_3", b"{").is_err());
}
