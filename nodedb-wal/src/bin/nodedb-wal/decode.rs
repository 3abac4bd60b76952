//! What `dump` says about the records of the log's own types: their names, and what their
//! payloads hold, read with the library's public decoders. A payload that does not decode is
//! shown as such with the decoder's reason; judging the log is `verify`'s work, not `dump`'s.

use std::fmt::Write as _;

use nodedb_wal::{
    CalvinAppliedPayload, CollectionTombstonePayload, Lsn, PayloadError, RecordType, TemporalPurgeEngine, TemporalPurgePayload,
};

/// The data record types the log defines, with the names the tool shows and takes for them.
/// The frames that structure a segment (padding, segment header and end) carry no LSN, so no
/// listing ever shows one.
const NAMES: [(RecordType, &str); 3] = [
    (RecordType::COLLECTION_TOMBSTONE, "collection-tombstone"),
    (RecordType::TEMPORAL_PURGE, "temporal-purge"),
    (RecordType::CALVIN_APPLIED, "calvin-applied"),
];

/// The name of one of the log's own types; `None` for an application's type.
pub(super) fn type_name(record_type: RecordType) -> Option<&'static str> {
    NAMES.iter().find(|(t, _)| *t == record_type).map(|(_, name)| *name)
}

/// The type a name given to `--type` stands for.
pub(super) fn type_by_name(name: &str) -> Option<RecordType> {
    NAMES.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
}

/// Every name `--type` takes, for its error message.
pub(super) fn type_names() -> String {
    NAMES.map(|(_, name)| name).join(", ")
}

/// A payload of one of the log's own types, decoded.
#[derive(Debug)]
pub(super) enum Decoded {
    /// With the tombstone's own LSN: the library reads a purge LSN past it as that LSN.
    Tombstone(CollectionTombstonePayload, Lsn),
    Purge(TemporalPurgePayload),
    Calvin(CalvinAppliedPayload),
}

/// The payload of record `lsn` of `record_type` decoded, or why it does not decode; `None` for
/// a type the log does not define, whose payload only the application can read.
pub(super) fn decode(lsn: Lsn, record_type: RecordType, payload: &[u8]) -> Option<Result<Decoded, PayloadError>> {
    Some(match record_type {
        RecordType::COLLECTION_TOMBSTONE => CollectionTombstonePayload::decode(payload).map(|t| Decoded::Tombstone(t, lsn)),
        RecordType::TEMPORAL_PURGE => TemporalPurgePayload::decode(payload).map(Decoded::Purge),
        RecordType::CALVIN_APPLIED => CalvinAppliedPayload::decode(payload).map(Decoded::Calvin),
        _ => return None,
    })
}

/// An engine's name as the tool shows it; the code of one this build of the tool cannot name
/// (the enum may grow).
fn engine_name(engine: TemporalPurgeEngine) -> String {
    match engine {
        TemporalPurgeEngine::Timeseries => "timeseries".into(),
        TemporalPurgeEngine::Document => "document".into(),
        TemporalPurgeEngine::Graph => "graph".into(),
        TemporalPurgeEngine::Vector => "vector".into(),
        TemporalPurgeEngine::KeyValue => "key-value".into(),
        TemporalPurgeEngine::Columnar => "columnar".into(),
        other => format!("engine {}", other.code()),
    }
}

/// One indented line of text. Names are shown as Rust string literals (`{:?}`): quoted, with
/// control characters escaped, so that a name can neither break the listing's lines nor send
/// a terminal escape sequence.
pub(super) fn text_line(decoded: &Result<Decoded, PayloadError>, record_type: RecordType) -> String {
    match decoded {
        Ok(Decoded::Tombstone(t, lsn)) => {
            let read_as = if t.purge_lsn > *lsn { format!(" (past the tombstone's own LSN: read as {lsn})") } else { String::new() };
            format!("    database {}  tenant {}  collection {:?}  purge lsn {}{read_as}", t.database, t.tenant, t.collection, t.purge_lsn)
        }
        Ok(Decoded::Purge(p)) => format!(
            "    engine {}  collection {:?}  cutoff {} ms ({})  purged {}",
            engine_name(p.engine),
            p.collection,
            p.cutoff_unix_ms,
            utc(p.cutoff_unix_ms),
            p.purged_count
        ),
        Ok(Decoded::Calvin(c)) => format!("    epoch {}  position {}  vshard {}", c.epoch, c.position, c.vshard),
        Err(problem) => {
            let name = type_name(record_type).unwrap_or("this type");
            format!("    not a valid {name} payload: {problem}")
        }
    }
}

