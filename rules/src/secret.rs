//! Secrets that must never be printed: `Debug` and `Display` redact them.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{CryptoRng, RngCore};

/// Minimum length of every signing secret (JWT_SECRET, SERVICE_SECRET).
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret value. Cloning is cheap; printing shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// A fresh random secret (48 bytes of entropy, URL-safe text) from `rng`.
    pub fn generate_with(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; 48];
        rng.fill_bytes(&mut bytes);
        Self::new(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The value itself; call only where it is used for cryptography.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time that does not depend on
    /// where they differ (a shared token checked on every call).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        // Lengths are not secret (the minimum is public); contents are.
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented))
    }

    /// `Err` with a message naming `name` (never the value) when too short.
    pub fn check_strength(&self, name: &str) -> Result<(), String> {
        if self.0.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{name} must be at least {MIN_SECRET_BYTES} bytes (got {}); generate one with `openssl rand -base64 48`",
                self.0.len()
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let secret = Secret::new("hunter2-hunter2-hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let secret = Secret::new("a".repeat(32));
        assert!(secret.matches("a".repeat(32).as_bytes()));
        assert!(!secret.matches("a".repeat(31).as_bytes()));
        assert!(!secret.matches(format!("{}b", "a".repeat(31)).as_bytes()));
        assert!(!secret.matches(b""));
    }

    #[test]
    fn strength_names_the_variable_not_the_value() {
        let err = Secret::new("short-value").check_strength("JWT_SECRET").unwrap_err();
        assert!(err.contains("JWT_SECRET"));
        assert!(!err.contains("short-value"));
        assert!(Secret::generate_with(&mut rand::rngs::OsRng).check_strength("X").is_ok());
    }
}
