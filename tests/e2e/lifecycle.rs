//! Credential lifecycle through real Envoy, on two nodes (each its own
//! ext-authz and socket node) sharing PostgreSQL and Redis: signing out
//! everywhere, changing the password, listing sessions, banning an end user.
//! Each revocation must be in force at every gateway and socket node within
//! a second; the measured times are printed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::ws;

const NEW_PASSWORD: &str = "a wholly different passphrase";
const DEADLINE: Duration = Duration::from_secs(1);

/// True when every token is refused as revoked on every node.
async fn all_revoked(nodes: &[Node], tokens: &[&str]) -> bool {
    for node in nodes {
        for token in tokens {
            if profile_status(node, token).await != (401, "session_revoked".into()) {
                return false;
            }
        }
    }
    true
}

#[tokio::test]
async fn signing_out_everywhere_reaches_every_gateway_within_a_second() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (email, _) = account(one, "lc-all").await;
    let (other_email, _) = account(one, "lc-all-other").await;
    let this = dashboard_token(one, &email).await;
    let laptop = dashboard_token(two, &email).await;
    let phone = dashboard_token(one, &email).await;
    let foreign = dashboard_token(two, &other_email).await;
    // Every gateway has each session cached as live before the revocation.
    for node in &cluster.nodes {
        for token in [&this, &laptop, &phone, &foreign] {
            assert_eq!(profile_status(node, token).await.0, 200);
        }
    }

    let started = Instant::now();
    let r = send(client().post(one.url("/v1/client/logout-all")).bearer_auth(&this)).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (200, Some(3)), "{r:?}");
    let ended = [this.as_str(), laptop.as_str(), phone.as_str()];
    let took = within(Duration::from_secs(5), || all_revoked(&cluster.nodes, &ended)).await;
    let took = took.map(|_| started.elapsed()).expect("a signed-out token still works after 5 s");
    println!("logout-all: every token refused on both gateways {took:?} after the request was sent");
    assert!(took <= DEADLINE, "took {took:?}");
    // Another account is untouched.
    for node in &cluster.nodes {
        assert_eq!(profile_status(node, &foreign).await.0, 200);
    }
    // A new login works (the account is signed out, not locked).
    let again = dashboard_token(two, &email).await;
    assert_eq!(profile_status(one, &again).await.0, 200);
    cluster.shutdown().await;
}

#[tokio::test]
async fn password_change_keeps_this_session_ends_the_others_and_the_old_password() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (email, _) = account(one, "lc-pw").await;
    let this = dashboard_token(one, &email).await;
    let other = dashboard_token(two, &email).await;
    for node in &cluster.nodes {
        assert_eq!(profile_status(node, &other).await.0, 200);
    }

    let r = send(client().get(two.url("/v1/client/sessions")).bearer_auth(&this)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let sessions = r.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{r:?}");
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1, "{r:?}");
    for session in sessions {
        assert_eq!(session["ip"], "127.0.0.1", "{session}");
        assert!(session["last_used_at"].as_i64().is_some(), "{session}");
    }

    let wrong = json!({"current_password": "not my password at all", "new_password": NEW_PASSWORD});
    let r = send(client().put(two.url("/v1/client/password")).bearer_auth(&this).json(&wrong)).await;
    assert_eq!((r.status, r.code()), (403, "invalid_current_password"), "{r:?}");
    let weak = json!({"current_password": PASSWORD, "new_password": "short"});
    let r = send(client().put(two.url("/v1/client/password")).bearer_auth(&this).json(&weak)).await;
    assert_eq!((r.status, r.code()), (400, "invalid_password"), "{r:?}");

    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let sent = Instant::now();
    let r = send(client().put(two.url("/v1/client/password")).bearer_auth(&this).json(&change)).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (200, Some(1)), "{r:?}");
    // Measured from the answer: the request itself spends its time on two
    // Argon2 hashes (slow in a debug build on a busy machine), not on revoking.
    let (answered, started) = (sent.elapsed(), Instant::now());
    let ended = [other.as_str()];
    within(Duration::from_secs(5), || all_revoked(&cluster.nodes, &ended)).await.expect("the other session lives");
    let took = started.elapsed();
    println!(
        "password change: answered in {answered:?}; the other session refused on both gateways {took:?} after the answer"
    );
    assert!(took <= DEADLINE, "took {took:?}");
    for node in &cluster.nodes {
        assert_eq!(profile_status(node, &this).await.0, 200, "the caller's own session stays");
    }
    let r = login(one, &email, PASSWORD).await;
    assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "the old password still logs in");
    assert_eq!(login(two, &email, NEW_PASSWORD).await.status, 200);

    let r = send(client().get(one.url("/v1/client/sessions")).bearer_auth(&this)).await;
    let listed = r.body["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "this one and the new login: {r:?}");
    // A dashboard token is not an API key.
    let r = send(client().post(one.url("/v1/sdk/users/bob/revoke")).bearer_auth(&this)).await;
    assert_eq!(r.status, 401, "{r:?}");
    cluster.shutdown().await;
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().unwrap().to_string()
}

