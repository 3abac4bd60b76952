//! What the log's two side files say, slot by slot: `MANIFEST` (the newest segment whose first
//! batch was durable) and `FLOOR` (the oldest segment the log still needs). They bound the log
//! at either end, and a `MissingSegment` refusal comes from one of them or from a hole between
//! two segments (the error says which, `why`); an operator needs to see what each slot holds.
//!
//! Read with plain read-only opens and decoded with the public slot codec: never through the
//! log's own open, which creates or rewrites these files.

use std::fmt::Write as _;
use std::path::Path;

use nodedb_wal::format::manifest::{FLOOR_FILE, MANIFEST_FILE, MANIFEST_LEN, ManifestSlot, SLOT_LEN, SLOT_SPACING, SlotKind};

/// One of the two slots of a side file.
enum Slot {
    Intact(ManifestSlot),
    /// All zeros: never written (slot 0 until the file's second update).
    Empty,
    /// Bytes that are not an intact slot: a torn update, or damage.
    NotIntact,
    /// The file ends before the slot does.
    CutOff,
}

impl Slot {
    fn describe(&self, index: usize) -> String {
        match self {
            Slot::Intact(slot) => format!("slot {index} intact (sequence {}, segment {})", slot.sequence, slot.newest),
            Slot::Empty => format!("slot {index} empty"),
            Slot::NotIntact => format!("slot {index} not intact (a torn update or damage)"),
            Slot::CutOff => format!("slot {index} past the end of the file"),
        }
    }
}

/// What one side file holds.
enum State {
    Absent,
    Unreadable(String),
    /// Both slots, and the bytes they were read from.
    Read([Slot; 2], Vec<u8>),
}

/// `MANIFEST` or `FLOOR` of a log directory, as found.
pub(super) struct SideFile {
    kind: SlotKind,
    state: State,
}

impl SideFile {
    /// Reads the file of `kind` in `dir`; changes nothing.
    pub(super) fn read(dir: &Path, kind: SlotKind) -> SideFile {
        let path = dir.join(name(kind));
        let state = match read_prefix(&path) {
            Ok(None) => State::Absent,
            Ok(Some(bytes)) => State::Read([0, 1].map(|index| slot_at(&bytes, index * SLOT_SPACING, kind)), bytes),
            Err(e) => State::Unreadable(e.to_string()),
        };
        SideFile { kind, state }
    }

    /// The current slot, as the log reads it, with its index.
    fn current(&self) -> Option<(usize, ManifestSlot)> {
        let State::Read(slots, bytes) = &self.state else { return None };
        let current = ManifestSlot::current_as(bytes, self.kind)?;
        let index = slots.iter().position(|slot| matches!(slot, Slot::Intact(s) if *s == current))?;
        Some((index, current))
    }

    /// The segment id the current slot names, if there is one.
    pub(super) fn segment(&self) -> Option<u64> {
        self.current().map(|(_, slot)| slot.newest.0)
    }

    /// One line for `inspect`: the file's name, what it says and both its slots.
    pub(super) fn line(&self) -> String {
        let name = name(self.kind);
        let what = match self.kind {
            SlotKind::Manifest => "newest durable segment",
            SlotKind::Floor => "oldest segment needed",
        };
        let mut line = format!("{name:<8}  ");
        match (&self.state, self.current()) {
            (State::Absent, _) => line.push_str(match self.kind {
                SlotKind::Manifest => "absent: a log written before MANIFEST existed; the next open writes one",
                SlotKind::Floor => "absent: a log no build with FLOOR has opened yet; its oldest segments are not checked until one does",
            }),
            (State::Unreadable(e), _) => {
                let _ = write!(line, "unreadable: {e}");
            }
            (State::Read(slots, _), Some((index, slot))) => {
                let none = if slot.newest.0 == 0 { " (none yet)" } else { "" };
                let _ = write!(
                    line,
                    "{what} {}{none}: slot {index} (sequence {}); {}",
                    slot.newest,
                    slot.sequence,
                    slots[1 - index].describe(1 - index)
                );
            }
            (State::Read(slots, _), None) => {
                let _ = write!(
                    line,
                    "damaged, no intact slot: {}, {}; the log is refused until it is removed",
                    slots[0].describe(0),
                    slots[1].describe(1)
                );
            }
        }
        line
    }
}

fn name(kind: SlotKind) -> &'static str {
    match kind {
        SlotKind::Manifest => MANIFEST_FILE,
        SlotKind::Floor => FLOOR_FILE,
    }
}

/// The file's first `MANIFEST_LEN` bytes, or `None` where it does not exist.
fn read_prefix(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, as the log's own opens: a FIFO under the name must not hang the look.
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::with_capacity(MANIFEST_LEN);
    file.take(MANIFEST_LEN as u64).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn slot_at(bytes: &[u8], at: usize, kind: SlotKind) -> Slot {
    let Some(slot) = bytes.get(at..at + SLOT_LEN) else { return Slot::CutOff };
    match ManifestSlot::decode_as(slot, kind) {
        Some(slot) => Slot::Intact(slot),
        None if slot.iter().all(|&b| b == 0) => Slot::Empty,
        None => Slot::NotIntact,
    }
}
