//! `ext-authz`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;
use std::sync::Arc;

use caas_ext_authz::{Authorizer, Config};
use caas_runtime::startup;
use clap::Parser as _;

const SERVICE: &str = "ext-authz";

#[tokio::main]
async fn main() -> ExitCode {
    run().await.unwrap_or_else(|code| code)
}

async fn run() -> Result<ExitCode, ExitCode> {
    let config = Config::parse();
    caas_runtime::logging::init_logging();
    startup::checked(SERVICE, config.check())?;
    config.policy.warn_if_relaxed();
    config.ext_authz.warn_if_shadow();
    let backends = config.storage.connect_standalone(SERVICE).await?;
    let validator = backends.validator(&config.jwt, &config.policy);
    let authorizer = Arc::new(Authorizer::from_config(&config, validator));
    let grpc = startup::listen(SERVICE, config.ext_authz.ext_authz_addr).await?;
    let ops = startup::listen(SERVICE, config.ext_authz.ext_authz_ops_addr).await?;
    let served = caas_ext_authz::serve(grpc, ops, authorizer, backends, caas_runtime::signal::shutdown_signal()).await;
    Ok(startup::exit(SERVICE, served))
}
