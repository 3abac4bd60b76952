//! A file on the io_uring backend whose own ring cannot be set up still opens and writes
//! durably, with pwrite + fdatasync: a ring costs a descriptor, and here none is left.
//!
//! The only test of its binary, because it lowers the process's descriptor limit while it runs.

use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
use nodedb_wal::{FsStorage, IoBackend};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Sets the soft descriptor limit for as long as it lives, then restores it.
struct FdLimit(Rlimit);

impl FdLimit {
    fn set(soft: u64) -> FdLimit {
        let old = getrlimit(Resource::Nofile);
        setrlimit(Resource::Nofile, Rlimit { current: Some(soft), maximum: old.maximum }).unwrap();
        FdLimit(old)
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        setrlimit(Resource::Nofile, self.0).unwrap();
    }
}

/// The lowest descriptor number not in use: the next one a new descriptor gets.
fn lowest_free_fd() -> u64 {
    let probe = std::fs::File::open("/dev/null").unwrap();
    u64::try_from(std::os::fd::AsRawFd::as_raw_fd(&probe)).unwrap()
}

#[test]
fn a_file_without_a_ring_of_its_own_writes_with_pwrite() {
    let storage = FsStorage::io_uring();
    if storage.backend() != IoBackend::IoUring {
        eprintln!("SKIPPED: io_uring refused here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let written = {
        // Room for the file's own descriptor and nothing more.
        let _limit = FdLimit::set(lowest_free_fd() + 1);
        let file =
            storage.open(&path, OpenMode { create: true, write: true, direct: false, create_new: false }).expect("the open needs no ring");
        let no_more = std::fs::File::open("/dev/null").expect_err("the limit leaves no descriptor for a ring");
        assert_eq!(no_more.raw_os_error(), Some(rustix::io::Errno::MFILE.raw_os_error()), "{no_more}");
        file.write_and_sync(b"durable", 0)
    };
    written.expect("the write falls back to pwrite + fdatasync");
    assert_eq!(std::fs::read(&path).unwrap(), b"durable");
}
