//! The `nodedb-wal` tool: each command on a real log, and the exit status that tells a clean
//! log, a torn tail, corruption, a wrong key, a missing directory and a directory that is not a
//! log apart.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use nodedb_wal::{
    CalvinAppliedPayload, CollectionTombstonePayload, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, Scope, SecureKey, SegmentedWal,
    SegmentedWalConfig, TemporalPurgeEngine, TemporalPurgePayload,
};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).output().expect("the tool runs")
}

fn status(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Ten records, each in a batch of its own.
fn write_log(dir: &Path, ring: Option<Arc<KeyRing>>) {
    let mut config = SegmentedWalConfig::new(dir);
    config.key_ring = ring;
    let wal = SegmentedWal::open(config).unwrap();
    for i in 0..10u8 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[i; 300])).unwrap();
    }
    wal.close().unwrap();
}

/// A log of six segments of 64 KiB whose oldest three were truncated, so that `FLOOR` was
/// updated once after its creation. Returns the floor and the newest segment.
fn truncated_log(dir: &Path) -> (u64, u64) {
    let mut config = SegmentedWalConfig::new(dir);
    config.segment_bytes_target = 64 * 1024;
    let wal = SegmentedWal::open(config).unwrap();
    while wal.segments().len() < 6 {
        wal.append(Record::new(RecordType::optional(0x100), &[7; 1000])).unwrap();
    }
    wal.sync().unwrap();
    wal.truncate_before(wal.segments()[3].first_lsn).unwrap();
    let (floor, newest) = (wal.segments()[0].id.0, wal.segments().last().unwrap().id.0);
    wal.close().unwrap();
    (floor, newest)
}

/// Segment file and offset of record `lsn`'s frame.
fn frame_of(dir: &Path, lsn: u64) -> (std::path::PathBuf, u64) {
    let wal = ReadOnlyWal::open(dir, None).unwrap();
    let mut reader = wal.lazy_reader(Lsn(lsn)).unwrap();
    let h = reader.next_header().unwrap().unwrap();
    (dir.join(format!("{:020}.wal", h.segment().0)), h.offset())
}

/// Tears the last record of a log `write_log` wrote, as a power cut during its batch leaves it:
/// the block after the batch, where the close sealed the segment, never written (a closed
/// log's last batch is sealed, and damage in it is corruption), and a bit of the record wrong.
fn tear_last_record(dir: &Path) {
    let (path, at) = frame_of(dir, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    // Each record is a batch of one 4 KiB block of its own; the seal is the next block.
    let seal = (at / 4096 + 1) as usize * 4096;
    bytes[seal..seal + 4096].fill(0);
    bytes[at as usize + 100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bench_leaves_a_log_that_inspect_dump_and_verify_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let d = dir.to_str().unwrap();
    let out = tool(&["bench", d, "--threads", "4", "--seconds", "1", "--size", "64"]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("records/s"));
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("health: clean"));
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    let records = ReadOnlyWal::open(&dir, None).unwrap().recovery_info().record_count;
    let out = tool(&["dump", d, "--json"]);
    assert_eq!(status(&out), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count() as u64, records);
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name(), std::fs::read(e.path()).unwrap())).collect();
    files.sort();
    files
}

// Found by a review: `bench DIR` opened whatever log DIR held and appended its benchmark
// records to it, for good.
#[test]
fn bench_refuses_a_directory_that_holds_anything_and_leaves_it_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, None);
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"not a log").unwrap();
    for dir in [&log, &other] {
        let before = snapshot(dir);
        let out = tool(&["bench", dir.to_str().unwrap(), "--threads", "1", "--seconds", "1"]);
        assert_eq!(status(&out), 3, "{}", text(&out));
        assert!(text(&out).contains("is not empty"), "{}", text(&out));
        assert_eq!(snapshot(dir), before, "{}: left as it was", dir.display());
    }
    assert_eq!(ReadOnlyWal::open(&log, None).unwrap().recovery_info().record_count, 10);
    // An empty directory is a new log's.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = tool(&["bench", empty.to_str().unwrap(), "--threads", "1", "--seconds", "1"]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(ReadOnlyWal::open(&empty, None).unwrap().recovery_info().record_count > 0);
}

#[test]
fn verify_tells_a_torn_tail_from_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), None);
    let d = tmp.path().to_str().unwrap();
    // Damage in the last record, which nothing later claims durable: a torn tail.
    tear_last_record(tmp.path());
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("torn tail"));
    // Damage in the first record, which later records claim durable: corruption.
    let (path, at) = frame_of(tmp.path(), 1);
    flip(&path, at + 100);
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 2, "{}", text(&out));
}

/// The two counts in a torn-tail line: the bytes never acknowledged and the zeros after them.
fn torn_counts(line: &str) -> (u64, u64) {
    const ZEROS: &str = " bytes of zeros: space the log reserved ahead of its writer, never written with records)";
    let words = line.split_once(" (").map(|(_, rest)| rest).unwrap_or_else(|| panic!("no count in {line:?}"));
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{s:?} in {line:?}"));
    match words.split_once(" bytes never acknowledged") {
        Some((debris, rest)) => match rest.strip_prefix(", then ") {
            Some(zeros) => (number(debris), number(zeros.split_once(ZEROS).expect("the zeros named").0)),
            None => (number(debris), 0),
        },
        None => (0, number(words.split_once(ZEROS).expect("the zeros named").0)),
    }
}

