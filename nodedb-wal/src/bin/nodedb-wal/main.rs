//! `nodedb-wal`: look at, check and exercise a log from the command line.
//!
//! Built only from the library's public API and the standard library, so it adds nothing to the
//! dependency tree of the library's users. `inspect`, `dump` and `verify` open the log read-only
//! (no lock, no repair), so they are safe beside a running writer and on a copy; `salvage`
//! reads it the same way and writes only its new directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use nodedb_wal::format::manifest::SlotKind;
use nodedb_wal::{KeyRing, ReadOnlyWal, SecureKey, WalError};

const USAGE: &str = "\
usage: nodedb-wal <command> [arguments]

  inspect DIR            segments (LSN ranges, sizes, format version, cipher, key id), what
                         MANIFEST and FLOOR say (both slots of each), and health; for a log
                         it refuses, the segment files found
  dump DIR [--from LSN] [--type T] [--json] [--payloads | --full-payloads]
                         records with their segment and offset, and the name of each type the
                         log defines (collection-tombstone, temporal-purge, calvin-applied);
                         T: a record type, hex, decimal or one of those names; --payloads adds
                         each payload's length and its first 64 bytes in hex and ASCII,
                         --full-payloads every byte (decrypted through --key-file), and for the
                         log's own types their fields decoded, or why they do not decode
  verify DIR             read and check every record (checksums, decryption, the payloads of
                         the log's own types); exit status:
                         0 clean, 1 torn tail (recovery will cut it), 2 corrupt
  salvage DIR NEW_DIR    copy the log's intact prefix (every record up to the first damage)
                         into a new log in NEW_DIR (missing or empty; plaintext), and say what
                         lies past the damage; exit status: 0 copied whole, 1 copied whole but
                         a torn tail, 2 stopped at damage, 4 stopped at a wrong key
  bench [DIR] [--threads T] [--seconds S] [--size B]
                         durable appends from T threads (16) for S seconds (3) of B bytes (128);
                         with DIR (new or empty) the log stays there for inspect and verify;
                         with --key-file the new segments are encrypted under that key

  --key-file F [--key-id N]   a key for encrypted segments (key id N, default 1); repeat the
                              pair for a log written under several keys (bench encrypts under
                              the last)

exit status: 0 ok, 1 torn tail, 2 corrupt or unreadable log, 3 bad usage, missing directory or
I/O error, 4 key missing or wrong, 5 not a nodedb-wal directory";

/// `println!` that does not panic when nobody reads standard output any more (a pipe into
/// `head`, a closed descriptor): the rest of the text goes nowhere, and the command still ends
/// with the status that tells what it found.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that does not panic when standard error cannot be written (a closed pipe, a
/// full disk behind a redirection): a diagnostic that nobody can read is dropped, and the exit
/// status still tells what the command found.
macro_rules! diag {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that does not panic, as `diag!`: for progress lines, which the next one overwrites.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod decode;
mod dump;
mod look;
mod pass;
mod salvage;
mod side;
mod torn;

use bench::bench;
use dump::dump;
use look::{inspect, verify};
use salvage::salvage_log;

/// Why the tool stops: an exit status, a message, and whether the usage text follows it.
struct Exit {
    code: u8,
    message: String,
    /// A mistyped command (an unknown option, a missing value), which the usage text helps
    /// with; never a log's own error, whatever its status.
    show_usage: bool,
}

impl Exit {
    fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit { code, message: message.into(), show_usage: false }
    }

    /// Bad usage: status 3, and the usage text after the message.
    fn usage(message: impl Into<String>) -> Exit {
        Exit { code: 3, message: message.into(), show_usage: true }
    }
}

impl From<WalError> for Exit {
    fn from(err: WalError) -> Exit {
        let code = match &err {
            // Damage: `verify` reports an authentication failure at a segment's first record
            // as a wrong key before it gets here.
            WalError::Corruption { .. }
            | WalError::MissingSegment { .. }
            | WalError::ManifestDamaged { .. }
            | WalError::FloorDamaged { .. }
            | WalError::FloorSlotDamaged { .. }
            | WalError::UnsupportedVersion { .. }
            | WalError::UnsupportedCipher { .. }
            | WalError::UnknownRequiredType { .. }
            | WalError::MalformedPayload { .. }
            | WalError::AuthenticationFailed { .. } => 2,
            WalError::KeyRingMissing { .. } | WalError::UnknownKeyId { .. } | WalError::WrongKey { .. } | WalError::KeyFile { .. } => 4,
            _ => 3,
        };
        let hint = match &err {
            WalError::KeyRingMissing { .. } | WalError::UnknownKeyId { .. } | WalError::WrongKey { .. } => KEY_HINT,
            _ => "",
        };
        Exit::new(code, format!("{err}{hint}"))
    }
}

/// What to do about a missing or wrong key, in the tool's terms rather than the library's.
const KEY_HINT: &str =
    "\n(give each segment's key with --key-file F --key-id N; `nodedb-wal inspect DIR` lists the key id of every segment)";

type Outcome = Result<u8, Exit>;

#[derive(Default)]
struct Args {
    /// The options given, as spelled, for the check that the command takes them.
    given: Vec<&'static str>,
    positional: Vec<std::ffi::OsString>,
    /// Key files in the order given, each with the id from the `--key-id` after it (1 by
    /// default).
    keys: Vec<(PathBuf, u32)>,
    from: Option<u64>,
    record_type: Option<u16>,
    json: bool,
    /// `--payloads`: each payload's length and first bytes.
    payloads: bool,
    /// `--full-payloads`: every byte of each payload.
    full_payloads: bool,
    threads: usize,
    seconds: u64,
    size: usize,
    /// `--help` or `-h` after the command: the usage, and nothing done.
    help: bool,
}

fn number<T: TryFrom<u64>>(flag: &str, value: Option<String>) -> Result<T, Exit> {
    let value = value.ok_or_else(|| Exit::usage(format!("{flag} needs a value")))?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.ok().and_then(|n| T::try_from(n).ok()).ok_or_else(|| Exit::usage(format!("{flag}: {value:?} is not a valid number")))
}

/// `--type`'s value: a number, or the name of one of the log's own types.
fn record_type(value: Option<String>) -> Result<u16, Exit> {
    if let Some(named) = value.as_deref().and_then(decode::type_by_name) {
        return Ok(named.0);
    }
    let given = value.is_some();
    number("--type", value).map_err(|exit| match given {
        true => Exit::usage(format!("{}, nor the name of one of the log's own types ({})", exit.message, decode::type_names())),
        false => exit,
    })
}

/// An option's value as text; one that is not UTF-8 becomes text that `number` refuses.
fn text(value: Option<std::ffi::OsString>) -> Option<String> {
    value.map(|v| v.to_string_lossy().into_owned())
}

/// Parses the arguments after the command. Paths may be any bytes (`OsString`); options and
/// numbers must be UTF-8.
fn parse(raw: impl Iterator<Item = std::ffi::OsString>) -> Result<Args, Exit> {
    let mut args = Args { threads: 16, seconds: 3, size: 128, ..Args::default() };
    let mut raw = raw.peekable();
    while let Some(arg) = raw.next() {
        if let Some(&flag) = OPTIONS.iter().find(|&&o| arg.to_str() == Some(o)) {
            args.given.push(flag);
        }
        match arg.to_str().unwrap_or("") {
            "--key-file" => args.keys.push((raw.next().ok_or_else(|| Exit::usage("--key-file needs a path"))?.into(), 1)),
            "--key-id" => {
                let id = number("--key-id", text(raw.next()))?;
                args.keys.last_mut().ok_or_else(|| Exit::usage("--key-id goes after the --key-file it names"))?.1 = id;
            }
            "--from" => args.from = Some(number("--from", text(raw.next()))?),
            "--type" => args.record_type = Some(record_type(text(raw.next()))?),
            "--threads" => args.threads = number("--threads", text(raw.next()))?,
            "--seconds" => args.seconds = number("--seconds", text(raw.next()))?,
            "--size" => args.size = number("--size", text(raw.next()))?,
            "--json" => args.json = true,
            "--payloads" => args.payloads = true,
            "--full-payloads" => args.full_payloads = true,
            "--help" | "-h" => args.help = true,
            // Any other dash is a mistyped option: taken for a directory, `bench -t 4` would
            // write a log into `./-t` (a directory of that name is `./-t`).
            flag if flag.starts_with('-') && flag != "-" => return Err(Exit::usage(format!("unknown option {flag}"))),
            _ => args.positional.push(arg),
        }
    }
    Ok(args)
}

/// Every option, and the ones each command takes: an option a command would ignore is refused
/// (a key given to a command that writes nothing encrypted would otherwise mislead).
const OPTIONS: [&str; 10] =
    ["--key-file", "--key-id", "--from", "--type", "--threads", "--seconds", "--size", "--json", "--payloads", "--full-payloads"];

fn takes(command: &str) -> &'static [&'static str] {
    match command {
        "inspect" | "verify" | "salvage" => &["--key-file", "--key-id"],
        "dump" => &["--key-file", "--key-id", "--from", "--type", "--json", "--payloads", "--full-payloads"],
        "bench" => &["--key-file", "--key-id", "--threads", "--seconds", "--size"],
        _ => &[],
    }
}

