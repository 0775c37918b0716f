//! How long a node takes to recover its HyDFS store at start: the index read back and every
//! part's checksum verified, for a store of 1 GiB in 1 MiB parts and one of 100,000 small
//! files. Measurements, not checks: run them by command,
//! `cargo test --release -p rainstorm-runtime --test recovery_time -- --ignored --nocapture`.

use rainstorm_core::hydfs::{FileName, LocalStore, Stamp, WriteKind, WriteMeta};
use rainstorm_core::id::MemberId;
use rainstorm_runtime::storage::FileStorage;
use std::path::PathBuf;
use std::time::Instant;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rainstorm-recovery-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn stamp(i: u64) -> Stamp {
    Stamp { ts: i + 1, client: MemberId::new("127.0.0.1:7000".parse().unwrap(), 1), seq: i + 1 }
}

/// Writes `files` files of `parts` parts of `part_bytes` each, syncs, then reopens the store and
/// prints how long the recovery took.
fn measure(tag: &str, files: u64, parts: u64, part_bytes: usize) {
    let d = dir(tag);
    let mut store = LocalStore::new(Box::new(FileStorage::open(&d).unwrap())).unwrap();
    let written = Instant::now();
    let mut bytes = vec![0u8; part_bytes];
    for f in 0..files {
        let name = FileName::new(&format!("data/f{f}")).unwrap();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = b'a' + ((i as u64 + f) % 26) as u8;
        }
        let data: Vec<u8> = (0..parts).flat_map(|_| bytes.iter().copied()).collect();
        let w = WriteMeta::describe(stamp(f), WriteKind::Create, &data, part_bytes);
        store.file_mut(&name).create = Some(w.clone());
        for (i, chunk) in data.chunks(part_bytes).enumerate() {
            assert!(store.put_part(&name, w.stamp, i as u32, w.parts[i], chunk).unwrap());
        }
        if f % 1000 == 999 {
            while store.sync().is_err() {}
        }
    }
    while store.sync().is_err() {}
    let write_took = written.elapsed();
    drop(store);
    // Cold caches are not within reach without root; this is the warm-cache recovery time.
    let started = Instant::now();
    let (store, recovery) = LocalStore::open(Box::new(FileStorage::open(&d).unwrap())).unwrap();
    let took = started.elapsed();
    assert_eq!(recovery.files, files);
    assert_eq!(recovery.lost_parts, 0);
    println!(
        "RECOVERY {tag}: {} files, {} parts, {} MiB: written in {:.1} s, recovered (index read, every checksum verified) in {:.2} s",
        recovery.files,
        recovery.parts,
        recovery.bytes >> 20,
        write_took.as_secs_f64(),
        took.as_secs_f64()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
#[ignore]
fn recovery_of_one_gibibyte() {
    measure("1gib", 16, 64, 1 << 20);
}

#[test]
#[ignore]
fn recovery_of_100000_small_files() {
    measure("100k", 100_000, 1, 100);
}
