//! Writes a large WAL for measuring `tally-wal verify` throughput (not part of the CLI).
//!
//! `cargo run --release -p tally-tools --example gen_wal -- DIR SIZE_MIB [PAYLOAD_BYTES]`
//! appends KV-sized entries through `WalCore` (FsStorage, default 64 MiB segments),
//! 1 MiB batches, one fdatasync per batch, until about SIZE_MIB of log is written.

use bytes::Bytes;
use tally_wal::{Entry, FsStorage, WalCore, WalOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: gen_wal DIR SIZE_MIB [PAYLOAD_BYTES]".into());
    }
    let dir = &args[1];
    let size_bytes: u64 = args[2].parse::<u64>()? << 20;
    let payload_bytes: usize = args.get(3).map_or(Ok(256), |a| a.parse())?;
    let mut wal = WalCore::open(FsStorage::new(dir)?, WalOptions::default())?;
    let entries_per_batch = ((1 << 20) / (payload_bytes + 22)).max(1) as u64;
    let mut written = 0u64;
    let mut index = wal.last_index() + 1;
    let mut batch = Vec::with_capacity(entries_per_batch as usize);
    while written < size_bytes {
        batch.clear();
        for _ in 0..entries_per_batch {
            let payload: Vec<u8> = (0..payload_bytes)
                .map(|i| (index as usize + i) as u8)
                .collect();
            batch.push(Entry {
                index,
                term: 1 + index / 1_000_000,
                kind: 0,
                payload: Bytes::from(payload),
            });
            index += 1;
            written += (payload_bytes + 22) as u64;
        }
        wal.append(&batch)?;
        wal.write()?;
        wal.sync()?;
    }
    println!(
        "wrote entries 1..={} ({} MiB of records) in {} segments",
        wal.last_index(),
        written >> 20,
        wal.segment_count()
    );
    Ok(())
}
