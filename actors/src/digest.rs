//! Fixed-size digests for what clients choose (idempotency keys, conversation keys, tenants) and
//! for requests, so tables keyed by them cost 32 bytes per entry whatever a client sends.

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `parts`, each length-prefixed so that no two different lists hash alike.
pub fn digest_of(parts: &[&[u8]]) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_framed() {
        assert_ne!(digest_of(&[b"ab", b"c"]), digest_of(&[b"a", b"bc"]));
        assert_eq!(digest_of(&[b"ab", b"c"]), digest_of(&[b"ab", b"c"]));
    }
}
