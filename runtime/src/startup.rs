//! What every binary does before and after serving, as exit codes: bad
//! configuration is 2, anything else that stops a start or a serve is 1.
//! Each `main.rs` is these calls around its own service's constructor and
//! `serve`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

/// Bad configuration: every problem printed, exit code 2.
pub fn checked(service: &str, check: Result<(), String>) -> Result<(), ExitCode> {
    check.map_err(|problems| {
        eprintln!("{service}: {problems}");
        ExitCode::from(2)
    })
}

/// A start that cannot go on (the backends do not open, say): the error
/// printed, exit code 1.
pub fn failed(service: &str, error: impl Display) -> ExitCode {
    eprintln!("{service}: {error}");
    ExitCode::from(1)
}

pub async fn listen(service: &str, addr: SocketAddr) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|error| failed(service, format!("cannot listen on {addr}: {error}")))
}

/// The process's exit code once serving has ended.
pub fn exit(service: &str, served: std::io::Result<()>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(service, error),
    }
}
