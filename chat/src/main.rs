//! `chat`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;

use caas_chat::{AppState, Config};
use caas_runtime::startup;
use clap::Parser as _;

const SERVICE: &str = "chat";

#[tokio::main]
async fn main() -> ExitCode {
    run().await.unwrap_or_else(|code| code)
}

async fn run() -> Result<ExitCode, ExitCode> {
    let config = Config::parse();
    caas_runtime::logging::init_logging();
    startup::checked(SERVICE, config.check())?;
    let backends = config.storage.connect_standalone(SERVICE).await?;
    let state = AppState::from_config(&config, backends);
    let listener = startup::listen(SERVICE, config.chat.chat_addr).await?;
    Ok(startup::exit(SERVICE, caas_chat::serve(listener, state, caas_runtime::signal::shutdown_signal()).await))
}
