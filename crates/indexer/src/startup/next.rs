//! What opening each file loads next, found for the whole image at index time ([`next_files`], the
//! index's `NEXT` section), and followed from a file a mount opens cold ([`Finder::next_closure`]).
//!
//! A mount's search from a file reads a level of its closure before it knows the next (a Python module's
//! imports are in its bytecode): a round trip per level, as many as the import chain is deep (`json` →
//! `re` → `enum` → `types` …). The indexer reads each module's imports as its layer streams by (they are
//! kept in the layer's part, [`clip_format::ModuleImports`]); resolved against the merged tree they give
//! each module's edges, so the mount knows a module's whole closure from the first open and loads it at
//! once.
//!
//! Recorded: for each CPython module's cached bytecode, the modules it imports (see `imports`), an
//! extension module among them as a file looked through (the mount looks for its libraries when it gets
//! there, as it does from an opened library).

use std::collections::{HashMap, HashSet, VecDeque};

use clip_format::{Archive, DataRef, Ino, LayerIndex, LayerPart, ModuleImports, Next, NodeKind};
use futures::future::BoxFuture;
use tracing::debug;

use super::path::Found;
use super::{is_bytecode, FileBytes, Finder, Head, ReadError};

/// Most modules whose imports are resolved.
const MAX_NEXT_MODULES: usize = 1 << 16;

/// The imports of the CPython modules of an image's layers, by where each module's bytes are.
#[derive(Debug, Default)]
pub struct KnownImports(HashMap<(LayerIndex, u64), ModuleImports>);

impl KnownImports {
    /// What the parts of an image's layers (bottom first) record.
    pub fn of_parts(parts: &[LayerPart]) -> KnownImports {
        let mut known = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            for m in &part.modules {
                known.insert((LayerIndex::from_index(i), m.data_offset), m.clone());
            }
        }
        KnownImports(known)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Nothing is read to resolve imports: a [`Finder`] that only resolves paths is given no bytes.
struct NoBytes;

impl FileBytes for NoBytes {
    fn read<'a>(&'a self, _: DataRef, _: u64, _: u64) -> BoxFuture<'a, Result<Vec<u8>, ReadError>> {
        Box::pin(async { Err("no file bytes are read to resolve imports".into()) })
    }
}

/// What opening each CPython module of the image indexed in `archive` loads next (see the [module
/// docs](self)), from the imports `known` of its layers' modules, for [`Archive::write_with_startup`].
pub fn next_files(archive: &Archive, known: &KnownImports) -> Vec<(Ino, Vec<Next>)> {
    if known.is_empty() {
        return Vec::new();
    }
    let finder = Finder::new(archive, &NoBytes);
    let mut out = Vec::new();
    for (module, data) in bytecode_files(archive) {
        let Some(m) = known.0.get(&(data.layer, data.offset)) else { continue };
        if let Some(edges) = finder.import_edges(&module, m.version, &m.imports) {
            out.push((module.node.ino, edges));
        }
    }
    debug!(files = out.len(), "what each module loads next");
    out
}

/// Every regular file of `archive` at a path of cached CPython bytecode (see [`is_bytecode`]), with where
/// its bytes are, in tree order, at most [`MAX_NEXT_MODULES`].
fn bytecode_files(archive: &Archive) -> Vec<(Found, DataRef)> {
    let mut out = Vec::new();
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
                NodeKind::File if is_bytecode(&child) => {
                    let Some(data) = node.data_ref() else { continue };
                    if out.len() == MAX_NEXT_MODULES {
                        return out;
                    }
                    out.push((Found { node, path: child }, data));
                }
                _ => {}
            }
        }
    }
    out
}

impl Finder<'_> {
    /// Adds what opening `file` loads next as the index's `NEXT` section has it: the closure of its edges
    /// all at once, then the libraries of the extension modules in it (looked for as from an opened
    /// library). False when the index does not know `file`.
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
                let follow = match edge {
                    Next::Load(f) => archive.node(f).is_ok_and(|node| self.add(&Found { node, path: Vec::new() })),
                    Next::Through(f) => through.insert(f),
                };
                match edge {
                    _ if !follow => {}
                    Next::Through(f) if next.of(f).is_none() => extensions.push(f),
                    _ => todo.push_back(edge.ino()),
                }
            }
        }
        for ext in extensions {
            let (Ok(node), Ok(path)) = (archive.node(ext), archive.path_of(ext)) else { continue };
            let ext = Found { node, path };
            if let Some(Head::Elf(headers)) = self.head(&ext).await {
                self.elf_closure(&ext, &headers).await;
            }
        }
        true
    }
}
