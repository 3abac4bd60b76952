//! The double-write buffer's crash child and what the parent checks after it.
//!
//! The child opens a buffer and one page file beside it, recovers, and then writes batches of
//! one to eight distinct pages, each page a new version of itself, one `write_pages` call at a
//! time: before each call it writes a `W page:version ...` line, after it returned Ok an `A`
//! line. A page's image is a function of its number and version, so a torn page, a page at the
//! wrong place or a version never written shows. After the crash, [`PageModel::check_recovery`]
//! recovers the buffer with a validator and asserts that every page is whole and either the
//! version the last acknowledged write left or the one the write in flight carried, and that
//! the write in flight landed whole or not at all.

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
pub fn child_env(dir: &Path, direct: bool, seed: u64) -> Vec<(&'static str, String)> {
    vec![(ENV_DIR, dir.to_str().expect("test paths are UTF-8").to_owned()), (ENV_DIRECT, direct.to_string()), (ENV_SEED, seed.to_string())]
}

/// The child: runs when its environment is set, and returns `false` when it is not.
pub fn run_child_from_env() -> bool {
    let Some(dir) = std::env::var_os(ENV_DIR).map(PathBuf::from) else { return false };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let direct = var(ENV_DIRECT) == "true";
    let mut rng = Rng(var(ENV_SEED).parse().expect("seed"));
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
    let mut versions = match std::fs::read(pages_path(&dir)) {
        Ok(bytes) => versions_of(&bytes),
        Err(e) => {
            write_line(&acks, &format!("ERR io reading the page file: {e}\n"));
            std::process::exit(EXIT_OPEN_FAILED);
        }
    };
    write_line(&acks, "OPEN dwb\n");
    std::thread::spawn(exit_with_parent);
    loop {
        let count = 1 + rng.below(BATCH_PAGES_MAX);
        let mut batch: BTreeMap<u64, u64> = BTreeMap::new();
        while (batch.len() as u64) < count {
            let page = rng.below(PAGES);
            batch.insert(page, versions[page as usize] + 1);
        }
        let images: Vec<Vec<u8>> = batch.iter().map(|(&p, &v)| page_image(p, v)).collect();
        let writes: Vec<(FileId, u64, &[u8])> = batch.keys().zip(&images).map(|(&p, image)| (FILE, p, image.as_slice())).collect();
        let mut line = String::from("W");
        for (p, v) in &batch {
            write!(line, " {p}:{v}").expect("write to a String");
        }
        write_line(&acks, &(line + "\n"));
        if let Err(e) = dwb.write_pages(&writes) {
            write_line(&acks, &format!("ERR {} {}\n", error_kind(&e), e.to_string().replace('\n', " ")));
            return true;
        }
        write_line(&acks, "A\n");
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
        let mut in_flight: Option<BTreeMap<u64, u64>> = None;
        for line in acks.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("OPEN") => {}
                Some("W") => {
                    assert!(in_flight.is_none(), "round {round}: two writes in flight");
                    let batch = words
                        .map(|w| {
                            let (p, v) = w.split_once(':').unwrap_or_else(|| panic!("bad word {w:?}"));
                            (p.parse().expect("page"), v.parse().expect("version"))
                        })
                        .collect();
                    in_flight = Some(batch);
                }
                Some("A") => {
                    let batch = in_flight.take().unwrap_or_else(|| panic!("round {round}: an acknowledgement without a write"));
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
        let mut landed = None;
        for (page, (&now, &before)) in found.iter().zip(&self.versions).enumerate() {
            let written = in_flight.as_ref().and_then(|b| b.get(&(page as u64)).copied());
            match written {
                Some(v) if now == v => assert_ne!(landed.replace(true), Some(false), "round {round}: a batch landed in part"),
                Some(_) => assert_ne!(landed.replace(false), Some(true), "round {round}: a batch landed in part"),
                None => {}
            }
            assert!(
                now == before || written == Some(now),
                "round {round}: page {page} is at version {now}: neither the acknowledged {before} nor the one in flight {written:?}"
            );
        }
        match landed {
            Some(true) => self.in_flight_landed += 1,
            Some(false) => self.in_flight_lost += 1,
            None => {}
        }
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
