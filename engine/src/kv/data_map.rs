//! The KV data map: a hash map split into a fixed number of shards, each shared
//! copy-on-write, so that a frozen copy for a snapshot costs one reference count per
//! shard and the live map stays a plain hash map to update.
//!
//! Why not a persistent map: every replica applies every write, and a hash array mapped
//! trie (`imbl::HashMap`, used before) costs several node visits per insert, and after
//! every frozen view it copies each node a write touches (a 32-slot node and the
//! reference counts of its children). With lease reads publishing a view per apply batch
//! under a read/write load, that made an insert 5-7x dearer (measured in
//! docs/BENCHMARKS.md). Here a frozen copy makes the next write to each shard copy that
//! one shard, once: one full copy of the map per snapshot, spread over the writes that
//! follow, and nothing at all while no copy is held. Reads of the live map are served
//! under the state machine's lock (`machine`), not from frozen copies.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::machine::{DataKey, Value};

/// Shards of a map (a power of two). A frozen copy costs this many reference counts;
/// the first write to a shard after one copies `len / SHARDS` entries.
const SHARDS: usize = 1024;

/// The hasher of the shards and of the shard choice: foldhash, randomly seeded per map
/// (keys chosen by clients cannot aim at one shard or one bucket chain). SipHash, std's
/// default, was about 3 % of a leader's instructions per write (callgrind).
pub(super) type DataHasher = foldhash::fast::RandomState;

type Shard = HashMap<DataKey, Value, DataHasher>;

/// Keys to values, split into [`SHARDS`] copy-on-write shards.
#[derive(Clone)]
pub(super) struct DataMap {
    /// Picks a key's shard (seeded apart from the shards' own hasher).
    chooser: DataHasher,
    /// Invariant: `shards.len() == SHARDS`; a key lives only in `shards[shard_of(key)]`.
    shards: Box<[Arc<Shard>]>,
    /// Invariant: the sum of the shards' lengths.
    len: usize,
}

impl Default for DataMap {
    fn default() -> Self {
        let hasher = DataHasher::default();
        let shards = (0..SHARDS)
            .map(|_| Arc::new(Shard::with_hasher(hasher.clone())))
            .collect();
        DataMap {
            chooser: DataHasher::default(),
            shards,
            len: 0,
        }
    }
}

impl DataMap {
    fn shard_of(&self, key: &[u8]) -> usize {
        (self.chooser.hash_one(key) as usize) & (SHARDS - 1)
    }

    /// The shard of `key`, copied first if a frozen copy still shares it.
    fn shard_mut(&mut self, key: &[u8]) -> &mut Shard {
        let shard = self.shard_of(key);
        Arc::make_mut(&mut self.shards[shard])
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// True when no key is stored.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value stored under `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<&Value> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Stores `value` under `key`; returns what was stored before.
    pub(super) fn insert(&mut self, key: DataKey, value: Value) -> Option<Value> {
        let old = self.shard_mut(key.as_slice()).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns what was stored.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let shard = &mut self.shards[self.shard_of(key)];
        // A miss must not copy a shared shard: look first only when it is shared.
        if Arc::get_mut(shard).is_none() && !shard.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every key and value, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&DataKey, &Value)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// Every key, in no particular order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &DataKey> {
        self.shards.iter().flat_map(|shard| shard.keys())
    }
}

impl PartialEq for DataMap {
    fn eq(&self, other: &DataMap) -> bool {
        self.len == other.len
            && self
                .iter()
                .all(|(key, value)| other.get(key.as_slice()) == Some(value))
    }
}

impl Eq for DataMap {}

impl std::fmt::Debug for DataMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn value(text: &str, version: u64) -> Value {
        Value {
            bytes: Bytes::copy_from_slice(text.as_bytes()),
            version,
            expire_at_ms: 0,
        }
    }

    #[test]
    fn a_frozen_copy_keeps_its_contents_while_the_live_map_changes() {
        let mut live = DataMap::default();
        for i in 0..5000u64 {
            live.insert(DataKey::new(format!("key:{i}").as_bytes()), value("a", i));
        }
        let frozen = live.clone();
        for i in 0..5000u64 {
            if i % 2 == 0 {
                live.insert(DataKey::new(format!("key:{i}").as_bytes()), value("b", i));
            } else {
                live.remove(format!("key:{i}").as_bytes());
            }
        }
        live.insert(DataKey::new(b"new"), value("c", 9));
        assert_eq!(frozen.len(), 5000);
        assert!(frozen.iter().all(|(_, v)| v.bytes == "a"));
        assert_eq!(live.len(), 2501);
        assert_eq!(live.iter().count(), 2501);
        assert_eq!(live.get(b"key:4").map(|v| &v.bytes[..]), Some(&b"b"[..]));
        assert_eq!(live.get(b"key:5"), None);
        assert_eq!(frozen.get(b"key:5").map(|v| &v.bytes[..]), Some(&b"a"[..]));
        assert_eq!(frozen.get(b"new"), None);
    }

    #[test]
    fn removing_a_missing_key_leaves_a_shared_shard_shared() {
        let mut live = DataMap::default();
        live.insert(DataKey::new(b"k"), value("v", 1));
        let frozen = live.clone();
        assert_eq!(live.remove(b"absent"), None);
        assert!(live
            .shards
            .iter()
            .zip(frozen.shards.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn maps_with_the_same_pairs_are_equal_whatever_their_seeds() {
        let mut a = DataMap::default();
        let mut b = DataMap::default();
        for i in 0..300u64 {
            a.insert(DataKey::new(&i.to_le_bytes()), value("x", i));
        }
        for i in (0..300u64).rev() {
            b.insert(DataKey::new(&i.to_le_bytes()), value("x", i));
        }
        assert_eq!(a, b);
        b.insert(DataKey::new(&7u64.to_le_bytes()), value("y", 7));
        assert_ne!(a, b);
    }
}