/// How many directories a command takes, and in words.
fn directories(command: &str) -> usize {
    if command == "salvage" { 2 } else { 1 }
}

fn directories_in_words(command: &str) -> &'static str {
    if directories(command) == 2 { "two directories" } else { "one directory" }
}

fn check_options(command: &str, args: Args) -> Result<Args, Exit> {
    match args.given.iter().find(|o| !takes(command).contains(o)) {
        Some(o) if !takes(command).is_empty() => Err(Exit::usage(format!("{command} does not take {o}"))),
        // A further directory would be ignored, and `verify A B` exiting 0 would read as B checked.
        _ if !takes(command).is_empty() && args.positional.len() > directories(command) => {
            let extra = PathBuf::from(&args.positional[directories(command)]);
            Err(Exit::usage(format!("{command} takes {}; {} is one too many", directories_in_words(command), extra.display())))
        }
        _ => Ok(args),
    }
}

fn main() -> ExitCode {
    let mut raw = std::env::args_os().skip(1);
    let command = raw.next().unwrap_or_default().to_string_lossy().into_owned();
    let result = parse(raw).and_then(|args| match args.help {
        // Asked for help: whatever else is on the line, nothing runs.
        true if COMMANDS.contains(&command.as_str()) => help(),
        _ => check_options(&command, args).and_then(|args| run(&command, &args)),
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Exit { code, message, show_usage }) => {
            diag!("nodedb-wal: {message}");
            if show_usage {
                diag!("\n{USAGE}");
            }
            ExitCode::from(code)
        }
    }
}

