//! Where io_uring is refused to the process, or cannot do what a durable write needs,
//! `FsStorage::io_uring` chooses pwrite + fdatasync, says so through `backend`, and a log on it
//! appends durably and reads back after a reopen: a seccomp filter as container runtimes
//! install one (`io_uring_setup` fails with EPERM, or ENOSYS), and a kernel from before Linux
//! 5.6, whose rings set up and run a NOP but have no write operation and cannot list the
//! operations they have (`io_uring_register` fails with EINVAL there).
//!
//! Found by a review: the probe ran only a NOP, so on such a kernel (Ubuntu 20.04's 5.4) the
//! backend was io_uring, and every write completed with EINVAL, poisoning the log at its first
//! append. Each case installs its filter on a thread of its own (a seccomp filter belongs to
//! the thread that installs it and the threads that thread starts), so nothing else in the
//! binary is refused anything.

mod common;

use common::{append_synced, assert_records, config, read_all};
use nodedb_wal::{FsStorage, IoBackend, SegmentedWal};

/// From now on, system call `nr` fails with `errno` on this thread and the threads it starts.
#[expect(unsafe_code, reason = "rustix has no call that installs a seccomp filter")]
fn refuse_on_this_thread(nr: libc::c_long, errno: i32) {
    let nr = u32::try_from(nr).expect("a system call number");
    let ret = |k: u32| libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k };
    let mut program = [
        // The system call's number: the first word of `seccomp_data`.
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: nr },
        ret(libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    rustix::thread::set_no_new_privs(true).expect("no_new_privs");
    // SAFETY: PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads the program `filter` points to (four
    // instructions in `program`, alive for the whole call) and copies it into the kernel; it
    // writes no memory of this process.
    let installed = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const filter) };
    assert_eq!(installed, 0, "seccomp filter: {}", std::io::Error::last_os_error());
}

/// On a thread of its own that refuses `nr` with `errno`: the backend `FsStorage::io_uring`
/// chooses there, and a log on it that takes appends and reads them back after a reopen.
fn backend_where_refused(nr: libc::c_long, errno: i32) -> IoBackend {
    std::thread::spawn(move || {
        refuse_on_this_thread(nr, errno);
        let storage = FsStorage::io_uring();
        let dir = tempfile::tempdir().unwrap();
        let wal = SegmentedWal::open_with(storage.clone(), config(dir.path())).unwrap();
        append_synced(&wal, 1, 20);
        wal.close().unwrap();
        let wal = SegmentedWal::open_with(storage.clone(), config(dir.path())).unwrap();
        assert_records(&read_all(&wal), 1, 20);
        storage.backend()
    })
    .join()
    .expect("the log works on the refused thread")
}

/// Whether this process may use io_uring at all; where not, no filter changes anything.
fn io_uring_here() -> bool {
    let here = FsStorage::io_uring().backend() == IoBackend::IoUring;
    if !here {
        eprintln!("SKIPPED: io_uring is refused here already");
    }
    here
}

#[test]
fn a_process_refused_io_uring_by_seccomp_writes_with_pwrite() {
    if !io_uring_here() {
        return;
    }
    for errno in [libc::EPERM, libc::ENOSYS] {
        assert_eq!(backend_where_refused(libc::SYS_io_uring_setup, errno), IoBackend::Pwrite, "io_uring_setup refused with {errno}");
    }
}

#[test]
fn a_kernel_whose_io_uring_cannot_list_its_operations_gets_pwrite() {
    if !io_uring_here() {
        return;
    }
    assert_eq!(backend_where_refused(libc::SYS_io_uring_register, libc::EINVAL), IoBackend::Pwrite);
}
