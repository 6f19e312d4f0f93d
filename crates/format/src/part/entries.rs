//! [`PartEntries`]: a layer's tar entries held in the part's own encoding — [`ENTRY_LEN`]-byte records, one
//! interned string blob and [`XATTR_LEN`]-byte xattr records — from the moment the indexer parses them until
//! the part is written or merged. An entry costs its path's bytes in memory (no per-entry allocations, no key
//! copies); the records past a few MiB wait in a temporary file, read back in order by the merge and by the
//! part writer.

use crate::layout::*;
use crate::spill::Spill;
use crate::tables::{encode_xattrs, Strings, TABLE_SPILL_AT};
use crate::{Corruption, FormatError, Timestamp, Xattr};

use super::{EntryKind, PartMeta, TarEntry};

/// Entries in stream order, encoded. Build with [`PartEntries::push`]; read with [`PartEntries::iter`] (or by
/// value with `into_iter`), which gives back each [`TarEntry`] as pushed, its xattrs sorted by name.
pub struct PartEntries {
    /// `ENTR`: one [`ENTRY_LEN`]-byte record an entry.
    pub(super) records: Spill,
    /// `STRS`: paths, link targets, xattr names and values.
    pub(super) strs: Strings,
    /// `XATR`: one [`XATTR_LEN`]-byte record an xattr.
    pub(super) xattrs: Vec<u8>,
}

impl Default for PartEntries {
    fn default() -> Self {
        PartEntries { records: Spill::new(TABLE_SPILL_AT), strs: Strings::default(), xattrs: Vec::new() }
    }
}

/// Records read back from the file at a time.
const BATCH: usize = 2048;

impl PartEntries {
    /// Appends `e` after the entries so far.
    pub fn push(&mut self, e: &TarEntry) -> Result<(), FormatError> {
        let (path_off, path_len) = self.strs.add(&e.path)?;
        let (link_off, link_len) = self.strs.add(&e.link_target)?;
        let x_first = u32::try_from(self.xattrs.len() / XATTR_LEN)
            .map_err(|_| FormatError::Invalid("more than 2^32 xattrs in a layer".into()))?;
        let x_count = encode_xattrs(&e.xattrs, &mut self.strs, &mut self.xattrs)?;
        let mut r = Vec::with_capacity(ENTRY_LEN);
        r.extend_from_slice(&[e.kind.code(), 0, 0, 0]);
        for v in [e.mode, e.uid, e.gid] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&e.mtime.sec.to_le_bytes());
        for v in [e.mtime.nsec, e.dev_major, e.dev_minor] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        for v in [e.size, e.data_offset, e.header_offset] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        for v in [path_off, path_len, link_off, link_len, x_first, x_count, 0] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        self.records.append(&r).map_err(FormatError::Write)
    }

    /// Encodes `entries` in order.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a TarEntry>) -> Result<PartEntries, FormatError> {
        let mut out = PartEntries::default();
        for e in entries {
            out.push(e)?;
        }
        Ok(out)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        (self.records.len() / ENTRY_LEN as u64) as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.len() == 0
    }

    /// The entries in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { entries: self, cursor: Cursor::default() }
    }

    /// Takes encoded sections as read from a part, checking every record: kinds known, strings and xattrs
    /// inside their sections, file data inside the layer `meta` describes.
    pub(super) fn from_sections(
        records: Vec<u8>,
        strs: Vec<u8>,
        xattrs: Vec<u8>,
        meta: &PartMeta,
    ) -> Result<PartEntries, FormatError> {
        for (section, raw, record) in [("ENTR", &records, ENTRY_LEN), ("XATR", &xattrs, XATTR_LEN)] {
            if raw.len() % record != 0 {
                return Err(Corruption::PartialRecord { section, len: raw.len(), record }.into());
            }
        }
        let string_ok = |off: u32, len: u32| -> Result<(), FormatError> {
            let inside = (off as usize).checked_add(len as usize).is_some_and(|end| end <= strs.len());
            inside
                .then_some(())
                .ok_or_else(|| Corruption::StringRange { offset: u64::from(off), len, size: strs.len() }.into())
        };
        for (i, rec) in records.chunks_exact(ENTRY_LEN).enumerate() {
            let f = Fields::of(rec);
            EntryKind::from_code(f.code).ok_or(Corruption::EntryKind { entry: i, code: f.code })?;
            if f.data_offset.checked_add(f.size).is_none_or(|end| end > meta.uncompressed_size) {
                return Err(FormatError::BadSize {
                    what: format!("layer part {}: entry {i} has data beyond the layer", meta.digest),
                });
            }
            string_ok(f.path.0, f.path.1)?;
            string_ok(f.link.0, f.link.1)?;
            let x_range = f.x_first as usize * XATTR_LEN..(f.x_first as usize + f.x_count as usize) * XATTR_LEN;
            let x_records =
                xattrs.get(x_range).ok_or(Corruption::EntryXattrs { entry: i, first: f.x_first, count: f.x_count })?;
            for x in x_records.chunks_exact(XATTR_LEN) {
                let mut r = Le(x);
                string_ok(r.u32(), r.u32())?;
                string_ok(r.u32(), r.u32())?;
            }
        }
        let records = Spill::from_vec(records, TABLE_SPILL_AT).map_err(FormatError::Write)?;
        Ok(PartEntries { records, strs: Strings::from_blob(strs), xattrs })
    }

    /// The entry of record `rec`. Every record was checked when pushed or read, so the lookups hold; should
    /// one not, the string reads as empty rather than panicking.
    fn decode(&self, rec: &[u8]) -> TarEntry {
        self.decode_with(rec, &mut |(off, len)| {
            self.strs.blob.get(off as usize..off as usize + len as usize).map(<[u8]>::to_vec).unwrap_or_default()
        })
    }

    /// The entry of record `rec`, its strings (offset, length) fetched by `string`.
    fn decode_with(&self, rec: &[u8], string: &mut dyn FnMut((u32, u32)) -> Vec<u8>) -> TarEntry {
        let f = Fields::of(rec);
        let x_range = f.x_first as usize * XATTR_LEN..(f.x_first as usize + f.x_count as usize) * XATTR_LEN;
        let xattrs = self
            .xattrs
            .get(x_range)
            .unwrap_or_default()
            .chunks_exact(XATTR_LEN)
            .map(|x| {
                let mut r = Le(x);
                Xattr { name: string((r.u32(), r.u32())), value: string((r.u32(), r.u32())) }
            })
            .collect();
        let path = string(f.path);
        TarEntry {
            path,
            kind: EntryKind::from_code(f.code).unwrap_or(EntryKind::File),
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
            size: f.size,
            mtime: f.mtime,
            link_target: string(f.link),
            dev_major: f.dev.0,
            dev_minor: f.dev.1,
            xattrs,
            data_offset: f.data_offset,
            header_offset: f.header_offset,
        }
    }
}