/// The torn-tail lines of `verify` and `inspect` on the log in `dir`, both with status 1.
fn torn_lines(dir: &Path) -> [String; 2] {
    ["verify", "inspect"].map(|command| {
        let out = tool(&[command, dir.to_str().unwrap()]);
        assert_eq!(status(&out), 1, "{command}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.lines().find(|l| l.contains("torn tail")).unwrap_or_else(|| panic!("{command}: {stdout}")).to_owned()
    })
}

// Found by a usability review: the zeros the log writes ahead of its writer (a megabyte by
// default) were all "bytes never acknowledged", which read as a megabyte of lost writes.
#[test]
fn a_torn_tail_tells_the_debris_never_acknowledged_from_the_zeros_reserved_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), None);
    let (path, at) = frame_of(tmp.path(), 10);
    tear_last_record(tmp.path());
    let torn = ReadOnlyWal::open(tmp.path(), None).unwrap().recovery_info().torn_tail.unwrap();
    assert_eq!(torn.offset, at);
    let bytes = std::fs::read(&path).unwrap();
    let block_end = (at / 4096 + 1) * 4096;
    assert!(bytes[block_end as usize..].iter().all(|&b| b == 0), "past the torn record's block: the seal's, and zero-fill");
    for line in torn_lines(tmp.path()) {
        let (debris, zeros) = torn_counts(&line);
        assert_eq!(debris + zeros, torn.bytes_discarded, "{line}");
        assert!(debris > 0 && debris <= block_end - at, "the torn record's own block at most: {line}");
        assert!(zeros >= bytes.len() as u64 - block_end, "{line}");
    }

    // Debris to the end of the file keeps the wording it had.
    let mut bytes = bytes[..block_end as usize].to_vec();
    bytes.extend_from_slice(&[0xAB; 4096]);
    std::fs::write(&path, &bytes).unwrap();
    let torn = ReadOnlyWal::open(tmp.path(), None).unwrap().recovery_info().torn_tail.unwrap();
    for line in torn_lines(tmp.path()) {
        assert_eq!(torn_counts(&line), (torn.bytes_discarded, 0), "{line}");
        assert!(line.contains(&format!("({} bytes never acknowledged)", torn.bytes_discarded)), "{line}");
    }
}

#[test]
fn verify_reports_a_wrong_key_and_a_missing_key() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])))));
    let (right, wrong) = (key_file(tmp.path(), "right", 7), key_file(tmp.path(), "wrong", 8));
    let d = log.to_str().unwrap();
    let out = tool(&["verify", d, "--key-file", &right]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    let out = tool(&["verify", d, "--key-file", &wrong]);
    assert_eq!(status(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("wrong key"), "{}", text(&out));
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 4, "no key at all: {}", text(&out));
}

// Found by an adversarial review: a segment altered after one under the same key had
// authenticated (here its preamble's nonce epoch) was reported as a wrong key, status 4, to an
// operator holding the right key; it is damage, status 2.
#[test]
fn verify_reports_a_segment_altered_after_its_key_proved_right_as_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let ring = || Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])));
    write_log(&log, Some(ring()));
    let mut config = SegmentedWalConfig::new(&log);
    config.key_ring = Some(ring());
    let wal = SegmentedWal::open(config).unwrap();
    wal.append_durable(Record::new(RecordType::optional(0x100), b"in segment 2")).unwrap();
    wal.close().unwrap();
    let right = key_file(tmp.path(), "right", 7);
    let d = log.to_str().unwrap();
    assert_eq!(status(&tool(&["verify", d, "--key-file", &right])), 0);
    // The nonce epoch is the preamble's last four bytes.
    flip(&log.join(format!("{:020}.wal", 2)), 12);
    let out = tool(&["verify", d, "--key-file", &right]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("failed authentication"), "{}", text(&out));
}

// Found by a review of the format documentation: bench took --key-file and wrote plaintext
// without a word, and every command ignored options it does not take.
#[test]
fn bench_with_a_key_writes_an_encrypted_log_and_a_command_refuses_options_it_ignores() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (k, log) = (key.to_str().unwrap(), tmp.path().join("log"));
    let d = log.to_str().unwrap();
    let out = tool(&["bench", d, "--threads", "2", "--seconds", "1", "--size", "64", "--key-file", k, "--key-id", "5"]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    // Found by a new user's walk-through: the hint named `verify DIR` alone, which exits 4 here.
    let hint = format!("`nodedb-wal verify {d} --key-file {k} --key-id 5`");
    assert!(text(&out).contains(&hint), "the hint gives the key: {}", text(&out));
    let wal = nodedb_wal::ReadOnlyWal::open(&log, None).unwrap();
    let segment = wal.recovery_info().segments.last().unwrap().id;
    let preamble = std::fs::read(log.join(format!("{:020}.wal", segment.0))).unwrap();
    let preamble = nodedb_wal::SegmentPreamble::decode(&preamble).unwrap();
    assert_eq!((preamble.cipher, preamble.key_id), (nodedb_wal::CIPHER_AES_256_GCM, 5));
    assert_eq!(status(&tool(&["verify", d, "--key-file", k, "--key-id", "5"])), 0);
    assert_eq!(status(&tool(&["verify", d])), 4, "encrypted: no key, no reading");

    for args in [&["verify", d, "--threads", "4"][..], &["inspect", d, "--json"], &["bench", d, "--from", "3"]] {
        let out = tool(args);
        assert_eq!(status(&out), 3, "{args:?}: {}", text(&out));
        assert!(text(&out).contains("does not take"), "{args:?}: {}", text(&out));
    }
}

