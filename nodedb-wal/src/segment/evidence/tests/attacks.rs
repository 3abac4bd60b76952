//! Files drawn at random against the look that checks every frame in full: intact frames of
//! any length (shorter and longer than a step, padding frames, other salts) starting on and off
//! sector and unit boundaries, chains of them, frames that start where the look starts or end
//! at the file's end, files of any length (not a multiple of a sector), damage, a look starting
//! anywhere, readers aligned 512 or 4096 whose file is listed shorter or longer than it is. And
//! a read that fails midway is an error, not a panic.

use super::*;

/// A file of about `len` bytes drawn from `rng`.
fn drawn(rng: &mut SimRng) -> Vec<u8> {
    let len = 1 + rng.below(600_000) as usize;
    let mut bytes = vec![0u8; len];
    let mut at = rng.below(3) as usize * 512;
    while at < len {
        let payload = match rng.below(4) {
            0 => rng.below(200) as usize,
            1 => rng.below(5000) as usize,
            2 => rng.below(120_000) as usize,
            _ => len.saturating_sub(at + HEADER_LEN + rng.below(2) as usize * rng.below(700) as usize),
        };
        let ty = if rng.below(6) == 0 { RecordType::PADDING } else { RecordType::optional(0x100) };
        let salt = if rng.below(5) == 0 { 9 } else { 7 };
        let f = frame(10 + rng.below(1000), salt, ty, payload, rng.next_u64() as u8);
        put(&mut bytes, at, &f);
        if rng.below(8) == 0 {
            let hit = at + rng.below(f.len() as u64) as usize;
            if hit < len {
                bytes[hit] ^= 0x40;
            }
        }
        at = match rng.below(4) {
            0 => at + f.len(),
            1 => round_up((at + f.len()) as u64, 512) as usize,
            2 => round_up((at + f.len()) as u64, 4096) as usize,
            _ => at + f.len() + rng.below(3000) as usize,
        };
    }
    if rng.below(3) == 0 {
        let at = rng.below(len as u64) as usize;
        bytes[at..].iter_mut().take(rng.below(700) as usize).for_each(|b| *b = rng.next_u64() as u8);
    }
    bytes
}

#[test]
fn the_look_finds_what_checking_every_frame_in_full_finds_on_files_drawn_at_random() {
    let mut rng = SimRng::new(0x5eed);
    let mut found = 0;
    for round in 0..400 {
        let bytes = drawn(&mut rng);
        let align = if rng.below(2) == 0 { 512 } else { 4096 };
        let chunk = [align * 2, 64 << 10, 1 << 20][rng.below(3) as usize];
        let listed_delta = [0, 0, -(rng.below(5000) as i64), rng.below(5000) as i64][rng.below(4) as usize];
        let view = View { align, chunk, listed_delta };
        let step = if rng.below(2) == 0 { 512 } else { 4096 };
        let from = match rng.below(3) {
            0 => 0,
            1 => rng.below(bytes.len() as u64) & !511,
            _ => rng.below(bytes.len() as u64),
        };
        for salt in [Some(7), None] {
            let (fast, full) = both(&bytes, view, from, step, salt);
            assert_eq!(fast, full, "round {round}: file of {} from {from} step {step} salt {salt:?} {view:?}", bytes.len());
            found += usize::from(full.durable.is_some());
        }
    }
    assert!(found > 200, "intact frames found ({found})");
}

/// What becomes of an [`After`]'s file once its first reads are served.
enum Then {
    /// Every read fails.
    Fails,
    /// The bytes become these: a writer that goes on while the look reads.
    Becomes(Vec<u8>),
}

/// [`Image`] that serves `reads` reads, and then [`Then`].
struct After {
    image: Image,
    reads: Mutex<usize>,
    then: Mutex<Option<Then>>,
}

impl After {
    fn new(bytes: &[u8], align: usize, reads: usize, then: Then) -> After {
        After { image: Image::new(bytes, align), reads: Mutex::new(reads), then: Mutex::new(Some(then)) }
    }
}

