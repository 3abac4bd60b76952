//! The helper thread's side of reading ahead: the loop that reads window after window and hands
//! each over ([`Helper::run`], [`hand_over`]), the walk along the chain of frames, the checks
//! from the last frame back and the carry of a window's end into the next. Apart from
//! `read_ahead.rs`, which holds what both threads share (the window, the plan, the queue's
//! reader end and how long each side spins), because only the helper thread runs this code.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use super::{HEADROOM, LOOK_BACK, Patience, Plan, Window};
use crate::format::frame::{HEADER_LEN, RecordHeader, checksum_matches};
use crate::format::layout::round_up;
use crate::segment::reader::DropBehind;
use crate::segment::spare::{LargeSpares, SpareBuf};
use crate::storage::StorageFile;

/// The helper tells the reader of its checks, and looks where the reader is, every this many
/// bytes of frames.
const PUBLISH: u64 = 4 << 10;

/// Hands a window to the reader, spinning a while (see [`Patience`]) before it sleeps on a
/// full queue; `false` once the reader has gone.
fn hand_over(filled: &SyncSender<io::Result<Arc<Window>>>, window: io::Result<Arc<Window>>, patience: &mut Patience) -> bool {
    let mut window = Some(window);
    let attempt = || match filled.try_send(window.take().expect("a window to hand over")) {
        Ok(()) => Some(true),
        Err(TrySendError::Disconnected(_)) => Some(false),
        Err(TrySendError::Full(back)) => {
            window = Some(back);
            None
        }
    };
    match patience.spin(attempt) {
        Some(sent) => sent,
        None => filled.send(window.expect("a window to hand over")).is_ok(),
    }
}

fn buffer_len(chunk: usize, align: usize) -> usize {
    round_up((HEADROOM + chunk) as u64, align as u64) as usize
}

/// The helper thread's state.
pub(super) struct Helper<F> {
    plan: Plan<F>,
    /// The next frame of the chain, while the chain holds.
    chain: Option<u64>,
    /// Where that frame ends, when its header was read and the frame runs past the window: the
    /// next read reaches it whole, so that a frame longer than a window is carried once, not
    /// once per window (which copied and zeroed a growing buffer: minutes for a 1 GiB record).
    chain_frame_end: Option<u64>,
    /// Where the frames of the current window start, for checking them from the last back.
    frames: Vec<u64>,
    /// The share of each window's frames (in 1/`SHARES`) the helper checks at most, and the
    /// reader's word that it waited for a window (the helper does too much).
    share: u32,
    starved: Arc<AtomicBool>,
    /// How long to spin for room in the queue before sleeping.
    patience: Patience,
    /// Buffers of windows larger than a chunk, kept for the next such window.
    large: Arc<LargeSpares>,
}

/// The helper's share of the checking moves in steps of `1/SHARES`.
const SHARES: u32 = 16;

impl<F: StorageFile> Helper<F> {
    pub(super) fn new(plan: Plan<F>, starved: Arc<AtomicBool>) -> Helper<F> {
        Helper {
            chain: plan.chain,
            chain_frame_end: None,
            plan,
            frames: Vec::new(),
            share: SHARES / 2,
            starved,
            patience: Patience::new(),
            large: Arc::default(),
        }
    }

    /// Reads window after window until the end of the file, a short read, an error, or the
    /// reader going away. Returns the drop-behind state for the reader to go on with.
    pub(super) fn run(mut self, filled: &SyncSender<io::Result<Arc<Window>>>) -> Option<DropBehind> {
        let (file_len, align, chunk) = (self.plan.file_len, self.plan.align, self.plan.chunk);
        let mut at = self.plan.from;
        let mut window = Window::in_buffer(SpareBuf::get(buffer_len(chunk, align), align), HEADROOM, at);
        while at < file_len {
            let want = round_up(file_len - at, align as u64).min(self.next_read(at) as u64) as usize;
            let read_at = window.lo + window.len;
            let n = match self.plan.file.read_at(&mut window.buf[read_at..read_at + want], at) {
                Ok(n) => n,
                Err(err) => {
                    let _ = filled.send(Err(err));
                    break;
                }
            };
            if let Some(drop_behind) = self.plan.drop_behind.as_mut() {
                drop_behind.note(&*self.plan.file, at, at + n as u64, file_len);
            }
            window.len += n;
            at += n as u64;
            window.chain_end = self.walk(&window);
            let window_sent = Arc::new(window);
            if !hand_over(filled, Ok(Arc::clone(&window_sent)), &mut self.patience) {
                break;
            }
            self.check(&window_sent);
            if n < want || at >= file_len {
                break;
            }
            window = self.carry(&window_sent);
        }
        // No window is made from here on: buffers given back are not wanted again.
        self.large.close();
        self.plan.drop_behind
    }

