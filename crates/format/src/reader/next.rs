//! What opening a file loads next (the optional `NEXT` section), found at index time: for a CPython
//! module's cached bytecode, the modules it imports; for a shared object (a library, an extension module),
//! the libraries it needs. A mount follows these edges from a file opened cold and loads the whole closure
//! at once, where a search would read each level's files first (a round trip per level). An index without
//! the section, or with a damaged one, has none: the mount then searches as before.
//!
//! The section (zstd) is a list of little-endian u32 words: per file, its inode number, how many edges,
//! then each edge's inode number, [`THROUGH`] set on a file that is looked through (its own edges are
//! followed) but not loaded itself.

use std::collections::HashMap;

use super::{Archive, Backing};
use crate::check::decode_section;
use crate::layout::SEC_NEXT;
use crate::{Ino, NodeKind};

/// The flag on an edge to a file that is not loaded, only looked through (a large extension module: the
/// loader maps it a page at a time).
pub const THROUGH: u32 = 1 << 31;
/// The most edges of one file.
pub const MAX_NEXT_EDGES: usize = 4096;
/// The most words in a section (16 MiB).
const MAX_WORDS: usize = 4 << 20;

/// One edge of [`NextFiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Next {
    /// Loaded: read whole as it is opened.
    Load(Ino),
    /// Not loaded itself; its own edges are.
    Through(Ino),
}

impl Next {
    pub fn ino(self) -> Ino {
        match self {
            Next::Load(ino) | Next::Through(ino) => ino,
        }
    }

    fn word(self) -> u32 {
        match self {
            Next::Load(ino) => ino.0,
            Next::Through(ino) => ino.0 | THROUGH,
        }
    }
}

/// The checked `NEXT` section of an index: each file's edges.
#[derive(Debug, Default)]
pub struct NextFiles {
    words: Vec<u32>,
    /// Where each file's edges are in `words`.
    at: HashMap<Ino, (usize, usize)>,
}

impl NextFiles {
    /// What opening `ino` loads next, when the index says (`None`: it does not know).
    pub fn of(&self, ino: Ino) -> Option<impl Iterator<Item = Next> + '_> {
        let &(start, len) = self.at.get(&ino)?;
        Some(self.words[start..start + len].iter().map(|&w| {
            let ino = Ino(w & !THROUGH);
            if w & THROUGH == 0 {
                Next::Load(ino)
            } else {
                Next::Through(ino)
            }
        }))
    }

    /// How many files have edges.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Reads the words of a section of `archive`: `None` unless every file named is a regular file of it,
    /// no file is listed twice, and each count fits.
    fn parse(raw: &[u8], archive: &Archive) -> Option<NextFiles> {
        if raw.len() % 4 != 0 || raw.len() / 4 > MAX_WORDS {
            return None;
        }
        let words: Vec<u32> = raw.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect();
        let file = |w: u32| archive.node(Ino(w & !THROUGH)).ok().is_some_and(|n| n.kind() == NodeKind::File);
        let mut at = HashMap::new();
        let mut i = 0;
        while i < words.len() {
            let (from, len) = (*words.get(i)?, *words.get(i + 1)? as usize);
            let edges = words.get(i + 2..(i + 2).checked_add(len)?)?;
            if from & THROUGH != 0 || !file(from) || len > MAX_NEXT_EDGES || !edges.iter().all(|&w| file(w)) {
                return None;
            }
            if at.insert(Ino(from), (i + 2, len)).is_some() {
                return None;
            }
            i += 2 + len;
        }
        Some(NextFiles { words, at })
    }
}

/// The raw words of a `NEXT` section for `next` (each file's edges, at most [`MAX_NEXT_EDGES`] of them kept;
/// a file with none is kept too: the index knows it loads nothing more).
pub(crate) fn encode(next: &[(Ino, Vec<Next>)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (from, edges) in next {
        let edges = &edges[..edges.len().min(MAX_NEXT_EDGES)];
        raw.extend(from.0.to_le_bytes());
        raw.extend((edges.len() as u32).to_le_bytes());
        raw.extend(edges.iter().flat_map(|e| e.word().to_le_bytes()));
    }
    raw
}

impl Archive {
    /// What opening each file loads next, as found at index time (empty when the index has none, it is
    /// remote, or its section is damaged). Read and checked on first use.
    pub fn next_files(&self) -> &NextFiles {
        static EMPTY: std::sync::OnceLock<NextFiles> = std::sync::OnceLock::new();
        let parsed = self.next.get_or_init(|| {
            let e = self.section(SEC_NEXT)?;
            if matches!(self.backing, Backing::Remote) {
                return None;
            }
            let stored = self.local_range(e.offset..e.offset.checked_add(e.stored_len)?).ok()?;
            let raw = decode_section(e, stored).ok()?;
            NextFiles::parse(raw.as_deref().unwrap_or(stored), self)
        });
        parsed.as_ref().unwrap_or_else(|| EMPTY.get_or_init(NextFiles::default))
    }
}
