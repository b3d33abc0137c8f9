//! Refresh tokens (the rules are caas-rules'); `generate` draws from the OS.

pub use caas_rules::refresh_token::*;

/// A new token and the hash to store, from the operating system's CSPRNG.
pub fn generate() -> (String, String) {
    generate_with(&mut rand::rngs::OsRng)
}