    /// Bytes the read at `at` asks for (before the end of the file cuts it): a chunk, or the
    /// rest of the frame that crosses `at` where that is longer.
    fn next_read(&self, at: u64) -> usize {
        let frame_rest = self.chain_frame_end.map_or(0, |end| round_up(end.saturating_sub(at), self.plan.align as u64));
        (frame_rest as usize).max(self.plan.chunk)
    }

    /// Follows the chain through `window` by headers alone, noting where each whole frame
    /// starts; returns where the last one ends (the window's start where there is none).
    fn walk(&mut self, window: &Window) -> u64 {
        self.frames.clear();
        self.chain_frame_end = None;
        let Some(mut at) = self.chain.filter(|&at| at >= window.start) else { return 0 };
        let bytes = window.bytes();
        loop {
            let rel = (at - window.start) as usize;
            let Some(header) = bytes.get(rel..).and_then(|b| RecordHeader::decode(b).ok()) else {
                // Not a whole header here: the next window has it, or the chain ends.
                if window.end() - at >= crate::format::frame::HEADER_LEN as u64 {
                    self.chain = None;
                }
                break;
            };
            let end = at + header.frame_len() as u64;
            if end > self.plan.file_len {
                // Past the end of the file: the chain ends (the reader finds the damage).
                self.chain = None;
                break;
            }
            if end > window.end() {
                self.chain_frame_end = Some(end);
                break;
            }
            self.frames.push(at);
            at = end;
        }
        if self.chain.is_some() {
            self.chain = Some(at);
        }
        if self.frames.is_empty() { 0 } else { at }
    }

    /// Checks the frames `walk` found, from the last one back, until the reader, checking from
    /// the first one on, has been there, or a frame does not check (the reader finds it).
    ///
    /// The reader checks while it waits for nothing, so the work is best split where neither
    /// waits for the other: the helper takes a smaller share of each window after the reader
    /// had to wait for one, and a larger one after it did not.
    fn check(&mut self, window: &Window) {
        self.share = if self.starved.swap(false, Ordering::Relaxed) { self.share.saturating_sub(1) } else { (self.share + 1).min(SHARES) };
        let Some(&first) = self.frames.first() else { return };
        let stop = window.chain_end - (window.chain_end - first) * u64::from(self.share) / u64::from(SHARES);
        let (mut end, mut published) = (window.chain_end, window.chain_end);
        let mut reader_at = window.reader_at.0.load(Ordering::Relaxed);
        for &at in self.frames.iter().rev() {
            if published - end >= PUBLISH {
                window.checked_from.0.store(end, Ordering::Release);
                published = end;
                reader_at = window.reader_at.0.load(Ordering::Relaxed);
            }
            if end <= stop || reader_at >= end {
                break;
            }
            let rel = (at - window.start) as usize;
            let frame = &window.bytes()[rel..(end - window.start) as usize];
            if !RecordHeader::decode(frame).is_ok_and(|header| checksum_matches(frame, &header)) {
                self.chain = None;
                break;
            }
            end = at;
        }
        window.checked_from.0.store(end, Ordering::Release);
    }

