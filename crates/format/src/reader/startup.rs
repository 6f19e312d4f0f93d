//! The startup set of an index (the optional `STRT` section): the regular files a start of the image's
//! entrypoint opens first (the program, its ELF interpreter and libraries, a script's interpreter), in
//! that order, as inode numbers. The indexer finds them after the index is written, so the set is added
//! to a written file ([`Archive::write_with_startup`], with what opening each file loads next: see `next`);
//! an index without it reads as an empty set.

use std::io::Write;

use super::next::{self, Next};
use super::{Archive, Backing};
use crate::check::decode_section;
use crate::error::Corruption;
use crate::layout::*;
use crate::writer::{compress_section, Raw, ZSTD_LEVEL};
use crate::{FormatError, Ino, NodeKind};

/// The most files a startup set holds (4 KiB of section).
pub const MAX_STARTUP_FILES: usize = 1024;

impl Archive {
    /// The startup set: regular files in the order a start opens them. Empty when the index has none (built
    /// by an older clip, or loaded remotely). A set naming anything but a regular file of this index is an
    /// error.
    pub fn startup_set(&self) -> Result<Vec<Ino>, FormatError> {
        let Some(e) = self.section(SEC_STRT) else { return Ok(Vec::new()) };
        if matches!(self.backing, Backing::Remote) {
            return Ok(Vec::new());
        }
        let stored = self.local_range(e.offset..e.offset.saturating_add(e.stored_len))?;
        let raw = decode_section(e, stored)?;
        let raw = raw.as_deref().unwrap_or(stored);
        if raw.len() % 4 != 0 || raw.len() / 4 > MAX_STARTUP_FILES {
            return Err(Corruption::StartupLength { len: raw.len(), max: MAX_STARTUP_FILES }.into());
        }
        let mut set = Vec::with_capacity(raw.len() / 4);
        for rec in raw.chunks_exact(4) {
            let ino = Ino(Le(rec).u32());
            if self.node(ino)?.kind() != NodeKind::File {
                return Err(Corruption::StartupEntry { ino }.into());
            }
            set.push(ino);
        }
        Ok(set)
    }

