//! auth-api's and chat's OpenAPI documents, checked by tools nobody here
//! wrote, against the services as they run on PostgreSQL and Redis:
//! `openapi-spec-validator` validates both documents, and a bounded
//! `schemathesis` run sends each operation schema-driven requests (the
//! gateway context signed by tests/e2e/fuzz/hooks.py) and fails on any 5xx,
//! any status the document does not declare, and any body or content type
//! outside it. scripts/test.sh installs both tools (pip).
//!
//! A longer run for the record (the same, more examples per operation):
//! `CAAS_FUZZ_EXAMPLES=500 cargo test -p caas-e2e --test e2e openapi -- --nocapture`.

use std::path::Path;
use std::time::Duration;

// The services run on this test's runtime: a blocking wait would stall them.
use tokio::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::harness::{SERVICE_SECRET, client, cluster, onboard, sdk_session, set_whitelists};

async fn run(mut command: Command, what: &str) -> String {
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within 10 minutes"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

async fn validate(document: &Path) {
    let mut command = Command::new("openapi-spec-validator");
    command.arg(document);
    run(command, &format!("openapi-spec-validator {}", document.display())).await;
}

#[tokio::test]
async fn openapi_documents_are_valid_and_the_services_answer_only_what_they_declare() {
    if crate::harness::tool_missing("openapi-spec-validator", "pip install openapi-spec-validator")
        || crate::harness::tool_missing("schemathesis", "pip install schemathesis")
    {
        return;
    }
    // Login throttles stay out of the way: a fuzzer's wrong passwords would
    // otherwise lock its address out within 20 attempts (429 is declared).
    let limits = ["--login-max-failures-per-ip", "1000000", "--login-max-failures-per-email", "1000000"];
    let Some(cluster) = cluster(1, &limits).await else { return };
    let node = cluster.node();
    let tenant = onboard(node, "fuzz").await;
    set_whitelists(node, &tenant, &["127.0.0.1/32"], &[]).await;
    let session = sdk_session(node, &tenant, "fuzz-user").await;
    let dashboard: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(tenant.dashboard.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-openapi"));
    std::fs::create_dir_all(&dir).unwrap();
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/fuzz");
    let examples = std::env::var("CAAS_FUZZ_EXAMPLES").unwrap_or_else(|_| "10".into());
    // Failed logins throttle per address in the shared Redis: the fuzz's
    // calls come from an address of their own, so no other test is throttled.
    let client_ip = format!("203.0.113.{}", 1 + std::process::id() % 250);
    for (service, addr) in [("auth-api", node.stack.auth_api), ("chat", node.stack.chat)] {
        let document = client().get(format!("http://{addr}/openapi.json")).send().await.unwrap().text().await.unwrap();
        let path = dir.join(format!("{service}.json"));
        std::fs::write(&path, document).unwrap();
        validate(&path).await;
        let mut fuzz = Command::new("schemathesis");
        fuzz.arg("run")
            .arg(&path)
            .args(["--url", &format!("http://{addr}"), "--max-examples", &examples, "--no-color"])
            .args(["--phases", "coverage,fuzzing"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--generation-database", "none", "--request-timeout", "10"])
            .current_dir(&dir)
            .env("PYTHONPATH", &hooks)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("CAAS_SERVICE_SECRET", SERVICE_SECRET)
            .env("CAAS_CLIENT_IP", &client_ip)
            .env("CAAS_TENANT", &tenant.id)
            .env("CAAS_KEY_ID", &tenant.key_id)
            .env("CAAS_DASHBOARD_USER", dashboard["sub"].as_str().unwrap())
            .env("CAAS_DASHBOARD_SESSION", dashboard["sid"].as_str().unwrap())
            .env("CAAS_END_USER", session["user_id"].as_str().unwrap())
            .env("CAAS_END_SESSION", session["session_id"].as_str().unwrap());
        let report = run(fuzz, &format!("schemathesis on {service}")).await;
        let summary = report.lines().filter(|l| l.contains("generated") || l.contains("Tested:")).collect::<Vec<_>>();
        eprintln!("schemathesis on {service}: {}", summary.join("; "));
    }
    let _ = std::fs::remove_dir_all(&dir);
    cluster.shutdown().await;
}