impl StorageFile for After {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut reads = self.reads.lock().unwrap();
        if *reads == 0 {
            let mut then = self.then.lock().unwrap();
            match then.take() {
                Some(Then::Fails) => {
                    *then = Some(Then::Fails);
                    return Err(io::Error::from_raw_os_error(5));
                }
                Some(Then::Becomes(after)) => *self.image.bytes.lock().unwrap() = after,
                None => {}
            }
        }
        *reads = reads.saturating_sub(1);
        self.image.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.image.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.image.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.image.len()
    }
}

#[test]
fn a_read_failing_anywhere_in_the_look_is_an_io_error_not_a_panic() {
    let mut bytes = claiming_to_the_end(3 << 20, 4096, 4096, 0, true);
    put(&mut bytes, 8192, &frame(50, 7, RecordType::optional(0x100), 1 << 20, 5));
    let mut outcomes = [0; 2];
    for align in [512, 4096] {
        for ok in 0..400 {
            let file = After::new(&bytes, align, ok, Then::Fails);
            let mut reader = ChunkReader::new(file, "failing".into(), bytes.len() as u64, align, 64 << 10);
            match scan_claims(&mut reader, 4096, 4096, Some(7)) {
                Ok(claims) => {
                    assert_eq!(claims.durable, Some(Lsn(49)), "align {align}: all {ok} reads went through");
                    outcomes[0] += 1;
                }
                Err(err) => {
                    assert!(matches!(err, WalError::Io { .. }), "align {align}, failing after {ok} reads: {err}");
                    outcomes[1] += 1;
                }
            }
        }
    }
    assert!(outcomes.iter().all(|&n| n > 0), "looks that failed and looks that did not ({outcomes:?})");
}

/// The newest segment of a log of long and short records as it is after each of `synced`
/// appends (each synced, so that the flusher writes its partial last block again with the
/// next), zero filled ahead.
fn live_segment(block: usize, synced: &[u64]) -> Vec<Vec<u8>> {
    let sim = SimStorage::new(5, FaultConfig::default());
    let mut config = SegmentedWalConfig::new("/live");
    config.direct_io = false;
    config.alignment = block;
    config.segment_bytes_target = 8 << 20;
    let wal = SegmentedWal::open_with(sim.clone(), config).expect("open");
    let path = crate::segment::path(Path::new("/live"), crate::types::SegmentId(1));
    let mut out = Vec::new();
    for i in 0..*synced.iter().max().expect("a count") {
        let len = if i % 3 == 0 { 700 + i as usize * 911 } else { 40 + i as usize };
        wal.append_durable(Record::new(RecordType::optional(0x100), &vec![i as u8 + 1; len])).expect("append");
        if synced.contains(&(i + 1)) {
            out.push(sim.read_file(&path).expect("segment"));
        }
    }
    out
}

#[test]
fn a_look_overtaken_by_a_writer_at_any_read_claims_only_what_the_file_held_before_or_after() {
    let mut raced = 0;
    for block in [512, 4096] {
        let [before, after] = <[Vec<u8>; 2]>::try_from(live_segment(block, &[30, 45])).expect("two");
        let salt = RecordHeader::decode(&before[16..]).expect("header frame").salt;
        let listed = before.len().min(after.len());
        let claims_of = |bytes: &[u8], from| {
            let view = View { align: block, chunk: 64 << 10, listed_delta: listed as i64 - bytes.len() as i64 };
            in_full(&mut reader(Image::new(bytes, block), bytes.len(), view), from, block as u64, Some(salt))
        };
        for from in [block as u64, 20_000, 50_000] {
            let (old, new) = (claims_of(&before, from), claims_of(&after, from));
            for reads in 0..40 {
                let file = After::new(&before, block, reads, Then::Becomes(after.clone()));
                let mut look = ChunkReader::new(file, "live".into(), listed as u64, block, 64 << 10);
                let claims = scan_claims(&mut look, from, block as u64, Some(salt)).expect("scan");
                raced += usize::from(look.file().then.lock().unwrap().is_none());
                assert!(
                    claims.durable <= old.durable.max(new.durable),
                    "block {block} from {from}, overtaken after {reads} reads: {claims:?}, before {old:?}, after {new:?}"
                );
                assert!(!claims.foreign, "no other salt anywhere");
            }
        }
    }
    assert!(raced > 50, "the writer overtook the look ({raced} times)");
}
