//! Helpers for the engine file tests (`engine_files.rs`, `engine_fixtures.rs`): decrypting a
//! file held in memory, and the problem an engine file error names.

use nodedb_wal::{EngineFileProblem, KeyRing, WalError, decrypt_engine_file};

/// Decrypts `file` under `ring`, returning its plaintext.
pub fn decrypt(ring: &KeyRing, file: &[u8]) -> Result<Vec<u8>, WalError> {
    let mut out = Vec::new();
    decrypt_engine_file(ring, &mut &file[..], &mut out).map(|_| out)
}

/// The problem of an engine file error; anything else is a test failure.
#[track_caller]
pub fn problem(result: Result<Vec<u8>, WalError>) -> EngineFileProblem {
    match result {
        Err(WalError::EngineFile { problem }) => problem,
        other => panic!("expected an engine file error, got {other:?}"),
    }
}
