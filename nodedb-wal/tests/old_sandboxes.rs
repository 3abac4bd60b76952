//! A writer opens inside a sandbox whose seccomp filter answers system calls newer than it
//! knows with `EPERM` instead of `ENOSYS` (Docker's default profile before 20.10, systemd's
//! older ones): `faccessat2`, which the open's check that the directory takes new entries
//! calls, is one of them. Such a filter must not fail every open of every log.
//!
//! Found by an adversarial review of that check: the open failed with `EPERM` as a lock error
//! on a directory the user could write. An immutable directory is still refused there.
//!
//! The filter is installed on a thread of the test's own, which the writer's open runs on
//! (and whose threads, the flusher's, inherit it); x86-64 only, elsewhere the test prints
//! `SKIPPED:`.

use std::path::Path;

use nodedb_wal::{IoOp, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, WalError};

/// Installs, on the calling thread, a seccomp filter that fails `faccessat2` with `EPERM`.
#[cfg(target_arch = "x86_64")]
#[expect(unsafe_code, reason = "seccomp is installed through prctl, which libc exposes as unsafe")]
fn refuse_faccessat2() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7FFF_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |k: u32, jf: u8| libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf, k };
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut program = [
        stmt(load, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 3),
        stmt(load, 0), // seccomp_data.nr
        jump(libc::SYS_faccessat2 as u32, 1),
        stmt(ret, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers; with PR_SET_SECCOMP it reads
    // `fprog` and the filter it points to, both alive for the call.
    let failed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog) != 0
    };
    if failed { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn refuse_faccessat2() -> std::io::Result<()> {
    Err(std::io::Error::other("the filter is written for x86-64"))
}

/// On a sandboxed thread: opens a writer on `dir`, appends a record durably and closes.
fn write_one_in_sandbox(dir: &Path) -> Option<Result<Lsn, WalError>> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        if let Err(e) = refuse_faccessat2() {
            eprintln!("SKIPPED: cannot install the seccomp filter ({e})");
            return None;
        }
        assert_eq!(
            rustix::fs::accessat(rustix::fs::CWD, &dir, rustix::fs::Access::WRITE_OK, rustix::fs::AtFlags::EACCESS)
                .err()
                .filter(|e| *e != rustix::io::Errno::NOSYS),
            Some(rustix::io::Errno::PERM),
            "the filter refuses faccessat2"
        );
        Some(SegmentedWal::open(SegmentedWalConfig::new(&dir)).and_then(|wal| {
            let lsn = wal.append_durable(Record::new(RecordType::optional(0x100), b"in a sandbox"))?;
            wal.close()?;
            Ok(lsn)
        }))
    })
    .join()
    .unwrap()
}

#[test]
fn a_sandbox_that_answers_faccessat2_with_eperm_still_opens_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let Some(written) = write_one_in_sandbox(&dir) else { return };
    assert_eq!(written.unwrap(), Lsn(1));
    let wal = SegmentedWal::open(SegmentedWalConfig::new(&dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, Lsn(1));
    drop(wal);

    // The way around the filter still refuses a directory that takes no new entries.
    let chattr = |flag: &str| std::process::Command::new("chattr").arg(flag).arg(&dir).status().is_ok_and(|s| s.success());
    if !chattr("+i") {
        eprintln!("SKIPPED: cannot make {} immutable", dir.display());
        return;
    }
    let refused = write_one_in_sandbox(&dir).expect("the filter went in before");
    assert!(chattr("-i"));
    let err = refused.unwrap_err();
    assert!(matches!(&err, WalError::Io { op: IoOp::Lock, path, .. } if *path == dir), "{err:?}");
    assert_eq!(SegmentedWal::open(SegmentedWalConfig::new(&dir)).unwrap().recovery_info().last_lsn, Lsn(1));
}
