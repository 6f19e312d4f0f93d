//! Incremental parsing of gzip member headers and trailers (RFC 1952), fed from arbitrary chunks of input.
//!
//! The deflate data between them is inflated raw by [`crate::zlib::RawInflater`], so the framing is ours:
//! FEXTRA, FNAME, FCOMMENT and FHCRC (whose CRC-16 is checked) are all supported.

use crate::error::CodecError;
use crate::zlib::crc32;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Fixed,
    ExtraLen,
    Extra,
    Name,
    Comment,
    HeaderCrc,
    Done,
}

/// Parses one gzip member header from successive input chunks.
#[derive(Debug)]
pub(crate) struct HeaderParser {
    /// Compressed offset of the header's first byte (for errors).
    start: u64,
    field: Field,
    flags: u8,
    /// Bytes collected of a fixed-size field (the 10-byte prefix, XLEN, the header CRC).
    fixed: [u8; 10],
    filled: usize,
    extra_left: usize,
    /// CRC-32 of the header bytes before the header CRC field.
    crc: u32,
    seen: u64,
}

impl HeaderParser {
    /// A parser for a header starting at compressed offset `start`.
    pub fn new(start: u64) -> Self {
        Self { start, field: Field::Fixed, flags: 0, fixed: [0; 10], filled: 0, extra_left: 0, crc: 0, seen: 0 }
    }

    /// Whether no byte has been fed yet (so the stream may legitimately end here).
    pub fn is_fresh(&self) -> bool {
        self.seen == 0
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Feed bytes; returns how many were consumed (all of `input` unless the header ended inside it) and
    /// whether the header is complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), CodecError> {
        let mut i = 0;
        while i < input.len() && self.field != Field::Done {
            let field = self.field;
            let begin = i;
            match field {
                Field::Fixed | Field::ExtraLen | Field::HeaderCrc => {
                    let want = if field == Field::Fixed { 10 } else { 2 };
                    let take = (want - self.filled).min(input.len() - i);
                    self.fixed[self.filled..self.filled + take].copy_from_slice(&input[i..i + take]);
                    self.filled += take;
                    i += take;
                    if self.filled == want {
                        self.filled = 0;
                        self.complete_fixed_field()?;
                    }
                }
                Field::Extra => {
                    let take = self.extra_left.min(input.len() - i);
                    self.extra_left -= take;
                    i += take;
                    if self.extra_left == 0 {
                        self.field = self.after(Field::Extra);
                    }
                }
                Field::Name | Field::Comment => match input[i..].iter().position(|&b| b == 0) {
                    Some(nul) => {
                        i += nul + 1;
                        self.field = self.after(field);
                    }
                    None => i = input.len(),
                },
                Field::Done => {}
            }
            if field != Field::HeaderCrc {
                self.crc = crc32(self.crc, &input[begin..i]);
            }
        }
        self.seen += i as u64;
        Ok((i, self.field == Field::Done))
    }

    /// A fixed-size field (collected in `self.fixed`) is complete: validate it and move on.
    fn complete_fixed_field(&mut self) -> Result<(), CodecError> {
        match self.field {
            Field::Fixed => {
                let h = self.fixed;
                if h[0] != 0x1f || h[1] != 0x8b {
                    return Err(self.error("bad magic bytes (expected 1f 8b)"));
                }
                if h[2] != 8 {
                    return Err(self.error("unknown compression method (only deflate is defined)"));
                }
                if h[3] & FRESERVED != 0 {
                    return Err(self.error("reserved flag bits are set"));
                }
                self.flags = h[3];
                self.field = self.after(Field::Fixed);
            }
            Field::ExtraLen => {
                self.extra_left = usize::from(u16::from_le_bytes([self.fixed[0], self.fixed[1]]));
                self.field = if self.extra_left == 0 { self.after(Field::Extra) } else { Field::Extra };
            }
            Field::HeaderCrc => {
                let stored = u16::from_le_bytes([self.fixed[0], self.fixed[1]]);
                // The header CRC is the low 16 bits of the CRC-32 of all header bytes before it.
                if u32::from(stored) != self.crc & 0xffff {
                    return Err(self.error("header CRC mismatch"));
                }
                self.field = Field::Done;
            }
            Field::Extra | Field::Name | Field::Comment | Field::Done => {}
        }
        Ok(())
    }

