//! Dashboard passwords (argon2id) and email addresses.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

pub const MIN_PASSWORD_CHARS: usize = 12;
/// Bounded so that hashing cannot be made arbitrarily expensive.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A hash to verify against when the account does not exist, so that a
/// login for an unknown email costs the same time as a wrong password.
/// Made on first use, in the memory of the thread that needs it.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Argon2's working memory (~19 MiB at the default cost), kept by a hashing
/// thread from one check to the next. Allocated afresh per check, the
/// blocks went back to the allocator, which kept them per arena and in
/// pieces: a login burst grew the process by far more than the few hashes
/// running at once. Reused, the memory is exactly one buffer per thread.
#[derive(Default)]
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    /// The blocks `params` needs. A stored hash asking for more than the
    /// default cost (none of ours does) gets its own buffer for this check,
    /// so one odd hash cannot leave the thread holding it.
    fn blocks(&mut self, params: &Params) -> MemoryBlocks<'_> {
        let count = params.block_count();
        if count > Params::default().block_count() {
            return MemoryBlocks::Once(vec![Block::default(); count]);
        }
        if self.0.len() < count {
            self.0.resize(count, Block::default());
        }
        MemoryBlocks::Kept(&mut self.0[..count])
    }
}

enum MemoryBlocks<'a> {
    Kept(&'a mut [Block]),
    Once(Vec<Block>),
}

impl AsMut<[Block]> for MemoryBlocks<'_> {
    fn as_mut(&mut self) -> &mut [Block] {
        match self {
            Self::Kept(blocks) => blocks,
            Self::Once(blocks) => blocks,
        }
    }
}

/// Checks length rules; the message is safe to show.
pub fn check_password_rules(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("password must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// CPU-heavy (tens of milliseconds): call from a hashing thread, which
/// lends its `memory`. An argon2id PHC string at the default cost.
pub fn hash_password(password: &str, memory: &mut HashMemory) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let argon2 = Argon2::default();
    let params = argon2.params().clone();
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let hash = Output::init_with(output_len, |out| {
        Ok(argon2.hash_password_into_with_memory(password.as_bytes(), salt_bytes, out, memory.blocks(&params))?)
    })?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    };
    Ok(phc.to_string())
}

/// CPU-heavy: call from a hashing thread, which lends its `memory`. `None`
/// verifies against a dummy hash and returns false, taking as long as a
/// real check. The comparison is constant-time (`Output`'s `PartialEq`).
pub fn verify_password(password: &str, stored: Option<&str>, memory: &mut HashMemory) -> bool {
    let hash = match stored {
        Some(hash) => hash,
        None => DUMMY_HASH.get_or_init(|| hash_password("dummy-password-for-timing", memory).unwrap_or_default()),
    };
    let ok = recompute(password, hash, memory).is_some_and(|(computed, expected)| computed == expected);
    ok && stored.is_some()
}

/// The hash of `password` under `hash`'s algorithm, version, cost and salt,
/// beside the hash it must equal; `None` when `hash` cannot be used.
fn recompute(password: &str, hash: &str, memory: &mut HashMemory) -> Option<(Output, Output)> {
    let parsed = PasswordHash::new(hash).ok()?;
    let expected = parsed.hash?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed.version.map_or(Ok(Version::default()), Version::try_from).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = Output::init_with(expected.len(), |out| {
        Ok(argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, memory.blocks(&params))?)
    })
    .ok()?;
    Some((computed, expected))
}

/// Lowercased, trimmed address if it looks deliverable: one `@`, a dotted
/// domain, no spaces or control characters, at most 254 bytes.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_ascii_lowercase();
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return None;
    }
    let labels_ok = domain
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    (labels_ok && domain.contains('.')).then_some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let memory = &mut HashMemory::default();
        let hash = hash_password("correct horse battery", memory).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery", Some(&hash), memory));
        assert!(!verify_password("wrong horse battery", Some(&hash), memory));
        assert!(!verify_password("dummy-password-for-timing", None, memory));
        assert!(!verify_password("correct horse battery", Some("$argon2id$v=19$m=19456,t=2,p=1$bad"), memory));
    }

    /// Hashes made with reused memory are the argon2 crate's own, both ways:
    /// stored passwords keep verifying, and other tools can check ours.
    #[test]
    fn reused_memory_gives_the_crates_hashes() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let memory = &mut HashMemory::default();
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse battery", Some(&theirs), memory));
        assert!(!verify_password("correct horse batter", Some(&theirs), memory));
        let ours = hash_password("correct horse battery", memory).unwrap();
        let ours = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse battery", &ours).is_ok());
        // A cheaper stored cost uses a prefix of the kept memory, a dearer one a buffer of its own.
        for m in [8 * 1024, 24 * 1024] {
            let params = Params::new(m, 1, 1, None).unwrap();
            let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng))
                .unwrap()
                .to_string();
            assert!(verify_password("correct horse battery", Some(&other), memory), "m={m}");
        }
        assert_eq!(memory.0.len(), Params::default().block_count());
    }

    #[test]
    fn password_rules() {
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("twelve chars").is_ok());
        assert!(check_password_rules(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(normalize_email(" Ada@Example.COM ").as_deref(), Some("ada@example.com"));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@exa_mple.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }
}
