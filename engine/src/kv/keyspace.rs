//! The string keyspace: values with versions and expiry times, the expiry index, and
//! every command's semantics (Redis's), judged at a given log time.
//!
//! Kept apart from the state machine's bookkeeping (sessions, applied index, log time)
//! so that the apply path and the read views run the same code.

use bytes::Bytes;

use super::command::{
    Command, ExpireCondition, Expiry, GetExTtl, KvError, KvLimits, KvResponse, SetCondition,
    SetOptions, SetTtl, WatchedKey, MAX_PURGE_KEYS,
};
use super::glob::glob_match;
use super::machine::{parse_redis_integer, DataKey, DataMap, ExpiryIndex, Value};

/// Data, expiry index and removal mark: everything `KEYS`, `WATCH` and expiry need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Keyspace {
    pub(super) data: DataMap,
    /// Invariant: holds `(v.expire_at_ms, k)` for exactly the `(k, v)` of `data` with
    /// `v.expire_at_ms != 0`. Changed only by `store`, `remove`, `set_expiry`, `clear`.
    pub(super) expiries: ExpiryIndex,
    /// Index of the last entry that removed a key (0: none since the start). A WATCH of a
    /// missing key counts as changed when this passed the watch index (conservative: it
    /// may abort for another key's removal, never misses a change).
    pub(super) last_removal_index: u64,
}

fn is_live(value: &Value, now_ms: u64) -> bool {
    value.expire_at_ms == 0 || now_ms < value.expire_at_ms
}

/// The absolute expiry of `expiry` at log time `now_ms`; `Err` when it overflows.
/// Times at or before `now_ms` (or before 1970) mean "already expired": `Ok(None)`.
fn absolute_ms(expiry: Expiry, now_ms: u64) -> Result<Option<u64>, ()> {
    let now = i64::try_from(now_ms).map_err(|_| ())?;
    let at = match expiry {
        Expiry::AfterMs(ms) => now.checked_add(ms).ok_or(())?,
        Expiry::AtMs(ms) => ms,
    };
    Ok(u64::try_from(at).ok().filter(|&at| at > now_ms))
}

/// FNV-1a 64: the fixed hash SCAN orders keys by (the same on every node and version).
fn scan_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn format_float(value: f64) -> String {
    // Shortest text that reads back as the same f64, never in exponent form (Redis
    // prints INCRBYFLOAT results without exponent either).
    let text = format!("{value}");
    if text == "-0" {
        "0".into()
    } else {
        text
    }
}

