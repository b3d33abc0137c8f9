//! The socket service's configuration (clap + environment).

use std::net::SocketAddr;
use std::time::Duration;

use caas_core::config::{Backends, ServiceSecretArgs, StorageArgs};
use caas_runtime::config::{Problems, parse_duration};

#[derive(clap::Args, Debug, Clone)]
pub struct SocketArgs {
    /// Address the socket service listens on.
    #[arg(long, env = "SOCKET_ADDR", default_value = "127.0.0.1:3009")]
    pub socket_addr: SocketAddr,
    /// auth-api, for validating tokens of upgrades that did not come through
    /// the gateway and of `refresh` frames.
    #[arg(long, env = "AUTH_SERVICE_URL", default_value = "http://127.0.0.1:3007")]
    pub auth_service_url: String,
    /// How often the server pings each connection.
    #[arg(long, env = "SOCKET_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed.
    #[arg(long, env = "SOCKET_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Frames queued per connection before it is closed as too slow.
    #[arg(long, env = "SOCKET_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,
    /// Inbound frames per second per connection (bursts of twice that).
    #[arg(long, env = "SOCKET_FRAMES_PER_SECOND", default_value_t = 20)]
    pub frames_per_second: u32,
    /// Conversations one connection may subscribe to.
    #[arg(long, env = "SOCKET_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,
    /// Open connections one end user may hold on this node; more are closed
    /// at once with 4010.
    #[arg(long, env = "SOCKET_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,
    /// Open connections one tenant may hold on this node; more are closed at
    /// once with 4011.
    #[arg(long, env = "SOCKET_MAX_CONNECTIONS_PER_TENANT", default_value_t = 10_000)]
    pub max_connections_per_tenant: usize,
}

impl SocketArgs {
    pub fn check(&self, problems: &mut Problems) {
        if self.auth_service_url.starts_with("https://") {
            problems.add(
                "AUTH_SERVICE_URL is https://, which this build does not speak: use http:// inside the cluster \
                 (a mesh's mTLS encrypts it)",
            );
        } else if !self.auth_service_url.starts_with("http://") {
            problems.add("AUTH_SERVICE_URL must be an http:// URL");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            problems.add("SOCKET_IDLE_TIMEOUT must be longer than SOCKET_PING_INTERVAL (and both positive)");
        }
        if self.send_queue == 0 || self.frames_per_second == 0 || self.max_subscriptions == 0 {
            problems.add("SOCKET_SEND_QUEUE, SOCKET_FRAMES_PER_SECOND and SOCKET_MAX_SUBSCRIPTIONS must be positive");
        }
        if self.max_connections_per_user == 0 || self.max_connections_per_tenant < self.max_connections_per_user {
            problems
                .add("SOCKET_MAX_CONNECTIONS_PER_USER must be positive and at most SOCKET_MAX_CONNECTIONS_PER_TENANT");
        }
    }
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "socket", version, about = "CAAS socket service (real-time chat over WebSocket)")]
pub struct Config {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub service: ServiceSecretArgs,
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        self.socket.check(&mut problems);
        self.storage.check(&mut problems);
        self.service.check(&mut problems);
        problems.finish()
    }
}

impl crate::SocketState {
    /// The one wiring of the socket service: its binary and `caas up` build
    /// it here from its configuration (`caas up` points `auth_service_url`
    /// at the auth-api it started).
    pub fn from_config(config: &Config, backends: Backends) -> Self {
        Self::new(
            backends,
            config.service.current(),
            config.service.service_secret_previous.clone(),
            &config.socket.auth_service_url,
            crate::Settings::from(&config.socket),
        )
    }
}
