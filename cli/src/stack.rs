//! The whole stack in one process: auth-api and ext-authz (sharing one
//! validator and its caches) on the storage of the configuration, plus Envoy
//! as a child. `caas up` and the end-to-end tests both start it from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use caas_auth_api::AuthApiArgs;
use caas_chat::ChatArgs;
use caas_core::config::{Backends, JwtArgs, PolicyArgs, ServiceSecretArgs, StorageArgs, check_distinct_secrets};
use caas_core::secret::Secret;
use caas_core::validate::Validator;
use caas_ext_authz::{Authorizer, ExtAuthzArgs};
use caas_runtime::config::Problems;
use caas_socket::SocketArgs;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::envoy::{self, Envoy};

/// Configuration of `caas up`: every service's settings plus the gateway's.
#[derive(clap::Args, Debug, Clone)]
pub struct UpConfig {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub service: ServiceSecretArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub auth_api: AuthApiArgs,
    #[command(flatten)]
    pub ext_authz: ExtAuthzArgs,
    /// Where generated development secrets (and the SQLite file) live.
    #[arg(long, env = "CAAS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The gateway's public address.
    #[arg(long, env = "ENVOY_LISTEN", default_value = "127.0.0.1:8080")]
    pub envoy_listen: SocketAddr,
    /// Envoy's admin port (always bound to 127.0.0.1).
    #[arg(long, env = "ENVOY_ADMIN_PORT", default_value_t = 9901)]
    pub envoy_admin_port: u16,
    /// Envoy's metrics for Prometheus (`GET /stats/prometheus` only), on
    /// the gateway's address.
    #[arg(long, env = "ENVOY_STATS_PORT", default_value_t = 9902)]
    pub envoy_stats_port: u16,
    /// Envoy worker threads.
    #[arg(long, env = "ENVOY_CONCURRENCY", default_value_t = 2)]
    pub envoy_concurrency: usize,
    /// Run the services without Envoy.
    #[arg(long)]
    pub no_envoy: bool,
    /// The in-proxy fast path (edge-wasm/): Envoy decides what it can itself,
    /// on every route (end users' requests and sockets, API keys',
    /// dashboards', refreshes, sign-ins), as ext-authz would (quotas
    /// leased from ext-authz's own buckets), and calls ext_authz for the rest
    /// (docs/DESIGN.md, "The in-proxy fast path"). `false`: ext_authz decides
    /// every request.
    #[arg(long, env = "FAST_PATH", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub fast_path: bool,
    /// The fast path's module (caas_edge_wasm.wasm). Unset: beside the `caas`
    /// binary, else in the build folder; not found, the gateway runs without
    /// the fast path and says so.
    #[arg(long, env = "EDGE_WASM")]
    pub edge_wasm: Option<PathBuf>,
    /// Where Envoy reaches ext-authz's feed for the fast path (e.g. through
    /// a proxy). Unset: ext-authz's ops address.
    #[arg(long, env = "EDGE_FEED_ADDR")]
    pub edge_feed_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub chat: ChatArgs,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Route the chat paths to this upstream instead of the built-in chat
    /// service (e.g. a team's own service behind the CAAS gateway).
    #[arg(long, env = "CHAT_UPSTREAM")]
    pub chat_upstream: Option<SocketAddr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DevSecrets {
    jwt_secret: String,
    service_secret: String,
}

impl UpConfig {
    /// Fills unset secrets with development values kept in
    /// `<data_dir>/dev-secrets.json` (mode 0600), so restarts keep tokens valid.
    pub fn fill_dev_secrets(&mut self) -> anyhow::Result<bool> {
        if self.jwt.jwt_secret.is_some() && self.service.service_secret.is_some() {
            return Ok(false);
        }
        let path = self.data_dir.join("dev-secrets.json");
        let secrets = match std::fs::read_to_string(&path) {
            Ok(text) => {
                refuse_if_shared(&path)?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid; delete it to regenerate", path.display()))?
            }
            Err(_) => {
                let secrets = DevSecrets {
                    jwt_secret: caas_core::secret::generate().expose().to_string(),
                    service_secret: caas_core::secret::generate().expose().to_string(),
                };
                create_private_dir(&self.data_dir)?;
                write_private(&path, &serde_json::to_string_pretty(&secrets)?)?;
                secrets
            }
        };
        self.jwt.jwt_secret.get_or_insert_with(|| Secret::new(secrets.jwt_secret));
        self.service.service_secret.get_or_insert_with(|| Secret::new(secrets.service_secret));
        Ok(true)
    }

    pub fn check(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        self.storage.check(&mut problems);
        self.jwt.check(&mut problems);
        self.service.check(&mut problems);
        check_distinct_secrets(&mut problems, &self.jwt, &self.service);
        self.auth_api.check(&mut problems);
        self.ext_authz.check(&mut problems);
        self.socket.check(&mut problems);
        problems.finish()
    }

    // Each service's own configuration, from the groups `caas up` flattens
    // once: the services are then built exactly as their binaries build them.

