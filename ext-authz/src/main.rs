//! `ext-authz`: reads configuration and serves. Everything else is in the library.

use std::process::ExitCode;
use std::sync::Arc;

use caas_core::context::ContextSigner;
use caas_core::metrics::AuthMetrics;
use caas_core::validate::{Validator, ValidatorSettings};
use caas_ext_authz::metrics::GatewayMetrics;
use caas_ext_authz::{Authorizer, Config};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    caas_core::config::init_logging();
    if let Err(problems) = config.check() {
        eprintln!("ext-authz: {problems}");
        return ExitCode::from(2);
    }
    config.policy.warn_if_relaxed();
    config.ext_authz.warn_if_shadow();
    let backends = match config.storage.connect("ext-authz", false).await {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("ext-authz: {error}");
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
    let authorizer = Arc::new(Authorizer::new(
        validator,
        ContextSigner::new(&config.service.current()),
        config.ext_authz.settings(),
        Arc::new(GatewayMetrics::default()),
    ));
    let (grpc, ops) = match (
        tokio::net::TcpListener::bind(config.ext_authz.ext_authz_addr).await,
        tokio::net::TcpListener::bind(config.ext_authz.ext_authz_ops_addr).await,
    ) {
        (Ok(grpc), Ok(ops)) => (grpc, ops),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("ext-authz: cannot listen: {error}");
            return ExitCode::from(1);
        }
    };
    match caas_ext_authz::serve(grpc, ops, authorizer, backends, caas_core::config::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ext-authz: {error}");
            ExitCode::from(1)
        }
    }
}