// Found by a usability review: a look without a key failed on an encrypted log once it held a
// tombstone (recovery decrypts those to gather them), and the tool took one key only, so a log
// written across a key rotation could not be verified at all.
#[test]
fn a_log_written_across_a_rotation_is_checked_with_every_key_and_listed_with_none() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])));
    write_log(&log, Some(Arc::clone(&ring)));
    ring.insert(2, SecureKey::from_bytes(&mut [8; 32])).unwrap();
    ring.set_active(2).unwrap();
    let mut config = SegmentedWalConfig::new(&log);
    config.key_ring = Some(ring);
    let wal = SegmentedWal::open(config).unwrap();
    let tombstone = nodedb_wal::CollectionTombstonePayload { database: 1, tenant: 1, collection: "gone".into(), purge_lsn: Lsn(3) };
    wal.append_tombstone(&tombstone).unwrap();
    wal.close().unwrap();
    let (one, two) = (key_file(tmp.path(), "one", 7), key_file(tmp.path(), "two", 8));
    let d = log.to_str().unwrap();
    let out = tool(&["verify", d, "--key-file", &one, "--key-id", "1", "--key-file", &two, "--key-id", "2"]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    let out = tool(&["verify", d, "--key-file", &one]);
    assert_eq!(status(&out), 4, "key 2 missing: {}", text(&out));
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 0, "no key needed to list segments: {}", text(&out));
    assert!(text(&out).contains("1 tombstone or purge record(s) in encrypted segments not read"), "{}", text(&out));

    let look = ReadOnlyWal::open(&log, None).unwrap();
    assert_eq!((look.recovery_info().ungathered, look.recovery_info().tombstones.len()), (1, 0));
    let ring = KeyRing::new();
    ring.insert(2, SecureKey::from_bytes(&mut [8; 32])).unwrap();
    let look = ReadOnlyWal::open(&log, Some(Arc::new(ring))).unwrap();
    assert_eq!((look.recovery_info().ungathered, look.recovery_info().tombstones.len()), (0, 1));
}

#[test]
fn a_missing_directory_and_a_directory_that_is_not_a_log_have_their_own_status() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = tool(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(status(&out), 3, "{}", text(&out));
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    let out = tool(&["verify", tmp.path().to_str().unwrap()]);
    assert_eq!(status(&out), 5, "{}", text(&out));
    assert_eq!(status(&tool(&["frobnicate"])), 3);
}

#[test]
fn a_damaged_manifest_is_reported_as_corruption_and_names_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), None);
    let d = tmp.path().to_str().unwrap();
    let manifest = tmp.path().join("MANIFEST");
    std::fs::write(&manifest, [0xA5u8; 1024]).unwrap();
    for command in ["verify", "inspect"] {
        let out = tool(&[command, d]);
        assert_eq!(status(&out), 2, "{command}: {}", text(&out));
        assert!(text(&out).contains("MANIFEST is damaged") && text(&out).contains("remove it"), "{command}: {}", text(&out));
    }
    std::fs::remove_file(&manifest).unwrap();
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
}

/// Found by an adversarial review: a path that is not UTF-8 panicked (status 101), and bench
/// sizes and thread counts beyond reason aborted the process. A log in a directory whose name
/// is not UTF-8 is a log like any other.
#[test]
fn odd_paths_and_out_of_range_bench_options_get_a_status_not_a_crash() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join(std::ffi::OsStr::from_bytes(b"log-\xff\xfe"));
    write_log(&log, None);
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).arg("verify").arg(&log).output().unwrap();
    assert_eq!(status(&out), 0, "{}", text(&out));
    for args in [&["bench", "--size", "1099511627776"][..], &["bench", "--threads", "100000"], &["bench", "--threads", "0"]] {
        let out = tool(args);
        assert_eq!(status(&out), 3, "{args:?}: {}", text(&out));
    }
}

// Found by a documentation review: a second directory was ignored, so `verify A B` exited 0
// with B never read, which reads as both logs checked.
#[test]
fn a_second_directory_is_refused_rather_than_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, other) = (tmp.path().join("log"), tmp.path().join("other"));
    write_log(&log, None);
    let (d, o) = (log.to_str().unwrap(), other.to_str().unwrap());
    for command in ["inspect", "dump", "verify", "bench"] {
        let out = tool(&[command, d, o]);
        assert_eq!(status(&out), 3, "{command}: {}", text(&out));
        assert!(text(&out).contains("one too many"), "{command}: {}", text(&out));
    }
    let out = tool(&["salvage", d, o, o]);
    assert_eq!(status(&out), 3, "salvage: {}", text(&out));
    assert!(text(&out).contains("takes two directories"), "{}", text(&out));
    assert!(!other.exists(), "nothing was made for the extra argument");
}

// Found by a documentation review: dump lists headers only, which are stored in the clear, yet
// without a key it failed on an encrypted log (exit 4) as though it had to decrypt.
#[test]
fn dump_lists_an_encrypted_log_without_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, Some(Arc::new(KeyRing::with_active(1, SecureKey::generate()))));
    let out = tool(&["dump", log.to_str().unwrap(), "--json"]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines[9].starts_with("{\"lsn\":10,") && lines[9].contains("\"stored_len\":316"), "300 bytes and the tag: {}", lines[9]);
}

