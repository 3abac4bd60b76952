//! The wrapper's pass-through: [`FaultyFile`], and the [`Storage`] and [`StorageFile`] impls
//! that ask the fault plan before each call reaches the wrapped storage.
//!
//! Every call is forwarded unchanged unless a rule hits it; reads and `len` are never
//! checked.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{EACCES, EINVAL, FaultOp, FaultyStorage, State, Verdict, lock_state};
use crate::error::IoOp;
use crate::storage::{OpenMode, Storage, StorageFile};

/// A file of a [`FaultyStorage`]: the wrapped storage's file, failing as its storage's fault
/// plan says.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::faulty::{FaultyFile, FaultyStorage};
/// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// storage.create_dir_all(Path::new("/d"))?;
/// let file: FaultyFile<_> = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// file.write_at(b"abc", 0)?;
/// assert_eq!(file.len()?, 3);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct FaultyFile<F> {
    inner: F,
    state: Arc<Mutex<State>>,
}

impl<F> FaultyFile<F> {
    fn check(&self, op: FaultOp) -> io::Result<()> {
        lock_state(&self.state).check(op)
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    type File = FaultyFile<S::File>;
    type Lock = S::Lock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<S::Lock> {
        self.inner.lock_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File> {
        let state = self.state();
        if mode.direct && state.refuse_direct {
            return Err(io::Error::from_raw_os_error(EINVAL));
        }
        if state.refuse_open.as_deref() == Some(path) {
            return Err(io::Error::from_raw_os_error(EACCES));
        }
        drop(state);
        Ok(FaultyFile { inner: self.inner.open(path, mode)?, state: Arc::clone(&self.state) })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::Remove)?;
        self.inner.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename)?;
        self.inner.rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename)?;
        self.inner.rename_no_replace(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultOp::SyncDir)?;
        self.inner.sync_dir(dir)
    }
}

impl<F: StorageFile> StorageFile for FaultyFile<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let verdict = lock_state(&self.state).verdict(FaultOp::Write);
        match verdict {
            Verdict::Pass => self.inner.write_at(buf, offset),
            Verdict::Fail(errno) => Err(io::Error::from_raw_os_error(errno)),
            Verdict::Partial(errno) => {
                // Half, rounded down to a multiple of 4 KiB so that O_DIRECT takes it.
                let half = (buf.len() / 2) & !4095;
                if half > 0 {
                    self.inner.write_at(&buf[..half], offset)?;
                }
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Err(e) = self.check(FaultOp::SyncData) {
            self.inner.sync_failed();
            return Err(e);
        }
        self.inner.sync_data()
    }

    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, io::Error)> {
        // Split, so that each half meets its own faults; without faults armed for either, the
        // inner storage's own chained path runs.
        let armed = {
            let mut state = lock_state(&self.state);
            let armed = state.power.is_some() || state.rules.iter().any(|r| matches!(r.op, FaultOp::Write | FaultOp::SyncData));
            if !armed {
                state.calls[FaultOp::Write.index()] += 1;
                state.calls[FaultOp::SyncData.index()] += 1;
            }
            armed
        };
        if !armed {
            return self.inner.write_and_sync(buf, offset);
        }
        self.write_at(buf, offset).map_err(|e| (IoOp::Write, e))?;
        self.sync_data().map_err(|e| (IoOp::SyncData, e))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(FaultOp::SetLen)?;
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn advise(&self, advice: crate::storage::Advice, offset: u64, len: u64) {
        self.inner.advise(advice, offset, len);
    }

    fn hold_shared(&self) -> io::Result<()> {
        self.inner.hold_shared()
    }

    fn try_hold_exclusive(&self) -> io::Result<bool> {
        self.inner.try_hold_exclusive()
    }

    fn has_other_links(&self) -> io::Result<bool> {
        self.inner.has_other_links()
    }

    fn direct_io_alignment(&self) -> Option<crate::storage::DioAlign> {
        self.inner.direct_io_alignment()
    }

    fn release_hold(&self) {
        self.inner.release_hold();
    }

    fn sync_failed(&self) {
        self.inner.sync_failed();
    }
}
