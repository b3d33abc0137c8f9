//! The troubleshooting guide's commands, run as written against `caas up`
//! (on PostgreSQL and Redis), so they cannot rot.
//!
//! Every ```` ```sh ```` block of docs/TROUBLESHOOTING_AUTH.md runs in order in
//! bash with `set -euo pipefail`; variables carry from one block to the next
//! and `$OUT` holds the previous block's output. Hidden HTML comments drive
//! what a reader would do by hand:
//!
//! - `<!-- test: stop database -->`, `… start database`, `… stop redis`,
//!   `… start redis`: cut or restore the connections to that dependency;
//! - `<!-- test: check` … `-->`: shell lines that must succeed, to assert what
//!   the guide says the reader will see.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::caas_up;
use crate::harness::{Outage, address_of, pointed_at};

/// The Redis database this test uses (the others use 0).
const DOCS_REDIS_DB: u8 = 9;

const GUIDE: &str = include_str!("../../docs/TROUBLESHOOTING_AUTH.md");

/// Empties Redis database `db`: the throttles and caches earlier runs left
/// (other tests share this Redis, on database 0).
async fn flush_redis(addr: SocketAddr, db: u8) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut redis = TcpStream::connect(addr).await.unwrap();
    let db = db.to_string();
    let command = format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n", db.len());
    redis.write_all(command.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"+OK\r\n+OK\r\n") {
        let mut buf = [0; 64];
        let n = redis.read(&mut buf).await.unwrap();
        assert!(n > 0, "Redis closed: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
}

enum Step {
    /// Shell lines, and the guide line they start on.
    Run {
        line: usize,
        script: String,
        hidden: bool,
    },
    Directive {
        line: usize,
        text: String,
    },
}

/// The guide, as the steps the test takes.
fn steps(guide: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = guide.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((number, line)) = lines.next() {
        if line.trim() == "```sh" {
            let script: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| l.trim() != "```").collect();
            steps.push(Step::Run { line: number, script: script.join("\n"), hidden: false });
        } else if let Some(rest) = line.trim().strip_prefix("<!-- test:") {
            let rest = rest.trim();
            if rest == "check" {
                let script: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| l.trim() != "-->").collect();
                steps.push(Step::Run { line: number, script: script.join("\n"), hidden: true });
            } else {
                let text = rest.strip_suffix("-->").expect("a one-line test directive ends with -->").trim();
                steps.push(Step::Directive { line: number, text: text.to_string() });
            }
        }
    }
    steps
}

/// Runs one step's lines in bash, in `dir`, carrying variables in `state`.
async fn run(dir: &Path, env: &[(&str, String)], line: usize, script: &str, hidden: bool) {
    let state = dir.join("shell-state");
    let out = dir.join("out");
    let wrapped = format!(
        "set -a; [ -f {state:?} ] && source {state:?}; set -euo pipefail\n{script}\n{{ export -p; declare -f; }} > {state:?}\n",
        state = state.display().to_string(),
    );
    let mut command = tokio::process::Command::new("bash");
    command.arg("-c").arg(&wrapped).current_dir(dir).env("OUT", &out).kill_on_drop(true);
    // The guide reads the development secret `caas up` generated, as a reader would.
    command.env_remove("JWT_SECRET");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("guide line {line}: did not finish within 60 s:\n{script}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let log = std::fs::read_to_string(dir.join("caas.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        panic!(
            "docs/TROUBLESHOOTING_AUTH.md line {line}{}: {}\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- caas.log (tail)\n{}",
            if hidden { " (test check)" } else { "" },
            output.status,
            tail.join("\n")
        );
    }
    if !hidden {
        std::fs::write(&out, stdout.as_bytes()).unwrap();
    }
    // What each block printed, for a reader checking the guide's prose:
    // CAAS_DOCS_TRANSCRIPT=/tmp/t.txt cargo test -p caas-e2e --test e2e docs
    if let Ok(path) = std::env::var("CAAS_DOCS_TRANSCRIPT") {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(
            file,
            "--- line {line}{}\n{script}\n--- output\n{stdout}{stderr}",
            if hidden { " (check)" } else { "" }
        )
        .unwrap();
    }
}

fn tools_missing() -> bool {
    ["bash", "curl", "jq", "openssl"].iter().any(|tool| crate::harness::tool_missing(tool, "apt-get install it"))
}

#[test]
fn the_guide_is_well_formed() {
    let steps = steps(GUIDE);
    let blocks = steps.iter().filter(|s| matches!(s, Step::Run { hidden: false, .. })).count();
    assert!(blocks >= 20, "only {blocks} runnable blocks");
    for step in &steps {
        if let Step::Directive { line, text } = step {
            assert!(
                ["stop database", "start database", "stop redis", "start redis"].contains(&text.as_str()),
                "line {line}: unknown directive {text:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_troubleshooting_guide_runs_against_caas_up() {
    if crate::harness::envoy_missing() || tools_missing() {
        return;
    }
    let Some((database_url, _schema)) = caas_core::testing::postgres_url().await else { return };
    let Some(redis_url) = caas_core::testing::redis_url().await else { return };
    let (database_proxy, database) = Outage::proxy(address_of(&database_url)).await;
    let (redis_proxy, redis) = Outage::proxy(address_of(&redis_url)).await;
    // A Redis database of its own, emptied: login and registration throttles
    // are per address, and every test here comes from 127.0.0.1.
    flush_redis(address_of(&redis_url), DOCS_REDIS_DB).await;
    let mut redis_url = reqwest::Url::parse(&pointed_at(&redis_url, redis_proxy)).unwrap();
    redis_url.set_path(&format!("/{DOCS_REDIS_DB}"));
    let (database_url, redis_url) = (pointed_at(&database_url, database_proxy), redis_url.to_string());

    let dir = std::env::temp_dir().join(caas_core::id::new_id("caas-docs"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("caas.log");
    let up = caas_up::start(&dir, |command| {
        command
            .env("DATABASE_URL", &database_url)
            .env("REDIS_URL", &redis_url)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&log).unwrap());
    })
    .await;
    // What a reader would set from the welcome text of `caas up`.
    let env = [
        ("G", up.gateway.clone()),
        ("ADMIN", up.envoy_admin.clone()),
        ("STATS", up.envoy_stats.clone()),
        ("AUTH", up.auth_api.clone()),
        ("AUTHZ_OPS", up.ext_authz_ops.clone()),
        ("CHAT", up.chat.clone()),
        ("LOG", log.display().to_string()),
        ("DATABASE_URL", database_url.clone()),
        ("REDIS_URL", redis_url.clone()),
    ];
    for step in steps(GUIDE) {
        match step {
            Step::Run { line, script, hidden } => run(&dir, &env, line, &script, hidden).await,
            Step::Directive { text, .. } => match text.as_str() {
                "stop database" => database.cut(),
                "start database" => database.restore(),
                "stop redis" => redis.cut(),
                "start redis" => redis.restore(),
                other => panic!("unknown directive {other:?}"),
            },
        }
    }
    caas_up::stop(up.child).await;
    let _ = std::fs::remove_dir_all(dir);
}
