//! [`CodecError`]: everything that can go wrong while indexing or decoding a layer stream.

/// An error from indexing a compressed layer ([`crate::IndexingReader`]) or decoding one span of it
/// ([`crate::decode_span`]). Offsets are byte offsets into the compressed blob unless named otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes where a gzip member should start are not a valid gzip header.
    #[error(
        "invalid gzip header at compressed offset {offset}: {reason} \
         (is the layer really gzip? check the layer's media type)"
    )]
    GzipHeader {
        /// Offset of the header's first byte.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// zlib rejected the deflate data.
    #[error("corrupt deflate data near compressed offset {offset} (zlib code {code}): the layer blob is damaged")]
    Inflate {
        /// Offset of the first input byte not consumed when the error was seen.
        offset: u64,
        /// zlib's return code (e.g. -3 = Z_DATA_ERROR).
        code: i32,
    },
    /// A gzip member's trailer (CRC-32 and length of its uncompressed data) does not match its content.
    #[error(
        "gzip member at compressed offset {member_offset} fails its CRC-32/length check: the layer blob is damaged"
    )]
    Crc {
        /// Offset of the member's header.
        member_offset: u64,
    },
    /// The compressed stream ended inside a gzip member or zstd frame.
    #[error(
        "compressed stream ends early at offset {offset}, inside a gzip member or zstd frame: the blob is truncated"
    )]
    UnexpectedEof {
        /// Total compressed bytes seen.
        offset: u64,
    },
    /// The compressed bytes handed to [`crate::decode_span`] ran out before the span was complete.
    #[error(
        "span decoding ran out of compressed data: expected {expected} uncompressed bytes, got {got} \
         (fetch the range that span_fetch_range returns)"
    )]
    Truncated {
        /// Uncompressed bytes the span should have.
        expected: u64,
        /// Uncompressed bytes that could be decoded.
        got: u64,
    },
    /// zstd rejected the data.
    #[error("corrupt zstd data near compressed offset {offset}: {message}")]
    Zstd {
        /// Offset of the first input byte not consumed when the error was seen.
        offset: u64,
        /// zstd's own description of the error.
        message: &'static str,
    },
    /// The checkpoint cannot be used with the compressed bytes given.
    #[error(
        "checkpoint (compressed offset {in_offset}, {bits} bits) is outside the fetched range starting at \
         {fetch_start} ({fetched} bytes) or malformed (fetch the range that span_fetch_range returns)"
    )]
    CheckpointRange {
        /// The checkpoint's compressed offset.
        in_offset: u64,
        /// The checkpoint's unused bit count.
        bits: u8,
        /// Offset of the first fetched byte.
        fetch_start: u64,
        /// How many bytes were fetched.
        fetched: u64,
    },
    /// A span claims more uncompressed bytes than its compressed bytes could ever decode to (checked before
    /// allocating them).
    #[error(
        "span claims {len} uncompressed bytes, more than {compressed} {} bytes can decode to (the index is \
         corrupt or hostile)",
        match compression { crate::Compression::None => "stored", _ => compression.name() }
    )]
    ImpossibleLength {
        /// The span's uncompressed length, as the index records it.
        len: u64,
        /// Compressed bytes fetched for it.
        compressed: u64,
        /// How they are compressed.
        compression: crate::Compression,
    },
    /// A span is too large to hold in memory on this machine.
    #[error("span of {len} uncompressed bytes is too large to decode into memory")]
    SpanTooLarge {
        /// The span's uncompressed length.
        len: u64,
    },
    /// [`crate::IndexingReader::finish`] was called before the stream was read to its end, or after a read
    /// failed.
    #[error(
        "layer stream was not read to its end (stopped at compressed offset {compressed_pos}, \
         uncompressed offset {uncompressed_pos}): read until read() returns 0 before finish()"
    )]
    Incomplete {
        /// Compressed bytes consumed.
        compressed_pos: u64,
        /// Uncompressed bytes produced.
        uncompressed_pos: u64,
    },
    /// zlib could not set up a decompressor (out of memory).
    #[error("zlib could not start a decompressor (code {code})")]
    ZlibInit {
        /// zlib's return code.
        code: i32,
    },
}

impl From<CodecError> for std::io::Error {
    fn from(err: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }
}
