//! What opening each file loads next, found for the whole image at index time ([`next_files`], the
//! index's `NEXT` section), and followed from a file a mount opens cold ([`Finder::next_closure`]).
//!
//! A mount's search from a file reads a level of its closure before it knows the next (a Python module's
//! imports are in its bytecode, a library's in its dynamic section): a round trip per level, as many as the
//! chain is deep (`json` → `re` → `enum` → `types` …). The indexer reads each module's imports and each
//! shared object's library names as its layer streams by (kept in the layer's part,
//! [`clip_format::PartLoads`]); resolved against the merged tree they give each file's edges, so the mount
//! knows a file's whole closure from the first open and loads it at once.
//!
//! Recorded: for each CPython module's cached bytecode, the modules it imports (see `imports`; an extension
//! module larger than `imports::EXTENSION_LOAD_MAX` only looked through); for each shared object (library or
//! extension module), the libraries its `DT_NEEDED` names resolve to (the first file of the loader's
//! search: the index has the names, not the candidates' headers). The mount searches from a file the index
//! has nothing for, as before.
//!
//! The startup set's search at index time takes the same records ([`KnownLoads`], with each program's
//! interpreter and each script's `#!` line) instead of reading the image's files again.

use std::collections::{HashMap, HashSet, VecDeque};

use clip_format::{Archive, DataRef, ElfNames, Ino, LayerIndex, LayerPart, ModuleImports, Next, NodeKind};
use tracing::debug;

use super::elf::{Kind, Names};
use super::ldcache::LdCache;
use super::path::Found;
use super::{is_shared_object, Elf, FileBytes, Finder, Head};

/// Most files whose loads are resolved.
const MAX_NEXT_FILES: usize = 1 << 17;

/// What the files of an image's layers load (see [`clip_format::PartLoads`]), by where each file's bytes are.
#[derive(Debug, Default)]
pub struct KnownLoads {
    bytecode: HashMap<(LayerIndex, u64), ModuleImports>,
    elf_files: HashMap<(LayerIndex, u64), ElfNames>,
    scripts: HashMap<(LayerIndex, u64), String>,
    loader_caches: HashMap<(LayerIndex, u64), LdCache>,
}

impl KnownLoads {
    /// What the parts of an image's layers (bottom first) record, taken out of them (merging the tree
    /// does not need it).
    pub fn take_from(parts: &mut [LayerPart]) -> KnownLoads {
        let mut known = KnownLoads::default();
        for (i, part) in parts.iter_mut().enumerate() {
            let layer = LayerIndex::from_index(i);
            let loads = std::mem::take(&mut part.loads);
            known.bytecode.extend(loads.bytecode.into_iter().map(|m| ((layer, m.data_offset), m)));
            known.elf_files.extend(loads.elf_files.into_iter().map(|e| ((layer, e.data_offset), e)));
            known.scripts.extend(loads.scripts.into_iter().map(|s| ((layer, s.data_offset), s.line)));
            known.loader_caches.extend(loads.loader_caches.into_iter().map(|c| {
                let libraries = c.libraries.into_iter();
                let cache = libraries.map(|(name, paths)| (name.into(), paths.into_iter().map(String::into).collect()));
                ((layer, c.data_offset), cache.collect())
            }));
        }
        known
    }

    pub fn is_empty(&self) -> bool {
        self.bytecode.is_empty()
            && self.elf_files.is_empty()
            && self.scripts.is_empty()
            && self.loader_caches.is_empty()
    }

    /// What the loader's cache whose bytes are at `data` maps, when its layer's streaming recorded it.
    pub(super) fn loader_cache(&self, data: DataRef) -> Option<LdCache> {
        self.loader_caches.get(&(data.layer, data.offset)).cloned()
    }

    /// Whether the index records what the file at `path`, its bytes at `data`, loads next: a module's
    /// bytecode, a shared object (a program's start is the startup set's, or the mount's search).
    fn loads_next(&self, data: DataRef, path: &[u8]) -> bool {
        let key = (data.layer, data.offset);
        self.bytecode.contains_key(&key) || (is_shared_object(path) && self.elf_files.contains_key(&key))
    }

    /// What the file whose bytes are at `data` is, when its layer's streaming recorded it: a script (its
    /// `#!` line) or an ELF file (all the loader's names).
    fn head(&self, data: DataRef) -> Option<Head> {
        let key = (data.layer, data.offset);
        if let Some(line) = self.scripts.get(&key) {
            return Some(Head::Script(line.as_bytes().to_vec()));
        }
        let (kind, names, interp) = known_elf(self.elf_files.get(&key)?);
        Some(Head::Elf(Elf::Known { kind, interp, names }))
    }
}

/// The kind, names and interpreter of an ELF file as its layer's streaming recorded them.
fn known_elf(named: &ElfNames) -> (Kind, Names, Option<Vec<u8>>) {
    let bytes = |list: &[String]| list.iter().map(|s| s.as_bytes().to_vec()).collect();
    let kind =
        Kind { class64: named.class64, big_endian: named.big_endian, machine: object::elf::Machine(named.machine) };
    let names = Names { needed: bytes(&named.needed), runpath: bytes(&named.runpath), rpath: bytes(&named.rpath) };
    (kind, names, named.interp.as_ref().map(|i| i.as_bytes().to_vec()))
}

