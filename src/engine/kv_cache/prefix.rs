//! Prefix hashing: the identity of a full KV block is a chained hash of its
//! parent block's hash and its own token ids, so equal hashes mean equal
//! whole prefixes.
//!
//! ```text
//! h0 = H(key; ROOT       || t[0..16])
//! h1 = H(key; h0         || t[16..32])
//! h2 = H(key; h1         || t[32..48]) ...
//! ```
//! H is keyed BLAKE3 with a secret drawn from the OS when the engine starts:
//! a client cannot predict hashes, so it cannot craft a prompt that collides
//! with (and poisons) another client's cached blocks.

use rand::RngCore;

/// A 256-bit block identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")
    }
}

/// Keyed chained hasher of full token blocks.
#[derive(Clone)]
pub struct PrefixHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for PrefixHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrefixHasher { key: <secret> }")
    }
}

impl PrefixHasher {
    /// A hasher keyed with a fresh secret from the OS.
    pub fn random() -> PrefixHasher {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        PrefixHasher { key }
    }

    pub fn with_key(key: [u8; 32]) -> PrefixHasher {
        PrefixHasher { key }
    }

    /// Hash of one full block given its parent's hash (None for the first block).
    pub fn hash_block(&self, parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        match parent {
            // A tag byte keeps "no parent" distinct from any parent value.
            None => h.update(&[0u8]),
            Some(p) => h.update(&[1u8]).update(&p.0),
        };
        h.update(&(tokens.len() as u32).to_le_bytes());
        for t in tokens {
            h.update(&t.to_le_bytes());
        }
        BlockHash(*h.finalize().as_bytes())
    }

    /// Extends `hashes` (the chain of `tokens`' full blocks computed so far)
    /// to cover every full block of `tokens`.
    pub fn extend_chain(&self, hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize) {
        let full = tokens.len() / block_size;
        while hashes.len() < full {
            let i = hashes.len();
            let h = self.hash_block(hashes.last(), &tokens[i * block_size..(i + 1) * block_size]);
            hashes.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_whole_prefix_and_key() {
        let h = PrefixHasher::with_key([1; 32]);
        let a: Vec<u32> = (0..8).collect();
        let mut b = a.clone();
        b[0] = 99; // differs only in the first block
        let (mut ha, mut hb) = (vec![], vec![]);
        h.extend_chain(&mut ha, &a, 4);
        h.extend_chain(&mut hb, &b, 4);
        assert_eq!(ha.len(), 2);
        assert_ne!(ha[0], hb[0]);
        // Second blocks hold equal tokens but different parents.
        assert_ne!(ha[1], hb[1]);
        let other = PrefixHasher::with_key([2; 32]);
        assert_ne!(other.hash_block(None, &a[..4]), ha[0]);
        // Deterministic for one key; a partial block is never hashed.
        let mut again = vec![];
        h.extend_chain(&mut again, &a[..7], 4);
        assert_eq!(again, ha[..1].to_vec());
        assert_ne!(PrefixHasher::random().hash_block(None, &a[..4]), PrefixHasher::random().hash_block(None, &a[..4]));
    }
}