/// The lines of `dump` with `args` on the log in `dir`, which exits 0.
fn dump_lines(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = tool(&[&["dump", dir.to_str().unwrap()][..], args].concat());
    assert_eq!(status(&out), 0, "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// A key file of 32 bytes `byte`, private to its owner, as the tool takes it.
fn key_file(dir: &Path, name: &str, byte: u8) -> String {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

// Asked for by a usability review: dump showed where each record is but not what it holds.
#[test]
fn dump_shows_each_payloads_length_and_a_preview_or_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), None);
    // Record n holds 300 bytes of n - 1: a preview of 64 bytes in four lines, 236 left out.
    let lines = dump_lines(tmp.path(), &["--payloads", "--from", "3"]);
    assert_eq!(lines.len(), 8 * (1 + 1 + 4 + 1), "{lines:#?}");
    assert!(lines[0].starts_with("lsn          3  "), "{}", lines[0]);
    assert_eq!(lines[1], "    payload 300 bytes");
    let sixteen = vec!["02"; 16].join(" ");
    assert_eq!(lines[2], format!("    00000000  {sixteen}  |................|"));
    assert!(lines[5].starts_with("    00000030  02 02"), "{}", lines[5]);
    assert_eq!(lines[6], "    ... 236 more bytes (--full-payloads shows them)");

    let full = dump_lines(tmp.path(), &["--full-payloads", "--type", "0x100"]);
    assert_eq!(full.len(), 10 * (1 + 1 + 300usize.div_ceil(16)), "every byte of every record");
    assert!(full.iter().all(|l| !l.contains("more bytes")));
    assert!(full[20].starts_with("    00000120  00 00 00 00 00 00 00 00 00 00 00 00  "), "the last 12 bytes: {}", full[20]);

    let json = dump_lines(tmp.path(), &["--json", "--payloads"]);
    assert!(json[9].starts_with("{\"lsn\":10,"), "{}", json[9]);
    assert!(
        json[9].ends_with(&format!(",\"payload_len\":300,\"payload_hex\":\"{}\",\"payload_complete\":false}}", "09".repeat(64))),
        "{}",
        json[9]
    );
    let json = dump_lines(tmp.path(), &["--json", "--full-payloads"]);
    assert!(json[0].contains(&format!("\"payload_hex\":\"{}\",\"payload_complete\":true}}", "00".repeat(300))), "{}", json[0]);
    // Without the option, the listing is as it was: headers only.
    assert_eq!(dump_lines(tmp.path(), &[]).len(), 10);
}

#[test]
fn dump_decrypts_payloads_with_the_key_file_and_refuses_without_the_right_key() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])))));
    let (right, wrong) = (key_file(tmp.path(), "right", 7), key_file(tmp.path(), "wrong", 8));
    let lines = dump_lines(&log, &["--payloads", "--key-file", &right]);
    assert_eq!(lines[1], "    payload 300 bytes", "the plaintext's length, not the stored 316");
    assert!(lines[2].starts_with("    00000000  00 00 00"), "decrypted: {}", lines[2]);
    let d = log.to_str().unwrap();
    for args in [&["dump", d, "--payloads"][..], &["dump", d, "--full-payloads", "--key-file", &wrong]] {
        let out = tool(args);
        assert_eq!(status(&out), 4, "{args:?}: {}", text(&out));
        assert!(text(&out).contains("--key-file"), "the hint: {}", text(&out));
    }
}

/// A collection name with what JSON and a terminal must not take bare: quotes, a backslash, a
/// newline, a tab, an escape sequence and a bell, and letters outside ASCII.
const ODD_NAME: &str = "say \"hi\"\\ \n\t\u{1b}[31m\u{7} zoë 注文";

/// A row of an application's type, then one record of each of the log's own types.
fn own_types_log(dir: &Path, ring: Option<Arc<KeyRing>>) {
    let mut config = SegmentedWalConfig::new(dir);
    config.key_ring = ring;
    let wal = SegmentedWal::open(config).unwrap();
    let scope = Scope { database: 1, tenant: 2, vshard: 3 };
    wal.append(Record::new(RecordType::optional(0x100), b"a row").scoped(scope)).unwrap();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: ODD_NAME.into(), purge_lsn: Lsn(1) };
    wal.append_tombstone(&tombstone).unwrap();
    let purge = TemporalPurgePayload {
        engine: TemporalPurgeEngine::KeyValue,
        collection: "sessions\\\"".into(),
        cutoff_unix_ms: 1_700_000_000_123,
        purged_count: 42,
    };
    wal.append_temporal_purge(&purge, scope).unwrap();
    wal.append_calvin_applied(&CalvinAppliedPayload { epoch: 1 << 40, position: 7, vshard: 3 }, scope).unwrap();
    wal.sync().unwrap();
    wal.close().unwrap();
}