    /// A window for the bytes after `window`, holding its end from the first frame of the chain
    /// not yet whole in it or from the first that starts in its last block (see the module
    /// documentation), from a block boundary.
    fn carry(&self, window: &Window) -> Window {
        let align = self.plan.align as u64;
        let end = window.end();
        let from = match self.chain {
            // The reader moves on from a window inside the frame that crosses its end (the
            // chain's next), or from a frame whose look at the next block boundary (a header
            // there) reaches past the end: the next window keeps from the earlier of the two.
            // The scan's blocks, not this reader's alignment: a read-only look reads in 512-byte
            // units a log whose blocks are 4 KiB, and a carry of one unit lost the frame the
            // reader was on, which stopped the helper at the first window's end.
            Some(at) => {
                let looks_past = end.saturating_sub(self.plan.block + HEADER_LEN as u64);
                let first = self.frames.partition_point(|&f| f < looks_past);
                self.frames.get(first).map_or(at, |&f| f.min(at))
            }
            None => end.saturating_sub(LOOK_BACK),
        };
        let from = (from & !(align - 1)).max(window.start);
        let carry = (end - from) as usize;
        let standard = buffer_len(self.plan.chunk, self.plan.align);
        let next_read = self.next_read(end);
        let (mut buf, lo) = if carry <= HEADROOM && next_read == self.plan.chunk {
            (SpareBuf::get(standard, self.plan.align), HEADROOM - carry)
        } else {
            // A frame longer than the headroom or the chunk crosses: a buffer of its own, with
            // room for all of it (kept for the next such frame once the reader is done with it).
            (SpareBuf::get_in(carry + next_read, self.plan.align, &self.large), 0)
        };
        let kept = (from - window.start) as usize;
        buf[lo..lo + carry].copy_from_slice(&window.bytes()[kept..]);
        let mut next = Window::in_buffer(buf, lo, from);
        next.len = carry;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ALIGN, MemFile, frames, plan};
    use super::*;

    /// One window of `bytes` from 0, as the helper hands it over before checking it.
    fn window_of(bytes: &[u8], helper: &mut Helper<MemFile>) -> Window {
        let mut window = Window::empty(bytes.len(), ALIGN);
        window.buf[..bytes.len()].copy_from_slice(bytes);
        window.len = bytes.len();
        window.chain_end = helper.walk(&window);
        window
    }

    fn helper(bytes: &[u8]) -> Helper<MemFile> {
        let mut helper = Helper::new(plan(bytes), Arc::new(AtomicBool::new(false)));
        helper.share = SHARES;
        helper
    }

    #[test]
    fn a_helper_alone_checks_every_whole_frame_of_its_window_from_the_last_back() {
        let (bytes, starts) = frames((0..50).map(|i| 100 + i * 37));
        let mut helper = helper(&bytes);
        let window = window_of(&bytes, &mut helper);
        helper.check(&window);
        for pair in starts.windows(2) {
            assert!(window.checked(pair[0], (pair[1] - pair[0]) as usize));
        }
        assert_eq!(helper.chain, Some(bytes.len() as u64), "the chain goes on after the window");
    }

    #[test]
    fn a_helper_stops_where_the_reader_checked_and_at_a_damaged_frame() {
        let (mut bytes, starts) = frames((0..50).map(|i| 100 + i * 37));
        bytes[starts[30] as usize + HEADER_LEN + 3] ^= 1;
        let mut helper = helper(&bytes);
        let window = window_of(&bytes, &mut helper);
        // The reader checked the first ten frames itself.
        window.reader_at.0.store(starts[10], Ordering::Relaxed);
        helper.check(&window);
        assert!(window.checked(starts[31], (starts[32] - starts[31]) as usize), "after the damage, from the back");
        assert!(!window.checked(starts[30], (starts[31] - starts[30]) as usize), "the damaged frame");
        assert!(!window.checked(starts[20], (starts[21] - starts[20]) as usize), "before the damage");
        assert_eq!(helper.chain, None, "the chain ends at the damage");

        let (bytes, starts) = frames((0..50).map(|i| 100 + i * 37));
        let mut helper = self::helper(&bytes);
        let window = window_of(&bytes, &mut helper);
        window.reader_at.0.store(starts[10], Ordering::Relaxed);
        helper.check(&window);
        assert!(window.checked(starts[10], (starts[11] - starts[10]) as usize));
        assert!(!window.checked(starts[9], (starts[10] - starts[9]) as usize), "the reader checked that one");
    }
}
