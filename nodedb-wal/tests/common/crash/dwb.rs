//! The double-write buffer's crash child and what the parent checks after it.
//!
//! The child opens a buffer and one page file beside it, recovers, and then writes batches of
//! one to eight distinct pages, each page a new version of itself, from one or more threads at
//! once, each thread on pages of its own (page `p` is thread `p % threads`'s) and one
//! `write_pages` call at a time: before each call the thread writes a `W thread page:version ...`
//! line, after it returned Ok an `A thread` line. A page's image is a function of its number and
//! version, so a torn page, a page at the wrong place or a version never written shows. After
//! the crash, [`PageModel::check_recovery`] recovers the buffer with a validator and asserts that
//! every page is whole and either the version the last acknowledged write left or the one its
//! thread's write in flight carried, and that each write in flight landed whole or not at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, FileId, PageCheck, WalError};

use super::child::{ENV_ACKS, EXIT_OPEN_FAILED, exit_with_parent};
use super::{Rng, mix};

/// Bytes of a page.
pub const PAGE_LEN: usize = 4096;
/// Pages in the page file.
pub const PAGES: u64 = 64;
/// The page file's id in the buffer.
const FILE: FileId = FileId(1);
/// Pages a batch writes at most.
const BATCH_PAGES_MAX: u64 = 8;

const ENV_DIR: &str = "NODEDB_WAL_DWB_CHILD";
const ENV_DIRECT: &str = "NODEDB_WAL_DWB_DIRECT";
const ENV_SEED: &str = "NODEDB_WAL_DWB_SEED";
const ENV_THREADS: &str = "NODEDB_WAL_DWB_THREADS";

/// The image of page `page` at `version`: both in its first 16 bytes, then a stream seeded
/// by them.
pub fn page_image(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PAGE_LEN);
    bytes.extend_from_slice(&page.to_le_bytes());
    bytes.extend_from_slice(&version.to_le_bytes());
    let mut x = mix(page ^ mix(version));
    while bytes.len() < PAGE_LEN {
        x = mix(x);
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// The page number and version a whole page names, or `None` for a torn one.
fn decode_page(bytes: &[u8]) -> Option<(u64, u64)> {
    let page = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let version = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes == page_image(page, version)).then_some((page, version))
}

/// The engine's page check the buffer's recovery uses.
pub fn validator(_: FileId, bytes: &[u8]) -> PageCheck {
    decode_page(bytes).map_or(PageCheck::Torn, |(_, version)| PageCheck::Intact { version })
}

fn pages_path(dir: &Path) -> PathBuf {
    dir.join("pages")
}

/// Opens the buffer in `dir` (buffered or O_DIRECT), registers the page file and recovers.
pub fn open(dir: &Path, direct: bool) -> Result<DoubleWriteBuffer, WalError> {
    let mut config = DwbConfig::new(dir.join("dwb"));
    config.mode = if direct { DwbMode::Direct } else { DwbMode::Buffered };
    // A small ring, so that batches wrap over older images many times a round.
    config.ring_bytes = 256 * 1024;
    config.batch_bytes_max = 64 * 1024;
    let dwb = DoubleWriteBuffer::open(config)?;
    dwb.register_file(FILE, pages_path(dir), PAGE_LEN)?;
    dwb.recover(validator)?;
    Ok(dwb)
}

/// Makes `dir` with a page file of version 0 of every page, durable.
pub fn create_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = File::create(pages_path(dir))?;
    for page in 0..PAGES {
        file.write_all_at(&page_image(page, 0), page * PAGE_LEN as u64)?;
    }
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

/// The versions in the page file; panics on a page that is torn or misplaced.
fn read_versions(dir: &Path) -> Vec<u64> {
    let bytes = std::fs::read(pages_path(dir)).expect("read the page file");
    versions_of(&bytes)
}

/// The versions in the page file's bytes; panics on a page that is torn or misplaced.
fn versions_of(bytes: &[u8]) -> Vec<u64> {
    assert_eq!(bytes.len(), PAGES as usize * PAGE_LEN, "the page file keeps its length");
    (0..PAGES)
        .map(|page| {
            let at = page as usize * PAGE_LEN;
            match decode_page(&bytes[at..at + PAGE_LEN]) {
                Some((found, version)) if found == page => version,
                Some((found, version)) => panic!("page {page} holds page {found} at version {version}"),
                None => panic!("page {page} is torn after recovery: {:02x?}...", &bytes[at..at + 32]),
            }
        })
        .collect()
}

