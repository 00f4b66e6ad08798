//! Maps keyed by ids this node hands out itself (connection ids, reply tags).
//!
//! Why not the standard `HashMap`: its SipHash costs ~100 instructions per lookup, and
//! a pipelined write looks up a connection and a reply tag several times (about 9 % of
//! the leader's instructions per write in the callgrind profile of docs/BENCHMARKS.md,
//! "Write path (issue 15)"). SipHash defends against keys an attacker chooses; these keys
//! are counters the I/O thread assigns, so a multiplicative hash is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by a node-assigned `u64` (never by client-chosen bytes).
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one `u64`: the multiplication spreads a counter's low bits over
/// the high bits hashbrown uses for its control bytes, the fold brings high bits down
/// to the bucket index.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^ (mixed >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys (none today); still a deterministic hash.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_and_tags_spread_over_buckets_and_control_bytes() {
        let build = BuildHasherDefault::<IdHasher>::default();
        // Reply tags: connection id << 24 | sequence << 1 | write bit.
        let keys: Vec<u64> = (1..=64u64)
            .flat_map(|connection| (0..64u64).map(move |seq| connection << 24 | seq << 1 | 1))
            .collect();
        let low: std::collections::HashSet<u64> =
            keys.iter().map(|k| build.hash_one(k) & 0xFFF).collect();
        let high: std::collections::HashSet<u64> =
            keys.iter().map(|k| build.hash_one(k) >> 57).collect();
        // 4096 keys over 4096 low-bit buckets: a good hash fills well over half.
        assert!(
            low.len() > 2000,
            "only {} distinct bucket indexes",
            low.len()
        );
        assert_eq!(high.len(), 128, "every 7-bit control value is used");
    }

    #[test]
    fn an_id_map_behaves_like_a_map() {
        let mut map: IdMap<&str> = IdMap::default();
        for id in 0..1000u64 {
            map.insert(id << 24 | 1, "x");
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.remove(&(7 << 24 | 1)), Some("x"));
        assert!(!map.contains_key(&(7 << 24 | 1)));
    }
}
