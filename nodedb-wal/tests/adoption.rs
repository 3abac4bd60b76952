//! What a database engineer adopting the log relies on, written from the README, the crate
//! docs and the examples alone: the first day's path (open, append from threads, read back,
//! checkpoint, reopen; the same encrypted, with a key rotation), the configuration mistakes a
//! user makes (each a typed error that says what to do, losing nothing), the error enum's
//! guidance, and the tool's answers on a log it cannot read.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, WalError};

const PUT: RecordType = RecordType::optional(0x100);

/// The README's configuration for a temporary directory, with small segments so that a few
/// hundred records span several of them.
fn config(dir: &Path) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    config.allow_buffered_fallback = true;
    config.segment_bytes_target = 64 * 1024;
    config
}

fn payload(thread: usize, i: usize) -> Vec<u8> {
    format!("thread {thread} row {i:>60}").into_bytes()
}

/// Appends `per_thread` records durably from each of `threads` threads; returns every LSN with
/// its payload.
fn append_from_threads(wal: &Arc<SegmentedWal>, threads: usize, per_thread: usize) -> Vec<(Lsn, Vec<u8>)> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let bytes = payload(t, i);
                        (wal.append_durable(Record::new(PUT, &bytes)).expect("append_durable"), bytes)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("appender")).collect();
    acked.sort();
    acked
}

fn read_back(wal: &SegmentedWal, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(from).unwrap().map(|r| r.map(|r| (r.lsn, r.payload.into_vec()))).collect::<Result<_, _>>().unwrap()
}

fn key_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap().write_all(bytes).unwrap();
    path
}

/// The whole first day: every acknowledged record reads back in LSN order, a checkpoint drops
/// only what lies below it, and a reopen finds the rest.
fn the_first_day(dir: &Path, config: &SegmentedWalConfig, rotate: Option<(&KeyRing, SecureKey)>) {
    let wal = Arc::new(SegmentedWal::open(config.clone()).unwrap());
    let mut acked = append_from_threads(&wal, 4, 100);
    let lsns: Vec<u64> = acked.iter().map(|(lsn, _)| lsn.0).collect();
    assert_eq!(lsns, (1..=400).collect::<Vec<_>>(), "dense LSNs from 1");
    if let Some((ring, key)) = rotate {
        ring.insert(2, key).unwrap();
        ring.set_active(2).unwrap();
        acked.extend(append_from_threads(&wal, 4, 100));
        let ids = wal.segment_key_ids().unwrap();
        assert_eq!((ids.first().unwrap().1, ids.last().unwrap().1), (Some(1), Some(2)), "{ids:?}");
    }
    assert_eq!(read_back(&wal, wal.oldest_lsn()), acked);

    // Checkpoint at the 300th record: the log keeps every record from 301 on.
    let checkpoint = Lsn(300);
    wal.truncate_before(checkpoint.next()).unwrap();
    assert!(wal.oldest_lsn() <= checkpoint.next() && wal.oldest_lsn() > Lsn::FIRST, "whole segments went");
    Arc::into_inner(wal).expect("the threads are done").close().unwrap();

    let wal = SegmentedWal::open(config.clone()).unwrap();
    let kept: Vec<_> = acked.iter().filter(|(lsn, _)| *lsn > checkpoint).cloned().collect();
    assert_eq!(read_back(&wal, checkpoint.next()), kept);
    assert!(matches!(wal.read_from(Lsn::FIRST), Err(WalError::LsnNotRetained { .. })));
    let _ = dir;
}

#[test]
fn records_appended_from_threads_read_back_in_order_and_a_checkpoint_keeps_everything_above_it() {
    let dir = tempfile::tempdir().unwrap();
    the_first_day(dir.path(), &config(dir.path()), None);
}

#[test]
fn an_encrypted_log_rotated_mid_way_reads_back_and_checkpoints_like_a_plaintext_one() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let first = SecureKey::load(&key_file(keys.path(), "1.key", &[0x11; 32])).unwrap();
    let second = SecureKey::load(&key_file(keys.path(), "2.key", &[0x22; 32])).unwrap();
    let ring = Arc::new(KeyRing::with_active(1, first));
    let mut config = config(dir.path());
    config.key_ring = Some(Arc::clone(&ring));
    the_first_day(dir.path(), &config, Some((&ring, second)));
}

/// Opens `config`, expecting a refusal; returns it with its message.
fn refused(config: SegmentedWalConfig) -> (WalError, String) {
    let err = SegmentedWal::open(config).expect_err("the open is refused");
    let message = err.to_string();
    (err, message)
}

