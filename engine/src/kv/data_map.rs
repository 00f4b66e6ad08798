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
//!
//! One hash per operation picks both the shard (bits 40-49) and the bucket inside it
//! (`hashbrown::HashTable` takes the hash from the caller: the low bits place, the top
//! seven tag), so a write hashes its key once. An overwrite of a value with one of the
//! same length reuses the old value's allocation when nothing else shares it (no free
//! and malloc per write; a frozen copy or a reader holding the value makes it shared,
//! and then a new allocation is made as before).

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;

use super::machine::{DataKey, Value};

/// Shards of a map (a power of two). A frozen copy costs this many reference counts;
/// the first write to a shard after one copies `len / SHARDS` entries.
const SHARDS: usize = 1024;

/// The hasher of the shards and of the shard choice: foldhash, randomly seeded per map
/// (keys chosen by clients cannot aim at one shard or one bucket chain). SipHash, std's
/// default, was about 3 % of a leader's instructions per write (callgrind).
pub(super) type DataHasher = foldhash::fast::RandomState;

type Shard = hashbrown::HashTable<(DataKey, Value)>;

/// Where a key's hash picks its shard: above the bits a shard's table uses to place
/// (fewer than 40 for any table that fits in memory) and below its seven tag bits.
const SHARD_SHIFT: u32 = 40;

/// Keys to values, split into [`SHARDS`] copy-on-write shards.
#[derive(Clone)]
pub(super) struct DataMap {
    /// Hashes keys for the shard choice and for the shard's table alike.
    hasher: DataHasher,
    /// Invariant: `shards.len() == SHARDS`; a key lives only in `shards[shard_of(key)]`.
    shards: Box<[Arc<Shard>]>,
    /// Invariant: the sum of the shards' lengths.
    len: usize,
}

impl Default for DataMap {
    fn default() -> Self {
        let shards = (0..SHARDS).map(|_| Arc::new(Shard::new())).collect();
        DataMap {
            hasher: DataHasher::default(),
            shards,
            len: 0,
        }
    }
}

impl DataMap {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard_of(hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
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
        let hash = self.hash(key);
        self.shards[Self::shard_of(hash)]
            .find(hash, |(stored, _)| stored.as_slice() == key)
            .map(|(_, value)| value)
    }

    /// Brings into the cache what a following operation on `key` touches first: its
    /// bucket (by looking the key up), the lines of its stored value and the value's
    /// reference count ([`DataMap::warm_for_read`] plus that count). Looking up a
    /// batch's keys one after another lets their cache misses overlap; applying one
    /// entry at a time waits for each miss in turn (two of them per key were most of
    /// a replica's apply time at 100,000 random keys: docs/BENCHMARKS.md).
    pub(super) fn warm(&self, key: &[u8]) {
        if let Some(value) = self.warm_for_read(key) {
            // An overwrite first asks whether the value is shared: that reads the
            // reference count, which for a once-shared value lives in its own allocation.
            std::hint::black_box(value.bytes.is_unique());
        }
    }

    /// What a read of `key` touches: looks it up and starts loading the lines of its
    /// value ([`prefetch_lines`]), so that a read soon after finds both in the cache
    /// (see [`DataMap::warm`]). Returns the value it found.
    pub(super) fn warm_for_read(&self, key: &[u8]) -> Option<&Value> {
        let value = self.get(key)?;
        prefetch_lines(&value.bytes);
        Some(value)
    }

    /// Stores `value` under `key`; returns what was stored before.
    pub(super) fn insert(&mut self, key: DataKey, value: Value) -> Option<Value> {
        let hash = self.hash(key.as_slice());
        let hasher = &self.hasher;
        // Copied first if a frozen copy still shares it.
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(hash)]);
        if let Some((_, stored)) = shard.find_mut(hash, |(stored, _)| *stored == key) {
            return Some(std::mem::replace(stored, value));
        }
        shard.insert_unique(hash, (key, value), |(stored, _)| {
            hasher.hash_one(stored.as_slice())
        });
        self.len += 1;
        None
    }

    /// Stores a copy of `bytes` under `key` with `version` and `expire_at_ms`; returns
    /// the expiry of what was stored before (`None`: the key is new). Reuses the old
    /// value's allocation when it has the same length and is not shared.
    pub(super) fn store_copy(
        &mut self,
        key: &[u8],
        bytes: &[u8],
        version: u64,
        expire_at_ms: u64,
    ) -> Option<u64> {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(hash)]);
        if let Some((_, stored)) = shard.find_mut(hash, |(stored, _)| stored.as_slice() == key) {
            let old_expire_at_ms = stored.expire_at_ms;
            overwrite(&mut stored.bytes, bytes);
            stored.version = version;
            stored.expire_at_ms = expire_at_ms;
            return Some(old_expire_at_ms);
        }
        let value = Value {
            bytes: Bytes::copy_from_slice(bytes),
            version,
            expire_at_ms,
        };
        shard.insert_unique(hash, (DataKey::new(key), value), |(stored, _)| {
            hasher.hash_one(stored.as_slice())
        });
        self.len += 1;
        None
    }

    /// Removes `key`; returns what was stored.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let hash = self.hash(key);
        let shard = &mut self.shards[Self::shard_of(hash)];
        let matches = |(stored, _): &(DataKey, Value)| stored.as_slice() == key;
        // A miss must not copy a shared shard: look first only when it is shared.
        if Arc::get_mut(shard).is_none() && shard.find(hash, matches).is_none() {
            return None;
        }
        let (_, old) = Arc::make_mut(shard)
            .find_entry(hash, matches)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        Some(old)
    }

    /// Every key and value, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&DataKey, &Value)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(key, value)| (key, value)))
    }

    /// Every key, in no particular order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &DataKey> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(key, _)| key))
    }
}

