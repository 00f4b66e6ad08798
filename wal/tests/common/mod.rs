#![allow(dead_code)]
//! Helpers shared by the integration tests.

use bytes::Bytes;
use tally_wal::{Entry, WalOptions};

/// Small segments so tests roll, compact and scan quickly.
pub fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_entry_size_bytes: 1024,
        ..WalOptions::default()
    }
}

/// A deterministic payload for entry `index` written in `term`.
pub fn payload_for(index: u64, term: u64, len: usize) -> Bytes {
    let mut bytes = Vec::with_capacity(len);
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    Bytes::from(bytes)
}

pub fn entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        kind: (index % 3) as u8,
        payload: payload_for(index, term, len),
    }
}

pub fn entries(range: std::ops::RangeInclusive<u64>, term: u64, len: usize) -> Vec<Entry> {
    range.map(|i| entry(i, term, len)).collect()
}