    /// The field after `field` given the header flags.
    fn after(&self, field: Field) -> Field {
        let order =
            [(Field::ExtraLen, FEXTRA), (Field::Name, FNAME), (Field::Comment, FCOMMENT), (Field::HeaderCrc, FHCRC)];
        let rank = |f: Field| match f {
            Field::Fixed => 0,
            Field::ExtraLen | Field::Extra => 1,
            Field::Name => 2,
            Field::Comment => 3,
            Field::HeaderCrc => 4,
            Field::Done => 5,
        };
        order.iter().find(|(f, flag)| rank(*f) > rank(field) && self.flags & flag != 0).map_or(Field::Done, |(f, _)| *f)
    }

    fn error(&self, reason: &'static str) -> CodecError {
        CodecError::GzipHeader { offset: self.start, reason }
    }
}

/// Size of a gzip member trailer: CRC-32 and ISIZE (uncompressed length mod 2^32), both little-endian.
pub(crate) const TRAILER_LEN: usize = 8;

/// Collects the 8-byte gzip member trailer from successive input chunks.
#[derive(Debug, Default)]
pub(crate) struct Trailer {
    bytes: [u8; TRAILER_LEN],
    filled: usize,
}

impl Trailer {
    /// Feed bytes; returns how many were consumed.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let take = (TRAILER_LEN - self.filled).min(input.len());
        self.bytes[self.filled..self.filled + take].copy_from_slice(&input[..take]);
        self.filled += take;
        take
    }

    /// `(crc32, isize)` once all 8 bytes are in.
    pub fn value(&self) -> Option<(u32, u32)> {
        (self.filled == TRAILER_LEN).then(|| {
            let [c0, c1, c2, c3, s0, s1, s2, s3] = self.bytes;
            (u32::from_le_bytes([c0, c1, c2, c3]), u32::from_le_bytes([s0, s1, s2, s3]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with every optional field; the header CRC is computed like gzip does.
    fn full_header() -> Vec<u8> {
        let mut h = vec![0x1f, 0x8b, 8, FEXTRA | FNAME | FCOMMENT | FHCRC, 1, 2, 3, 4, 0, 3];
        h.extend_from_slice(&5u16.to_le_bytes());
        h.extend_from_slice(b"AB\x01\x00z");
        h.extend_from_slice(b"layer.tar\0");
        h.extend_from_slice(b"a comment\0");
        let crc = (crc32(0, &h) & 0xffff) as u16;
        h.extend_from_slice(&crc.to_le_bytes());
        h
    }

    fn parse_in_chunks(data: &[u8], chunk: usize) -> Result<(usize, bool), CodecError> {
        let mut parser = HeaderParser::new(0);
        let mut used = 0;
        for piece in data.chunks(chunk) {
            let (n, done) = parser.feed(piece)?;
            used += n;
            if done {
                return Ok((used, true));
            }
        }
        Ok((used, false))
    }

    #[test]
    fn parses_all_optional_fields_in_any_chunking() {
        let mut data = full_header();
        let header_len = data.len();
        data.extend_from_slice(b"DEFLATE DATA");
        for chunk in 1..=data.len() {
            assert_eq!(parse_in_chunks(&data, chunk).unwrap(), (header_len, true), "chunk {chunk}");
        }
    }

    #[test]
    fn minimal_header_is_ten_bytes() {
        let data = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255, 0xaa];
        assert_eq!(parse_in_chunks(&data, 3).unwrap(), (10, true));
    }

    #[test]
    fn bad_header_crc_is_rejected() {
        let mut data = full_header();
        let last = data.len() - 1;
        data[last] ^= 0x40;
        for chunk in [1, 7, data.len()] {
            let err = parse_in_chunks(&data, chunk).unwrap_err();
            assert!(matches!(err, CodecError::GzipHeader { reason, .. } if reason.contains("CRC")));
        }
    }

    #[test]
    fn rejects_bad_magic_method_and_flags() {
        for bad in [
            [0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 0],
            [0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 0],
            [0x1f, 0x8b, 8, 0x20, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(parse_in_chunks(&bad, 4).is_err());
        }
    }

    #[test]
    fn incomplete_header_is_not_done() {
        let data = full_header();
        assert_eq!(parse_in_chunks(&data[..data.len() - 1], 5).unwrap(), (data.len() - 1, false));
    }

    #[test]
    fn trailer_collects_across_chunks() {
        let mut t = Trailer::default();
        assert_eq!(t.feed(&[1, 0, 0]), 3);
        assert_eq!(t.value(), None);
        assert_eq!(t.feed(&[0, 5, 0, 0, 0, 99]), 5);
        assert_eq!(t.value(), Some((1, 5)));
    }
}