/// Replaces `slot`'s bytes with a copy of `new`, in place when the lengths match and no
/// one else holds the old bytes (a frozen copy, a reader's clone).
fn overwrite(slot: &mut Bytes, new: &[u8]) {
    if slot.len() == new.len() {
        // A shared value comes back as `Err` and is dropped here (its other holders keep it).
        if let Ok(mut unique) = std::mem::take(slot).try_into_mut() {
            unique.copy_from_slice(new);
            *slot = unique.freeze();
            return;
        }
    }
    *slot = Bytes::copy_from_slice(new);
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

/// Most cache lines of a value [`prefetch_lines`] asks for: a bound, so a large value
/// costs no more hints than a small one; four lines hold a 100-byte value wherever it
/// starts.
const PREFETCH_MAX_LINES: usize = 4;

/// [`prefetch`] of every cache line `bytes` spans, up to [`PREFETCH_MAX_LINES`].
#[inline]
fn prefetch_lines(bytes: &[u8]) {
    const LINE_BYTES: usize = 64;
    let start = bytes.as_ptr() as usize;
    let first_line = start / LINE_BYTES;
    let last_line = (start + bytes.len().max(1) - 1) / LINE_BYTES;
    let lines = (last_line - first_line + 1).min(PREFETCH_MAX_LINES);
    for line in 0..lines {
        prefetch(bytes.as_ptr().wrapping_add(line * LINE_BYTES));
    }
}

/// A hint to the CPU to load the cache line at `address`; never a fault, on any address.
#[inline]
fn prefetch(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction only hints the cache: it reads nothing the program
    // sees and cannot fault, whatever the address (SSE, which it needs, is part of
    // x86_64's baseline).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
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
    fn an_overwrite_of_the_same_length_reuses_the_bytes_only_while_no_one_shares_them() {
        let mut live = DataMap::default();
        assert_eq!(live.store_copy(b"k", b"aaaa", 1, 0), None);
        let first = live.get(b"k").expect("stored").bytes.as_ptr();
        assert_eq!(live.store_copy(b"k", b"bbbb", 2, 7), Some(0));
        let value = live.get(b"k").expect("stored");
        assert_eq!(
            (&value.bytes[..], value.version, value.expire_at_ms),
            (&b"bbbb"[..], 2, 7)
        );
        assert_eq!(
            value.bytes.as_ptr(),
            first,
            "same length, unshared: in place"
        );

        // A frozen copy shares the shard and the bytes: the live map gets new ones.
        let frozen = live.clone();
        assert_eq!(live.store_copy(b"k", b"cccc", 3, 0), Some(7));
        assert_eq!(&frozen.get(b"k").expect("frozen").bytes[..], b"bbbb");
        assert_eq!(&live.get(b"k").expect("live").bytes[..], b"cccc");
        assert_ne!(live.get(b"k").expect("live").bytes.as_ptr(), first);

        // A reader's clone of the value keeps what it read.
        let held = live.get(b"k").expect("live").bytes.clone();
        live.store_copy(b"k", b"dddd", 4, 0);
        assert_eq!(&held[..], b"cccc");
        assert_eq!(&live.get(b"k").expect("live").bytes[..], b"dddd");

        // Another length: a new allocation of that length.
        live.store_copy(b"k", b"eeeeeeee", 5, 0);
        assert_eq!(&live.get(b"k").expect("live").bytes[..], b"eeeeeeee");
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn keys_spread_over_the_shards_and_every_one_is_found_where_it_was_put() {
        let mut live = DataMap::default();
        for i in 0..20_000u64 {
            live.store_copy(format!("key:{i}").as_bytes(), &i.to_le_bytes(), i, 0);
        }
        let used = live.shards.iter().filter(|shard| !shard.is_empty()).count();
        assert!(
            used > SHARDS * 9 / 10,
            "only {used} of {SHARDS} shards used"
        );
        for i in 0..20_000u64 {
            let value = live.get(format!("key:{i}").as_bytes()).expect("stored");
            assert_eq!(&value.bytes[..], &i.to_le_bytes());
        }
        for i in (0..20_000u64).step_by(2) {
            assert!(live.remove(format!("key:{i}").as_bytes()).is_some());
        }
        assert_eq!(live.len(), 10_000);
        assert_eq!(live.iter().count(), 10_000);
        assert!(live.get(b"key:0").is_none() && live.get(b"key:1").is_some());
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
