//! An operator reads an error's message, not its variant: each one names what the log knows
//! (the file, the segment, the LSN) and, where there is something to do, says what. Found by
//! an operator's review of every `WalError` message; each assertion here failed before its
//! message was reworded.

use std::path::PathBuf;

use nodedb_wal::{FileId, Lsn, MissingBecause, RecordType, SegmentId, WalError};

#[track_caller]
fn says(err: &WalError, words: &[&str]) {
    let message = err.to_string();
    for w in words {
        assert!(message.contains(w), "{err:?} should say {w:?}: {message}");
    }
}

// A refusal by FLOOR was worded as though the manifest had named the segment, and one with a
// segment past the hole did not mention that FLOOR can be behind it at all. Then only the tool
// worked out which file was behind the refusal; now the error says it (`why`), for every user.
#[test]
fn a_missing_segment_names_the_file_behind_it() {
    let manifest =
        WalError::MissingSegment { missing: SegmentId(7), next_present: None, why: MissingBecause::Manifest { named: SegmentId(8) } };
    says(&manifest, &["segment 7 is missing", "MANIFEST names segment 8 as the newest", "the newest there is 6"]);
    let empty =
        WalError::MissingSegment { missing: SegmentId(1), next_present: None, why: MissingBecause::Manifest { named: SegmentId(1) } };
    says(&empty, &["MANIFEST names segment 1", "no segment is there"]);
    let floor = WalError::MissingSegment { missing: SegmentId(4), next_present: Some(SegmentId(6)), why: MissingBecause::Floor };
    says(&floor, &["FLOOR names segment 4 as the oldest the log still needs", "00000000000000000006.wal", "removing FLOOR"]);
    let hole = WalError::MissingSegment { missing: SegmentId(4), next_present: Some(SegmentId(5)), why: MissingBecause::Hole };
    says(&hole, &["segment 4 is missing", "a hole: segment 5 is there", "00000000000000000005.wal", "segment 4 before it is not"]);
    // A reader that found segment 4 gone knows nothing of segment 3: the message claims nothing of it.
    assert!(!hole.to_string().contains("segment 3") && !hole.to_string().contains("segments 3"), "{hole}");
}

// A FLOOR whose newer slot was damaged fell back to the older one, and the log was refused as
// `MissingSegment`, "acknowledged records" and all, though most likely nothing was lost.
#[test]
fn a_floor_with_a_damaged_slot_says_what_is_known_and_the_way_out() {
    let path = PathBuf::from("/db/wal/FLOOR");
    let err = WalError::FloorSlotDamaged { path, floor: SegmentId(3), oldest_present: Some(SegmentId(5)), contiguous: true };
    says(
        &err,
        &[
            "/db/wal/FLOOR has a damaged slot",
            "names segment 3",
            "the oldest segment there is 5",
            "every one from it on",
            "remove /db/wal/FLOOR",
        ],
    );
    assert!(err.is_corruption());
}

#[test]
fn a_segment_from_a_newer_build_or_with_a_damaged_preamble_says_both() {
    // No checksum covers the preamble: a flipped bit reads as a version or cipher of the future.
    says(&WalError::UnsupportedVersion { segment: SegmentId(3), version: 9, supported: 1 }, &["segment 3", "newer build", "damaged"]);
    says(&WalError::UnsupportedCipher { segment: SegmentId(3), cipher: 7 }, &["segment 3", "cipher 7", "newer build", "damaged"]);
    says(&WalError::UnknownRequiredType { lsn: Lsn(12), record_type: RecordType::required(0x80F0) }, &["record 12", "newer build"]);
}

// A database that refused to start on `Corruption` logged "nothing was cut or repaired" and no
// more: the way out (a replica or backup, else the salvage, then a check of the copy) was in
// the rustdoc only. The message names the tools, as the side files' messages name theirs.
#[test]
fn corruption_names_the_salvage_and_the_check_of_its_copy() {
    use nodedb_wal::CorruptionKind;
    let err = WalError::Corruption { segment: SegmentId(3), offset: 8192, kind: CorruptionKind::BadFrame };
    says(
        &err,
        &[
            "segment 3 at offset 8192",
            "nothing was cut or repaired",
            "replica or backup",
            "nodedb-wal salvage DIR NEW_DIR",
            "salvage::salvage",
            "nodedb-wal verify DIR",
        ],
    );
}

#[test]
fn errors_with_a_way_out_say_what_it_is() {
    says(&WalError::SegmentTruncated { segment: SegmentId(2) }, &["segment 2", "oldest"]);
    says(&WalError::SegmentIdsExhausted { newest: SegmentId(u64::MAX - 1) }, &["copy"]);
    says(&WalError::LsnsExhausted { next: Lsn::LIMIT }, &["copy"]);
    let path = PathBuf::from("/db/dwb");
    says(
        &WalError::DwbDegraded { path: path.clone(), op: nodedb_wal::IoOp::Open, kind: std::io::ErrorKind::PermissionDenied },
        &["/db/dwb", "reopen"],
    );
    says(&WalError::DwbHeaderDamaged { path: path.clone(), salted_batches: 3 }, &["/db/dwb", "removing", "copy"]);
    says(&WalError::DwbForeignFile { path }, &["/db/dwb", "move it away"]);
    says(&WalError::DwbUnknownFile { file: FileId(4) }, &["file 4", "register_file"]);
    says(&WalError::DwbUnrepairable { file: FileId(4), page_no: 9, seq: 30 }, &["page 9", "nothing was written"]);
    says(&WalError::KeyStillNeeded { key_id: 3, segment: SegmentId(12) }, &["key id 3", "segment 12", "truncate"]);
    says(&WalError::KeyActive { key_id: 3 }, &["key id 3", "make another key active"]);
    says(&WalError::KeyRetired { key_id: 3 }, &["key id 3", "another id"]);
}

// An operator handed the wrong key file read "wrong key or corrupt first chunk" and could not
// tell whether the file was lost. A version 2 engine file's key check value tells the two apart:
// the wrong key says so and what to supply, damage says the key is right, and only a version 1
// file keeps the words that name both.
#[test]
fn an_engine_file_names_a_wrong_key_apart_from_damage() {
    use nodedb_wal::EngineFileProblem;
    let engine = |problem| WalError::EngineFile { problem };
    says(&engine(EngineFileProblem::WrongKey { key_id: 4 }), &["key 4 is not the key this file was written with", "supply the key"]);
    says(&engine(EngineFileProblem::KeyCheckDamaged), &["key check value is damaged", "the key is right"]);
    says(&engine(EngineFileProblem::FirstChunkDamaged), &["chunk 0 was altered", "the key is right"]);
    says(&engine(EngineFileProblem::AuthenticationFailed { chunk: 0 }), &["wrong key or corrupt first chunk"]);
    for damage in
        [EngineFileProblem::KeyCheckDamaged, EngineFileProblem::FirstChunkDamaged, EngineFileProblem::AuthenticationFailed { chunk: 2 }]
    {
        let message = engine(damage).to_string();
        assert!(!message.contains("wrong key"), "damage does not blame the key: {message}");
    }
}
