//! Where [`ChunkReader::get`] finds its bytes: the window in hand, a map of a sealed segment,
//! a helper thread's next window, or a read of the file into a new chunk.
//!
//! The reader's modes (sequential, random, mapped, helped) are set in `reader.rs`; this file
//! only serves reads under whichever mode is on.

use std::io;
use std::sync::Arc;

use super::{ChunkReader, MAX_HELPERS, spare_core};
use crate::error::{IoOp, Result, WalError};
use crate::format::layout::round_up;
use crate::segment::read_ahead::{self, ReadAhead, Window};
use crate::storage::StorageFile;
use crate::storage::mmap::RELEASE_STEP;

impl<F: StorageFile> ChunkReader<F> {
    /// Up to `len` bytes at `offset`: fewer only where the file ends.
    #[inline]
    pub fn get(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        let want = (self.file_len.saturating_sub(offset)).min(len as u64) as usize;
        // Most gets fall in the window in hand: that path stays small enough to inline.
        if self.mapped.is_none() && offset >= self.window.start && offset + want as u64 <= self.window.end() {
            let at = (offset - self.window.start) as usize;
            return Ok(&self.window.bytes()[at..at + want]);
        }
        self.get_elsewhere(offset, want)
    }

    /// [`Self::get`] of `want` bytes outside the window in hand, or from a map.
    #[inline(never)]
    fn get_elsewhere(&mut self, offset: u64, want: usize) -> Result<&[u8]> {
        if self.mapped.is_some() {
            return Ok(self.mapped_get(offset, want));
        }
        // Not in the window in hand (`get` answered those): the helper's next, or a read.
        if !self.take_from_helper(offset, want)? {
            self.load(offset, want).map_err(|e| WalError::io(IoOp::Read, &self.path, e))?;
        }
        // A file cut shorter since it was listed reads short, perhaps ending before `offset`:
        // the caller gets fewer bytes (none), as at any end of the file.
        let bytes = self.window.bytes();
        let at = usize::try_from(offset - self.window.start).unwrap_or(usize::MAX).min(bytes.len());
        let got = want.min(bytes.len() - at);
        Ok(&bytes[at..at + got])
    }

    /// Moves the window on to the helper's chunks until it holds `want` bytes at `offset`.
    /// `false` where the helper cannot give them (no helper, a jump back off its path, the end
    /// of its reads): the helper is stopped and the reader reads them itself.
    fn take_from_helper(&mut self, offset: u64, want: usize) -> Result<bool> {
        while let Some(helper) = self.helper.as_mut() {
            let next = match helper.next() {
                Some(Ok(next)) => next,
                Some(Err(err)) => {
                    self.stop_helper();
                    return Err(WalError::io(IoOp::Read, &self.path, err));
                }
                None => break,
            };
            if offset < next.start {
                break;
            }
            let end = next.end();
            self.move_to(next);
            if offset + want as u64 <= end {
                return Ok(true);
            }
        }
        self.stop_helper();
        Ok(false)
    }

    /// Starts a helper reading from `from` (aligned) on, checking the chain of frames from
    /// `chain` if given, if one is wanted and pays.
    pub(super) fn start_helper(&mut self, from: u64, chain: Option<u64>) {
        let pays = || self.file_len.saturating_sub(from) >= read_ahead::MIN_BYTES && spare_core();
        if self.helpers_left == 0 || self.helper.is_some() || self.mapped.is_some() || !pays() {
            return;
        }
        self.helpers_left -= 1;
        let plan = read_ahead::Plan {
            file: Arc::clone(&self.file),
            from,
            chain,
            block: self.look_back(),
            file_len: self.file_len,
            align: self.align,
            chunk: self.chunk.min(read_ahead::CHUNK),
            drop_behind: self.drop_behind.then_some(self.brought),
        };
        self.helper = ReadAhead::spawn(plan);
    }

