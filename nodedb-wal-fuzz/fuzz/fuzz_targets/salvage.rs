#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodedb_wal_fuzz::salvage(data));