/// The commands, each of which takes `--help` after it.
const COMMANDS: [&str; 5] = ["inspect", "dump", "verify", "salvage", "bench"];

fn run(command: &str, args: &Args) -> Outcome {
    match command {
        "inspect" => inspect(args),
        "dump" => dump(args),
        "verify" => verify(args),
        "salvage" => salvage_log(args),
        "bench" => bench(args),
        "help" | "--help" | "-h" => help(),
        "" => Err(Exit::usage("no command")),
        other => Err(Exit::usage(format!("unknown command {other:?}"))),
    }
}

fn help() -> Outcome {
    out!("{USAGE}");
    Ok(0)
}

/// The log directory argument, which must exist and look like a log.
fn log_dir(args: &Args) -> Result<PathBuf, Exit> {
    let dir = PathBuf::from(args.positional.first().ok_or_else(|| Exit::usage("which directory?"))?);
    let entries = std::fs::read_dir(&dir).map_err(|e| Exit::new(3, not_a_dir(&dir, &e)))?;
    let names: Vec<String> = entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
    // A MANIFEST or FLOOR with an intact slot (its magic) marks a log whose segments and LOCK
    // are gone: that loss is the log's to report, not a mistyped path.
    let side_file = || [SlotKind::Manifest, SlotKind::Floor].into_iter().any(|kind| side::SideFile::read(&dir, kind).segment().is_some());
    if !names.iter().any(|n| n.ends_with(".wal") || n == "LOCK") && !side_file() {
        return Err(Exit::new(
            5,
            format!("{} is not a nodedb-wal directory (no segment files, no LOCK, no MANIFEST or FLOOR)", dir.display()),
        ));
    }
    Ok(dir)
}

