//! `socket`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;

use caas_socket::{Config, Settings, SocketState};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    caas_core::config::init_logging();
    if let Err(problems) = config.check() {
        eprintln!("socket: {problems}");
        return ExitCode::from(2);
    }
    let backends = match config.storage.connect("socket", false).await {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("socket: {error}");
            return ExitCode::from(1);
        }
    };
    let state = SocketState::new(
        backends,
        config.service.current(),
        config.service.service_secret_previous.clone(),
        &config.socket.auth_service_url,
        Settings::from(&config.socket),
    );
    let listener = match tokio::net::TcpListener::bind(config.socket.socket_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("socket: cannot listen on {}: {error}", config.socket.socket_addr);
            return ExitCode::from(1);
        }
    };
    match caas_socket::serve(listener, state, caas_core::config::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("socket: {error}");
            ExitCode::from(1)
        }
    }
}
