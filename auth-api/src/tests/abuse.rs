//! Logins under hostile traffic, as clients see them: a full hashing bound
//! answers 503 `overloaded` at once, parallel guesses run at most the
//! limit's worth of password checks (`auth_password_checks_total`), and the
//! owner's known address is not locked out by strangers.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::json;

use super::harness::*;

const LOGIN: &str = "/api/v1/auth/client/login";

fn login_from(ip: [u8; 4], email: &str, password: &str) -> Request<Body> {
    let mut request = post(LOGIN, json!({"email": email, "password": password}));
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from((ip, 40000))));
    request
}

/// The `auth_password_checks_total` series of this outcome, from /metrics.
async fn checks(h: &Harness, outcome: &str) -> u64 {
    let metrics = h.send(get("/metrics")).await.text;
    let series = format!("auth_password_checks_total{{outcome=\"{outcome}\"}} ");
    let line = metrics.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{metrics}"));
    line[series.len()..].trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_bound_answers_overloaded_at_once() {
    let mut config = config();
    config.api.password_hash_concurrency = Some(1);
    let h = Harness::sqlite_with(config).await;
    // Other emails and addresses each, so that no throttle is reached.
    let attempts =
        (0..8).map(|i| h.send(login_from([127, 0, 1, i], &format!("busy{i}@example.com"), "wrong horse battery")));
    let replies = futures_util::future::join_all(attempts).await;
    let overloaded: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(!overloaded.is_empty(), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for r in &overloaded {
        assert_eq!(r.code(), "overloaded", "{}", r.text);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    assert!(replies.iter().all(|r| [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&r.status)));
    assert_eq!(checks(&h, "mismatch").await, (replies.len() - overloaded.len()) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_parallel_guesses_run_at_most_the_limits_worth_of_checks() {
    let mut config = config();
    config.api.password_hash_concurrency = Some(64);
    let h = Harness::sqlite_with(config).await;
    let who = h.register("target@example.com").await;
    let attempts = (0..60).map(|i| h.send(login_from([127, 0, 2, i], &who.email, "wrong horse battery")));
    let replies = futures_util::future::join_all(attempts).await;
    let count = |status| replies.iter().filter(|r| r.status == status).count();
    assert_eq!((count(StatusCode::UNAUTHORIZED), count(StatusCode::TOO_MANY_REQUESTS)), (5, 55));
    assert!(
        replies
            .iter()
            .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
            .all(|r| r.code() == "rate_limited" && r.headers.contains_key("retry-after"))
    );
    assert_eq!(checks(&h, "mismatch").await, 5);
}

#[tokio::test]
async fn the_owner_logs_in_from_a_known_address_while_strangers_are_throttled() {
    let h = Harness::sqlite().await;
    let who = h.register("owner@example.com").await;
    let (owner, stranger, newcomer) = ([127, 0, 3, 1], [127, 0, 3, 2], [127, 0, 3, 3]);
    assert_eq!(h.send(login_from(owner, &who.email, "correct horse battery")).await.status, StatusCode::OK);
    for _ in 0..5 {
        let r = h.send(login_from(stranger, &who.email, "wrong horse battery")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = h.send(login_from(newcomer, &who.email, "correct horse battery")).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let r = h.send(login_from(owner, &who.email, "correct horse battery")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