fn parse_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Keyspace {
    /// The value of `key` if stored and not expired at `now_ms`.
    pub(super) fn live(&self, key: &[u8], now_ms: u64) -> Option<&Value> {
        self.data.get(key).filter(|v| is_live(v, now_ms))
    }

    fn live_bytes(&self, key: &[u8], now_ms: u64) -> Option<Bytes> {
        self.live(key, now_ms).map(|v| v.bytes.clone())
    }

    /// Stores `bytes` under `key`, written by entry `index`, expiring at `expire_at_ms`
    /// (0: never), keeping the expiry index exact.
    pub(super) fn store(&mut self, key: &[u8], bytes: Bytes, index: u64, expire_at_ms: u64) {
        let value = Value {
            bytes,
            version: index,
            expire_at_ms,
        };
        let old = self.data.insert(DataKey::new(key), value);
        self.note_expiry_change(key, old.map_or(0, |old| old.expire_at_ms), expire_at_ms);
    }

    /// Brings `key`'s bucket and value into the cache ([`DataMap::warm`]).
    pub(super) fn warm(&self, key: &[u8]) {
        self.data.warm(key);
    }

    /// [`DataMap::warm_for_read`] on the data map.
    pub(super) fn warm_for_read(&self, key: &[u8]) {
        let _ = self.data.warm_for_read(key);
    }

    /// Stores a copy of `bytes` under `key` (as [`Keyspace::store`]), reusing the old
    /// value's allocation when it can.
    pub(super) fn store_copy(&mut self, key: &[u8], bytes: &[u8], index: u64, expire_at_ms: u64) {
        let old_expire_at_ms = self.data.store_copy(key, bytes, index, expire_at_ms);
        self.note_expiry_change(key, old_expire_at_ms.unwrap_or(0), expire_at_ms);
    }

    fn note_expiry_change(&mut self, key: &[u8], old_expire_at_ms: u64, expire_at_ms: u64) {
        if old_expire_at_ms != 0 {
            self.expiries.remove(&(old_expire_at_ms, DataKey::new(key)));
        }
        if expire_at_ms != 0 {
            self.expiries.insert((expire_at_ms, DataKey::new(key)));
        }
    }

    /// Removes `key` (live or expired) for entry `index`; returns what was stored.
    pub(super) fn remove(&mut self, key: &[u8], index: u64) -> Option<Value> {
        let old = self.data.remove(key)?;
        if old.expire_at_ms != 0 {
            self.expiries.remove(&(old.expire_at_ms, DataKey::new(key)));
        }
        self.last_removal_index = index;
        Some(old)
    }

    /// Sets the expiry of a stored `key` (0: none); the key counts as written.
    fn set_expiry(&mut self, key: &[u8], expire_at_ms: u64, index: u64) {
        if let Some(value) = self.data.get(key).cloned() {
            self.store(key, value.bytes, index, expire_at_ms);
        }
    }

    fn clear(&mut self, index: u64) {
        if !self.data.is_empty() {
            self.last_removal_index = index;
        }
        self.data = DataMap::default();
        self.expiries = ExpiryIndex::default();
    }

    /// Removes up to `max` keys whose expiry is at or before `now_ms`, earliest first.
    pub(super) fn remove_expired(&mut self, now_ms: u64, index: u64, max: usize) {
        for _ in 0..max {
            let Some((at, key)) = self.expiries.get_min().cloned() else {
                return;
            };
            if at > now_ms {
                return;
            }
            self.remove(key.as_slice(), index);
        }
    }

    /// Answers a read-only command at `now_ms`; `applied_index` is what WATCH reports.
    pub(super) fn read(
        &self,
        command: &Command<'_>,
        now_ms: u64,
        applied_index: u64,
    ) -> KvResponse {
        match command {
            Command::Get { key } => KvResponse::Bulk(self.live_bytes(key, now_ms)),
            Command::MGet { keys } => {
                KvResponse::Array(keys.iter().map(|k| self.live_bytes(k, now_ms)).collect())
            }
            Command::Exists { keys } => KvResponse::Integer(
                keys.iter()
                    .filter(|k| self.live(k, now_ms).is_some())
                    .count() as i64,
            ),
            Command::Strlen { key } => {
                KvResponse::Integer(self.live(key, now_ms).map_or(0, |v| v.bytes.len()) as i64)
            }
            Command::GetRange { key, start, end } => {
                let value = self.live_bytes(key, now_ms).unwrap_or_default();
                KvResponse::Bulk(Some(get_range(&value, *start, *end)))
            }
            Command::Ttl { key, millis } => KvResponse::Integer(match self.live(key, now_ms) {
                None => -2,
                Some(v) if v.expire_at_ms == 0 => -1,
                Some(v) => {
                    let left_ms = (v.expire_at_ms - now_ms) as i64;
                    if *millis {
                        left_ms
                    } else {
                        (left_ms + 500) / 1000
                    }
                }
            }),
            Command::Type { key } => KvResponse::Status(match self.live(key, now_ms) {
                Some(_) => "string",
                None => "none",
            }),
            Command::Keys { pattern } => {
                let mut keys: Vec<&[u8]> = self
                    .data
                    .iter()
                    .filter(|(k, v)| is_live(v, now_ms) && glob_match(pattern, k.as_slice()))
                    .map(|(k, _)| k.as_slice())
                    .collect();
                keys.sort_unstable();
                KvResponse::Array(
                    keys.into_iter()
                        .map(|k| Some(Bytes::copy_from_slice(k)))
                        .collect(),
                )
            }
            Command::Scan {
                cursor,
                pattern,
                count,
            } => self.scan(*cursor, *pattern, *count, now_ms),
            Command::DbSize => {
                let expired = self
                    .expiries
                    .iter()
                    .take_while(|(at, _)| *at <= now_ms)
                    .count();
                KvResponse::Integer(self.data.len().saturating_sub(expired) as i64)
            }
            Command::ExpiryBacklog => {
                let expired = self
                    .expiries
                    .iter()
                    .take_while(|(at, _)| *at <= now_ms)
                    .take(MAX_PURGE_KEYS as usize)
                    .count();
                KvResponse::Nested(vec![
                    KvResponse::Integer(self.data.len() as i64),
                    KvResponse::Integer(expired as i64),
                ])
            }
            Command::Watch { keys } => KvResponse::Watched {
                index: applied_index,
                exists: keys
                    .iter()
                    .map(|k| self.live(k, now_ms).is_some())
                    .collect(),
            },
            other => KvResponse::Error(KvError::NotReadOnly(other.name())),
        }
    }

    /// One SCAN step: the keys whose [`scan_hash`] is at least `cursor`, the `count`
    /// smallest hashes (all keys of the last hash included), filtered by `pattern`. A key
    /// present for the whole iteration is returned exactly once. The next cursor is
    /// one past the last hash taken, or 0 when none is left. Costs O(keys) per call.
    fn scan(&self, cursor: u64, pattern: Option<&[u8]>, count: u32, now_ms: u64) -> KvResponse {
        let mut candidates: Vec<(u64, &[u8])> = self
            .data
            .keys()
            .map(|k| (scan_hash(k.as_slice()), k.as_slice()))
            .filter(|(hash, _)| *hash >= cursor)
            .collect();
        let count = (count as usize).max(1);
        let (taken, next_cursor) = if candidates.len() <= count {
            (candidates, 0)
        } else {
            candidates.select_nth_unstable(count - 1);
            let boundary = candidates[count - 1].0;
            let taken: Vec<(u64, &[u8])> = candidates
                .iter()
                .copied()
                .filter(|(hash, _)| *hash <= boundary)
                .collect();
            let more = candidates.iter().any(|(hash, _)| *hash > boundary);
            let next = if more { boundary.wrapping_add(1) } else { 0 };
            (taken, next)
        };
        let mut keys: Vec<(u64, &[u8])> = taken
            .into_iter()
            .filter(|(_, key)| self.live(key, now_ms).is_some())
            .filter(|(_, key)| pattern.is_none_or(|p| glob_match(p, key)))
            .collect();
        keys.sort_unstable();
        KvResponse::Nested(vec![
            KvResponse::Bulk(Some(Bytes::from(next_cursor.to_string()))),
            KvResponse::Array(
                keys.into_iter()
                    .map(|(_, k)| Some(Bytes::copy_from_slice(k)))
                    .collect(),
            ),
        ])
    }

    /// Executes any command as entry `index` at log time `now_ms`.
    pub(super) fn execute(
        &mut self,
        command: &Command<'_>,
        index: u64,
        now_ms: u64,
        limits: &KvLimits,
    ) -> KvResponse {
        match command {
            Command::Set { key, value } => {
                self.store_copy(key, value, index, 0);
                KvResponse::Ok
            }
            Command::MSet { pairs } => {
                for (key, value) in pairs {
                    self.store_copy(key, value, index, 0);
                }
                KvResponse::Ok
            }
            Command::Del { keys } => {
                let removed = keys
                    .iter()
                    .filter(|k| self.remove(k, index).is_some_and(|v| is_live(&v, now_ms)))
                    .count();
                KvResponse::Integer(removed as i64)
            }
            Command::Incr { key } => self.incr_by(key, 1, index, now_ms),
            Command::IncrBy { key, delta } => self.incr_by(key, *delta, index, now_ms),
            Command::IncrByFloat { key, delta } => self.incr_by_float(key, delta, index, now_ms),
            Command::Cas { key, expected, new } => {
                let swap = self
                    .live(key, now_ms)
                    .is_some_and(|v| v.bytes.as_ref() == *expected);
                if swap {
                    self.store_copy(key, new, index, 0);
                }
                KvResponse::Integer(i64::from(swap))
            }
            Command::SetWith {
                key,
                value,
                options,
            } => self.set_with(key, value, options, index, now_ms),
            Command::SetNx { key, value } => {
                if self.live(key, now_ms).is_some() {
                    return KvResponse::Integer(0);
                }
                self.store_copy(key, value, index, 0);
                KvResponse::Integer(1)
            }
            Command::MSetNx { pairs } => {
                if pairs.iter().any(|(k, _)| self.live(k, now_ms).is_some()) {
                    return KvResponse::Integer(0);
                }
                for (key, value) in pairs {
                    self.store_copy(key, value, index, 0);
                }
                KvResponse::Integer(1)
            }
            Command::Append { key, value } => {
                let old = self.live(key, now_ms).cloned();
                let old_len = old.as_ref().map_or(0, |v| v.bytes.len());
                if old_len + value.len() > limits.max_argument_bytes {
                    return KvResponse::Error(KvError::StringTooLong);
                }
                let mut joined = Vec::with_capacity(old_len + value.len());
                joined.extend_from_slice(old.as_ref().map_or(&[][..], |v| &v.bytes));
                joined.extend_from_slice(value);
                let expire = old.map_or(0, |v| v.expire_at_ms);
                self.store(key, Bytes::from(joined), index, expire);
                KvResponse::Integer((old_len + value.len()) as i64)
            }
            Command::SetRange { key, offset, value } => {
                self.set_range(key, *offset, value, index, now_ms, limits)
            }
            Command::GetSet { key, value } => {
                let old = self.live_bytes(key, now_ms);
                self.store_copy(key, value, index, 0);
                KvResponse::Bulk(old)
            }
            Command::GetDel { key } => {
                let old = self.live_bytes(key, now_ms);
                if old.is_some() {
                    self.remove(key, index);
                }
                KvResponse::Bulk(old)
            }
            Command::GetEx { key, ttl } => self.get_ex(key, *ttl, index, now_ms),
            Command::Expire { key, at, condition } => {
                self.expire(key, *at, *condition, index, now_ms)
            }
            Command::Persist { key } => match self.live(key, now_ms) {
                Some(v) if v.expire_at_ms != 0 => {
                    self.set_expiry(key, 0, index);
                    KvResponse::Integer(1)
                }
                _ => KvResponse::Integer(0),
            },
            Command::FlushAll => {
                self.clear(index);
                KvResponse::Ok
            }
            Command::PurgeExpired { max } => {
                let before = self.data.len();
                let max = (*max).min(MAX_PURGE_KEYS) as usize;
                self.remove_expired(now_ms, index, max);
                KvResponse::Integer((before - self.data.len()) as i64)
            }
            Command::Rename {
                from,
                to,
                only_if_missing,
            } => self.rename(from, to, *only_if_missing, index, now_ms),
            Command::Multi {
                watch_index,
                watched,
                commands,
            } => {
                if self.any_watched_changed(*watch_index, watched, now_ms) {
                    return KvResponse::NullArray;
                }
                KvResponse::Nested(
                    commands
                        .iter()
                        .map(|c| self.execute(c, index, now_ms, limits))
                        .collect(),
                )
            }
            read => self.read(read, now_ms, index.saturating_sub(1)),
        }
    }

    fn any_watched_changed(
        &self,
        watch_index: u64,
        watched: &[WatchedKey<'_>],
        now_ms: u64,
    ) -> bool {
        watched
            .iter()
            .any(|w| match (w.existed, self.live(w.key, now_ms)) {
                (existed, Some(value)) => !existed || value.version > watch_index,
                (true, None) => true,
                (false, None) => self.last_removal_index > watch_index,
            })
    }

    fn incr_by(&mut self, key: &[u8], delta: i64, index: u64, now_ms: u64) -> KvResponse {
        let (current, expire) = match self.live(key, now_ms) {
            None => (0, 0),
            Some(value) => match parse_redis_integer(&value.bytes) {
                Some(n) => (n, value.expire_at_ms),
                None => return KvResponse::Error(KvError::NotAnInteger),
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return KvResponse::Error(KvError::IncrOverflow);
        };
        self.store(
            key,
            Bytes::from(next.to_string().into_bytes()),
            index,
            expire,
        );
        KvResponse::Integer(next)
    }

    fn incr_by_float(&mut self, key: &[u8], delta: &[u8], index: u64, now_ms: u64) -> KvResponse {
        let Some(delta) = parse_float(delta) else {
            return KvResponse::Error(KvError::NotAFloat);
        };
        let (current, expire) = match self.live(key, now_ms) {
            None => (0.0, 0),
            Some(value) => match parse_float(&value.bytes) {
                Some(n) => (n, value.expire_at_ms),
                None => return KvResponse::Error(KvError::NotAFloat),
            },
        };
        let next = current + delta;
        if !next.is_finite() {
            return KvResponse::Error(KvError::FloatOverflow);
        }
        let text = Bytes::from(format_float(next));
        self.store(key, text.clone(), index, expire);
        KvResponse::Bulk(Some(text))
    }

    fn set_with(
        &mut self,
        key: &[u8],
        value: &[u8],
        options: &SetOptions,
        index: u64,
        now_ms: u64,
    ) -> KvResponse {
        let old = self.live(key, now_ms).cloned();
        let refused = match options.condition {
            SetCondition::Always => false,
            SetCondition::IfMissing => old.is_some(),
            SetCondition::IfExists => old.is_none(),
        };
        let reply = if options.get {
            KvResponse::Bulk(old.as_ref().map(|v| v.bytes.clone()))
        } else if refused {
            KvResponse::Bulk(None)
        } else {
            KvResponse::Ok
        };
        if refused {
            return reply;
        }
        let expire = match options.ttl {
            SetTtl::Clear => 0,
            SetTtl::Keep => old.map_or(0, |v| v.expire_at_ms),
            SetTtl::Expire(expiry) => match absolute_ms(expiry, now_ms) {
                Err(()) => return KvResponse::Error(KvError::InvalidExpireTime("set")),
                Ok(None) => {
                    // Set and gone at once: the key ends up missing.
                    self.remove(key, index);
                    return reply;
                }
                Ok(Some(at)) => at,
            },
        };
        self.store_copy(key, value, index, expire);
        reply
    }

    fn set_range(
        &mut self,
        key: &[u8],
        offset: u64,
        value: &[u8],
        index: u64,
        now_ms: u64,
        limits: &KvLimits,
    ) -> KvResponse {
        let old = self.live(key, now_ms).cloned();
        let old_len = old.as_ref().map_or(0, |v| v.bytes.len());
        if value.is_empty() {
            return KvResponse::Integer(old_len as i64);
        }
        let end = match usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(value.len()))
        {
            Some(end) if end <= limits.max_argument_bytes => end,
            _ => return KvResponse::Error(KvError::StringTooLong),
        };
        let mut bytes = old.as_ref().map_or_else(Vec::new, |v| v.bytes.to_vec());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        let start = end - value.len();
        bytes[start..end].copy_from_slice(value);
        let new_len = bytes.len();
        self.store(
            key,
            Bytes::from(bytes),
            index,
            old.map_or(0, |v| v.expire_at_ms),
        );
        KvResponse::Integer(new_len as i64)
    }

    fn get_ex(&mut self, key: &[u8], ttl: GetExTtl, index: u64, now_ms: u64) -> KvResponse {
        let Some(old) = self.live(key, now_ms).cloned() else {
            return KvResponse::Bulk(None);
        };
        match ttl {
            GetExTtl::Unchanged => {}
            GetExTtl::Persist => {
                if old.expire_at_ms != 0 {
                    self.set_expiry(key, 0, index);
                }
            }
            GetExTtl::Expire(expiry) => match absolute_ms(expiry, now_ms) {
                Err(()) => return KvResponse::Error(KvError::InvalidExpireTime("getex")),
                Ok(None) => {
                    self.remove(key, index);
                }
                Ok(Some(at)) => self.set_expiry(key, at, index),
            },
        }
        KvResponse::Bulk(Some(old.bytes))
    }

    fn expire(
        &mut self,
        key: &[u8],
        at: Expiry,
        condition: ExpireCondition,
        index: u64,
        now_ms: u64,
    ) -> KvResponse {
        let absolute = match absolute_ms(at, now_ms) {
            Err(()) => return KvResponse::Error(KvError::InvalidExpireTime("expire")),
            Ok(absolute) => absolute,
        };
        let Some(current) = self.live(key, now_ms).map(|v| v.expire_at_ms) else {
            return KvResponse::Integer(0);
        };
        // A past time compares as the earliest possible; no expiry as infinitely late.
        let new = absolute.unwrap_or(0);
        let allowed = match condition {
            ExpireCondition::Always => true,
            ExpireCondition::IfNone => current == 0,
            ExpireCondition::IfSome => current != 0,
            ExpireCondition::IfGreater => current != 0 && new > current,
            ExpireCondition::IfLess => current == 0 || new < current,
            ExpireCondition::IfSomeAndLess => current != 0 && new < current,
        };
        if !allowed {
            return KvResponse::Integer(0);
        }
        match absolute {
            None => {
                self.remove(key, index);
            }
            Some(at) => self.set_expiry(key, at, index),
        }
        KvResponse::Integer(1)
    }

    fn rename(
        &mut self,
        from: &[u8],
        to: &[u8],
        only_if_missing: bool,
        index: u64,
        now_ms: u64,
    ) -> KvResponse {
        let Some(source) = self.live(from, now_ms).cloned() else {
            return KvResponse::Error(KvError::NoSuchKey);
        };
        let done = if only_if_missing {
            KvResponse::Integer(1)
        } else {
            KvResponse::Ok
        };
        if from == to {
            return if only_if_missing {
                KvResponse::Integer(0)
            } else {
                done
            };
        }
        if only_if_missing && self.live(to, now_ms).is_some() {
            return KvResponse::Integer(0);
        }
        self.remove(from, index);
        self.store(to, source.bytes, index, source.expire_at_ms);
        done
    }
}

/// Redis's GETRANGE: inclusive bounds, negative ones count from the end, clamped.
fn get_range(value: &[u8], start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let start = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    }
    .max(0);
    let end = if end < 0 {
        len.saturating_add(end)
    } else {
        end
    }
    .max(0)
    .min(len - 1);
    if start > end {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&value[start as usize..=end as usize])
}