/// Each line of `dump --json` with `args`, parsed: a line that is not JSON fails the test.
fn dump_json(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let lines = dump_lines(dir, &[&["--json"][..], args].concat());
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// `dump` of `own_types_log` with `keys`: each own type named, and with the payloads each one's
/// fields, in text and in JSON, the names exactly as appended.
fn dump_names_and_decodes_the_logs_own_types(log: &Path, keys: &[&str]) {
    let headers = dump_lines(log, keys);
    assert_eq!(headers.len(), 4, "{headers:#?}");
    assert!(headers[0].contains("  type 0x0100  db 1 tenant 2 vshard 3  "), "no name for an application's type: {}", headers[0]);
    assert!(headers[1].contains("  type 0x8010 collection-tombstone  db 1 tenant 2 vshard 0  "), "{}", headers[1]);
    assert!(headers[2].contains("  type 0x8011 temporal-purge  db 1 "), "{}", headers[2]);
    assert!(headers[3].contains("  type 0x0010 calvin-applied  db 1 "), "{}", headers[3]);

    let lines = dump_lines(log, &[keys, &["--payloads"]].concat());
    let after = |lsn: &str| &lines[lines.iter().position(|l| l.starts_with(&format!("lsn {lsn:>10}  "))).expect("listed") + 1];
    assert_eq!(after("1"), "    payload 5 bytes", "an application's payload is not decoded");
    assert_eq!(
        after("2"),
        r#"    database 1  tenant 2  collection "say \"hi\"\\ \n\t\u{1b}[31m\u{7} zoë 注文"  purge lsn 1"#,
        "the name quoted and escaped, on one line"
    );
    assert_eq!(
        after("3"),
        r#"    engine key-value  collection "sessions\\\""  cutoff 1700000000123 ms (2023-11-14 22:13:20.123 UTC)  purged 42"#
    );
    assert_eq!(after("4"), "    epoch 1099511627776  position 7  vshard 3");
    assert!(lines.iter().all(|l| !l.contains('\u{1b}') && !l.contains('\u{7}')), "no control character reaches the terminal");
    assert_eq!(lines.iter().filter(|l| l.starts_with("    payload ")).count(), 4, "the hex preview is still there: {lines:#?}");

    let json = dump_json(log, &[keys, &["--payloads"]].concat());
    assert_eq!(json.len(), 4);
    assert_eq!(json[0]["type_name"], serde_json::Value::Null);
    assert!(json[0].get("decoded").is_none() && json[0].get("decode_error").is_none(), "{}", json[0]);
    assert_eq!(
        (&json[1]["type_name"], &json[1]["required"], &json[1]["type"]),
        (&"collection-tombstone".into(), &true.into(), &0x8010.into())
    );
    let tombstone = &json[1]["decoded"];
    assert_eq!(tombstone["collection"], ODD_NAME, "the name reads back exactly: {}", json[1]);
    assert_eq!((&tombstone["database"], &tombstone["tenant"], &tombstone["purge_lsn"]), (&1.into(), &2.into(), &1.into()));
    assert_eq!(tombstone["applied_purge_lsn"], 1, "at most the tombstone's own LSN, the purge LSN as stored");
    let purge = &json[2]["decoded"];
    assert_eq!(json[2]["type_name"], "temporal-purge");
    assert_eq!((&purge["engine"], &purge["engine_code"], &purge["collection"]), (&"key-value".into(), &5.into(), &"sessions\\\"".into()));
    assert_eq!((&purge["cutoff_unix_ms"], &purge["purged_count"]), (&1_700_000_000_123u64.into(), &42.into()));
    let calvin = &json[3]["decoded"];
    assert_eq!((&json[3]["type_name"], &json[3]["required"]), (&"calvin-applied".into(), &false.into()));
    assert_eq!((&calvin["epoch"], &calvin["position"], &calvin["vshard"]), (&(1u64 << 40).into(), &7.into(), &3.into()));
    assert!(json[3]["payload_hex"].as_str().is_some_and(|hex| hex.len() == 32), "the hex preview too: {}", json[3]);

    // Without the payloads, JSON names the types and decodes nothing.
    let headers = dump_json(log, keys);
    assert_eq!(headers[1]["type_name"], "collection-tombstone");
    assert!(headers.iter().all(|h| h.get("decoded").is_none() && h.get("payload_len").is_none()));
}

// Asked for by a usability review: dump showed the log's own records by their hex type and
// bytes only, so an operator could not tell which collection a tombstone dropped.
#[test]
fn dump_names_the_logs_own_types_and_decodes_their_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    own_types_log(tmp.path(), None);
    dump_names_and_decodes_the_logs_own_types(tmp.path(), &[]);
}

#[test]
fn dump_decodes_the_logs_own_types_in_an_encrypted_log_through_the_key_and_names_them_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    own_types_log(&log, Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])))));
    let key = key_file(tmp.path(), "key", 7);
    dump_names_and_decodes_the_logs_own_types(&log, &["--key-file", &key]);
    let headers = dump_lines(&log, &[]);
    assert!(headers[1].contains("  type 0x8010 collection-tombstone  db 1 "), "headers need no key: {}", headers[1]);
}