    fn auth_api_config(&self) -> caas_auth_api::Config {
        caas_auth_api::Config {
            api: self.auth_api.clone(),
            storage: self.storage.clone(),
            jwt: self.jwt.clone(),
            service: self.service.clone(),
            policy: self.policy.clone(),
        }
    }

    fn ext_authz_config(&self) -> caas_ext_authz::Config {
        caas_ext_authz::Config {
            ext_authz: self.ext_authz.clone(),
            storage: self.storage.clone(),
            jwt: self.jwt.clone(),
            service: self.service.clone(),
            policy: self.policy.clone(),
        }
    }

    fn chat_config(&self) -> caas_chat::Config {
        caas_chat::Config { chat: self.chat.clone(), storage: self.storage.clone(), service: self.service.clone() }
    }

    /// In one process the socket service asks this auth-api, wherever it bound.
    fn socket_config(&self, auth_api: SocketAddr) -> caas_socket::Config {
        let socket = SocketArgs { auth_service_url: format!("http://{auth_api}"), ..self.socket.clone() };
        caas_socket::Config { socket, storage: self.storage.clone(), service: self.service.clone() }
    }
}

/// The data folder holds secrets, the database and the access log: owner only.
fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// A secrets file others can read (or write) is refused, not used: whoever
/// read it can mint tokens and context for every tenant.
fn refuse_if_shared(path: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable or writable by other users (mode {:o}); refusing to use its secrets. \
                 Make it private (`chmod 600 {}`) and rotate the secrets if others may have read them \
                 (or delete it to generate new ones)",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Where Envoy's JSON access log goes.
pub enum AccessLog {
    /// Stdout (`caas up`); Envoy's own log goes to stderr.
    Stdout,
    /// A file; Envoy's own log goes to `envoy.log` in the data directory.
    File(PathBuf),
}

/// A running stack.
pub struct Stack {
    pub backends: Backends,
    pub validator: Arc<Validator>,
    pub auth_api: SocketAddr,
    pub ext_authz: SocketAddr,
    pub ext_authz_ops: SocketAddr,
    pub chat: SocketAddr,
    pub socket: SocketAddr,
    pub envoy: Option<Envoy>,
    /// Whether Envoy runs the in-proxy fast path.
    pub fast_path: bool,
    auth_task: JoinHandle<std::io::Result<()>>,
    authz_task: JoinHandle<std::io::Result<()>>,
    chat_task: JoinHandle<std::io::Result<()>>,
    socket_task: JoinHandle<std::io::Result<()>>,
    stop: watch::Sender<bool>,
}

impl Stack {
    /// Starts everything and waits until it is ready. `config` must have
    /// passed `check`.
    pub async fn start(config: &UpConfig, access_log: AccessLog) -> anyhow::Result<Self> {
        let fast_path = match (config.fast_path && !config.no_envoy, config.edge_wasm.as_deref()) {
            (false, _) => None,
            (true, Some(given)) => Some(envoy::find_edge_wasm(Some(given))?),
            (true, None) => envoy::find_edge_wasm(None)
                .inspect_err(|e| tracing::warn!("{e:#}; running without the fast path (ext_authz decides everything)"))
                .ok(),
        };
        let mut config = config.clone();
        // The feed serves only callers with the caller token: one process,
        // so a fresh one serves ext-authz and Envoy alike.
        if fast_path.is_some() && config.ext_authz.caller_token().is_none() {
            config.ext_authz.caller_token = Some(caas_core::secret::generate());
        }
        let config = &config;
        let backends = config.storage.connect("caas", true).await.context("storage")?;
        // One validator, so auth-api's changes evict ext-authz's cache directly.
        let validator = backends.validator(&config.jwt, &config.policy);
        let auth_listener = bind(config.auth_api.auth_api_addr, "auth-api").await?;
        let grpc_listener = bind(config.ext_authz.ext_authz_addr, "ext-authz").await?;
        let ops_listener = bind(config.ext_authz.ext_authz_ops_addr, "ext-authz ops").await?;
        let chat_listener = bind(config.chat.chat_addr, "chat").await?;
        let socket_listener = bind(config.socket.socket_addr, "socket").await?;
        let (auth_api, ext_authz, ext_authz_ops) =
            (auth_listener.local_addr()?, grpc_listener.local_addr()?, ops_listener.local_addr()?);
        let (chat, socket) = (chat_listener.local_addr()?, socket_listener.local_addr()?);

        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let state =
            caas_auth_api::AppState::from_config(&config.auth_api_config(), backends.clone(), validator.clone());
        let auth_task = tokio::spawn(caas_auth_api::serve(auth_listener, state, until_stopped(stopped.clone())));
        let authorizer = Arc::new(Authorizer::from_config(&config.ext_authz_config(), validator.clone()));
        let authz_task = tokio::spawn(caas_ext_authz::serve(
            grpc_listener,
            ops_listener,
            authorizer,
            backends.clone(),
            until_stopped(stopped.clone()),
        ));
        let chat_state = caas_chat::AppState::from_config(&config.chat_config(), backends.clone());
        let chat_task = tokio::spawn(caas_chat::serve(chat_listener, chat_state, until_stopped(stopped.clone())));
        let socket_state = caas_socket::SocketState::from_config(&config.socket_config(auth_api), backends.clone());
        let socket_task = tokio::spawn(caas_socket::serve(socket_listener, socket_state, until_stopped(stopped)));

        for (name, addr) in [("auth-api", auth_api), ("ext-authz", ext_authz_ops), ("chat", chat), ("socket", socket)] {
            wait_healthy(name, addr).await?;
        }

        let fast_path_on = fast_path.is_some();
        let envoy = if config.no_envoy {
            None
        } else {
            let upstreams = Upstreams { auth_api, ext_authz, chat: config.chat_upstream.unwrap_or(chat), socket };
            let fast_path = fast_path.map(|wasm| envoy::FastPath {
                wasm,
                ext_authz_ops: host(config.edge_feed_addr.unwrap_or(ext_authz_ops)),
            });
            Some(start_envoy(config, &upstreams, access_log, fast_path).await?)
        };
        Ok(Self {
            backends,
            validator,
            auth_api,
            ext_authz,
            ext_authz_ops,
            chat,
            socket,
            envoy,
            fast_path: fast_path_on,
            auth_task,
            authz_task,
            chat_task,
            socket_task,
            stop,
        })
    }

    /// The gateway's address, if Envoy runs.
    pub fn gateway(&self) -> Option<SocketAddr> {
        self.envoy.as_ref().map(|e| e.listener)
    }

    /// Kills ext-authz at once (its connections drop), leaving Envoy up: to
    /// show the gateway fails closed.
    pub fn kill_ext_authz(&self) {
        self.authz_task.abort();
    }

    /// Completes when a component stops on its own (a crash, or Envoy exiting).
    pub async fn failed(&mut self) -> String {
        let envoy = async {
            match self.envoy.as_mut() {
                Some(envoy) => format!("Envoy exited: {:?}", envoy.exited().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut self.auth_task => format!("auth-api stopped: {result:?}"),
            result = &mut self.authz_task => format!("ext-authz stopped: {result:?}"),
            result = &mut self.chat_task => format!("chat stopped: {result:?}"),
            result = &mut self.socket_task => format!("socket stopped: {result:?}"),
            message = envoy => message,
        }
    }

    /// Stops Envoy first (no new requests), then drains the services.
    pub async fn shutdown(self) {
        if let Some(envoy) = self.envoy {
            envoy.stop().await;
        }
        let _ = self.stop.send(true);
        for task in [self.auth_task, self.authz_task, self.chat_task, self.socket_task] {
            let _ = tokio::time::timeout(Duration::from_secs(12), task).await;
        }
        self.backends.store.close().await;
    }
}

/// Where Envoy sends each route, as the services bound.
struct Upstreams {
    auth_api: SocketAddr,
    ext_authz: SocketAddr,
    chat: SocketAddr,
    socket: SocketAddr,
}

fn host(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_string(), addr.port())
}

async fn start_envoy(
    config: &UpConfig,
    upstreams: &Upstreams,
    access_log: AccessLog,
    fast_path: Option<envoy::FastPath>,
) -> anyhow::Result<Envoy> {
    let binary = envoy::find_binary()?;
    let addresses = envoy::Addresses {
        listen_address: config.envoy_listen.ip().to_string(),
        listen_port: config.envoy_listen.port(),
        admin_port: admin_port(config.envoy_admin_port)?,
        stats_port: config.envoy_stats_port,
        auth_api: host(upstreams.auth_api),
        ext_authz: host(upstreams.ext_authz),
        chat: host(upstreams.chat),
        socket: host(upstreams.socket),
        trusted_proxy_hops: config.ext_authz.trusted_proxy_hops,
        access_log_path: match &access_log {
            AccessLog::Stdout => "/dev/stdout".to_string(),
            AccessLog::File(path) => path.display().to_string(),
        },
        caller_token: config.ext_authz.caller_token().cloned(),
        fast_path,
    };
    let rendered = envoy::render(envoy::TEMPLATE, &addresses)?;
    // Embedded with its access log in a file (the e2e tests run dozens of
    // Envoys at once), Envoy's own log goes to a file beside it: a failing
    // test's message is not lost among every Envoy's lines.
    let log = match access_log {
        AccessLog::Stdout => None,
        AccessLog::File(_) => Some(config.data_dir.join("envoy.log")),
    };
    Envoy::start(&binary, &rendered, &config.data_dir, config.envoy_concurrency, log.as_deref()).await
}

/// The admin's port: `port`, or for 0 one free now. The stats listener's
/// route to the admin must name it before Envoy starts.
fn admin_port(port: u16) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let free = std::net::TcpListener::bind(("127.0.0.1", 0)).context("no free port for Envoy's admin")?;
    Ok(free.local_addr()?.port())
}

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{name} cannot listen on {addr} (is another instance running?)"))
}

async fn wait_healthy(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if envoy::http_status(addr, "/health").await == Some(200) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{name} on {addr} did not become healthy within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
