//! What every binary does before and after serving: check the configuration,
//! open the backends, listen, and turn the outcome into an exit code. Each
//! `main.rs` is these calls and its own service's `serve`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Backends, JwtArgs, PolicyArgs, StorageArgs};
use crate::metrics::AuthMetrics;
use crate::validate::{Validator, ValidatorSettings};

/// Bad configuration: every problem printed, exit code 2.
pub fn checked(service: &str, check: Result<(), String>) -> Result<(), ExitCode> {
    check.map_err(|problems| {
        eprintln!("{service}: {problems}");
        ExitCode::from(2)
    })
}

/// Database (migrated), cache and bus; a standalone binary warns when they
/// are in-process only.
pub async fn backends(service: &str, storage: &StorageArgs) -> Result<Backends, ExitCode> {
    storage.connect(service, false).await.map_err(|error| {
        eprintln!("{service}: {error}");
        ExitCode::from(1)
    })
}

pub async fn listen(service: &str, addr: SocketAddr) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|error| {
        eprintln!("{service}: cannot listen on {addr}: {error}");
        ExitCode::from(1)
    })
}

/// The validator of the rules, with the policy flags of the configuration.
pub fn validator(backends: &Backends, jwt: &JwtArgs, policy: &PolicyArgs) -> Arc<Validator> {
    let settings = ValidatorSettings {
        ip_whitelist_enabled: policy.ip_whitelist_enabled,
        origin_validation_enabled: policy.origin_validation_enabled,
        ..ValidatorSettings::default()
    };
    Validator::start(
        backends.store.clone(),
        backends.cache.clone(),
        backends.bus.clone(),
        jwt.keys(),
        settings,
        Arc::new(AuthMetrics::default()),
    )
}

/// The process's exit code once serving has ended.
pub fn exit(service: &str, served: std::io::Result<()>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{service}: {error}");
            ExitCode::from(1)
        }
    }
}