#[test]
fn dump_type_takes_the_name_of_each_of_the_logs_own_types() {
    let tmp = tempfile::tempdir().unwrap();
    own_types_log(tmp.path(), None);
    for (name, number, lsn) in [("collection-tombstone", "0x8010", 2), ("temporal-purge", "32785", 3), ("calvin-applied", "0x10", 4)] {
        let named = dump_json(tmp.path(), &["--type", name]);
        assert_eq!(named, dump_json(tmp.path(), &["--type", number]), "{name}");
        assert_eq!(named.len(), 1, "{name}: {named:?}");
        assert_eq!((&named[0]["lsn"], &named[0]["type_name"]), (&lsn.into(), &name.into()));
    }
    let d = tmp.path().to_str().unwrap();
    let out = tool(&["dump", d, "--type", "tombstone"]);
    assert_eq!(status(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("collection-tombstone, temporal-purge, calvin-applied"), "the names it takes: {}", text(&out));
}

/// A WalWriter's segment (it writes no header index, so readers take each header from its
/// frame) of three rows, the second of them 15 bytes; that row's frame then retyped to
/// `to`, with its checksum made right again, as someone who can write the log's files can.
/// No API appends a malformed payload of the log's own types: `WalWriter::append` refuses
/// them (`ReservedRecordType`), and the log's appends encode the payloads themselves.
fn log_with_a_row_retyped_to(dir: &Path, to: RecordType) {
    use nodedb_wal::format::frame::encode_frame;
    use nodedb_wal::{RecordHeader, SegmentId, WalWriter};

    let mut writer = WalWriter::create(dir, SegmentId(1), Lsn(1)).unwrap();
    for payload in [&b"before"[..], &[0xAB; 15], b"after"] {
        writer.append(Record::new(RecordType::optional(0x100), payload)).unwrap();
    }
    writer.finish().unwrap();
    let (path, at) = frame_of(dir, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = at as usize;
    let header = RecordHeader { record_type: to, ..RecordHeader::decode(&bytes[at..]).unwrap() };
    encode_frame(&header, &[0xAB; 15], &mut bytes[at..]);
    std::fs::write(&path, bytes).unwrap();
}

// A payload of the log's own type that does not decode is shown with the decoder's reason, and
// the listing goes on: dump shows, verify judges (status 2, below). Of the log's own types only a calvin-applied
// record can be malformed in a log that opens: recovery decodes every tombstone and purge and
// refuses a log with one that does not decode, which dump then reports as such.
#[test]
fn dump_notes_a_payload_of_the_logs_own_type_that_does_not_decode_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    log_with_a_row_retyped_to(tmp.path(), RecordType::CALVIN_APPLIED);
    let lines = dump_lines(tmp.path(), &["--payloads"]);
    let at = lines.iter().position(|l| l.starts_with("lsn          2  ")).expect("listed");
    assert!(lines[at].contains("  type 0x0010 calvin-applied  "), "{}", lines[at]);
    assert_eq!(lines[at + 1], "    not a valid calvin-applied payload: it is shorter than its layout");
    assert_eq!(lines[at + 2], "    payload 15 bytes", "then its bytes");
    assert!(lines.iter().any(|l| l.starts_with("lsn          3  ")), "the listing goes on: {lines:#?}");

    let json = dump_json(tmp.path(), &["--payloads"]);
    assert_eq!(json.len(), 3, "{json:?}");
    assert_eq!(json[1]["decode_error"], "it is shorter than its layout");
    assert!(json[1].get("decoded").is_none());
    assert_eq!(json[1]["payload_hex"], "ab".repeat(15));
    // verify called this log clean, while `last_calvin_applied` refuses it.
    let out = tool(&["verify", tmp.path().to_str().unwrap()]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("record 2 of type 0x0010 has a malformed payload"), "{}", text(&out));
    // salvage stops there, as at damage, so that its copy verifies clean.
    let copies = tempfile::tempdir().unwrap();
    let copy = copies.path().join("copy");
    let out = tool(&["salvage", tmp.path().to_str().unwrap(), copy.to_str().unwrap()]);
    assert_eq!(status(&out), 2, "stopped at damage: {}", text(&out));
    let out = tool(&["verify", copy.to_str().unwrap()]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("clean: 1 records"), "only the record before: {}", text(&out));

    let tmp = tempfile::tempdir().unwrap();
    log_with_a_row_retyped_to(tmp.path(), RecordType::COLLECTION_TOMBSTONE);
    let out = tool(&["dump", tmp.path().to_str().unwrap()]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("record 2 of type 0x8010 has a malformed payload"), "{}", text(&out));
}

// Found by a review: the tool printed its usage text after every error of exit status 3 whose
// message held no colon, and a log's own errors are among those (an LSN no longer retained, a
// segment truncated under the reader): the command was right, yet the answer read as though it
// had been mistyped. Usage text follows usage errors only.
#[test]
fn a_logs_own_error_is_reported_without_the_usage_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    truncated_log(&dir);
    let out = tool(&["dump", dir.to_str().unwrap(), "--from", "1"]);
    assert_eq!(status(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("no longer retained"), "{}", text(&out));
    assert!(!text(&out).contains("usage:"), "{}", text(&out));
    let out = tool(&["dump", dir.to_str().unwrap(), "--from"]);
    assert!(text(&out).contains("usage:"), "a usage error still shows it: {}", text(&out));
}

// Found by a review: `nodedb-wal inspect DIR | head` panicked ("failed printing to stdout:
// Broken pipe", a backtrace, status 101) once `head` had its lines; only `dump` took a reader
// that went away in its stride. The status still says what the log is, whoever reads the text.
#[test]
fn a_reader_that_goes_away_ends_no_command_in_a_panic_and_the_status_still_tells_the_health() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), None);
    let d = tmp.path().to_str().unwrap();
    let closed_stdout = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).stdout(writer).output().unwrap();
        assert!(!text(&out).contains("panicked"), "{args:?}: {}", text(&out));
        status(&out)
    };
    for command in ["inspect", "verify", "dump"] {
        assert_eq!(closed_stdout(&[command, d]), 0, "{command}");
    }
    tear_last_record(tmp.path());
    assert_eq!(closed_stdout(&["verify", d]), 1, "a torn tail");
    assert_eq!(closed_stdout(&["inspect", d]), 1, "a torn tail");
}

// Found by a review: diagnostics went out through `eprintln!`, which panics when standard
// error cannot be written (a pipe whose reader is gone, as when a supervisor's log collector
// died), so every command that reports progress or an error ended in status 101 instead of the
// status that tells the log's health. A closed descriptor (`2>&-`) is checked too.
#[test]
fn an_unwritable_standard_error_ends_no_command_in_a_panic_and_the_status_still_tells_the_health() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, None);
    let d = log.to_str().unwrap();
    let broken_stderr = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).stderr(writer).output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("panicked"), "{args:?}");
        status(&out)
    };
    // A shell's `2>&-`: standard error closed outright.
    let closed_stderr = |args: &[&str]| {
        let script = "exec \"$0\" \"$@\" 2>&-";
        let out = Command::new("sh").arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).output().unwrap();
        status(&out)
    };
    for run in [&broken_stderr as &dyn Fn(&[&str]) -> i32, &closed_stderr] {
        assert_eq!(run(&["verify", d]), 0, "verify reports its progress on standard error");
        assert_eq!(run(&["inspect", d]), 0);
        assert_eq!(run(&["inspect", tmp.path().join("missing").to_str().unwrap()]), 3, "an error message");
        assert_eq!(run(&["dump", d, "--from"]), 3, "a usage error, with the usage text");
        assert_eq!(run(&["bench", "--threads", "1", "--seconds", "1", "--size", "64"]), 0, "bench's progress bar");
    }
    tear_last_record(&log);
    assert_eq!(broken_stderr(&["verify", d]), 1, "a torn tail");
    let (path, at) = frame_of(&log, 1);
    flip(&path, at + 100);
    assert_eq!(broken_stderr(&["verify", d]), 2, "corruption, reported on standard error");
}

