//! A burst of wrong-password logins through real Envoy, from one address and
//! from many: at most the limits' worth of password checks run (read from
//! auth-api's `auth_password_checks_total`), everything else is refused at
//! once, and the owner logs in from a known address during the attack.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use sha2::Digest as _;

use crate::harness::*;

const WRONG: &str = "wrong horse battery staple";
/// The defaults of `LOGIN_MAX_FAILURES_PER_EMAIL` and `…_PER_IP`.
const PER_EMAIL: usize = 5;
const PER_IP: usize = 20;
const BURST: usize = 150;

/// A second octet of its own per run: the counters live in the shared Redis
/// for 15 minutes, and a rerun must not inherit them.
fn fresh_octet() -> u8 {
    let digest = sha2::Sha256::digest(caas_core::id::new_id("burst").as_bytes());
    16 + digest[0] % 200
}

async fn login(node: &Node, from: &str, email: &str, password: &str) -> Reply {
    // One client per attempt: each on its own connection, like the attack.
    send(client_from(from).post(node.url("/v1/client/login")).json(&json!({"email": email, "password": password})))
        .await
}

/// `auth_password_checks_total` of `outcome`, from auth-api's own /metrics.
async fn checks(node: &Node, outcome: &str) -> usize {
    let text = reqwest::get(format!("http://{}/metrics", node.stack.auth_api)).await.unwrap().text().await.unwrap();
    let series = format!("auth_password_checks_total{{outcome=\"{outcome}\"}} ");
    let line = text.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{text}"));
    line[series.len()..].trim().parse().unwrap()
}

/// The owner retries only what a client is told to retry: `overloaded`.
async fn owner_logs_in(node: &Node, from: &str, email: &str) -> Reply {
    for _ in 0..20 {
        let r = login(node, from, email, PASSWORD).await;
        if r.status != 503 {
            return r;
        }
        assert_eq!(r.code(), "overloaded", "{r:?}");
        let seconds: u64 = r.header("retry-after").unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(200 * seconds)).await;
    }
    panic!("the owner was overloaded 20 times in a row");
}

/// Each reply is a wrong password, a throttle, or an `overloaded` refusal.
fn tally(replies: &[Reply]) -> (usize, usize) {
    for r in replies {
        let expected =
            matches!((r.status, r.code()), (401, "invalid_credentials") | (429, "rate_limited") | (503, "overloaded"));
        assert!(expected, "{r:?}");
        assert!(r.status == 401 || r.header("retry-after").is_some(), "{r:?}");
    }
    (replies.iter().filter(|r| r.status == 401).count(), replies.iter().filter(|r| r.status == 429).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bursts_run_at_most_the_limits_worth_of_password_checks() {
    let Some(cluster) = cluster(1, &[]).await else { return };
    let node = cluster.node();
    let net = fresh_octet();
    let owner = format!("127.{net}.0.1");
    let email = format!("{}@example.com", caas_core::id::new_id("victim").to_lowercase());
    let r = send(
        client_from(&owner)
            .post(node.url("/v1/client/register"))
            .json(&json!({"name": "Victim", "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(owner_logs_in(node, &owner, &email).await.status, 200);
    let before = checks(node, "mismatch").await;

    let attacker = format!("127.{net}.1.1");
    let emails: Vec<String> = (0..BURST).map(|i| format!("{i}.{email}")).collect();
    let sources: Vec<String> = (0..BURST).map(|i| format!("127.{net}.{}.{}", 2 + i / 200, 1 + i % 200)).collect();
    let from_one = join_all(emails.iter().map(|e| login(node, &attacker, e, WRONG)));
    let from_many = join_all(sources.iter().map(|s| login(node, s, &email, WRONG)));
    let owner_during = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        owner_logs_in(node, &owner, &email).await
    };
    let (from_one, from_many, owner_during) = tokio::join!(from_one, from_many, owner_during);
    assert_eq!(owner_during.status, 200, "{owner_during:?}");

    let (wrong_one, throttled_one) = tally(&from_one);
    let (wrong_many, throttled_many) = tally(&from_many);
    eprintln!(
        "one address: {wrong_one} checked, {throttled_one} throttled; many: {wrong_many} checked, {throttled_many} throttled"
    );
    assert!(wrong_one <= PER_IP && throttled_one > 0, "{wrong_one} / {throttled_one}");
    assert!(wrong_many <= PER_EMAIL && throttled_many > 0, "{wrong_many} / {throttled_many}");
    let ran = checks(node, "mismatch").await - before;
    assert_eq!(ran, wrong_one + wrong_many, "every check that ran answered 401");
    assert!(ran <= PER_IP + PER_EMAIL, "{ran} password checks");

    // Strangers spend what is left of the email's budget; then even the
    // right password from a never-seen address is refused, and the owner's
    // known address still logs in.
    for i in 0..PER_EMAIL {
        let r = login(node, &format!("127.{net}.3.{}", i + 1), &email, WRONG).await;
        if r.status == 429 {
            break;
        }
    }
    let r = login(node, &format!("127.{net}.4.1"), &email, PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
    assert_eq!(owner_logs_in(node, &owner, &email).await.status, 200);
    cluster.shutdown().await;
}