/// Why `dir` cannot be listed. A file gets "give the log's directory", and one named as a
/// log's file (a segment, say) the directory holding it.
fn not_a_dir(dir: &std::path::Path, err: &std::io::Error) -> String {
    if !dir.is_file() {
        return format!("{}: {err}", dir.display());
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_a_log = name.ends_with(".wal") || name.ends_with(".hdrs") || ["MANIFEST", "FLOOR", "LOCK"].contains(&name);
    match dir.parent().filter(|parent| in_a_log && !parent.as_os_str().is_empty()) {
        Some(parent) => format!("{} is a file of a log: give the log's directory, {}", dir.display(), parent.display()),
        None => format!("{} is a file, not a directory: give the log's directory", dir.display()),
    }
}

/// A ring holding the keys given with `--key-file` under their `--key-id`s, if any were
/// given: to read with, and (`active`) the last one to encrypt new segments under.
fn key_ring(args: &Args, active: bool) -> Result<Option<Arc<KeyRing>>, Exit> {
    let Some(&(_, last)) = args.keys.last() else { return Ok(None) };
    let ring = KeyRing::new();
    for (path, id) in &args.keys {
        let key = SecureKey::load(path).map_err(|e| Exit::new(4, e.to_string()))?;
        ring.insert(*id, key).map_err(|e| Exit::usage(format!("--key-id {id}: {e}")))?;
    }
    if active {
        ring.set_active(last).map_err(Exit::from)?;
    }
    Ok(Some(Arc::new(ring)))
}

fn open(args: &Args) -> Result<(PathBuf, ReadOnlyWal), Exit> {
    let dir = log_dir(args)?;
    let wal = open_at(&dir, args)?;
    Ok((dir, wal))
}

/// The log in `dir`, read-only. A `MissingSegment` refusal says itself which side file (or a
/// hole) is behind it.
fn open_at(dir: &Path, args: &Args) -> Result<ReadOnlyWal, Exit> {
    ReadOnlyWal::open(dir, key_ring(args, false)?).map_err(Exit::from)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    /// Argument lists drawn from the options, numbers at and past each type's bounds, malformed
    /// hex, empty and non-UTF-8 words, paths, and a record type's name.
    fn argument_lists() -> impl Iterator<Item = Vec<OsString>> {
        let words: Vec<OsString> = OPTIONS
            .iter()
            .map(|o| OsString::from(*o))
            .chain(
                ["0", "1", "0x", "0x10", "0xg", "-1", "+7", "65535", "65536", "4294967296", "18446744073709551615", "18446744073709551616"]
                    .map(OsString::from),
            )
            .chain(["", "--", "-", "--keyfile", "/tmp/none", "dir", "calvin-applied"].map(OsString::from))
            .chain([OsString::from_vec(vec![0xFF, 0xFE]), OsString::from_vec(b"--from\xFF".to_vec())])
            .collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..20_000).map(move |_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let len = (state >> 60) as usize % 7;
            (0..len).map(|i| words[((state >> (i * 8)) as usize) % words.len()].clone()).collect()
        })
    }

    #[test]
    fn any_argument_list_parses_or_is_a_usage_error_never_a_panic() {
        for list in argument_lists() {
            for command in ["inspect", "dump", "verify", "salvage", "bench", "other"] {
                match parse(list.clone().into_iter()).and_then(|args| check_options(command, args)) {
                    Ok(args) => {
                        let keys = list.iter().filter(|a| a.to_str() == Some("--key-file")).count();
                        // A `--key-file` can be another's path, never a key of its own.
                        assert!(args.keys.len() <= keys, "{list:?}: a key for every --key-file at most");
                    }
                    Err(exit) => assert!(exit.code == 3 && exit.show_usage, "{list:?}: {}", exit.message),
                }
            }
        }
    }
}