// Found by an operator's review: `inspect` showed neither `FLOOR` nor `MANIFEST`, the two files
// that bound the log and are behind its `MissingSegment` refusals, so nothing in the tool told
// what they said, or that an older log had no `FLOOR`.
#[test]
fn inspect_shows_both_slots_of_manifest_and_floor_and_an_absent_floor_and_changes_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (floor, newest) = truncated_log(&dir);
    let d = dir.to_str().unwrap();
    let before = snapshot(&dir);
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    // FLOOR was created naming segment 1 (update 1, slot 1) and moved by one truncation
    // (update 2, slot 0).
    let expected = format!("FLOOR     oldest segment needed {floor}: slot 0 (sequence 2); slot 1 intact (sequence 1, segment 1)");
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert!(text(&out).contains(&format!("MANIFEST  newest durable segment {newest}: slot ")), "{}", text(&out));
    assert_eq!(snapshot(&dir), before, "a look changes no file");

    // The other slot damaged: still current, the damage shown.
    let floor_file = dir.join("FLOOR");
    flip(&floor_file, 512 + 20);
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains(&format!("oldest segment needed {floor}: slot 0 (sequence 2); slot 1 not intact")), "{}", text(&out));

    // A log written before FLOOR existed.
    std::fs::remove_file(&floor_file).unwrap();
    let before = snapshot(&dir);
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("FLOOR     absent"), "{}", text(&out));
    assert_eq!(snapshot(&dir), before, "a look creates no FLOOR");
}

// Found by an operator's review: a `MissingSegment` refusal read the same whether `FLOOR`, the
// `MANIFEST` or a hole between two segments was behind it, and only the first has a way out
// that the operator takes (removing `FLOOR` after a truncation by an older build).
#[test]
fn a_missing_segment_refusal_names_the_file_behind_it_and_inspect_still_shows_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (floor, newest) = truncated_log(&dir);
    let d = dir.to_str().unwrap();
    let segment = |id: u64| dir.join(format!("{id:020}.wal"));
    let moved = tmp.path().join("moved");

    std::fs::rename(segment(floor), &moved).unwrap();
    let before = snapshot(&dir);
    for command in ["verify", "inspect"] {
        let out = tool(&[command, d]);
        assert_eq!(status(&out), 2, "{command}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("FLOOR names segment {floor} as the oldest the log still needs")),
            "{command}: {}",
            text(&out)
        );
    }
    assert!(text(&tool(&["inspect", d])).contains(&format!("FLOOR     oldest segment needed {floor}")), "shown though the log is refused");
    assert_eq!(snapshot(&dir), before, "a refused look changes no file");
    std::fs::rename(&moved, segment(floor)).unwrap();

    std::fs::rename(segment(newest), &moved).unwrap();
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains(&format!("MANIFEST names segment {newest} as the newest")), "{}", text(&out));
    std::fs::rename(&moved, segment(newest)).unwrap();

    std::fs::rename(segment(floor + 1), &moved).unwrap();
    let out = tool(&["verify", d]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains(&format!("a hole: segment {} is there", floor + 2)), "{}", text(&out));
}

// Found by an operator's review: a log whose segments and LOCK were all gone (a restore or copy
// that took only the side files) was "not a nodedb-wal directory" (status 5), which reads as a
// mistyped path and hides the loss; its MANIFEST and FLOOR name what is missing. A file named
// MANIFEST that is not a log's still leaves a directory foreign.
#[test]
fn a_log_with_every_segment_and_its_lock_gone_is_missing_segments_not_a_foreign_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log, None);
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wal") || path.ends_with("LOCK") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let d = log.to_str().unwrap();
    for command in ["verify", "inspect"] {
        let out = tool(&[command, d]);
        assert_eq!(status(&out), 2, "{command}: {}", text(&out));
        assert!(text(&out).contains("segment 1 is missing") && text(&out).contains("FLOOR names segment 1"), "{command}: {}", text(&out));
    }
    std::fs::remove_file(log.join("FLOOR")).unwrap();
    let out = tool(&["verify", d]);
    assert!(text(&out).contains("MANIFEST names segment 1 as the newest") && text(&out).contains("no segment is there"), "{}", text(&out));

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("MANIFEST"), b"another program's manifest").unwrap();
    let out = tool(&["verify", foreign.to_str().unwrap()]);
    assert_eq!(status(&out), 5, "{}", text(&out));
}