async fn conversation(node: &Node, creator: &str) -> String {
    let r = send(client().post(node.url("/v1/conversations")).bearer_auth(creator).json(&json!({ "member_ids": [] })))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_string()
}

async fn chat_status(node: &Node, token: &str) -> (u16, String) {
    let r = send(client().get(node.url("/v1/conversations")).bearer_auth(token)).await;
    (r.status, r.code().to_string())
}

#[tokio::test]
async fn banning_an_end_user_closes_their_sockets_on_every_node_within_a_second() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let a = onboard(one, "lc-ban-a").await;
    let b = onboard(one, "lc-ban-b").await;
    set_whitelists(one, &a, &["127.0.0.1/32"], &[]).await;
    set_whitelists(one, &b, &["127.0.0.1/32"], &[]).await;
    let (bob_phone, bob_laptop) =
        (token(&sdk_session(one, &a, "bob").await), token(&sdk_session(two, &a, "bob").await));
    let alice = token(&sdk_session(one, &a, "alice").await);
    // Another tenant's end user with the very same id.
    let other_bob = token(&sdk_session(two, &b, "bob").await);

    let mut s1 = ws::connect(&one.ws(), Some(&bob_phone), None).await.unwrap();
    let mut s2 = ws::connect(&two.ws(), Some(&bob_laptop), None).await.unwrap();
    let mut kept_alice = ws::connect(&two.ws(), Some(&alice), None).await.unwrap();
    let mut kept_bob = ws::connect(&one.ws(), Some(&other_bob), None).await.unwrap();
    // Every socket fully set up before the ban.
    let conv_a = conversation(one, &bob_phone).await;
    s1.subscribe(&conv_a).await;
    s2.subscribe(&conv_a).await;
    let conv_alice = conversation(two, &alice).await;
    kept_alice.subscribe(&conv_alice).await;
    let conv_b = conversation(two, &other_bob).await;
    kept_bob.subscribe(&conv_b).await;

    // Refusals first: a malformed id, and an address outside the whitelist.
    let r = send(client().post(two.url("/v1/sdk/users/has%20space/revoke")).header("x-api-key", &a.key)).await;
    assert_eq!((r.status, r.code()), (400, "invalid_user_id"), "{r:?}");
    let r = send(client_from("127.0.0.2").post(two.url("/v1/sdk/users/bob/revoke")).header("x-api-key", &a.key)).await;
    assert_eq!((r.status, r.code()), (403, "ip_not_allowed"), "{r:?}");

    let started = Instant::now();
    let r = send(client().post(two.url("/v1/sdk/users/bob/revoke")).header("x-api-key", &a.key)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"user_id": "bob", "revoked_sessions": 2}));
    assert_eq!(s1.closed(DEADLINE).await, Some(4003));
    assert_eq!(s2.closed(DEADLINE.saturating_sub(started.elapsed())).await, Some(4003));
    let took = started.elapsed();
    println!("end-user ban: both sockets closed with 4003 {took:?} after the request was sent");
    assert!(took <= DEADLINE, "took {took:?}");
    // Their tokens are refused by both gateways.
    for node in &cluster.nodes {
        for token in [&bob_phone, &bob_laptop] {
            assert_eq!(chat_status(node, token).await, (401, "session_revoked".into()));
        }
    }
    // Alice, and the other tenant's bob, keep their sockets and tokens.
    kept_alice.subscribe(&conv_alice).await;
    kept_bob.subscribe(&conv_b).await;
    for node in &cluster.nodes {
        assert_eq!(chat_status(node, &other_bob).await.0, 200);
        assert_eq!(chat_status(node, &alice).await.0, 200);
    }
    // Idempotent, and a banned user's token cannot open a socket again.
    let r = send(client().post(one.url("/v1/sdk/users/bob/revoke")).header("x-api-key", &a.key)).await;
    assert_eq!((r.status, r.body["revoked_sessions"].as_u64()), (200, Some(0)), "{r:?}");
    assert_eq!(ws::connect(&one.ws(), Some(&bob_laptop), None).await.err().map(|(s, _)| s), Some(401));
    cluster.shutdown().await;
}