#[test]
fn zero_or_tiny_sizes_are_refused_at_open_naming_the_setting_and_creating_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("wal");
    // Each setting, a mistake in it, and the bound the message must give in the config's terms.
    type Change = dyn Fn(&mut SegmentedWalConfig);
    let cases: [(&str, &Change, &str); 7] = [
        ("segment_bytes_target", &|c| c.segment_bytes_target = 0, "four times alignment"),
        ("segment_bytes_target", &|c| c.segment_bytes_target = 4096, "four times alignment"),
        ("batch_bytes_max", &|c| c.batch_bytes_max = 0, "at least alignment"),
        ("batch_bytes_max", &|c| c.batch_bytes_max = 100, "at least alignment"),
        ("batch_buffers", &|c| c.batch_buffers = 0, "at least 2"),
        ("payload_bytes_max", &|c| c.payload_bytes_max = 0, "between 1 byte and 2 GiB"),
        ("alignment", &|c| c.alignment = 0, "power of two from 512 to 1 MiB"),
    ];
    for (setting, change, bound) in cases {
        let mut c = config(&dir);
        change(&mut c);
        let (err, message) = refused(c);
        assert!(matches!(err, WalError::InvalidConfig { .. }), "{setting}: {err:?}");
        assert!(message.contains(setting) && message.contains(bound), "the message names {setting} and {bound:?}: {message}");
        assert!(!dir.exists(), "{setting}: a refused open created the directory");
    }
}

#[test]
fn a_segment_size_that_is_not_a_multiple_of_the_block_works_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes_target = 5 * 4096 + 1234;
    let wal = SegmentedWal::open(c.clone()).unwrap();
    let rows: Vec<Vec<u8>> = (0..200).map(|i| payload(0, i)).collect();
    for row in &rows {
        wal.append_durable(Record::new(PUT, row)).unwrap();
    }
    assert!(wal.segments().len() > 2, "the records span several segments");
    wal.close().unwrap();
    let wal = SegmentedWal::open(c).unwrap();
    let back: Vec<Vec<u8>> = read_back(&wal, Lsn::FIRST).into_iter().map(|(_, p)| p).collect();
    assert_eq!(back, rows);
}

#[test]
fn a_record_larger_than_a_segment_and_a_batch_is_written_alone_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes_target = 4 * 4096;
    c.batch_bytes_max = 4096;
    let wal = SegmentedWal::open(c.clone()).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let small = b"after the big one".to_vec();
    wal.append_durable(Record::new(PUT, &big)).unwrap();
    wal.append_durable(Record::new(PUT, &small)).unwrap();
    wal.close().unwrap();
    let wal = SegmentedWal::open(c).unwrap();
    assert_eq!(read_back(&wal, Lsn::FIRST), vec![(Lsn(1), big), (Lsn(2), small)]);
}

#[test]
fn a_record_over_payload_bytes_max_is_refused_naming_the_setting_and_uses_no_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.payload_bytes_max = 1000;
    let wal = SegmentedWal::open(c).unwrap();
    let err = wal.append_durable(Record::new(PUT, &[7; 1001])).unwrap_err();
    assert!(matches!(err, WalError::PayloadTooLarge { len: 1001, max: 1000 }), "{err:?}");
    assert!(err.to_string().contains("payload_bytes_max"), "{err}");
    assert_eq!(wal.append_durable(Record::new(PUT, &[7; 1000])).unwrap(), Lsn::FIRST, "the log goes on");
}

#[test]
fn a_log_path_that_is_a_file_is_refused_with_an_io_error_naming_it_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wal");
    std::fs::write(&file, b"my notes").unwrap();
    for create_if_missing in [true, false] {
        let mut c = config(&file);
        c.create_if_missing = create_if_missing;
        let (err, message) = refused(c);
        assert!(matches!(&err, WalError::Io { path, .. } if path == &file), "{err:?}");
        assert!(message.contains("not a directory") || message.contains("Not a directory"), "says why: {message}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"my notes");
}

#[test]
fn a_log_path_under_a_file_is_refused_with_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes");
    std::fs::write(&file, b"my notes").unwrap();
    let (err, message) = refused(config(&file.join("wal")));
    assert!(matches!(&err, WalError::Io { .. }), "{err:?}");
    assert!(message.contains("notes"), "names the path: {message}");
    assert_eq!(std::fs::read(&file).unwrap(), b"my notes");
}

#[test]
fn a_second_open_of_the_same_directory_in_one_process_is_refused_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let first = SegmentedWal::open(config(dir.path())).unwrap();
    first.append_durable(Record::new(PUT, b"one")).unwrap();
    // The same directory under another spelling, or through a symbolic link, is the same log.
    let other_spelling = dir.path().join(".").join("..").join(dir.path().file_name().unwrap());
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("wal");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    for path in [dir.path().to_path_buf(), other_spelling, link] {
        let (err, message) = refused(config(&path));
        assert!(matches!(err, WalError::Locked { .. }), "{err:?}");
        assert!(message.contains("close it first") && message.contains("ReadOnlyWal"), "{message}");
    }
    first.append_durable(Record::new(PUT, b"two")).unwrap();
    first.close().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    assert_eq!(read_back(&wal, Lsn::FIRST), vec![(Lsn(1), b"one".to_vec()), (Lsn(2), b"two".to_vec())]);
}

