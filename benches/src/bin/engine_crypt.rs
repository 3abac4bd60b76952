//! `engine_crypt`: GB/s of encrypting and decrypting an engine segment file
//! (`encrypt_engine_file` / `decrypt_engine_file`, 64 KiB chunks, streamed) against plain
//! AES-256-GCM of the same bytes in the same chunks with no framing, in one process, in memory.
//! Rounds alternate so drift hits both alike; prints one JSON line per round and one of medians.
//! A benchmark measures; it never asserts.

use std::time::Instant;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use nodedb_wal::{KeyRing, SecureKey, decrypt_engine_file, encrypt_engine_file};
use nodedb_wal_benches::Json;

const CHUNK: usize = 64 * 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mb: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(256);
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let len = mb << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
    let ring = KeyRing::with_active(1, SecureKey::generate());
    let plain = Aes256Gcm::new_from_slice(&[7u8; 32]).expect("32-byte key");
    let (mut enc, mut dec, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let mut file = Vec::with_capacity(len + len / CHUNK * 16 + 4096);
    let mut out = Vec::with_capacity(len);
    let mut scratch = data.clone();
    for round in 0..rounds {
        file.clear();
        let t = Instant::now();
        encrypt_engine_file(&ring, &mut &data[..], &mut file).expect("encrypt");
        let e = len as f64 / t.elapsed().as_secs_f64() / 1e9;
        out.clear();
        let t = Instant::now();
        decrypt_engine_file(&ring, &mut &file[..], &mut out).expect("decrypt");
        let d = len as f64 / t.elapsed().as_secs_f64() / 1e9;
        assert!(out == data, "round trip");
        scratch.copy_from_slice(&data);
        let t = Instant::now();
        for (i, chunk) in scratch.chunks_mut(CHUNK).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_le_bytes());
            let tag = plain.encrypt_inout_detached(&nonce.into(), b"", chunk.into()).expect("encrypt");
            std::hint::black_box(tag);
        }
        let r = len as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{}",
            Json::default()
                .int("round", round as u64)
                .int("bytes", len as u64)
                .num("encrypt_gb_per_sec", e)
                .num("decrypt_gb_per_sec", d)
                .num("plain_aes_gcm_gb_per_sec", r)
        );
        enc.push(e);
        dec.push(d);
        raw.push(r);
    }
    let (e, d, r) = (median(enc), median(dec), median(raw));
    println!(
        "{}",
        Json::default()
            .str("summary", "medians")
            .num("encrypt_gb_per_sec", e)
            .num("decrypt_gb_per_sec", d)
            .num("plain_aes_gcm_gb_per_sec", r)
            .num("encrypt_vs_plain", e / r)
            .num("decrypt_vs_plain", d / r)
    );
}
