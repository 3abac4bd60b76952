//! Where the source and the destination are, for the check that the copy does not go inside
//! the log it copies: `a/other/../wal/saved` and `link-to-wal/saved` are inside `a/wal`, and
//! `a/wal/../saved` is not, though the paths as given say otherwise.

use std::path::{Component, Path, PathBuf};

/// `path` with `.` dropped and each `..` taking away the name before it, as the file system
/// reads a path none of whose names is a symbolic link.
pub(super) fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // The root's parent is the root.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// `path` as the real file system resolves it: its longest existing prefix with every symbolic
/// link and `..` resolved, the names after it (which do not exist yet, so none is a link) taken
/// lexically. A relative path is taken from the working directory.
pub(super) fn resolved(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let components: Vec<Component<'_>> = path.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        if let Ok(real) = std::fs::canonicalize(&prefix) {
            return lexical(&components[existing..].iter().fold(real, |at, c| at.join(c)));
        }
    }
    lexical(&path)
}

/// Refuses a destination inside the source (the source itself included).
pub(super) fn check_outside(source: &Path, dest: &Path) -> crate::error::Result<()> {
    if dest.starts_with(source) {
        return Err(crate::error::WalError::InvalidConfig { reason: "a salvage's destination must lie outside the log it copies" });
    }
    Ok(())
}
