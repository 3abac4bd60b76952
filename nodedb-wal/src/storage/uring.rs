//! io_uring: a write and an fdatasync submitted as linked entries with one system call.

#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{IoUring, opcode, squeue, types};

use crate::error::IoOp;

const ECANCELED: i32 = 125;

/// One small ring per file, set up at its first durable write (for a segment, its header), so
/// one per segment. Whichever thread holds the log's writer uses it, under the file's mutex:
/// the flusher, or on a quiet log the waiting caller. So no `SINGLE_ISSUER` or
/// `DEFER_TASKRUN`, which tie a ring to one thread; they, `COOP_TASKRUN` and a registered file
/// were measured and none was faster (docs/DESIGN.md, "Why pwrite is the default backend").
pub struct Ring {
    ring: IoUring,
    /// Set when `io_uring_enter` failed: entries may still sit in the queue, so the ring is
    /// never entered again (they would then refer to a buffer that is gone).
    broken: bool,
    /// Numbers each submitted pair, so that a completion from anything but the pair in flight
    /// is told apart from it: the write of pair `n` is tagged `2n`, its sync `2n + 1`.
    pairs: u64,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring").field("broken", &self.broken).finish()
    }
}

impl Ring {
    /// Whether this process may use io_uring at all (seccomp, `kernel.io_uring_disabled`), and
    /// whether the kernel's io_uring knows the two operations a durable write submits. Rings
    /// came in Linux 5.1, their write operation in 5.6: on a kernel in between (Ubuntu 20.04's
    /// 5.4, say) a ring sets up and runs a NOP, and every write then completes with `EINVAL`,
    /// which poisoned the log at its first append instead of falling back to pwrite. The
    /// kernel's list of operations came in 5.6 too: a kernel that cannot give it has no write.
    pub fn probe() -> io::Result<()> {
        let mut ring = Ring::new()?;
        let nop = opcode::Nop::new().build().user_data(0);
        // SAFETY: a NOP refers to no memory.
        unsafe { ring.ring.submission().push(&nop) }.map_err(|_| io::Error::other("io_uring queue full"))?;
        ring.ring.submit_and_wait(1)?;
        ring.ring.completion().for_each(drop);
        let mut known = io_uring::Probe::new();
        ring.ring.submitter().register_probe(&mut known)?;
        for (name, code) in [("write", opcode::Write::CODE), ("fsync", opcode::Fsync::CODE)] {
            if !known.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("this kernel's io_uring has no {name} operation")));
            }
        }
        Ok(())
    }

    pub fn new() -> io::Result<Ring> {
        Ok(Ring { ring: IoUring::new(4)?, broken: false, pairs: 0 })
    }

    /// Writes all of `buf` at `offset`, then fdatasyncs, as linked entries. Short writes are
    /// completed; every completion's result is checked. A failed sync is returned, not retried.
    ///
    /// Not one `RWF_DSYNC` write instead, though that was ~1.2x faster at 16 threads: callers
    /// rely on the sync covering everything written to the file before (a new segment's
    /// header, zero-fill ahead), and `RWF_DSYNC` promises only the bytes of its own write. On a
    /// buffered file it syncs just that range (the file-system shutdown test lost a segment
    /// header that way), and on a device with FUA a pure overwrite may be forced to media
    /// alone, leaving earlier writes in the device's cache.
    pub fn write_and_sync(&mut self, fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> Result<(), (IoOp, io::Error)> {
        loop {
            let (written, sync) = self.submit_pair(fd, buf, offset).map_err(|e| (IoOp::Write, e))?;
            if written < 0 {
                return Err((IoOp::Write, io::Error::from_raw_os_error(-written)));
            }
            let written = written as usize;
            if written == buf.len() {
                return match sync {
                    0 => Ok(()),
                    err => Err((IoOp::SyncData, io::Error::from_raw_os_error(-err))),
                };
            }
            // A short write cancels the linked sync (which therefore never ran): finish the write.
            if written == 0 {
                return Err((IoOp::Write, io::Error::new(io::ErrorKind::WriteZero, "io_uring write wrote nothing")));
            }
            debug_assert!(sync == -ECANCELED || sync == 0);
            buf = &buf[written..];
            offset += written as u64;
        }
    }

    /// Submits a write linked to an fdatasync and returns both results.
    fn submit_pair(&mut self, fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<(i32, i32)> {
        if self.broken {
            return Err(io::Error::other("io_uring ring unusable after an earlier failure"));
        }
        let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("write larger than 4 GiB"))?;
        let fd = types::Fd(fd.as_raw_fd());
        self.pairs += 1;
        let (write_tag, sync_tag) = (self.pairs * 2, self.pairs * 2 + 1);
        let write = opcode::Write::new(fd, buf.as_ptr(), len).offset(offset).build().flags(squeue::Flags::IO_LINK).user_data(write_tag);
        let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(sync_tag);
        // SAFETY: `buf` outlives both operations: we return only after both completions arrive,
        // or after marking the ring broken when the kernel took none of them (see below).
        let pushed = unsafe {
            let mut sq = self.ring.submission();
            sq.push(&write).is_ok() && sq.push(&sync).is_ok()
        };
        if !pushed {
            // The write may sit queued without its sync: a later submit would run it against a
            // buffer that is gone. The queue holds twice what one call pushes, so this is not
            // expected; if it happens, the ring is never submitted again.
            self.broken = true;
            return Err(io::Error::other("io_uring queue full"));
        }
        let mut results = (None, None);
        let mut unknown = None;
        let mut want = 2;
        let mut submitted = false;
        while want > 0 {
            match self.ring.submit_and_wait(want) {
                Ok(_) => submitted = true,
                Err(e) if e.raw_os_error() == Some(libc_eintr()) => continue,
                // The kernel reports an error only when it consumed no entry, so nothing refers
                // to `buf`; the entries stay queued, so the ring must never be entered again.
                Err(e) if !submitted => {
                    self.broken = true;
                    return Err(e);
                }
                // The kernel holds `buf` and we cannot learn when it lets go: returning would
                // let it be freed under a running write. Stopping is the only sound choice.
                Err(e) => {
                    tracing::error!(%e, "io_uring wait failed with operations in flight; aborting");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                // Only this pair's completions count. Any other (never expected: every call
                // drains its own pair) must not end the wait: returning, or panicking, while
                // the write is in flight would free `buf` under the kernel.
                match cqe.user_data() {
                    tag if tag == write_tag && results.0.is_none() => results.0 = Some(cqe.result()),
                    tag if tag == sync_tag && results.1.is_none() => results.1 = Some(cqe.result()),
                    tag => {
                        unknown = unknown.or(Some(tag));
                        continue;
                    }
                }
                want -= 1;
            }
        }
        if let Some(tag) = unknown {
            // Both operations are done, so failing is safe now; the ring's state is not
            // understood, so it is never entered again.
            self.broken = true;
            tracing::error!(tag, "unexpected io_uring completion; the ring is retired");
            return Err(io::Error::other(format!("unexpected io_uring completion (tag {tag})")));
        }
        Ok((results.0.expect("write completion"), results.1.expect("sync completion")))
    }
}

fn libc_eintr() -> i32 {
    rustix::io::Errno::INTR.raw_os_error()
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    fn open(path: &std::path::Path, write: bool) -> OwnedFd {
        let file = std::fs::OpenOptions::new().read(true).write(write).create(write).truncate(false).open(path).unwrap();
        OwnedFd::from(file)
    }

    /// A ring, or `None` after saying why the test has nothing to check.
    fn ring_or_skip() -> Option<Ring> {
        Ring::new().map_err(|e| eprintln!("SKIPPED: io_uring refused here ({e})")).ok()
    }

    #[test]
    fn a_durable_write_lands_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fd = open(&path, true);
        let Some(mut ring) = ring_or_skip() else { return };
        ring.write_and_sync(&fd, b"hello", 3).unwrap();
        ring.write_and_sync(&fd, b"abc", 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abchello");
    }

    /// The probe asks the kernel for its list of operations: a kernel whose rings write and sync
    /// (this one, where a ring sets up) passes it, so the check for kernels without a write
    /// operation never turns away one that has it.
    #[test]
    fn a_kernel_whose_rings_write_and_sync_passes_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open(&dir.path().join("f"), true);
        let Some(mut ring) = ring_or_skip() else { return };
        ring.write_and_sync(&fd, b"x", 0).unwrap();
        Ring::probe().unwrap();
    }

    /// Leaves a completion on `ring` that belongs to no pair: a NOP submitted and never reaped.
    fn leave_a_stray_completion(ring: &mut Ring) {
        let nop = opcode::Nop::new().build().user_data(u64::MAX);
        // SAFETY: a NOP refers to no memory.
        unsafe { ring.ring.submission().push(&nop) }.unwrap();
        ring.ring.submit_and_wait(1).unwrap();
    }

    /// How many completions the kernel has posted to `ring` (`CqTail` in the ring's fdinfo).
    fn completions_posted(ring: &Ring) -> u32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ring.ring.as_raw_fd())).unwrap();
        let tail = info.lines().find_map(|line| line.strip_prefix("CqTail:")).expect("CqTail in an io_uring's fdinfo");
        tail.trim().parse().unwrap()
    }

    // Before, a completion the ring did not expect hit `unreachable!`, which unwinds while the
    // pair's write may still be in flight: its buffer could be freed under the kernel.
    #[test]
    fn a_stray_completion_fails_the_call_only_once_its_write_and_sync_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fd = open(&path, true);
        let Some(mut ring) = ring_or_skip() else { return };
        leave_a_stray_completion(&mut ring);
        let (op, err) = ring.write_and_sync(&fd, b"hello", 0).unwrap_err();
        assert_eq!(op, IoOp::Write);
        assert!(err.to_string().contains("unexpected io_uring completion"), "{err}");
        // The pair finished before the call returned: the kernel had posted its write's and
        // its sync's completions after the stray one, and the write landed.
        assert_eq!(completions_posted(&ring), 3);
        assert!(ring.ring.completion().is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        // A ring in a state nobody understands is not used again.
        assert!(ring.write_and_sync(&fd, b"x", 0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    }

    #[test]
    fn a_failed_write_is_returned_as_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        drop(open(&path, true));
        let read_only = open(&path, false);
        let Some(mut ring) = ring_or_skip() else { return };
        let (op, err) = ring.write_and_sync(&read_only, b"x", 0).unwrap_err();
        assert_eq!(op, IoOp::Write);
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::BADF.raw_os_error()));
        // The ring is still usable afterwards: the failure came back in a completion.
        let fd = open(&path, true);
        ring.write_and_sync(&fd, b"y", 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
    }
}
