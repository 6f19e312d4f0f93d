//! One 512-byte tar header block: format detection, checksum, numeric fields (octal and GNU base-256) and
//! the name fields, decoded the way Go's `archive/tar` (which `umoci` and the container runtimes use) does.

use super::TarError;

/// Size of a tar block.
pub(super) const BLOCK: usize = 512;

/// The header layouts that differ in where the name prefix sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Pre-POSIX: no magic, no owner names, no device numbers, no prefix.
    V7,
    /// POSIX ustar / pax: 155-byte prefix at 345.
    Ustar,
    /// Schily star: ustar magic plus a `tar\0` trailer; 131-byte prefix at 345.
    Star,
    /// Old GNU: `ustar  \0` magic; atime/ctime where ustar keeps the prefix.
    Gnu,
}

/// The fields of one header block, before PAX records or GNU long names are applied.
#[derive(Debug)]
pub(super) struct Header {
    pub typeflag: u8,
    /// `name`, joined with the ustar `prefix` when there is one. Raw bytes up to the first NUL.
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    pub mtime: i64,
    pub devmajor: i64,
    pub devminor: i64,
}

/// Whether a block is all zeros (half of the end-of-archive marker).
pub(super) fn is_zero(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Parse and verify one header block that starts at stream offset `offset`.
pub(super) fn parse(block: &[u8; BLOCK], offset: u64) -> Result<Header, TarError> {
    verify_checksum(block, offset)?;
    let format = format(block);
    let num = |field: &'static str, range: std::ops::Range<usize>| {
        parse_numeric(&block[range]).map_err(|kind| kind.into_error(offset, field))
    };
    let mut name = c_string(&block[0..100]);
    let mut devmajor = 0;
    let mut devminor = 0;
    if format != Format::V7 {
        devmajor = num("devmajor", 329..337)?;
        devminor = num("devminor", 337..345)?;
        let prefix = match format {
            Format::Ustar => c_string(&block[345..500]),
            Format::Star => c_string(&block[345..476]),
            Format::Gnu | Format::V7 => Vec::new(),
        };
        if !prefix.is_empty() {
            let mut joined = prefix;
            joined.push(b'/');
            joined.extend_from_slice(&name);
            name = joined;
        }
    }
    Ok(Header {
        typeflag: block[156],
        name,
        linkname: c_string(&block[157..257]),
        mode: num("mode", 100..108)?,
        uid: num("uid", 108..116)?,
        gid: num("gid", 116..124)?,
        size: num("size", 124..136)?,
        mtime: num("mtime", 136..148)?,
        devmajor,
        devminor,
    })
}

fn format(block: &[u8; BLOCK]) -> Format {
    let magic = &block[257..263];
    let version = &block[263..265];
    if magic == b"ustar\0" && version == b"00" {
        if &block[508..512] == b"tar\0" {
            Format::Star
        } else {
            Format::Ustar
        }
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    }
}

/// The header checksum: the sum of all bytes with the checksum field counted as spaces, as unsigned bytes
/// (POSIX) or as signed bytes (some historic writers). Either is accepted.
fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    let stored = parse_octal(&block[148..156]).map_err(|_| TarError::BadChecksum {
        offset,
        stored: String::from_utf8_lossy(&block[148..156]).into_owned(),
        computed: unsigned,
    })?;
    if stored != unsigned && stored != signed {
        return Err(TarError::BadChecksum { offset, stored: format!("{stored:o}"), computed: unsigned });
    }
    Ok(())
}

/// Bytes up to the first NUL (or all of them).
pub(super) fn c_string(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

/// Why a numeric field could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumError {
    Invalid,
    Overflow,
}

impl NumError {
    pub(super) fn into_error(self, offset: u64, field: &'static str) -> TarError {
        match self {
            NumError::Invalid => TarError::InvalidNumber { offset, field },
            NumError::Overflow => TarError::NumberOutOfRange { offset, field },
        }
    }
}

/// A numeric field: GNU base-256 when the high bit of the first byte is set (two's complement, so it can be
/// negative), otherwise octal.
pub(super) fn parse_numeric(field: &[u8]) -> Result<i64, NumError> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            let invert = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in field.iter().enumerate() {
                let mut c = c ^ invert;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return Err(NumError::Overflow);
                }
                x = (x << 8) | u64::from(c);
            }
            let x = i64::try_from(x).map_err(|_| NumError::Overflow)?;
            Ok(if invert == 0xff { !x } else { x })
        }
        _ => parse_octal(field),
    }
}

/// An octal field; leading and trailing spaces and NULs are padding, an all-padding field is 0.
pub(super) fn parse_octal(field: &[u8]) -> Result<i64, NumError> {
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    let mut x: i64 = 0;
    for &c in &field[start..end] {
        if !(b'0'..=b'7').contains(&c) {
            return Err(NumError::Invalid);
        }
        x = x.checked_mul(8).and_then(|x| x.checked_add(i64::from(c - b'0'))).ok_or(NumError::Overflow)?;
    }
    Ok(x)
}