/// The environment a DWB child runs with.
pub fn child_env(dir: &Path, direct: bool, threads: u32, seed: u64) -> Vec<(&'static str, String)> {
    vec![
        (ENV_DIR, dir.to_str().expect("test paths are UTF-8").to_owned()),
        (ENV_DIRECT, direct.to_string()),
        (ENV_THREADS, threads.to_string()),
        (ENV_SEED, seed.to_string()),
    ]
}

/// The child: runs when its environment is set, and returns `false` when it is not.
pub fn run_child_from_env() -> bool {
    let Some(dir) = std::env::var_os(ENV_DIR).map(PathBuf::from) else { return false };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let direct = var(ENV_DIRECT) == "true";
    let threads: u64 = var(ENV_THREADS).parse().expect("threads");
    let seed: u64 = var(ENV_SEED).parse().expect("seed");
    let acks = File::options().create(true).append(true).open(var(ENV_ACKS)).expect("open the acknowledgement file");
    let dwb = match open(&dir, direct) {
        Ok(dwb) => dwb,
        Err(e) => {
            write_line(&acks, &format!("ERR {} {}\n", error_kind(&e), e.to_string().replace('\n', " ")));
            let _ = writeln!(std::io::stderr(), "child: opening the buffer failed: {e}");
            std::process::exit(EXIT_OPEN_FAILED);
        }
    };
    // The file system may be shut down already (a round that counts from the child's start).
    let versions = match std::fs::read(pages_path(&dir)) {
        Ok(bytes) => versions_of(&bytes),
        Err(e) => {
            write_line(&acks, &format!("ERR io reading the page file: {e}\n"));
            std::process::exit(EXIT_OPEN_FAILED);
        }
    };
    write_line(&acks, "OPEN dwb\n");
    std::thread::spawn(exit_with_parent);
    std::thread::scope(|s| {
        for thread in 0..threads {
            let pages: Vec<u64> = (0..PAGES).filter(|p| p % threads == thread).collect();
            let (dwb, acks, versions) = (&dwb, &acks, versions.clone());
            s.spawn(move || write_until_error(dwb, acks, thread, &pages, versions, Rng(seed ^ mix(thread))));
        }
    });
    true
}

/// Writes batches of `pages` (this thread's) until a write fails.
fn write_until_error(dwb: &DoubleWriteBuffer, acks: &File, thread: u64, pages: &[u64], mut versions: Vec<u64>, mut rng: Rng) {
    loop {
        let count = 1 + rng.below(BATCH_PAGES_MAX.min(pages.len() as u64));
        let mut batch: BTreeMap<u64, u64> = BTreeMap::new();
        while (batch.len() as u64) < count {
            let page = pages[rng.below(pages.len() as u64) as usize];
            batch.insert(page, versions[page as usize] + 1);
        }
        let images: Vec<Vec<u8>> = batch.iter().map(|(&p, &v)| page_image(p, v)).collect();
        let writes: Vec<(FileId, u64, &[u8])> = batch.keys().zip(&images).map(|(&p, image)| (FILE, p, image.as_slice())).collect();
        let mut line = format!("W {thread}");
        for (p, v) in &batch {
            write!(line, " {p}:{v}").expect("write to a String");
        }
        write_line(acks, &(line + "\n"));
        if let Err(e) = dwb.write_pages(&writes) {
            return write_line(acks, &format!("ERR {} {}\n", error_kind(&e), e.to_string().replace('\n', " ")));
        }
        write_line(acks, &format!("A {thread}\n"));
        for (p, v) in batch {
            versions[p as usize] = v;
        }
    }
}

/// "io" for the errors an I/O failure causes: a failed write or sync of the buffer file
/// degrades it (its policy then refuses page writes), one of a page file poisons it.
fn error_kind(e: &WalError) -> &'static str {
    if matches!(e, WalError::Io { .. } | WalError::Poisoned { .. } | WalError::DwbDegraded { .. }) { "io" } else { "other" }
}