/// The JSON members (each led by a comma) for a decoded payload: `"decoded":{…}`, or
/// `"decode_error":"…"` with the decoder's reason.
pub(super) fn json_members(decoded: &Result<Decoded, PayloadError>) -> String {
    let object = match decoded {
        Ok(Decoded::Tombstone(t, lsn)) => format!(
            "{{\"database\":{},\"tenant\":{},\"collection\":{},\"purge_lsn\":{},\"applied_purge_lsn\":{}}}",
            t.database,
            t.tenant,
            json_string(&t.collection),
            t.purge_lsn.0,
            t.purge_lsn.min(*lsn).0
        ),
        Ok(Decoded::Purge(p)) => format!(
            "{{\"engine\":{},\"engine_code\":{},\"collection\":{},\"cutoff_unix_ms\":{},\"purged_count\":{}}}",
            json_string(&engine_name(p.engine)),
            p.engine.code(),
            json_string(&p.collection),
            p.cutoff_unix_ms,
            p.purged_count
        ),
        Ok(Decoded::Calvin(c)) => format!("{{\"epoch\":{},\"position\":{},\"vshard\":{}}}", c.epoch, c.position, c.vshard),
        Err(problem) => return format!(",\"decode_error\":{}", json_string(&problem.to_string())),
    };
    format!(",\"decoded\":{object}")
}

/// `text` as a JSON string: quoted, with the quote, the backslash and every control character
/// escaped (JSON allows none of them bare); every other character, any UTF-8, as it is.
pub(super) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Milliseconds since the Unix epoch as a UTC date and time, `1970-01-01 00:00:00.000 UTC`,
/// so that an operator reads a purge's cutoff without a calculator. Any `i64` has one: the
/// day count stays far inside `i64` and the year inside what `i64` prints.
fn utc(unix_ms: i64) -> String {
    let (days, ms_of_day) = (unix_ms.div_euclid(86_400_000), unix_ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_date(days);
    let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{ms:03} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The proleptic Gregorian date `days` after 1970-01-01. Counts in eras of 400 years (146,097
/// days, after which the calendar repeats), each taken to start on 1 March so that the leap
/// day falls at the end of its year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    const ERA_DAYS: i64 = 146_097;
    // 1970-01-01 is day 719,468 after 0000-03-01.
    let from_march_0000 = days + 719_468;
    let era = from_march_0000.div_euclid(ERA_DAYS);
    let day_of_era = from_march_0000.rem_euclid(ERA_DAYS);
    // Years of 365 days, less the leap days at every fourth, hundredth and 400th year.
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (ERA_DAYS - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, then February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_stands_for_its_type_and_user_types_have_none() {
        for (record_type, name) in NAMES {
            assert_eq!(type_name(record_type), Some(name));
            assert_eq!(type_by_name(name), Some(record_type));
            assert!(record_type.is_known_reserved() && !record_type.is_meta(), "{name}: a data type of the log's own");
        }
        assert_eq!(type_name(RecordType::optional(0x100)), None);
        assert_eq!(type_name(RecordType::required(0x110)), None, "the tombstone's code in the application's range");
        assert_eq!(type_by_name("Collection-Tombstone"), None, "names are taken as spelled");
    }

    #[test]
    fn a_json_string_escapes_quotes_backslashes_and_every_control_character() {
        assert_eq!(json_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(json_string("line\nnext\ttab\r"), r#""line\nnext\ttab\r""#);
        assert_eq!(json_string("\u{0}\u{1b}\u{1f} \u{7f}"), "\"\\u0000\\u001b\\u001f \u{7f}\"");
        assert_eq!(json_string("zoë 注文"), "\"zoë 注文\"", "UTF-8 passes as it is");
    }

    #[test]
    fn cutoffs_read_as_utc_dates_across_leap_years_centuries_and_the_epoch() {
        let cases = [
            (0, "1970-01-01 00:00:00.000 UTC"),
            (-1, "1969-12-31 23:59:59.999 UTC"),
            (951_782_400_000, "2000-02-29 00:00:00.000 UTC"),
            (1_700_000_000_123, "2023-11-14 22:13:20.123 UTC"),
            (4_107_542_400_000, "2100-03-01 00:00:00.000 UTC"),
            (-2_208_988_800_000, "1900-01-01 00:00:00.000 UTC"),
        ];
        for (ms, expected) in cases {
            assert_eq!(utc(ms), expected, "{ms}");
        }
        // The extremes print, without an overflow.
        assert!(utc(i64::MAX).ends_with(" UTC") && utc(i64::MIN).ends_with(" UTC"));
    }
}