impl IntoIterator for PartEntries {
    type Item = TarEntry;
    type IntoIter = IntoIter;

    /// The entries in order, each decoded as it is taken. The strings' index (needed only to add more) is
    /// dropped first, and strings past a few MiB move to a temporary file, so a merge holds neither.
    fn into_iter(mut self) -> IntoIter {
        let blob = std::mem::take(&mut self.strs.blob);
        let mut cursor = Cursor::default();
        let mut file = None;
        if blob.len() > TABLE_SPILL_AT {
            match Spill::from_vec(blob, TABLE_SPILL_AT) {
                Ok(blob) => {
                    self.strs = Strings::default();
                    file = Some(FileStrings { blob, start: 0, window: Vec::new() });
                }
                Err(e) => cursor.error = Some(FormatError::Write(e)),
            }
        } else {
            self.strs = Strings::from_blob(blob);
        }
        IntoIter { entries: self, cursor, file }
    }
}

/// Where a walk over the records is: [`BATCH`] records are read at a time (from the temporary file, once
/// spilled).
#[derive(Default)]
struct Cursor {
    /// Records taken so far.
    next: usize,
    batch: Vec<u8>,
    at: usize,
    /// Why reading the records back failed (the walk then ended early).
    error: Option<FormatError>,
}

impl Cursor {
    /// The next record.
    fn take<'c>(&'c mut self, entries: &PartEntries) -> Option<&'c [u8]> {
        if self.error.is_some() {
            return None;
        }
        if self.at == self.batch.len() {
            let n = (entries.len() - self.next).min(BATCH);
            if n == 0 {
                return None;
            }
            self.batch.resize(n * ENTRY_LEN, 0);
            if let Err(e) = entries.records.read_exact_at(&mut self.batch, (self.next * ENTRY_LEN) as u64) {
                self.error = Some(FormatError::Write(e));
                return None;
            }
            self.at = 0;
        }
        let rec = &self.batch[self.at..self.at + ENTRY_LEN];
        self.at += ENTRY_LEN;
        self.next += 1;
        Some(rec)
    }
}

/// Bytes of the strings read from the file at a time, once they moved there.
const STRINGS_WINDOW: usize = 256 << 10;

/// The strings of entries walked by value, once moved to a temporary file: read through a window that moves
/// forward with the paths (which were added in entry order); a string behind the window (a hard link's
/// target, a repeated xattr name) is read on its own.
struct FileStrings {
    blob: Spill,
    start: u64,
    window: Vec<u8>,
}

impl FileStrings {
    fn get(&mut self, off: u32, len: u32) -> std::io::Result<Vec<u8>> {
        let (off, len) = (u64::from(off), len as usize);
        let end = off + len as u64;
        if len == 0 {
            return Ok(Vec::new());
        }
        if end > self.blob.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if off >= self.start && end <= self.start + self.window.len() as u64 {
            let at = (off - self.start) as usize;
            return Ok(self.window[at..at + len].to_vec());
        }
        if off < self.start {
            let mut s = vec![0u8; len];
            self.blob.read_exact_at(&mut s, off)?;
            return Ok(s);
        }
        let n = (self.blob.len() - off).min(STRINGS_WINDOW.max(len) as u64) as usize;
        self.window.resize(n, 0);
        self.blob.read_exact_at(&mut self.window, off)?;
        self.start = off;
        Ok(self.window[..len].to_vec())
    }
}