    /// Stops the helper, if one reads, and takes over the drop-behind state it kept.
    pub(super) fn stop_helper(&mut self) {
        if let Some(brought) = self.helper.take().and_then(ReadAhead::stop) {
            self.brought = brought;
        }
    }

    fn mapped_get(&mut self, offset: u64, want: usize) -> &[u8] {
        let map = self.mapped.as_ref().expect("mapped");
        // A reader looks back at most a frame or a block: pages a release step behind can go.
        map.release_below(offset.saturating_sub(RELEASE_STEP));
        let bytes = map.bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        &bytes[start..(start + want).min(bytes.len())]
    }

    /// The bytes to read at `offset` for a reader that reads randomly: a headers-only scan reads
    /// the blocks of each header in a window of two, so that skipped payloads stay on disk. But
    /// where the next header lies just past the window (records of a block or two) the scan
    /// reads every block anyway, and in windows of two it took a system call per block and read
    /// each block twice (a headers-only scan of 1 KiB records took 3.4x a full replay). So the
    /// windows double while reads of headers follow one another, up to the read-ahead helper's
    /// chunk, and go back to the chunk at the first jump (a payload skipped) or payload read (a
    /// read of more than a block: the header after it is all the scan wants next).
    fn random_chunk_for(&mut self, offset: u64, want: usize) -> usize {
        let end = self.window.end();
        let header = want <= self.align;
        let follows = header && self.window.len > 0 && offset >= self.window.start && offset < end + self.look_back();
        self.random_chunk = if follows { (self.random_chunk * 2).min(read_ahead::CHUNK.max(self.chunk)) } else { self.chunk };
        self.random_chunk
    }

    fn load(&mut self, offset: u64, want: usize) -> io::Result<()> {
        let align = self.align as u64;
        let mut start = offset & !(align - 1);
        let end = self.window.end();
        let chunk = if self.watch_misses { self.random_chunk_for(offset, want) } else { self.chunk };
        if self.window.len > 0 && (end..end + self.look_back()).contains(&offset) {
            // Just past the window: a scan's look at the next block boundary, which comes back
            // to the frame it is on (a block before at most), or a frame crossing the end.
            // Reading that block again costs less than reading the whole chunk twice.
            // (Saturating: a window cut short by the file's end can end inside the first unit.)
            start = offset.saturating_sub(self.look_back()).max(self.window.start) & !(align - 1);
        }
        let need = round_up(offset + want as u64 - start, align) as usize;
        // A whole chunk, but nothing past the (block-rounded) end: a follower near the end of
        // a live segment reads the few blocks it needs, not a chunk of blank space.
        let to_end = round_up(self.file_len.saturating_sub(start), align) as usize;
        // Before a planned helper starts, only what is asked for: the helper reads the rest.
        let size = if self.helpers_left == MAX_HELPERS { need } else { need.max(chunk.min(to_end)) };
        // The window's buffer, unless a helper still holds it (checking) or it is too small.
        let window = match Arc::get_mut(&mut self.window) {
            Some(window) if window.buf.len() >= size => window,
            _ => {
                self.move_to(Arc::new(Window::empty(size, self.align)));
                Arc::get_mut(&mut self.window).expect("a new window has one owner")
            }
        };
        window.reset(start);
        let first_sequential = self.drop_behind && !self.first_read;
        self.first_read = true;
        let cached = if self.watch_misses || first_sequential { self.file.read_cached_at(&mut window.buf[..size], start)? } else { None };
        window.len = match cached {
            Some(n) => n,
            None => {
                self.missed |= self.watch_misses;
                self.file.read_at(&mut window.buf[..size], start)?
            }
        };
        let filled = window.len;
        if first_sequential && cached.is_some() {
            self.drop_behind = false;
        }
        if self.drop_behind {
            self.brought.note(&*self.file, start, start + filled as u64, self.file_len);
        }
        if self.helpers_left < MAX_HELPERS {
            // A helper was stopped (the reader jumped off its path): a new one, reading only.
            self.start_helper(start + filled as u64, None);
        }
        Ok(())
    }
}
