//! PAX extended header records (`"%d %s=%s\n"`) and the keys that change an entry.
//!
//! Semantics follow Go's `archive/tar`, which is what `umoci unpack` and the container runtimes read layers
//! with: the records of the last `x` header before an entry apply to it; an empty value means "keep the
//! header field"; only `SCHILY.xattr.*` records become xattrs (`LIBARCHIVE.xattr.*` is ignored there too);
//! GNU sparse records are refused.

use std::collections::BTreeMap;

use clip_format::{Timestamp, Xattr};

use super::TarError;

const SCHILY_XATTR: &[u8] = b"SCHILY.xattr.";
const GNU_SPARSE: &[u8] = b"GNU.sparse.";

/// The records of one PAX header, key → value (a later record for the same key wins).
#[derive(Debug, Default, Clone)]
pub(super) struct Records {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Stream offset of the header these records came from, for error messages.
    offset: u64,
}

impl Records {
    /// Parse the data of a PAX header that starts at stream offset `offset`.
    pub(super) fn parse(mut data: &[u8], offset: u64) -> Result<Records, TarError> {
        let bad = |reason: &'static str| TarError::InvalidPax { offset, reason };
        let mut map = BTreeMap::new();
        while !data.is_empty() {
            let space = data.iter().position(|&b| b == b' ').ok_or_else(|| bad("a record has no length"))?;
            let len_digits = &data[..space];
            if len_digits.is_empty() || !len_digits.iter().all(u8::is_ascii_digit) || len_digits.len() > 12 {
                return Err(bad("a record length is not a decimal number"));
            }
            let len = len_digits.iter().fold(0usize, |acc, &d| acc * 10 + usize::from(d - b'0'));
            if len < 5 || len > data.len() || len <= space + 1 {
                return Err(bad("a record length does not fit the header"));
            }
            let record = &data[space + 1..len];
            data = &data[len..];
            let Some((&b'\n', record)) = record.split_last() else {
                return Err(bad("a record does not end with a newline"));
            };
            let eq = record.iter().position(|&b| b == b'=').ok_or_else(|| bad("a record has no '='"))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            if key.is_empty() {
                return Err(bad("a record has an empty key"));
            }
            if key.contains(&0) {
                return Err(bad("a record key contains a NUL byte"));
            }
            let text_key = matches!(key, b"path" | b"linkpath" | b"uname" | b"gname");
            if text_key && value.contains(&0) {
                return Err(bad("a path or name record contains a NUL byte"));
            }
            if key.starts_with(GNU_SPARSE) {
                return Err(TarError::Sparse { offset });
            }
            map.insert(key.to_vec(), value.to_vec());
        }
        Ok(Records { map, offset })
    }

    /// The value of `key`, unless absent or empty (an empty value keeps the header's own field).
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
    }

    pub(super) fn path(&self) -> Option<&[u8]> {
        self.get(b"path")
    }

    pub(super) fn linkpath(&self) -> Option<&[u8]> {
        self.get(b"linkpath")
    }

    /// `size`, `uid` or `gid` as a non-negative decimal number.
    pub(super) fn number(&self, key: &'static str) -> Result<Option<u64>, TarError> {
        let Some(value) = self.get(key.as_bytes()) else { return Ok(None) };
        parse_decimal(value).map(Some).ok_or(TarError::InvalidPax { offset: self.offset, reason: key_reason(key) })
    }

    pub(super) fn mtime(&self) -> Result<Option<Timestamp>, TarError> {
        let Some(value) = self.get(b"mtime") else { return Ok(None) };
        parse_time(value)
            .map(Some)
            .ok_or(TarError::InvalidPax { offset: self.offset, reason: "mtime is not a decimal time" })
    }

    /// The `SCHILY.xattr.NAME` records, sorted by name; records with an empty value are dropped (Go does
    /// the same, so `umoci` never sets them).
    pub(super) fn xattrs(&self) -> Result<Vec<Xattr>, TarError> {
        let mut out = Vec::new();
        for (key, value) in self.map.range(SCHILY_XATTR.to_vec()..) {
            let Some(name) = key.strip_prefix(SCHILY_XATTR) else { break };
            if value.is_empty() {
                continue;
            }
            if name.is_empty() {
                return Err(TarError::InvalidPax { offset: self.offset, reason: "an xattr record has an empty name" });
            }
            out.push(Xattr { name: name.to_vec(), value: value.clone() });
        }
        Ok(out)
    }
}