fn write_line(mut file: &File, line: &str) {
    file.write_all(line.as_bytes()).expect("write the acknowledgement file");
}

/// The versions the page file must hold, across rounds.
#[derive(Debug)]
pub struct PageModel {
    versions: Vec<u64>,
    /// Page writes acknowledged, over all rounds.
    pub acked_pages: u64,
    /// Writes in flight at a crash that landed, and that did not.
    pub in_flight_landed: u64,
    /// Writes in flight at a crash that did not land.
    pub in_flight_lost: u64,
    /// Pages recovery restored from the buffer.
    pub restored: u64,
}

impl Default for PageModel {
    fn default() -> PageModel {
        PageModel { versions: vec![0; PAGES as usize], acked_pages: 0, in_flight_landed: 0, in_flight_lost: 0, restored: 0 }
    }
}

impl PageModel {
    /// Applies the child's acknowledged writes in `acks` (its complete lines), recovers the
    /// buffer in `dir` and checks every page; then writes one more batch through it.
    pub fn check_recovery(&mut self, dir: &Path, direct: bool, round: u32, acks: &str) {
        // Each thread's write in flight, by thread.
        let mut in_flight: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
        let thread_of = |word: Option<&str>| -> u64 {
            word.and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("round {round}: a W or A line without its thread"))
        };
        for line in acks.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("OPEN") => {}
                Some("W") => {
                    let thread = thread_of(words.next());
                    let batch = words
                        .map(|w| {
                            let (p, v) = w.split_once(':').unwrap_or_else(|| panic!("bad word {w:?}"));
                            (p.parse().expect("page"), v.parse().expect("version"))
                        })
                        .collect();
                    assert!(in_flight.insert(thread, batch).is_none(), "round {round}: thread {thread} had two writes in flight");
                }
                Some("A") => {
                    let thread = thread_of(words.next());
                    let batch = in_flight.remove(&thread).unwrap_or_else(|| panic!("round {round}: an acknowledgement without a write"));
                    for (p, v) in batch {
                        assert_eq!(v, self.versions[p as usize] + 1, "round {round}: the child wrote page {p} out of order");
                        self.versions[p as usize] = v;
                        self.acked_pages += 1;
                    }
                }
                Some("ERR") => assert_eq!(words.next(), Some("io"), "round {round}: the shutdown caused {line:?}"),
                _ => panic!("round {round}: bad line {line:?}"),
            }
        }
        let dwb = open(dir, direct).unwrap_or_else(|e| panic!("round {round}: recovering the buffer failed: {e}"));
        let found = read_versions(dir);
        // Whether each thread's write in flight landed, by thread.
        let mut landed: BTreeMap<u64, bool> = BTreeMap::new();
        for (page, (&now, &before)) in found.iter().zip(&self.versions).enumerate() {
            let written = in_flight.iter().find_map(|(&t, b)| b.get(&(page as u64)).map(|&v| (t, v)));
            if let Some((thread, version)) = written {
                let whole = *landed.entry(thread).or_insert(now == version);
                assert_eq!(whole, now == version, "round {round}: thread {thread}'s batch landed in part");
            }
            let written = written.map(|(_, v)| v);
            assert!(
                now == before || written == Some(now),
                "round {round}: page {page} is at version {now}: neither the acknowledged {before} nor the one in flight {written:?}"
            );
        }
        self.in_flight_landed += landed.values().filter(|&&whole| whole).count() as u64;
        self.in_flight_lost += landed.values().filter(|&&whole| !whole).count() as u64;
        self.versions = found;
        self.restored += dwb.stats().pages_restored;
        // The recovered buffer takes writes again.
        let page = u64::from(round) % PAGES;
        let image = page_image(page, self.versions[page as usize] + 1);
        dwb.write_pages(&[(FILE, page, &image)]).unwrap_or_else(|e| panic!("round {round}: writing after recovery failed: {e}"));
        self.versions[page as usize] += 1;
        drop(dwb);
        assert_eq!(read_versions(dir), self.versions, "round {round}: the write after recovery is in place");
    }
}
