//! Secrets (the type is caas-rules'); `generate` draws from the OS.

pub use caas_rules::secret::*;

/// A fresh random secret from the operating system's CSPRNG.
pub fn generate() -> Secret {
    Secret::generate_with(&mut rand::rngs::OsRng)
}