fn key_reason(key: &'static str) -> &'static str {
    match key {
        "size" => "size is not a non-negative decimal number",
        "uid" => "uid is not a non-negative decimal number",
        _ => "gid is not a non-negative decimal number",
    }
}

/// An optional `+` and decimal digits, fitting in an `i64` (as Go's `ParseInt` demands).
fn parse_decimal(value: &[u8]) -> Option<u64> {
    let digits = value.strip_prefix(b"+").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut x: i64 = 0;
    for &d in digits {
        x = x.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    u64::try_from(x).ok()
}

/// A PAX time: `[-]SECONDS[.FRACTION]`; digits past nanoseconds are truncated, like Go does.
fn parse_time(value: &[u8]) -> Option<Timestamp> {
    let (negative, rest) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, value),
    };
    let (secs, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &[][..]),
    };
    if secs.is_empty() || !secs.iter().all(u8::is_ascii_digit) || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut sec: i64 = 0;
    for &d in secs {
        sec = sec.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |&d| u32::from(d - b'0'));
    }
    if !negative {
        return Some(Timestamp { sec, nsec });
    }
    // -S.F seconds = -(S+1) seconds + (1 - 0.F).
    if nsec == 0 {
        Some(Timestamp { sec: sec.checked_neg()?, nsec: 0 })
    } else {
        Some(Timestamp { sec: sec.checked_neg()?.checked_sub(1)?, nsec: 1_000_000_000 - nsec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::tests::pax_record;

    fn ts(sec: i64, nsec: u32) -> Option<Timestamp> {
        Some(Timestamp { sec, nsec })
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b"1700000000.123456789"), ts(1_700_000_000, 123_456_789));
        assert_eq!(parse_time(b"1700000000.1234567891234"), ts(1_700_000_000, 123_456_789));
        assert_eq!(parse_time(b"1700000000.5"), ts(1_700_000_000, 500_000_000));
        assert_eq!(parse_time(b"1700000000"), ts(1_700_000_000, 0));
        assert_eq!(parse_time(b"1700000000."), ts(1_700_000_000, 0));
        assert_eq!(parse_time(b"-1.5"), ts(-2, 500_000_000));
        assert_eq!(parse_time(b"-0.25"), ts(-1, 750_000_000));
        assert_eq!(parse_time(b"-7"), ts(-7, 0));
        assert_eq!(parse_time(b""), None);
        assert_eq!(parse_time(b"1.2.3"), None);
        assert_eq!(parse_time(b"abc"), None);
        assert_eq!(parse_time(b"99999999999999999999"), None);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"4294967296"), Some(4_294_967_296));
        assert_eq!(parse_decimal(b"+7"), Some(7));
        assert_eq!(parse_decimal(b"-7"), None);
        assert_eq!(parse_decimal(b"7x"), None);
        assert_eq!(parse_decimal(b"9223372036854775808"), None);
    }

    #[test]
    fn records() {
        let mut data = pax_record("SCHILY.xattr.user.a", b"b=c");
        data.extend(pax_record("path", b"x"));
        let r = Records::parse(&data, 0).unwrap();
        assert_eq!(r.path(), Some(&b"x"[..]));
        let x = r.xattrs().unwrap();
        assert_eq!(x, vec![Xattr { name: b"user.a".to_vec(), value: b"b=c".to_vec() }]);
        for bad in [&b"9 path=x"[..], b"3 a\n", b"x path=y\n", b"99 path=y\n", b"8 =abc\n", b"7 path\n"] {
            assert!(matches!(Records::parse(bad, 7), Err(TarError::InvalidPax { offset: 7, .. })), "{bad:?}");
        }
    }
}
