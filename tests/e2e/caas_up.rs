//! `caas up` itself, as a user runs it: embedded default (SQLite, in-process
//! bus), generated secrets, Envoy as a child, clean stop, restart.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

/// `target/<profile>/caas`, built by scripts/test.sh before the tests.
fn caas_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join("caas");
    assert!(binary.is_file(), "{} missing: run `cargo build -p caas` first (scripts/test.sh does)", binary.display());
    binary
}

/// Starts `caas up` in `dir` on free ports; returns it and its gateway URL.
async fn caas_up(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(caas_binary())
        .arg("up")
        .args([
            "--auth-api-addr",
            "127.0.0.1:0",
            "--ext-authz-addr",
            "127.0.0.1:0",
            "--ext-authz-ops-addr",
            "127.0.0.1:0",
            "--chat-addr",
            "127.0.0.1:0",
            "--socket-addr",
            "127.0.0.1:0",
        ])
        .args(["--envoy-listen", "127.0.0.1:0", "--envoy-admin-port", "0", "--envoy-concurrency", "1"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .env_remove("SERVICE_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let gateway = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("gateway") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("caas up exited before it was ready");
    })
    .await
    .expect("caas up did not become ready within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, gateway)
}

async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("caas up did not stop within 20 s")
        .unwrap();
    assert!(status.success(), "caas up exited with {status}");
}

#[tokio::test]
async fn caas_up_serves_through_envoy_stops_cleanly_and_keeps_secrets() {
    if crate::harness::envoy_missing() {
        return;
    }
    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-up"));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, gateway) = caas_up(&dir).await;
    let http = client();
    let r = send(http.get(format!("{gateway}/healthz"))).await;
    assert_eq!(r.status, 200);
    let email = "up@example.com";
    let r = send(
        http.post(format!("{gateway}/v1/client/register"))
            .json(&json!({"name": "Up", "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let login =
        send(http.post(format!("{gateway}/v1/client/login")).json(&json!({"email": email, "password": PASSWORD})))
            .await;
    let token = login.body["access_token"].as_str().unwrap().to_string();
    assert!(dir.join("data/caas.db").exists() && dir.join("data/dev-secrets.json").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("data/dev-secrets.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "dev secrets must be private to their owner");
    }
    stop(child).await;

    // Restarted on the same data: the dashboard token issued before still works.
    let (child, gateway) = caas_up(&dir).await;
    let r = send(http.get(format!("{gateway}/v1/client/profile")).bearer_auth(&token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["email"], email);
    stop(child).await;
    let _ = std::fs::remove_dir_all(dir);
}
