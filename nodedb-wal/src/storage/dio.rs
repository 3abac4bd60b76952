//! What O_DIRECT I/O on a file must be aligned to, and what a writer does about it.
//!
//! A disk with 4096-byte logical sectors (a "4Kn" drive) refuses O_DIRECT reads and writes
//! whose offset or length is not a multiple of 4096 with `EINVAL`. Opening the file with
//! O_DIRECT succeeds all the same, so a log of 512-byte blocks on such a disk used to open and
//! then poison itself at its first write. Since Linux 6.1 the kernel says what a file needs
//! (`statx` with `STATX_DIOALIGN`); [`plan_direct_io`] turns that answer and the configuration
//! into one decision, made before anything is written.

/// The alignment the kernel reports for O_DIRECT I/O on one file (`STATX_DIOALIGN`).
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::DioAlign;
///
/// assert_eq!(DioAlign { offset: 4096, memory: 512 }.required(), Some(4096));
/// assert_eq!(DioAlign { offset: 0, memory: 0 }.required(), None, "O_DIRECT not supported for this file");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// `stx_dio_offset_align`: file offsets and I/O lengths must be multiples of it.
    pub offset: u32,
    /// `stx_dio_mem_align`: buffer addresses must be multiples of it.
    pub memory: u32,
}

impl DioAlign {
    /// The least block length whose multiples satisfy both, or `None` where the kernel says
    /// the file takes no O_DIRECT I/O (it reports 0).
    #[must_use]
    pub fn required(self) -> Option<usize> {
        if self.offset == 0 {
            return None;
        }
        Some(self.offset.max(self.memory) as usize)
    }
}

/// How a file is to be written, given the block length configured for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIoPlan {
    /// With O_DIRECT, in blocks of the configured length.
    Direct,
    /// Through the page cache: the blocks are finer than O_DIRECT takes here and the
    /// configuration allows buffered I/O.
    Buffered {
        /// The alignment O_DIRECT needs here.
        required: usize,
    },
    /// Not at all: the blocks are finer than O_DIRECT takes here and buffered I/O is not
    /// allowed.
    Refuse {
        /// The alignment O_DIRECT needs here.
        required: usize,
    },
}

/// Decides how to write blocks of `block` bytes to a file opened with O_DIRECT, where the
/// kernel reported `reported` for it (`None`: it did not say).
///
/// | kernel reports | `block` a multiple of what it needs | buffered allowed | plan |
/// |---|---|---|---|
/// | nothing (before Linux 6.1, or this file system does not say) | – | – | `Direct` (the writes themselves will tell) |
/// | O_DIRECT unsupported (0) | – | – | `Direct`: the open took O_DIRECT, and file systems that report 0 (ext4 with `data=journal`) then write through the page cache themselves |
/// | an alignment | yes | – | `Direct` |
/// | an alignment | no | yes | `Buffered` |
/// | an alignment | no | no | `Refuse` |
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::{DioAlign, DirectIoPlan, plan_direct_io};
///
/// let four_kn = Some(DioAlign { offset: 4096, memory: 512 });
/// assert_eq!(plan_direct_io(4096, four_kn, false), DirectIoPlan::Direct);
/// assert_eq!(plan_direct_io(512, four_kn, false), DirectIoPlan::Refuse { required: 4096 });
/// assert_eq!(plan_direct_io(512, four_kn, true), DirectIoPlan::Buffered { required: 4096 });
/// assert_eq!(plan_direct_io(512, None, false), DirectIoPlan::Direct, "unknown: as before");
/// ```
#[must_use]
pub fn plan_direct_io(block: usize, reported: Option<DioAlign>, allow_buffered: bool) -> DirectIoPlan {
    match too_fine(block, reported) {
        None => DirectIoPlan::Direct,
        Some(required) if allow_buffered => DirectIoPlan::Buffered { required },
        Some(required) => DirectIoPlan::Refuse { required },
    }
}

/// The alignment O_DIRECT needs here, where blocks of `block` bytes do not meet it (`None`:
/// they do, or the kernel did not say): what a writer without a buffered fallback refuses.
pub(crate) fn too_fine(block: usize, reported: Option<DioAlign>) -> Option<usize> {
    reported.and_then(DioAlign::required).filter(|&required| !block.is_multiple_of(required))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the table, at the block lengths a config allows around a 4Kn disk's 4096
    /// and a 512e disk's 512: a block is fine exactly when it is a multiple of both numbers.
    #[test]
    fn a_block_finer_than_the_reported_alignment_is_never_planned_for_o_direct() {
        let blocks = [512usize, 1024, 2048, 4096, 8192, 1 << 20];
        let reports = [
            None,
            Some((0, 0)),
            Some((512, 4)),
            Some((512, 512)),
            Some((4096, 512)),
            Some((4096, 4)),
            Some((512, 4096)),
            Some((8192, 512)),
        ];
        for block in blocks {
            for report in reports {
                let reported = report.map(|(offset, memory)| DioAlign { offset, memory });
                for allow_buffered in [false, true] {
                    let plan = plan_direct_io(block, reported, allow_buffered);
                    let expected = match report {
                        None | Some((0, _)) => DirectIoPlan::Direct,
                        Some((offset, memory)) if block % offset as usize == 0 && block % memory as usize == 0 => DirectIoPlan::Direct,
                        Some((offset, memory)) => {
                            let required = offset.max(memory) as usize;
                            if allow_buffered { DirectIoPlan::Buffered { required } } else { DirectIoPlan::Refuse { required } }
                        }
                    };
                    assert_eq!(plan, expected, "block {block}, reported {report:?}, buffered allowed {allow_buffered}");
                }
            }
        }
    }
}