// Found by a new user's first hour: `inspect` on a log it refuses (corruption in a sealed
// segment) showed only MANIFEST and FLOOR, not the segments the README says it lists, which
// are what an operator locating the damage or a lost file looks at first.
#[test]
fn inspect_lists_the_segment_files_of_a_log_it_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (floor, newest) = truncated_log(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let (path, at) = frame_of(tmp.path(), {
        let wal = ReadOnlyWal::open(tmp.path(), None).unwrap();
        wal.recovery_info().segments[0].first_lsn.0
    });
    flip(&path, at + 40);
    let before = snapshot(tmp.path());
    let out = tool(&["inspect", d]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    for id in floor..=newest {
        let len = std::fs::metadata(tmp.path().join(format!("{id:020}.wal"))).unwrap().len();
        let row = format!("{:020}.wal  {len:>12}", id);
        assert!(text(&out).contains(&row), "{row:?} missing from:\n{}", text(&out));
    }
    assert!(text(&out).contains("FLOOR     oldest segment needed"), "{}", text(&out));
    assert_eq!(snapshot(tmp.path()), before, "a refused look changes no file");
}

/// `salvage`: 0 for a whole copy, 1 for a copy that left out a torn tail, 2 where it stopped at
/// damage (saying what lies past it), 3 for a destination that holds anything, 4 for a wrong
/// key; the copy is a log that `verify` finds clean.
#[test]
fn salvage_exit_status_tells_a_whole_copy_a_torn_tail_damage_and_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let (log, torn) = (tmp.path().join("log"), tmp.path().join("torn"));
    write_log(&log, None);
    write_log(&torn, None);
    tear_last_record(&torn);
    let out = tool(&["salvage", &path("log"), &path("whole")]);
    assert_eq!(status(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("10 records, LSN 1 to 10") && text(&out).contains("no damage"), "{}", text(&out));
    let out = tool(&["salvage", &path("log"), &path("whole")]);
    assert_eq!(status(&out), 3, "the destination holds a log now: {}", text(&out));
    let out = tool(&["salvage", &path("torn"), &path("untorn")]);
    assert_eq!(status(&out), 1, "{}", text(&out));
    let (file, at) = frame_of(&log, 4);
    flip(&file, at + 100);
    let out = tool(&["salvage", &path("log"), &path("cut")]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("3 records, LSN 1 to 3"), "{}", text(&out));
    assert!(text(&out).contains("past the damage, not copied: 6 intact records, LSN 5 to 10"), "{}", text(&out));
    assert!(text(&out).contains("stopped at damage in segment 1 at offset"), "{}", text(&out));
    assert!(!text(&out).contains("with `nodedb-wal salvage"), "the salvage does not advise itself: {}", text(&out));
    for copy in ["whole", "untorn", "cut"] {
        let out = tool(&["verify", &path(copy)]);
        assert_eq!(status(&out), 0, "{copy}: {}", text(&out));
    }
    write_log(&tmp.path().join("enc"), Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])))));
    std::fs::write(tmp.path().join("wrong"), [8; 32]).unwrap();
    std::fs::set_permissions(tmp.path().join("wrong"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tool(&["salvage", &path("enc"), &path("enc-copy"), "--key-file", &path("wrong")]);
    assert_eq!(status(&out), 4, "{}", text(&out));
    let out = tool(&["salvage", &path("enc"), &path("enc-copy2")]);
    assert_eq!(status(&out), 4, "no key at all: {}", text(&out));
}

// Found by a new user's walk-through: a log opened and closed with no record in it was
// reported as "records 0 (LSN 1 to 0)" and "clean: 0 records, LSN 1 to 0", a range that ends
// before it starts.
#[test]
fn a_log_without_records_is_reported_without_an_lsn_range() {
    let tmp = tempfile::tempdir().unwrap();
    SegmentedWal::open(SegmentedWalConfig::new(tmp.path())).unwrap().close().unwrap();
    let d = tmp.path().to_str().unwrap();
    for (command, says) in [("inspect", "records 0\n"), ("verify", "clean: 0 records\n")] {
        let out = tool(&[command, d]);
        assert_eq!(status(&out), 0, "{command}: {}", text(&out));
        assert!(text(&out).contains(says), "{command}: {}", text(&out));
        assert!(!text(&out).contains("LSN 1 to 0"), "{command}: {}", text(&out));
    }
}

// `dump` showed a tombstone's purge LSN as stored, also where it reaches past the tombstone's
// own LSN (as an older build could append it), with nothing to say that the library reads it as
// that own LSN: an operator read a drop of the rows appended after it that recovery and every
// replay leave alive.
#[test]
fn dump_says_how_a_tombstone_reaching_past_its_own_lsn_is_read() {
    use nodedb_wal::format::frame::{decode_frame, encode_frame};
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("wal");
    let wal = SegmentedWal::open(SegmentedWalConfig::new(&log)).unwrap();
    wal.append(Record::new(RecordType::optional(0x100), b"orders:before")).unwrap();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(2) };
    assert_eq!(wal.append_tombstone(&tombstone).unwrap(), Lsn(2));
    wal.append(Record::new(RecordType::optional(0x100), b"orders:after")).unwrap();
    wal.close().unwrap();
    let (path, offset) = frame_of(&log, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let header = decode_frame(&bytes[offset as usize..]).unwrap();
    let reaching = CollectionTombstonePayload { purge_lsn: Lsn(8), ..tombstone };
    encode_frame(&header, &reaching.encode().unwrap(), &mut bytes[offset as usize..]);
    std::fs::write(&path, &bytes).unwrap();

    let lines = dump_lines(&log, &["--payloads"]);
    let at = lines.iter().position(|l| l.starts_with(&format!("lsn {:>10}  ", 2))).expect("listed");
    assert_eq!(lines[at + 1], r#"    database 1  tenant 2  collection "orders"  purge lsn 8 (past the tombstone's own LSN: read as 2)"#);
    let json = dump_json(&log, &["--payloads"]);
    let decoded = &json[1]["decoded"];
    assert_eq!((&decoded["purge_lsn"], &decoded["applied_purge_lsn"]), (&8.into(), &2.into()), "{}", json[1]);
    assert_eq!(status(&tool(&["verify", log.to_str().unwrap()])), 0, "an older build's tombstone is no damage");
}

/// `salvage` names the drops and purges it leaves out past the damage: the copy's recovery no
/// longer reports them, so the engines must make them good themselves.
#[test]
fn salvage_names_the_drops_and_purges_past_the_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let wal = SegmentedWal::open(SegmentedWalConfig::new(&log)).unwrap();
    for i in 0..3u8 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[i; 300])).unwrap();
    }
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "gone".into(), purge_lsn: Lsn(3) };
    assert_eq!(wal.append_tombstone(&tombstone).unwrap(), Lsn(4));
    let purge = TemporalPurgePayload { engine: TemporalPurgeEngine::Graph, collection: "g".into(), cutoff_unix_ms: 0, purged_count: 1 };
    assert_eq!(wal.append_temporal_purge(&purge, Scope::default()).unwrap(), Lsn(5));
    wal.close().unwrap();
    let (file, at) = frame_of(&log, 2);
    flip(&file, at + 100);
    let out = tool(&["salvage", log.to_str().unwrap(), tmp.path().join("cut").to_str().unwrap()]);
    assert_eq!(status(&out), 2, "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("past the damage, not copied: 3 intact records, LSN 3 to 5; among them drops and purges"), "{said}");
    assert!(said.contains("collection-tombstone at LSN 4, temporal-purge at LSN 5"), "{said}");
}
