//! Runs every fuzz target over its seeds, a deterministic batch of their mutations, and every
//! input checked in under `corpus/<target>/` (each crash a fuzzer found is kept there).

use std::path::Path;

use nodedb_wal_fuzz::{TARGETS, mutate, seeds};

fn corpus_files(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.into_iter().filter(|p| p.file_name().is_some_and(|n| n != ".keep")).map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_target_holds_on_its_corpus_and_mutations() {
    let mutations: u64 = std::env::var("NODEDB_WAL_FUZZ_MUTATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    for &(name, target) in TARGETS {
        let mut inputs = seeds(name);
        inputs.extend(corpus_files(name));
        assert!(!inputs.is_empty(), "target {name} has no seeds");
        for input in &inputs {
            target(input);
        }
        for i in 0..mutations {
            let base = &inputs[(i as usize) % inputs.len()];
            let input = mutate(base, i);
            let result = std::panic::catch_unwind(|| target(&input));
            assert!(result.is_ok(), "target {name} failed on mutation {i}: {input:02x?}");
        }
    }
}