const CHILD_DIR: &str = "NODEDB_WAL_ADOPTION_CHILD_DIR";

/// Both roles in one test: run plainly, it holds the log and starts itself again as a second
/// process, whose open must be refused with `Locked` (its exit status says what it got).
#[test]
fn a_second_process_opening_a_held_log_is_refused_with_locked_and_writes_nothing() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let outcome = SegmentedWal::open(config(Path::new(&dir)));
        eprintln!("child: {:?}", outcome.as_ref().err());
        std::process::exit(if matches!(outcome, Err(WalError::Locked { .. })) { 0 } else { 1 });
    }
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    wal.append_durable(Record::new(PUT, b"held")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_second_process_opening_a_held_log_is_refused_with_locked_and_writes_nothing", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "the child was not refused: {}", String::from_utf8_lossy(&out.stderr));
    wal.append_durable(Record::new(PUT, b"still mine")).unwrap();
    wal.close().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    assert_eq!(read_back(&wal, Lsn::FIRST), vec![(Lsn(1), b"held".to_vec()), (Lsn(2), b"still mine".to_vec())]);
}

#[test]
fn a_key_file_of_the_wrong_length_is_refused_saying_how_long_a_key_is() {
    let keys = tempfile::tempdir().unwrap();
    for (name, len) in [("short.key", 16), ("long.key", 64), ("empty.key", 0)] {
        let path = key_file(keys.path(), name, &vec![0x11; len]);
        let err = SecureKey::load(&path).expect_err("refused");
        let message = err.to_string();
        assert!(matches!(err, WalError::KeyFile { .. }), "{name}: {err:?}");
        assert!(message.contains("32"), "{name}: says how long a key is: {message}");
    }
}

#[test]
fn a_plaintext_log_opened_with_a_key_encrypts_new_segments_and_reads_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    wal.append_durable(Record::new(PUT, b"plain")).unwrap();
    wal.close().unwrap();

    let mut c = config(dir.path());
    c.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    let wal = SegmentedWal::open(c.clone()).unwrap();
    wal.append_durable(Record::new(PUT, b"secret")).unwrap();
    let ids: Vec<_> = wal.segment_key_ids().unwrap().into_iter().map(|(_, key)| key).collect();
    assert_eq!((ids.first().copied(), ids.last().copied()), (Some(None), Some(Some(1))), "{ids:?}");
    wal.close().unwrap();
    let wal = SegmentedWal::open(c).unwrap();
    assert_eq!(read_back(&wal, Lsn::FIRST), vec![(Lsn(1), b"plain".to_vec()), (Lsn(2), b"secret".to_vec())]);
}

#[test]
fn an_encrypted_log_opened_without_its_key_is_refused_asking_for_the_key_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    let mut c = config(dir.path());
    c.key_ring = Some(Arc::clone(&ring));
    let wal = SegmentedWal::open(c.clone()).unwrap();
    wal.append_durable(Record::new(PUT, b"secret")).unwrap();
    wal.close().unwrap();

    let (err, message) = refused(config(dir.path()));
    assert!(matches!(err, WalError::KeyRingMissing { .. }), "{err:?}");
    assert!(message.contains("key ring"), "{message}");
    let mut other = config(dir.path());
    other.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    let (err, message) = refused(other);
    assert!(matches!(err, WalError::WrongKey { key_id: 1, .. }), "{err:?}");
    assert!(message.contains("wrong key"), "{message}");

    let wal = SegmentedWal::open(c).unwrap();
    assert_eq!(read_back(&wal, Lsn::FIRST), vec![(Lsn(1), b"secret".to_vec())]);
}

fn tool(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).current_dir(cwd).args(args).output().expect("the tool runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8");
    (out.status.code().expect("an exit status"), text(out.stdout), text(out.stderr))
}

/// `COMMAND --help` and `COMMAND -h` are how people ask a tool for help: the usage, status 0,
/// and nothing done. `bench -h` used to take `-h` for its directory and write a log there.
#[test]
fn help_asked_after_any_command_prints_the_usage_and_does_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    for command in ["inspect", "dump", "verify", "salvage", "bench"] {
        for help in ["--help", "-h"] {
            let (code, stdout, stderr) = tool(cwd.path(), &[command, help]);
            assert_eq!(code, 0, "{command} {help}: {stderr}");
            assert!(stdout.starts_with("usage: nodedb-wal"), "{command} {help}: {stdout}");
        }
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing was made in the working directory");
}

