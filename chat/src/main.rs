//! `chat`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;

use caas_chat::{AppState, Config};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    caas_core::config::init_logging();
    if let Err(problems) = config.check() {
        eprintln!("chat: {problems}");
        return ExitCode::from(2);
    }
    let backends = match config.storage.connect("chat", false).await {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("chat: {error}");
            return ExitCode::from(1);
        }
    };
    let state = AppState::new(backends, config.service.verifier());
    let listener = match tokio::net::TcpListener::bind(config.chat.chat_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("chat: cannot listen on {}: {error}", config.chat.chat_addr);
            return ExitCode::from(1);
        }
    };
    match caas_chat::serve(listener, state, caas_core::config::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {error}");
            ExitCode::from(1)
        }
    }
}
