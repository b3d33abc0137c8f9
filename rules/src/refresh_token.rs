//! Opaque refresh tokens: `caas_rt_` + 256 random bits (base64url). Stored
//! only as SHA-256; rotated on every use (see `Store::rotate_refresh_token`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "caas_rt_";
const BODY_LEN: usize = 43;

/// A new token and the hash to store, from `rng` (the OS's in production).
pub fn generate_with(rng: &mut (impl RngCore + CryptoRng)) -> (String, String) {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash(&token);
    (token, hash)
}

/// The hash to look up, or `None` for anything not shaped like our tokens
/// (refused without a database call).
pub fn parse(candidate: &str) -> Option<String> {
    let body = candidate.strip_prefix(PREFIX)?;
    let well_formed =
        body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| hash(candidate))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate() -> (String, String) {
        generate_with(&mut rand::rngs::OsRng)
    }

    #[test]
    fn generated_tokens_parse() {
        let (token, hash) = generate();
        assert_eq!(parse(&token), Some(hash));
        assert_eq!(parse(&token[..token.len() - 1]), None);
        assert_eq!(parse(&token.replace(PREFIX, "caas_xx_")), None);
        assert_eq!(parse(&format!("{PREFIX}{}", "!".repeat(BODY_LEN))), None);
        assert_eq!(parse(""), None);
    }
}
