//! Flow 4: real-time chat through the gateway, on two socket nodes sharing
//! PostgreSQL and Redis.

use std::time::Duration;

use caas_core::id::unix_now;
use caas_core::jwt::{Claims, JwtKeys};
use caas_core::secret::Secret;
use serde_json::{Value, json};

use crate::harness::*;
use crate::ws::{self, Next};

fn keys() -> JwtKeys {
    JwtKeys::new("caas", &Secret::new(JWT_SECRET), None)
}

fn claims_of(token: &str) -> Claims {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A token of the same session expiring `seconds` from now.
fn expiring_in(token: &str, seconds: i64) -> String {
    keys().issue(&Claims { iat: unix_now() - 1, exp: unix_now() + seconds, ..claims_of(token) })
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().unwrap().to_string()
}

async fn conversation(node: &Node, creator: &str, members: &[&str]) -> String {
    let r =
        send(client().post(node.url("/v1/conversations")).bearer_auth(creator).json(&json!({ "member_ids": members })))
            .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn messages_reach_every_subscriber_on_every_node_once_and_nobody_else() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let a = onboard(one, "rt-a").await;
    set_whitelists(one, &a, &["127.0.0.1/32"], &["https://app.a.example"]).await;
    let b = onboard(one, "rt-b").await;
    set_whitelists(one, &b, &["127.0.0.1/32"], &[]).await;
    let ann = token(&sdk_session(one, &a, "ann").await);
    let bob_one = token(&sdk_session(one, &a, "bob").await);
    let bob_two = token(&sdk_session(two, &a, "bob").await);
    // Same user id, other tenant: another person.
    let other_bob = token(&sdk_session(one, &b, "bob").await);
    let conv = conversation(one, &ann, &["bob"]).await;

    let mut s1 = ws::connect(&one.ws(), Some(&bob_one), Some("https://app.a.example")).await.unwrap();
    assert_eq!(s1.protocol.as_deref(), Some("caas.v1"), "the server echoes the chosen subprotocol");
    s1.subscribe(&conv).await;
    let mut s2 = ws::connect(&two.ws(), Some(&bob_two), None).await.unwrap();
    s2.subscribe(&conv).await;
    let mut stranger = ws::connect(&two.ws(), Some(&other_bob), None).await.unwrap();
    stranger.send(json!({"type": "subscribe", "conversation_id": conv, "id": "s1"})).await;
    let refused = stranger.expect("error").await;
    assert_eq!((refused["code"].as_str(), refused["id"].as_str()), (Some("conversation_not_found"), Some("s1")));

    // Posted over REST through gateway one.
    let r = send(
        client()
            .post(one.url("/v1/messages"))
            .bearer_auth(&ann)
            .json(&json!({"conversation_id": conv, "body": "hello", "client_msg_id": "m-1"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    for socket in [&mut s1, &mut s2] {
        let frame = socket.expect("message").await;
        assert_eq!(
            (frame["conversation_id"].as_str(), frame["message"]["body"].as_str()),
            (Some(conv.as_str()), Some("hello"))
        );
        assert_eq!(frame["message"]["sender_id"], "ann");
    }
    // A retry stores and delivers nothing again.
    let r = send(
        client()
            .post(two.url("/v1/messages"))
            .bearer_auth(&ann)
            .json(&json!({"conversation_id": conv, "body": "hello", "client_msg_id": "m-1"})),
    )
    .await;
    assert_eq!(r.status, 200);

    // Posted over a WebSocket on node two: reaches both nodes.
    let mut sender = ws::connect(&two.ws(), Some(&ann), None).await.unwrap();
    sender.send(json!({"type": "message", "conversation_id": conv, "body": "via socket", "client_msg_id": "m-2", "id": "7"})).await;
    let ack = sender.expect("ack").await;
    assert_eq!(
        (ack["ref"].as_str(), ack["id"].as_str(), ack["duplicate"].as_bool()),
        (Some("message"), Some("7"), Some(false))
    );
    for socket in [&mut s1, &mut s2] {
        assert_eq!(socket.expect("message").await["message"]["body"], "via socket");
        // Exactly once per connection.
        assert_eq!(socket.next(Duration::from_millis(400)).await, Next::Nothing);
    }
    assert_eq!(
        stranger.next(Duration::from_millis(300)).await,
        Next::Nothing,
        "another tenant's subscriber received something"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_on_every_node_within_a_second() {
    let Some(cluster) = cluster(2, &[]).await else { return };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let a = onboard(one, "rt-logout").await;
    set_whitelists(one, &a, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(one, &a, "bob").await;
    let bob = token(&session);
    let other = token(&sdk_session(one, &a, "bob").await);
    let mut s1 = ws::connect(&one.ws(), Some(&bob), None).await.unwrap();
    let mut s2 = ws::connect(&two.ws(), Some(&bob), None).await.unwrap();
    let mut unrelated = ws::connect(&two.ws(), Some(&other), None).await.unwrap();
    // Make sure both are fully set up before the logout.
    let conv = conversation(one, &bob, &[]).await;
    s1.subscribe(&conv).await;
    s2.subscribe(&conv).await;

    let started = std::time::Instant::now();
    let r =
        send(client().post(one.url("/v1/sdk/logout")).json(&json!({"refresh_token": session["refresh_token"]}))).await;
    assert_eq!(r.status, 204);
    assert_eq!(s1.closed(Duration::from_secs(1)).await, Some(4003));
    assert_eq!(s2.closed(Duration::from_secs(1)).await, Some(4003));
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Another session of the same user stays connected.
    unrelated.subscribe(&conv).await;
    // And the revoked token cannot connect again.
    assert_eq!(
        ws::connect(&two.ws(), Some(&bob), None).await.err().map(|(s, b)| (s, b["error"]["code"].clone())),
        Some((401, json!("session_revoked")))
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn expiry_closes_unless_refreshed_by_the_same_user() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-expiry").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &[]).await;
    let carol = token(&sdk_session(node, &a, "carol").await);
    let dave = token(&sdk_session(node, &a, "dave").await);
    let short = expiring_in(&carol, 3);

    let mut plain = ws::connect(&node.ws(), Some(&short), None).await.unwrap();
    let mut refreshed = ws::connect(&node.ws(), Some(&short), None).await.unwrap();
    refreshed.send(json!({"type": "refresh", "token": expiring_in(&carol, 120), "id": "r1"})).await;
    let ack = refreshed.expect("ack").await;
    assert_eq!(ack["ref"], "refresh");
    assert!(ack["expires_at"].as_i64().unwrap() > unix_now() + 100);
    // Another user's token is refused; the old expiry stays.
    plain.send(json!({"type": "refresh", "token": dave, "id": "r2"})).await;
    assert_eq!(plain.expect("error").await["code"], "refresh_rejected");
    // An expired token does not refresh anything either.
    plain.send(json!({"type": "refresh", "token": expiring_in(&carol, -30)})).await;
    assert_eq!(plain.expect("error").await["code"], "token_expired");

    assert_eq!(plain.closed(Duration::from_secs(6)).await, Some(4001));
    // Past the first token's expiry, the refreshed connection still works.
    let conv = conversation(node, &carol, &[]).await;
    refreshed.subscribe(&conv).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_upgrades_are_refused_before_101() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-bad").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &["https://app.bad.example"]).await;
    let session = sdk_session(node, &a, "erin").await;
    let erin = token(&session);
    let refusal = |r: Result<ws::Ws, (u16, Value)>| {
        r.err().map(|(status, body)| (status, body["error"]["code"].as_str().unwrap_or_default().to_string()))
    };

    assert_eq!(refusal(ws::connect(&node.ws(), None, None).await), Some((401, "missing_credentials".into())));
    assert_eq!(
        refusal(ws::connect(&node.ws(), Some(&expiring_in(&erin, -60)), None).await),
        Some((401, "token_expired".into()))
    );
    assert_eq!(refusal(ws::connect(&node.ws(), Some(&a.dashboard), None).await), Some((401, "wrong_audience".into())));
    assert_eq!(
        refusal(ws::connect(&node.ws(), Some(&erin), Some("https://evil.example")).await),
        Some((403, "origin_not_allowed".into()))
    );
    assert!(ws::connect(&node.ws(), Some(&erin), Some("https://app.bad.example")).await.is_ok());

    // Straight to the socket service (not through the gateway): the token is
    // validated by auth-api, with the same answers.
    let direct = format!("ws://{}/v1/ws", node.stack.socket);
    assert!(ws::connect(&direct, Some(&erin), None).await.is_ok());
    assert_eq!(
        refusal(ws::connect(&direct, Some(&expiring_in(&erin, -60)), None).await),
        Some((401, "token_expired".into()))
    );
    assert_eq!(
        refusal(ws::connect(&direct, Some(&erin), Some("https://evil.example")).await),
        Some((403, "origin_not_allowed".into()))
    );
    assert_eq!(refusal(ws::connect(&direct, None, None).await), Some((401, "missing_credentials".into())));

    // Logged out: refused on the gateway and directly.
    send(client().post(node.url("/v1/sdk/logout")).bearer_auth(&erin)).await;
    assert_eq!(refusal(ws::connect(&node.ws(), Some(&erin), None).await), Some((401, "session_revoked".into())));
    assert_eq!(refusal(ws::connect(&direct, Some(&erin), None).await), Some((401, "session_revoked".into())));
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_floods_get_closed() {
    use tokio_tungstenite::tungstenite::Message;
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-frames").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &[]).await;
    let b = onboard(node, "rt-frames-b").await;
    set_whitelists(node, &b, &["127.0.0.1/32"], &[]).await;
    let frank = token(&sdk_session(node, &a, "frank").await);
    let theirs = conversation(node, &token(&sdk_session(node, &b, "gina").await), &[]).await;
    let not_mine = conversation(node, &token(&sdk_session(node, &a, "hal").await), &[]).await;

    let mut s = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
    for (raw, code) in [
        (Message::text("not json"), "invalid_json"),
        (Message::text(r#"{"type":"explode"}"#), "unknown_type"),
        (Message::text(r#"{"type":"subscribe"}"#), "invalid_frame"),
        (Message::binary(vec![1u8, 2, 3]), "binary_not_supported"),
    ] {
        s.send_raw(raw).await;
        assert_eq!(s.expect("error").await["code"], code);
    }
    for conv in [&theirs, &not_mine] {
        s.send(json!({"type": "subscribe", "conversation_id": conv})).await;
        assert_eq!(s.expect("error").await["code"], "conversation_not_found");
        s.send(json!({"type": "message", "conversation_id": conv, "body": "x", "client_msg_id": "m"})).await;
        assert_eq!(s.expect("error").await["code"], "conversation_not_found");
    }
    // Still open after all that.
    let mine = conversation(node, &frank, &[]).await;
    s.subscribe(&mine).await;
    // A frame over 64 KiB closes with 1009.
    s.send_raw(Message::text("x".repeat(70 * 1024))).await;
    assert_eq!(s.closed(Duration::from_secs(3)).await, Some(1009));

    // A burst of garbage closes with 4002.
    let mut flood = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
    for _ in 0..15 {
        flood.send_raw(Message::text("garbage")).await;
    }
    assert_eq!(flood.closed(Duration::from_secs(3)).await, Some(4002));
    cluster.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_missed_pongs() {
    let Some(cluster) = cluster(1, &["--ping-interval", "300ms", "--idle-timeout", "1s"]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-idle").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &[]).await;
    let ivy = token(&sdk_session(node, &a, "ivy").await);
    let mut s = ws::connect(&node.ws(), Some(&ivy), None).await.unwrap();
    // Not reading means never answering the server's pings.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(s.closed(Duration::from_secs(2)).await, Some(4000));
    cluster.shutdown().await;
}

#[tokio::test]
async fn chat_trusts_only_the_gateways_context() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-chat").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &[]).await;
    let b = onboard(node, "rt-chat-b").await;
    set_whitelists(node, &b, &["127.0.0.1/32"], &[]).await;
    let jo = token(&sdk_session(node, &a, "jo").await);
    let kim = token(&sdk_session(node, &b, "jo").await);
    let conv = conversation(node, &jo, &[]).await;
    // Tenant B's member naming tenant A's conversation: 404, nothing leaked.
    let r = send(client().get(node.url(&format!("/v1/messages?conversation_id={conv}"))).bearer_auth(&kim)).await;
    assert_eq!((r.status, r.code()), (404, "conversation_not_found"));
    // Straight to chat with hand-written context headers: 401.
    let direct = format!("http://{}/v1/conversations", node.stack.chat);
    let r = send(
        client()
            .get(&direct)
            .header("x-caas-tenant-id", &a.id)
            .header("x-caas-user-id", "jo")
            .header("x-caas-auth-type", "jwt"),
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "missing_context"));
    let r = send(
        client()
            .get(&direct)
            .header("x-caas-tenant-id", &a.id)
            .header("x-caas-user-id", "jo")
            .header("x-caas-auth-type", "jwt")
            .header("x-caas-context-ts", unix_now().to_string())
            .header("x-caas-context-sig", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "invalid_context"));
    cluster.shutdown().await;
}

/// An end user over the node's connection cap is closed at once with 4010;
/// closing one of theirs makes room again, and other users are unaffected.
#[tokio::test]
async fn connections_over_the_per_user_cap_are_closed_with_4010() {
    let Some(cluster) = cluster(1, &["--max-connections-per-user", "2"]).await else { return };
    let node = cluster.node();
    let a = onboard(node, "rt-caps").await;
    set_whitelists(node, &a, &["127.0.0.1/32"], &[]).await;
    let frank = token(&sdk_session(node, &a, "frank").await);
    let grace = token(&sdk_session(node, &a, "grace").await);

    let first = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
    let mut second = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
    let mut third = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
    assert_eq!(third.closed(Duration::from_secs(5)).await, Some(4010));
    let mut other = ws::connect(&node.ws(), Some(&grace), None).await.unwrap();
    let conv = conversation(node, &grace, &[]).await;
    other.subscribe(&conv).await;
    // The first two still work.
    let conv = conversation(node, &frank, &[]).await;
    second.subscribe(&conv).await;
    drop(first);
    // The server notices the dropped connection and frees its slot.
    let mut again = None;
    for _ in 0..50 {
        let mut ws = ws::connect(&node.ws(), Some(&frank), None).await.unwrap();
        match ws.next(Duration::from_millis(300)).await {
            Next::Nothing => {
                again = Some(ws);
                break;
            }
            closed => assert_eq!(closed, Next::Closed(Some(4010))),
        }
    }
    again.expect("room after a connection closed").subscribe(&conv).await;
    cluster.shutdown().await;
}
