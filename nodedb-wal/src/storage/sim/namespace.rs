//! The simulated directory tree: each directory's volatile and durable entries ([`Dir`]),
//! the names, locks and renames of [`Storage`] for [`SimStorage`], and which entries a crash
//! keeps.
//!
//! A name lives in its directory, not in the file: a file's data can be durable while the
//! name that reaches it is not, and a crash can keep a name whose data was never synced.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::file::SimFile;
use super::inode::Inode;
use super::{Disk, SimRng, SimStorage, alive, eio, errno};
use crate::storage::{OpenMode, Storage};

#[derive(Clone, Debug, Default)]
pub(super) struct Dir {
    pub(super) volatile: BTreeMap<String, u64>,
    pub(super) durable: BTreeMap<String, u64>,
    /// The entries after each change since the last sync (the latest [`WRITTEN_BACK_STATES`]):
    /// the file system may have written the directory back in any of them before a crash.
    pub(super) written_back: Vec<BTreeMap<String, u64>>,
    /// Whether the directory's own entry in its parent survives a crash (after a `sync_dir` of
    /// the parent; the root always does).
    pub(super) entry_durable: bool,
}

/// How many states since its last sync a directory may be found in after a crash.
const WRITTEN_BACK_STATES: usize = 64;

impl Dir {
    /// Notes a change of the entries (see `written_back`).
    pub(super) fn changed(&mut self) {
        if self.written_back.len() == WRITTEN_BACK_STATES {
            self.written_back.remove(0);
        }
        self.written_back.push(self.volatile.clone());
    }

    /// The entries a crash leaves: the synced ones half the time, otherwise those of a moment
    /// since the last sync, when the file system may have written the directory back.
    pub(super) fn after_crash(&self, rng: &mut SimRng) -> BTreeMap<String, u64> {
        let states = self.written_back.len() as u64;
        if states == 0 || rng.below(2) == 0 {
            return self.durable.clone();
        }
        self.written_back[rng.below(states) as usize].clone()
    }
}

impl SimStorage {
    /// A rename within one directory; over an existing name only where `replace` says so.
    fn rename_in_dir(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let ((dir, old), (to_dir, new)) = (split(from), split(to));
        if dir != to_dir {
            return Err(io::Error::other("the simulation renames within one directory only"));
        }
        let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
        if !entries.volatile.contains_key(&old) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if !replace && entries.volatile.contains_key(&new) {
            return Err(errno(rustix::io::Errno::EXIST));
        }
        let ino = entries.volatile.remove(&old).expect("looked up above");
        entries.volatile.insert(new, ino);
        entries.changed();
        Ok(())
    }
}

/// Whether a directory and every ancestor have durable entries.
pub(super) fn dir_survives(dirs: &BTreeMap<PathBuf, Dir>, path: &Path) -> bool {
    path.ancestors().all(|p| dirs.get(p).is_none_or(|d| d.entry_durable))
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, name)
}

pub(super) fn lookup(disk: &Disk, path: &Path) -> Option<u64> {
    let (dir, name) = split(path);
    disk.dirs.get(&dir)?.volatile.get(&name).copied()
}

/// A held directory lock of [`SimStorage`].
#[derive(Debug)]
pub struct SimLock {
    disk: Arc<Mutex<Disk>>,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        disk.locks.remove(&self.dir);
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type Lock = SimLock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        // A new directory's entry is volatile until its parent is synced.
        for level in dir.ancestors().filter(|p| !p.as_os_str().is_empty()) {
            disk.dirs.entry(level.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<SimLock> {
        let mut disk = self.lock();
        alive(&disk)?;
        if !disk.locks.insert(dir.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(SimLock { disk: Arc::clone(&self.disk), dir: dir.to_path_buf() })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.lock();
        alive(&disk)?;
        let dir = disk.dirs.get(dir).ok_or(io::ErrorKind::NotFound)?;
        Ok(dir.volatile.keys().cloned().collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let mut disk = self.lock();
        alive(&disk)?;
        let ino = match lookup(&disk, path) {
            Some(_) if mode.create_new => return Err(errno(rustix::io::Errno::EXIST)),
            Some(ino) => ino,
            None if mode.create || mode.create_new => {
                let (dir, name) = split(path);
                let ino = disk.next_ino;
                let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
                entries.volatile.insert(name, ino);
                entries.changed();
                disk.next_ino += 1;
                disk.inodes.insert(ino, Inode::default());
                ino
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        let align = if mode.direct { self.direct_align } else { 1 };
        let handle = disk.next_handle;
        disk.next_handle += 1;
        Ok(SimFile { disk: Arc::clone(&self.disk), ino, handle, align, writable: mode.write })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let (dir, name) = split(path);
        let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
        entries.volatile.remove(&name).ok_or(io::ErrorKind::NotFound)?;
        entries.changed();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_in_dir(from, to, true)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_in_dir(from, to, false)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let rate = disk.faults.sync_dir_fail_ppm;
        if disk.rng.chance_ppm(rate) {
            return Err(eio());
        }
        let entries = disk.dirs.get_mut(dir).ok_or(io::ErrorKind::NotFound)?;
        entries.durable = entries.volatile.clone();
        entries.written_back.clear();
        for (path, child) in disk.dirs.iter_mut() {
            if path.parent() == Some(dir) {
                child.entry_durable = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{durable_empty_file, mode};
    use super::*;
    use crate::storage::{FaultConfig, StorageFile};

    #[test]
    fn a_new_file_and_a_rename_without_replacing_never_take_a_name_in_use() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        let taken = durable_empty_file(&sim);
        taken.write_at(b"someone else's", 0).unwrap();
        let new = OpenMode { create_new: true, ..mode() };
        let err = sim.open(&dir.join("a"), new).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let fresh = sim.open(&dir.join("b"), new).unwrap();
        fresh.write_at(b"mine", 0).unwrap();
        let err = sim.rename_no_replace(&dir.join("b"), &dir.join("a")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(sim.read_file(&dir.join("a")).unwrap(), b"someone else's");
        assert_eq!(sim.read_file(&dir.join("b")).unwrap(), b"mine");
        let err = sim.rename_no_replace(&dir.join("gone"), &dir.join("c")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        sim.rename_no_replace(&dir.join("b"), &dir.join("c")).unwrap();
        assert_eq!(sim.list(dir).unwrap(), ["a", "c"]);
        sim.rename(&dir.join("c"), &dir.join("a")).unwrap();
        assert_eq!(sim.read_file(&dir.join("a")).unwrap(), b"mine", "a plain rename still replaces");
    }
}