/// What opening each CPython module and shared object of the image indexed in `archive` loads next (see
/// the [module docs](self)), from what `known` says its layers' files import and name, for
/// [`Archive::write_with_startup`]. Only the image's `/etc/ld.so.cache` is read (through `files`), to find
/// libraries as the loader does.
pub async fn next_files(archive: &Archive, files: &dyn FileBytes, known: &KnownLoads) -> Vec<(Ino, Vec<Next>)> {
    if known.is_empty() {
        return Vec::new();
    }
    let mut finder = Finder::new(archive, files);
    finder.known = Some(known);
    let mut out = Vec::new();
    for (file, data) in known_files(archive, known) {
        let key = (data.layer, data.offset);
        let edges = if let Some(m) = known.bytecode.get(&key) {
            finder.import_edges(&file, m.version, &m.imports)
        } else if let Some(names) = known.elf_files.get(&key) {
            Some(finder.libraries_named(&file, names).await.into_iter().map(Next::Load).collect())
        } else {
            None
        };
        out.extend(edges.map(|edges| (file.node.ino, edges)));
    }
    debug!(files = out.len(), "what each file loads next");
    out
}

/// Every regular file of `archive` whose bytes `known` has something for (once, at its first path in tree
/// order), with where its bytes are, at most [`MAX_NEXT_FILES`].
fn known_files(archive: &Archive, known: &KnownLoads) -> Vec<(Found, DataRef)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let Ok(root) = archive.node(Ino::ROOT) else { return out };
    let mut dirs = vec![(Vec::new(), root)];
    while let Some((path, dir)) = dirs.pop() {
        for entry in archive.children(&dir) {
            let Ok((name, ino)) = entry else { break };
            let Ok(node) = archive.node(ino) else { continue };
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(name);
            match node.kind() {
                NodeKind::Dir => dirs.push((child, node)),
                NodeKind::File => {
                    let Some(data) = node.data_ref().filter(|&d| known.loads_next(d, &child)) else { continue };
                    if out.len() == MAX_NEXT_FILES {
                        return out;
                    }
                    if seen.insert(ino) {
                        out.push((Found { node, path: child }, data));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

impl Finder<'_> {
    /// What `found` is, when [`Finder::known`] recorded it.
    pub(super) fn known_head(&self, found: &Found) -> Option<Head> {
        self.known?.head(found.node.data_ref()?)
    }

    /// The libraries the shared object `file` names (`named`, read as its layer streamed), each the first
    /// file the loader's search finds for it that is an ELF file of its kind as the layers recorded it (or
    /// one they recorded nothing of: no file is read).
    async fn libraries_named(&mut self, file: &Found, named: &ElfNames) -> Vec<Ino> {
        let (kind, names, _) = known_elf(named);
        let mut libraries = Vec::new();
        for name in &names.needed {
            let found = self.candidates(name, &file.dir(), &names, &[], kind).await;
            let of_kind = |f: &Found| match self.known_head(f) {
                Some(Head::Elf(elf)) => elf.kind() == kind,
                Some(_) => false,
                None => true,
            };
            if let Some(lib) = found.into_iter().find(|f| f.node.kind() == NodeKind::File && of_kind(f)) {
                if !libraries.contains(&lib.node.ino) {
                    libraries.push(lib.node.ino);
                }
            }
        }
        libraries
    }

    /// Adds what opening `file` loads next as the index's `NEXT` section has it: the closure of its edges
    /// all at once; then for each file looked through that the index has nothing for (a large extension
    /// module whose layer's part has no names), its libraries, searched as from an opened library. False
    /// when the index does not know `file`.
    pub(super) async fn next_closure(&mut self, file: Ino) -> bool {
        let archive = self.archive;
        let next = archive.next_files();
        if next.of(file).is_none() {
            return false;
        }
        let mut todo = VecDeque::from([file]);
        let (mut through, mut extensions) = (HashSet::new(), Vec::new());
        while let Some(ino) = todo.pop_front() {
            for edge in next.of(ino).into_iter().flatten() {
                match edge {
                    Next::Load(f) => {
                        if archive.node(f).is_ok_and(|node| self.add(&Found { node, path: Vec::new() })) {
                            todo.push_back(f);
                        }
                    }
                    Next::Through(f) if !through.insert(f) => {}
                    Next::Through(f) if next.of(f).is_some() => todo.push_back(f),
                    Next::Through(f) => extensions.push(f),
                }
            }
        }
        for ext in extensions {
            let (Ok(node), Ok(path)) = (archive.node(ext), archive.path_of(ext)) else { continue };
            let ext = Found { node, path };
            if let Some(Head::Elf(elf)) = self.head(&ext).await {
                self.elf_closure(&ext, &elf).await;
            }
        }
        true
    }
}