/// An argument that starts with a dash and is no option is a mistyped option, not a directory
/// (a directory of that name is `./-x`): status 3, and nothing made.
#[test]
fn an_unknown_short_option_is_refused_as_bad_usage_not_taken_for_a_directory() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["bench", "-t", "4"][..], &["bench", "-x"], &["verify", "-v"]] {
        let (code, _, stderr) = tool(cwd.path(), args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert!(stderr.contains("unknown option -"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing was made in the working directory");
}

/// What a user gives the tool by mistake: each answer names what is wrong, with the status the
/// usage text lists.
#[test]
fn the_tool_names_what_is_wrong_with_a_log_it_cannot_read_and_exits_with_the_listed_status() {
    let tmp = tempfile::tempdir().unwrap();
    let (empty, file, log) = (tmp.path().join("empty"), tmp.path().join("file"), tmp.path().join("log"));
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(&file, b"x").unwrap();
    let mut c = config(&log);
    c.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [5; 32]))));
    let wal = SegmentedWal::open(c).unwrap();
    wal.append_durable(Record::new(PUT, b"secret")).unwrap();
    wal.close().unwrap();
    let wrong = key_file(tmp.path(), "wrong.key", &[6; 32]);
    let short = key_file(tmp.path(), "short.key", &[5; 16]);
    let segment = nodedb_wal::segment::path(&log, nodedb_wal::SegmentId(1));
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (vec!["verify".into(), s(&empty)], 5, "not a nodedb-wal directory".into()),
        (vec!["verify".into(), s(&tmp.path().join("missing"))], 3, "No such file or directory".into()),
        (vec!["verify".into(), s(&file)], 3, "is a file, not a directory: give the log's directory".into()),
        (vec!["inspect".into(), s(&segment)], 3, format!("give the log's directory, {}", s(&log))),
        (vec!["verify".into(), s(&log)], 4, "--key-file".into()),
        (vec!["verify".into(), s(&log), "--key-file".into(), s(&wrong)], 4, "wrong key".into()),
        (vec!["verify".into(), s(&log), "--key-file".into(), s(&short)], 4, "exactly 32".into()),
        (vec!["dump".into(), s(&log), "--payloads".into()], 4, "--key-file".into()),
        (vec!["dump".into(), s(&log), "--from".into(), "99".into()], 0, "no record from LSN 99 on: the log's last record is LSN 1".into()),
    ];
    for (args, status, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = tool(tmp.path(), &args);
        assert_eq!(code, status, "{args:?}: {stderr}");
        assert!(stderr.contains(says.as_str()), "{args:?} says {says:?}: {stderr}");
    }
}

/// The variants of `WalError`, as its source declares them.
fn error_variants(source: &str) -> Vec<&str> {
    let body = &source[source.find("pub enum WalError {").expect("the enum")..];
    let body = &body[..body.find("\n}\n").expect("its end")];
    body.lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|line| line.trim_end_matches([' ', '{', ',']))
        .collect()
}

/// The enum's docs are where a caller looks to learn what to do with an error (retry, reopen,
/// give the right key, restore): its table must name every variant a caller can see. Fifteen
/// were missing, `FloorSlotDamaged` (which `is_corruption` counts) and `PlaintextRefused`
/// among them.
#[test]
fn the_error_docs_say_what_a_database_does_with_every_variant() {
    let source = include_str!("../src/error.rs");
    let variants = error_variants(source);
    assert!(variants.len() > 40 && variants.contains(&"Io") && variants.contains(&"DwbUnsupportedVersion"), "{variants:?}");
    let table = &source[source.find("/// # What a database does with each error").expect("the table")..];
    let table = &table[..table.find("/// # Examples").expect("its end")];
    let missing: Vec<_> = variants.iter().filter(|v| !table.contains(&format!("(WalError::{v})"))).collect();
    assert!(missing.is_empty(), "the table says nothing of {missing:?}");
}

/// A user who picks a small code for their first record type (`RecordType::optional(0x10)`)
/// is refused; the refusal must say which codes are theirs, not only that this one is not.
#[test]
fn a_reserved_record_type_is_refused_saying_which_codes_an_application_may_use() {
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    for reserved in [RecordType::optional(0x10), RecordType::required(0x01), RecordType::optional(0xFF)] {
        let err = wal.append(Record::new(reserved, b"row")).unwrap_err();
        assert!(matches!(err, WalError::ReservedRecordType { record_type } if record_type == reserved), "{err:?}");
        assert!(err.to_string().contains("0x0100 to 0x7FFF"), "says which codes are free: {err}");
    }
    assert_eq!(wal.append_durable(Record::new(RecordType::optional(0x100), b"row")).unwrap(), Lsn::FIRST, "nothing used an LSN");
}
