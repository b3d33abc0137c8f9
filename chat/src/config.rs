//! The chat service's configuration (clap + environment).

use std::net::SocketAddr;

use caas_core::config::{ServiceSecretArgs, StorageArgs};
use caas_runtime::config::Problems;

#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// Address the chat service listens on.
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:3008")]
    pub chat_addr: SocketAddr,
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "chat", version, about = "CAAS chat service (conversations and messages)")]
pub struct Config {
    #[command(flatten)]
    pub chat: ChatArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub service: ServiceSecretArgs,
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        self.storage.check(&mut problems);
        self.service.check(&mut problems);
        problems.finish()
    }
}
