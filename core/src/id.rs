//! Identifiers: a short type prefix and a ULID-style body (48-bit millisecond
//! time + 80 random bits, Crockford base32), so ids sort by creation time.
//! Within one millisecond a process increments the previous random part
//! instead of drawing a new one (monotonic ULID), so messages created in the
//! same millisecond still sort in creation order.

use std::sync::Mutex;

use rand::RngCore as _;

/// The last (millisecond, random part) this process handed out.
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

const RANDOM_MASK: u128 = (1 << 80) - 1;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new id such as `cl_01JD3...` (prefix, underscore, 26 characters).
pub fn new_id(prefix: &str) -> String {
    let millis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let (millis, random) = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        // Same millisecond (or a clock that stepped back): keep the order.
        let next = if millis <= last.0 && last.1 < RANDOM_MASK {
            (last.0, last.1 + 1)
        } else {
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes[6..]);
            (millis.max(last.0 + u64::from(millis <= last.0)), u128::from_be_bytes(bytes) & RANDOM_MASK)
        };
        *last = next;
        next
    };
    let value: u128 = (u128::from(millis & 0xFFFF_FFFF_FFFF) << 80) | random;
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        let index = ((value >> (5 * i)) & 0x1F) as usize;
        out.push(CROCKFORD[index] as char);
    }
    out
}

/// Seconds since the Unix epoch: the one clock every expiry rule is given.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_within_one_millisecond_keep_their_order() {
        let ids: Vec<String> = (0..2000).map(|_| new_id("msg")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn ids_are_unique_prefixed_and_time_ordered() {
        let a = new_id("ses");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("ses");
        assert!(a.starts_with("ses_") && a.len() == 30);
        assert_ne!(a, b);
        assert!(a < b);
    }
}
