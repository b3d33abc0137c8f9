//! API keys (the rules are caas-rules'); `generate` draws from the OS.

pub use caas_rules::api_key::*;

/// A new key from the operating system's CSPRNG.
pub fn generate() -> GeneratedKey {
    generate_with(&mut rand::rngs::OsRng)
}
