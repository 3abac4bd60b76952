//! `dump`: one line per record (header fields, in text or JSON), and with `--payloads` what
//! each payload holds: its length and a preview of its first bytes in hex and printable ASCII
//! (`--full-payloads`: every byte). Payloads are read through the keys given, as `verify`
//! reads them; headers alone need none. Records of the log's own types are named, and with
//! the payloads their fields are shown decoded (`decode.rs`).

use std::fmt::Write as _;
use std::io::Write;

use nodedb_wal::{Lsn, PayloadError, RecordHandle};

use super::decode::{self, Decoded};
use super::look::wrong_key_at_first_record;
use super::{Args, Outcome, open};

/// Payload bytes a preview shows: four lines of sixteen, enough to recognise a record by.
const PREVIEW_BYTES: usize = 64;

/// Bytes on one line of a payload's hex lines.
const LINE_BYTES: usize = 16;

pub(super) fn dump(args: &Args) -> Outcome {
    let (_, wal) = open(args)?;
    let info = wal.recovery_info().clone();
    let from = args.from.map_or(info.first_lsn, Lsn);
    let payloads = args.payloads || args.full_payloads;
    // Headers are stored in the clear, so a listing of headers reads the log as stored and
    // needs no key; payloads, and any listing given keys, read through the keys.
    let mut reader = if args.keys.is_empty() && !payloads { wal.lazy_reader_raw(from)? } else { wal.lazy_reader(from)? };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(h) = reader.next_header()? {
        if args.record_type.is_some_and(|t| t != h.record_type.0) {
            continue;
        }
        let shown = match payloads {
            true => {
                let payload = reader.payload_view().map_err(|err| wrong_key_at_first_record(&info, err))?;
                let decoded = decode::decode(h.lsn, h.record_type, payload);
                Some(Shown { len: payload.len(), bytes: shown_bytes(payload, args.full_payloads), decoded })
            }
            false => None,
        };
        let line = if args.json { json_line(&h, shown) } else { text_lines(&h, shown) };
        if writeln!(out, "{line}").is_err() {
            return Ok(0); // the reader went away (a pipe into head)
        }
    }
    // Past the end the listing is empty, as reading is there; a mistyped `--from` gets a word.
    if args.from.is_some() && from > info.last_lsn {
        diag!("nodedb-wal: no record from LSN {from} on: {}", last_record(info.last_lsn));
    }
    Ok(0)
}

fn last_record(last: Lsn) -> String {
    match last {
        Lsn::ZERO => "the log holds no record".to_owned(),
        last => format!("the log's last record is LSN {last}"),
    }
}

/// What a listing shows of a payload: its length, the bytes shown, and for a type of the log's
/// own, its fields decoded (or why they do not decode).
struct Shown<'a> {
    len: usize,
    bytes: &'a [u8],
    decoded: Option<Result<Decoded, PayloadError>>,
}

/// The bytes of `payload` a listing shows: a preview, or all of them when `full`.
fn shown_bytes(payload: &[u8], full: bool) -> &[u8] {
    if full { payload } else { &payload[..payload.len().min(PREVIEW_BYTES)] }
}

fn json_line(h: &RecordHandle, payload: Option<Shown<'_>>) -> String {
    let type_name = decode::type_name(h.record_type).map_or_else(|| "null".to_owned(), decode::json_string);
    let mut line = format!(
        "{{\"lsn\":{},\"segment\":{},\"offset\":{},\"type\":{},\"type_name\":{type_name},\"required\":{},\"database\":{},\"tenant\":{},\"vshard\":{},\"flags\":{},\"stored_len\":{}",
        h.lsn.0,
        h.segment().0,
        h.offset(),
        h.record_type.0,
        h.record_type.is_required(),
        h.scope.database,
        h.scope.tenant,
        h.scope.vshard,
        h.flags,
        h.stored_len
    );
    if let Some(shown) = payload {
        let hex: String = shown.bytes.iter().map(|b| format!("{b:02x}")).collect();
        let (len, complete) = (shown.len, shown.bytes.len() == shown.len);
        let _ = write!(line, ",\"payload_len\":{len},\"payload_hex\":\"{hex}\",\"payload_complete\":{complete}");
        if let Some(decoded) = &shown.decoded {
            line.push_str(&decode::json_members(decoded));
        }
    }
    line.push('}');
    line
}

fn text_lines(h: &RecordHandle, payload: Option<Shown<'_>>) -> String {
    let name = decode::type_name(h.record_type).map_or_else(String::new, |name| format!(" {name}"));
    let mut text = format!(
        "lsn {:>10}  segment {:>6}  offset {:>10}  type {:#06x}{name}  db {} tenant {} vshard {}  {} bytes",
        h.lsn.0,
        h.segment().0,
        h.offset(),
        h.record_type.0,
        h.scope.database,
        h.scope.tenant,
        h.scope.vshard,
        h.stored_len
    );
    if let Some(shown) = payload {
        if let Some(decoded) = &shown.decoded {
            text.push('\n');
            text.push_str(&decode::text_line(decoded, h.record_type));
        }
        text.push('\n');
        text.push_str(&payload_lines(shown.len, shown.bytes));
    }
    text
}

/// A payload of `len` bytes whose first `shown.len()` are shown, as indented lines: its length,
/// then sixteen bytes a line in hex and as ASCII (`.` for a byte that does not print), then
/// what was left out.
fn payload_lines(len: usize, shown: &[u8]) -> String {
    let mut text = format!("    payload {len} bytes");
    for (i, line) in shown.chunks(LINE_BYTES).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        let _ = write!(text, "\n    {:08x}  {:<width$}  |{ascii}|", i * LINE_BYTES, hex.join(" "), width = LINE_BYTES * 3 - 1);
    }
    if shown.len() < len {
        let _ = write!(text, "\n    ... {} more bytes (--full-payloads shows them)", len - shown.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_shows_hex_and_printable_ascii_and_counts_what_it_leaves_out() {
        let payload: Vec<u8> = b"order 17\n\x00\xff".iter().copied().chain(std::iter::repeat_n(b'x', 100)).collect();
        let text = payload_lines(payload.len(), shown_bytes(&payload, false));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "    payload 111 bytes");
        assert_eq!(lines[1], "    00000000  6f 72 64 65 72 20 31 37 0a 00 ff 78 78 78 78 78  |order 17...xxxxx|");
        assert_eq!(lines.len(), 1 + PREVIEW_BYTES / LINE_BYTES + 1);
        assert_eq!(lines[5], "    ... 47 more bytes (--full-payloads shows them)");
        let full = payload_lines(payload.len(), shown_bytes(&payload, true));
        assert_eq!(full.lines().count(), 1 + payload.len().div_ceil(LINE_BYTES), "every byte, nothing left out");
        assert!(full.lines().last().unwrap().starts_with("    00000060  78 78 78 78 78 78 78 78 78 78 78 78 78 78"));
    }

    #[test]
    fn a_short_last_line_keeps_the_ascii_column_in_place_and_an_empty_payload_has_its_length_only() {
        let text = payload_lines(3, b"abc");
        assert_eq!(text.lines().nth(1).unwrap(), format!("    00000000  61 62 63{}  |abc|", " ".repeat(13 * 3)));
        assert_eq!(payload_lines(0, b""), "    payload 0 bytes");
    }
}
