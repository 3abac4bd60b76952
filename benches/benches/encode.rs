//! Encoding one record frame (header, payload copy, CRC32C) at 128 B, 1 KiB and 4 KiB, beside
//! its two parts measured alone: the CRC32C of the frame and the payload copy. An append does
//! this work outside the log's mutex, so it bounds what one appending thread can do. The
//! `crc32c` crate's checksum of the same frame runs beside the library's (`crc-fast` where the
//! CPU has AVX-512 with VPCLMULQDQ), as the baseline for the library's choice on the machine at
//! hand.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedb_wal::format::frame::{HEADER_LEN, RecordHeader, encode_frame};
use nodedb_wal::{Lsn, RecordType, Scope};

const SIZES: [usize; 3] = [128, 1024, 4096];

fn header(payload_len: usize) -> RecordHeader {
    RecordHeader {
        lsn: Lsn(1_000_000),
        durable_lsn: Lsn(999_000),
        salt: 0x5EED_0001,
        record_type: RecordType::optional(0x0100),
        scope: Scope { database: 1, tenant: 2, vshard: 3 },
        payload_len: u32::try_from(payload_len).expect("small payload"),
        flags: 0,
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut out = vec![0u8; HEADER_LEN + size];
        let header = header(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_frame", size), &payload, |b, payload| {
            b.iter(|| encode_frame(black_box(&header), black_box(payload), black_box(&mut out)));
        });
        // The baselines: the checksum over a whole frame, and the copy of the payload.
        let frame = vec![0x5Au8; HEADER_LEN + size];
        group.bench_with_input(BenchmarkId::new("crc32c_only", size), &frame, |b, frame| {
            b.iter(|| nodedb_wal::format::crc::crc32c(black_box(frame)));
        });
        group.bench_with_input(BenchmarkId::new("crc32c_crate", size), &frame, |b, frame| {
            b.iter(|| crc32c::crc32c(black_box(frame)));
        });
        group.bench_with_input(BenchmarkId::new("copy_only", size), &payload, |b, payload| {
            b.iter(|| black_box(&mut out[HEADER_LEN..]).copy_from_slice(black_box(payload)));
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
