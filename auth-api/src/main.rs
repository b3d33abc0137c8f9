//! `auth-api`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;
use std::sync::Arc;

use caas_auth_api::{AppState, Config};
use caas_core::metrics::AuthMetrics;
use caas_core::validate::{Validator, ValidatorSettings};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    caas_core::config::init_logging();
    if let Err(problems) = config.check() {
        eprintln!("auth-api: {problems}");
        return ExitCode::from(2);
    }
    config.policy.warn_if_relaxed();
    let backends = match config.storage.connect("auth-api", false).await {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("auth-api: {error}");
            return ExitCode::from(1);
        }
    };
    let settings = ValidatorSettings {
        ip_whitelist_enabled: config.policy.ip_whitelist_enabled,
        origin_validation_enabled: config.policy.origin_validation_enabled,
        ..ValidatorSettings::default()
    };
    let validator = Validator::start(
        backends.store.clone(),
        backends.cache.clone(),
        backends.bus.clone(),
        config.jwt.keys(),
        settings,
        Arc::new(AuthMetrics::default()),
    );
    let state = AppState::new(backends, validator, config.api.settings(&config.jwt, &config.service));
    let listener = match tokio::net::TcpListener::bind(config.api.auth_api_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("auth-api: cannot listen on {}: {error}", config.api.auth_api_addr);
            return ExitCode::from(1);
        }
    };
    let shutdown = async {
        caas_core::config::shutdown_signal().await;
        tracing::info!("shutting down");
    };
    match caas_auth_api::serve(listener, state, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("auth-api: {error}");
            ExitCode::from(1)
        }
    }
}
