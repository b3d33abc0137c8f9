//! API keys: `caas_` + 32 base62 characters (~190 random bits) + a 6-character
//! CRC32 checksum, GitHub-style. A key is shown once and stored only as its
//! SHA-256; a malformed key is rejected here, before any database call.

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};

pub const KEY_PREFIX: &str = "caas_";
const BODY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
/// Characters of a key kept for display (`caas_` + 8): enough to tell keys apart.
const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key just generated: the only moment the full key exists in memory.
pub struct GeneratedKey {
    pub key: String,
    pub hash: String,
    pub display_prefix: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("display_prefix", &self.display_prefix).finish_non_exhaustive()
    }
}

/// Why a presented key was refused without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Surfaces as 401 `invalid_api_key`.
    #[error("API key is malformed")]
    Malformed,
    /// Surfaces as 401 `invalid_api_key` (a typo or truncation).
    #[error("API key checksum does not match")]
    BadChecksum,
}

/// A new key from `rng` (the caller's CSPRNG: the OS's in production).
pub fn generate_with(rng: &mut (impl RngCore + CryptoRng)) -> GeneratedKey {
    let body: String = (0..BODY_LEN).map(|_| BASE62[uniform_below_62(rng)] as char).collect();
    let key = format!("{KEY_PREFIX}{body}{}", checksum(&body));
    GeneratedKey { hash: hash_key(&key), display_prefix: key[..DISPLAY_PREFIX_LEN].to_string(), key }
}

/// Checks shape and checksum; on success returns the hex SHA-256 to look up.
pub fn parse(candidate: &str) -> Result<String, KeyFormatError> {
    if candidate.len() != KEY_LEN || !candidate.starts_with(KEY_PREFIX) {
        return Err(KeyFormatError::Malformed);
    }
    let rest = &candidate[KEY_PREFIX.len()..];
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::Malformed);
    }
    let (body, sum) = rest.split_at(BODY_LEN);
    // The checksum is public information, so a plain comparison is fine.
    if checksum(body) != sum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(hash_key(candidate))
}

/// Hex SHA-256 of the full key: the only form a key is stored in.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// An index into `BASE62` without modulo bias: bytes past the largest
/// multiple of 62 are drawn again.
fn uniform_below_62(rng: &mut impl RngCore) -> usize {
    const LIMIT: u8 = 62 * 4;
    loop {
        let mut byte = [0u8; 1];
        rng.fill_bytes(&mut byte);
        if byte[0] < LIMIT {
            return usize::from(byte[0] % 62);
        }
    }
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate() -> GeneratedKey {
        generate_with(&mut rand::rngs::OsRng)
    }

    #[test]
    fn generated_keys_parse_to_their_hash() {
        let key = generate();
        assert_eq!(key.key.len(), KEY_LEN);
        assert!(key.key.starts_with(&key.display_prefix));
        assert_eq!(parse(&key.key), Ok(key.hash.clone()));
        assert_ne!(generate().key, key.key);
    }

    #[test]
    fn malformed_keys_are_refused_without_lookup() {
        let key = generate().key;
        assert_eq!(parse(""), Err(KeyFormatError::Malformed));
        assert_eq!(parse(&key[..KEY_LEN - 1]), Err(KeyFormatError::Malformed));
        assert_eq!(parse(&format!("{key}x")), Err(KeyFormatError::Malformed));
        assert_eq!(parse(&key.replacen("caas_", "caaz_", 1)), Err(KeyFormatError::Malformed));
        let mut bad_char = key.clone().into_bytes();
        bad_char[10] = b'-';
        assert_eq!(parse(&String::from_utf8_lossy(&bad_char)), Err(KeyFormatError::Malformed));
        // One changed character in the body breaks the checksum.
        let mut typo = key.into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse(&String::from_utf8_lossy(&typo)), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = generate();
        assert!(!format!("{key:?}").contains(&key.key));
    }
}
