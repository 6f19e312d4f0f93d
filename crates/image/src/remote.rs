//! Archives in S3: loading only their metadata with ranged GETs ([`load_remote`], [`load_remote_table`]) and
//! serving file bytes from their data section ([`S3Data`], a [`LayerBlobs`] for the content store).

use std::ops::Range;

use bytes::Bytes;
use clip_format::{layout, Archive, ArchiveKind, FormatError, RangeReader, SectionEntry};
use clip_s3::{S3Error, S3Object};
use clip_store::{LayerBlobs, StoreError};
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tracing::debug;

use crate::ImageError;

/// The first GET of a remote archive fetches this much: header, section table and, for small archives,
/// all the metadata a mount needs. Larger metadata takes one more GET.
const PREFIX: u64 = 64 << 10;

/// The data section of a data-carrying archive in S3, read with ranged GETs.
pub struct S3Data {
    object: S3Object,
    data_offset: u64,
    data_len: u64,
}

impl S3Data {
    /// The `data_len` bytes at `data_offset` of `object` (its `DATA` section).
    pub fn new(object: S3Object, data_offset: u64, data_len: u64) -> S3Data {
        S3Data { object, data_offset, data_len }
    }
}

impl LayerBlobs for S3Data {
    fn read(&self, layer: u32, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            if layer != 0 {
                return Err(StoreError::NoLayer { layer, layers: 1 });
            }
            if range.end > self.data_len || range.start > range.end {
                return Err(StoreError::OutOfRange { layer, range, len: self.data_len });
            }
            let abs = self.data_offset + range.start..self.data_offset + range.end;
            // The content store's error type has no S3 variant; the S3 error stays the I/O error's source.
            self.object
                .read_range(abs)
                .await
                .map_err(|e| StoreError::Io { path: self.object.url().to_string(), source: std::io::Error::other(e) })
        })
    }

    fn describe(&self) -> String {
        self.object.describe()
    }
}

/// A [`RangeReader`] over an S3 object for the (synchronous) format crate: serves reads from a prefix
/// fetched up front, and the rest with blocking GETs on the runtime. Keeps the first S3 error so the caller
/// can report it as such.
struct ObjectReader {
    object: S3Object,
    handle: Handle,
    prefix: Bytes,
    size: u64,
    error: Option<S3Error>,
}

impl ObjectReader {
    /// The eager sections follow the table: fetches whatever of them the prefix lacks in one more GET.
    /// Errors are left for the load that follows to report. Blocking.
    fn extend_to_eager_end(&mut self) {
        let Ok((_, sections)) = Archive::load_table(self) else { return };
        let eager_end = sections
            .iter()
            .filter(|s| s.flags & layout::FLAG_LAZY == 0)
            .map(|s| s.offset.saturating_add(s.stored_len))
            .max()
            .unwrap_or(0)
            .min(self.size);
        let have = self.prefix.len() as u64;
        if eager_end <= have {
            return;
        }
        if let Ok(rest) = self.handle.block_on(self.object.read_range(have..eager_end)) {
            let mut all = Vec::with_capacity(eager_end as usize);
            all.extend_from_slice(&self.prefix);
            all.extend_from_slice(&rest);
            self.prefix = Bytes::from(all);
        }
    }
}

impl RangeReader for ObjectReader {
    fn read_range(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, FormatError> {
        let end = offset.saturating_add(len);
        if end > self.size {
            return Err(FormatError::Truncated { what: format!("range {offset}..{end}"), needed: end, len: self.size });
        }
        if end <= self.prefix.len() as u64 {
            return Ok(self.prefix[offset as usize..end as usize].to_vec());
        }
        match self.handle.block_on(self.object.read_range(offset..end)) {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(e) => {
                let io = FormatError::Io {
                    path: self.object.url().to_string().into(),
                    source: std::io::Error::other(e.to_string()),
                };
                self.error.get_or_insert(e);
                Err(io)
            }
        }
    }
}

/// Runs `load` on a reader of `object` whose first `prefix` bytes are fetched in one GET (with `extend`,
/// up to the end of the eager sections, in at most one more).
async fn with_reader<T: Send + 'static>(
    object: &S3Object,
    prefix: u64,
    extend: bool,
    load: impl FnOnce(&mut ObjectReader) -> Result<T, FormatError> + Send + 'static,
) -> Result<(T, u64), ImageError> {
    let (prefix, size) = object.read_prefix(prefix).await?;
    let mut reader = ObjectReader { object: object.clone(), handle: Handle::current(), prefix, size, error: None };
    let url = object.url().to_string();
    let (result, reader) = tokio::task::spawn_blocking(move || {
        if extend {
            reader.extend_to_eager_end();
        }
        let r = load(&mut reader);
        (r, reader)
    })
    .await
    .map_err(|e| ImageError::Task(e.to_string()))?;
    debug!(%url, size, requests = object.stats().requests, bytes = object.stats().bytes, "loaded remote metadata");
    match (result, reader.error) {
        (Ok(v), _) => Ok((v, size)),
        (Err(_), Some(s3)) => Err(s3.into()),
        (Err(source), None) => Err(ImageError::format(url)(source)),
    }
}

/// Loads the header, section table and eagerly loaded sections of the archive in `object`; returns it and
/// the object's size.
pub(crate) async fn load_remote(object: &S3Object) -> Result<(Archive, u64), ImageError> {
    with_reader(object, PREFIX, true, |r| Archive::load_remote(r)).await
}

/// Reads only the header and section table of the archive in `object`.
pub(crate) async fn load_remote_table(object: &S3Object) -> Result<(ArchiveKind, Vec<SectionEntry>), ImageError> {
    // The table is at the start: a small prefix is enough.
    let (table, _) = with_reader(object, 4 << 10, false, |r| Archive::load_table(r)).await?;
    Ok(table)
}