/// The entries of a [`PartEntries`] by value, decoded one at a time. Should reading the records back from
/// their temporary file fail, the walk ends early and [`IntoIter::take_error`] says why.
pub struct IntoIter {
    entries: PartEntries,
    cursor: Cursor,
    /// The strings, when they moved to a temporary file.
    file: Option<FileStrings>,
}

impl IntoIter {
    /// Why the walk ended before the last entry, if it did.
    pub fn take_error(&mut self) -> Option<FormatError> {
        self.cursor.error.take()
    }
}

impl Iterator for IntoIter {
    type Item = TarEntry;

    fn next(&mut self) -> Option<TarEntry> {
        let rec = self.cursor.take(&self.entries)?;
        let Some(file) = &mut self.file else { return Some(self.entries.decode(rec)) };
        let mut failed = None;
        let entry = self.entries.decode_with(rec, &mut |(off, len)| {
            file.get(off, len).unwrap_or_else(|e| {
                failed.get_or_insert(e);
                Vec::new()
            })
        });
        if let Some(e) = failed {
            self.cursor.error = Some(FormatError::Write(e));
            return None;
        }
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.entries.len() - self.cursor.next;
        (0, Some(left))
    }
}

/// The entries of a [`PartEntries`], decoded one at a time (ending early, should the records not read back).
pub struct Iter<'a> {
    entries: &'a PartEntries,
    cursor: Cursor,
}

impl Iterator for Iter<'_> {
    type Item = TarEntry;

    fn next(&mut self) -> Option<TarEntry> {
        let rec = self.cursor.take(self.entries)?;
        Some(self.entries.decode(rec))
    }
}

impl Clone for PartEntries {
    fn clone(&self) -> PartEntries {
        PartEntries {
            records: self.records.clone(),
            strs: Strings::from_blob(self.strs.blob.clone()),
            xattrs: self.xattrs.clone(),
        }
    }
}

impl PartialEq for PartEntries {
    /// The same entries in the same order (compared decoded: two encodings may share strings differently).
    fn eq(&self, other: &PartEntries) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for PartEntries {}

impl std::fmt::Debug for PartEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The fields of one `ENTR` record.
struct Fields {
    code: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    dev: (u32, u32),
    size: u64,
    data_offset: u64,
    header_offset: u64,
    path: (u32, u32),
    link: (u32, u32),
    x_first: u32,
    x_count: u32,
}

impl Fields {
    fn of(rec: &[u8]) -> Fields {
        let mut r = Le(rec);
        let code = r.u8();
        r.skip(3);
        let (mode, uid, gid, sec, nsec) = (r.u32(), r.u32(), r.u32(), r.i64(), r.u32());
        let (dev, size, data_offset, header_offset) = ((r.u32(), r.u32()), r.u64(), r.u64(), r.u64());
        let (path, link, x_first, x_count) = ((r.u32(), r.u32()), (r.u32(), r.u32()), r.u32(), r.u32());
        Fields {
            code,
            mode,
            uid,
            gid,
            mtime: Timestamp { sec, nsec },
            dev,
            size,
            data_offset,
            header_offset,
            path,
            link,
            x_first,
            x_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_past_the_spill_limits_walk_back_as_pushed_by_value_and_by_reference() {
        let path = |i: usize| format!("usr/share/a-directory-with-a-long-name/d{:04}/file-{i:06}", i / 1000);
        let entry = |i: usize| {
            let (kind, link_target) = match i % 50 {
                // A hard link to an earlier path: its target string sits behind the read window.
                7 if i > 10_000 => (EntryKind::HardLink, path(i - 10_000).into_bytes()),
                9 => (EntryKind::Symlink, b"../target".to_vec()),
                _ => (EntryKind::File, Vec::new()),
            };
            let xattrs = match i % 97 {
                0 => vec![Xattr { name: b"security.capability".to_vec(), value: vec![1, 2, (i % 251) as u8] }],
                _ => Vec::new(),
            };
            let (mode, uid, gid, size, mtime) = (0o644, 1, 2, i as u64, Timestamp { sec: i as i64, nsec: 0 });
            TarEntry {
                path: path(i).into_bytes(),
                kind,
                mode,
                uid,
                gid,
                size,
                mtime,
                link_target,
                dev_major: 0,
                dev_minor: 0,
                xattrs,
                data_offset: 512 * i as u64,
                header_offset: 0,
            }
        };
        let n = 120_000;
        let mut entries = PartEntries::default();
        for i in 0..n {
            entries.push(&entry(i)).unwrap();
        }
        assert!(entries.records.len() > TABLE_SPILL_AT as u64 && entries.strs.blob.len() > TABLE_SPILL_AT);
        assert!(entries.iter().enumerate().all(|(i, e)| e == entry(i)));
        let mut walk = entries.into_iter();
        assert!(walk.file.is_some(), "the strings moved to a file");
        let mut count = 0;
        for (i, e) in walk.by_ref().enumerate() {
            assert_eq!(e, entry(i));
            count += 1;
        }
        assert_eq!(count, n);
        assert!(walk.take_error().is_none());
    }
}
