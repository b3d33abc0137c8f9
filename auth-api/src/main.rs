//! `auth-api`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;

use caas_auth_api::{AppState, Config};
use caas_runtime::startup;
use clap::Parser as _;

const SERVICE: &str = "auth-api";

#[tokio::main]
async fn main() -> ExitCode {
    run().await.unwrap_or_else(|code| code)
}

async fn run() -> Result<ExitCode, ExitCode> {
    let config = Config::parse();
    caas_runtime::logging::init_logging();
    startup::checked(SERVICE, config.check())?;
    config.policy.warn_if_relaxed();
    let backends = config.storage.connect_standalone(SERVICE).await?;
    let validator = backends.validator(&config.jwt, &config.policy);
    let state = AppState::from_config(&config, backends, validator);
    let listener = startup::listen(SERVICE, config.api.auth_api_addr).await?;
    Ok(startup::exit(SERVICE, caas_auth_api::serve(listener, state, caas_runtime::signal::shutdown_signal()).await))
}
