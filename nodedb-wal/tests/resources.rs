//! Resources the crate takes are given back: every file descriptor it opens is closed once the
//! value that took it is dropped or the call that needed it returned. A database keeps its log
//! and its double-write buffer open for months; anything left behind per call adds up.
//! Descriptors are counted through `/proc/self/fd`, only those under the test's own directory.

use std::path::Path;
use std::sync::Mutex;

/// The tests of this file count what the whole process holds: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Open descriptors of this process whose file lies under `dir`.
fn fds_under(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

// Found by review: the double-write buffer opened each page file at its first write and kept
// it open for as long as the buffer lived, with no way to let go. An engine that drops or
// replaces files (a dropped collection, a compaction) kept one descriptor per file it ever
// wrote, and the space of every removed file stayed allocated until the buffer was closed.
#[test]
fn the_double_write_buffer_holds_no_page_file_open_between_calls() {
    use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
    let held = fds_under(dir.path());
    for n in 0..20u32 {
        let path = dir.path().join(format!("pages-{n}"));
        std::fs::write(&path, vec![0u8; 2 * 4096]).unwrap();
        dwb.register_file(FileId(n), &path, 4096).unwrap();
        dwb.write_pages(&[(FileId(n), 1, &[n as u8; 4096])]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[4096], n as u8);
        // The engine drops the file.
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(fds_under(dir.path()), held, "descriptors of page files written and removed");
    drop(dwb);
    // The same after a recovery that applied images.
    let path = dir.path().join("pages-kept");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.register_file(FileId(100), &path, 4096).unwrap();
    dwb.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
    dwb.write_pages(&[(FileId(100), 0, &[1u8; 4096])]).unwrap();
    drop(dwb);
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.register_file(FileId(100), &path, 4096).unwrap();
    dwb.recover(|_, page| if page[0] == 1 { PageCheck::Intact { version: 1 } } else { PageCheck::Torn }).unwrap();
    assert_eq!(fds_under(dir.path()), held, "descriptors of page files recovery read");
}