    /// The path of `ino` from the root, by its first name (as [`crate::NodeView::parent`] records it).
    pub fn path_of(&self, ino: Ino) -> Result<Vec<u8>, FormatError> {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut node = self.node(ino)?;
        // A parent chain longer than the tree is corrupt (a cycle); stop there.
        for _ in 0..self.node_count() {
            if node.ino == Ino::ROOT {
                break;
            }
            let parent = self.node(node.parent)?;
            let name = self.children(&parent).find_map(|e| match e {
                Ok((name, child)) if child == node.ino => Some(Ok(name)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            });
            names.push(name.transpose()?.ok_or(Corruption::NotInParent { ino: node.ino, parent: parent.ino })?);
            node = parent;
        }
        let mut path = Vec::new();
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Ok(path)
    }

    /// Writes this archive (a local one) to `out` with `set` as its startup set and `next` as what opening
    /// each file loads next (see [`Archive::next_files`]; left out when empty), replacing any it has: the
    /// other sections are copied as they are stored (nothing is encoded again), the new ones go last.
    /// Returns the bytes written.
    pub fn write_with_startup<W: Write>(
        &self,
        set: &[Ino],
        next: &[(Ino, Vec<Next>)],
        mut out: W,
    ) -> Result<u64, FormatError> {
        if set.len() > MAX_STARTUP_FILES {
            return Err(FormatError::Invalid(format!(
                "a startup set of {} files (at most {MAX_STARTUP_FILES})",
                set.len()
            )));
        }
        let body: Vec<u8> = set.iter().flat_map(|ino| ino.0.to_le_bytes()).collect();
        let (len, crc) = (body.len() as u64, crc32c::crc32c(&body));
        let mut added =
            vec![(SectionEntry { id: SEC_STRT, flags: 0, offset: 0, stored_len: len, raw_len: len, crc }, body)];
        let next = next::encode(next);
        if !next.is_empty() {
            let stored = compress_section(Raw::Bytes(&next), ZSTD_LEVEL, 20)?;
            let (stored_len, raw_len, crc) = (stored.len() as u64, next.len() as u64, crc32c::crc32c(&stored));
            let flags = FLAG_ZSTD | FLAG_LAZY;
            added.push((SectionEntry { id: SEC_NEXT, flags, offset: 0, stored_len, raw_len, crc }, stored));
        }
        let kept: Vec<&SectionEntry> = self.sections.iter().filter(|s| s.id != SEC_STRT && s.id != SEC_NEXT).collect();
        let count = kept.len() + added.len();
        let mut offset = (HEADER_LEN + count * SECTION_ENTRY_LEN) as u64;
        let mut table = Vec::with_capacity(count * SECTION_ENTRY_LEN);
        let mut bodies = Vec::with_capacity(count);
        for s in kept {
            let stored = self.local_range(s.offset..s.offset.saturating_add(s.stored_len))?;
            SectionEntry { offset, ..*s }.encode(&mut table);
            offset += s.stored_len;
            bodies.push(stored);
        }
        for (entry, body) in &added {
            SectionEntry { offset, ..*entry }.encode(&mut table);
            offset += entry.stored_len;
            bodies.push(body);
        }
        let header = Header {
            version: FORMAT_VERSION,
            kind_code: self.kind.code(),
            sections: count as u32,
            table_offset: HEADER_LEN as u64,
            table_crc: crc32c::crc32c(&table),
        };
        let mut total = 0;
        for bytes in [&header.encode()[..], &table].into_iter().chain(bodies) {
            out.write_all(bytes).map_err(FormatError::Write)?;
            total += bytes.len() as u64;
        }
        out.flush().map_err(FormatError::Write)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn index() -> Archive {
        let dir = |children| NodeSpec {
            mode: mode::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: vec![],
            content: Content::Dir(children),
        };
        let file = NodeSpec {
            content: Content::File(DataRef { layer: LayerIndex(0), offset: 512, size: 5 }),
            mode: mode::S_IFREG | 0o755,
            ..dir(vec![])
        };
        let layer = LayerMeta {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::of(b"layer"),
            size: 1024,
            diff_id: None,
            uncompressed_size: 1024,
            compression: Compression::None,
            first_span: SpanId(0),
            span_count: 1,
        };
        let span =
            SpanSpec { out_offset: 0, in_offset: 0, bits: 0, digest: Digest::default(), window: WindowRef::default() };
        let contents = IndexContents {
            kind: ArchiveKind::IndexOnly,
            meta: ImageMeta { layers: vec![layer], ..ImageMeta::default() },
            nodes: vec![dir(vec![(b"bin".to_vec(), Ino(2))]), dir(vec![(b"app".to_vec(), Ino(3))]), file],
            spans: vec![span],
            windows: Windows::new(),
            chunks: None,
            tree: None,
        };
        let mut bytes = Vec::new();
        write_index(&contents, &mut bytes).unwrap();
        Archive::from_bytes(bytes).unwrap()
    }

    fn with_set(a: &Archive, set: &[Ino]) -> Result<Archive, FormatError> {
        let mut bytes = Vec::new();
        let written = a.write_with_startup(set, &[], &mut bytes)?;
        assert_eq!(written, bytes.len() as u64);
        Archive::from_bytes(bytes)
    }

    #[test]
    fn a_set_is_added_read_and_replaced_and_the_rest_is_unchanged() {
        let plain = index();
        assert_eq!(plain.startup_set().unwrap(), []);
        let a = with_set(&plain, &[Ino(3)]).unwrap();
        assert_eq!(a.startup_set().unwrap(), [Ino(3)]);
        assert_eq!(a.resolve(b"/bin/app").unwrap(), Some(Ino(3)));
        assert_eq!(a.path_of(Ino(3)).unwrap(), b"/bin/app");
        assert_eq!(a.path_of(Ino::ROOT).unwrap(), b"/");
        assert_eq!(a.meta(), plain.meta());
        assert_eq!(a.sections().len(), plain.sections().len() + 1);
        let b = with_set(&a, &[]).unwrap();
        assert_eq!(b.startup_set().unwrap(), []);
        assert_eq!(b.sections().len(), a.sections().len(), "the set is replaced, not added twice");
    }

    #[test]
    fn what_a_file_loads_next_is_added_read_and_replaced_and_a_bad_list_reads_as_none() {
        let plain = index();
        assert!(plain.next_files().is_empty());
        let next = [(Ino(3), vec![Next::Load(Ino(3)), Next::Through(Ino(3))])];
        let mut bytes = Vec::new();
        plain.write_with_startup(&[Ino(3)], &next, &mut bytes).unwrap();
        let a = Archive::from_bytes(bytes).unwrap();
        assert_eq!(a.startup_set().unwrap(), [Ino(3)]);
        assert_eq!(a.next_files().len(), 1);
        assert_eq!(a.next_files().of(Ino(3)).unwrap().collect::<Vec<_>>(), next[0].1);
        assert!(a.next_files().of(Ino(2)).is_none(), "a file without edges");
        let lazy = a.section(layout::SEC_NEXT).unwrap();
        assert_eq!(lazy.flags, layout::FLAG_ZSTD | layout::FLAG_LAZY);
        // Written again without it: gone, not kept from before.
        let b = with_set(&a, &[Ino(3)]).unwrap();
        assert!(b.section(layout::SEC_NEXT).is_none() && b.next_files().is_empty());
        // An edge to a directory, or to an inode the index does not have: the list is not trusted at all.
        for bad in [Ino(2), Ino(9)] {
            let mut bytes = Vec::new();
            plain.write_with_startup(&[], &[(Ino(3), vec![Next::Load(bad)])], &mut bytes).unwrap();
            assert!(Archive::from_bytes(bytes).unwrap().next_files().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn a_set_naming_a_directory_or_a_missing_inode_is_refused() {
        let plain = index();
        let e = with_set(&plain, &[Ino(2)]).unwrap().startup_set().unwrap_err();
        assert!(e.to_string().contains("inode 2, which is not a regular file"), "{e}");
        assert!(with_set(&plain, &[Ino(9)]).unwrap().startup_set().is_err());
        assert!(plain.write_with_startup(&vec![Ino(3); MAX_STARTUP_FILES + 1], &[], Vec::new()).is_err());
    }
}
