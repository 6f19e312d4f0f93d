//! The startup set of an image, found at index time ([`startup_set`]): the files a start of the image's
//! entrypoint opens first, in that order, so a mount can fetch them all at once before the first read
//! asks (a cold start is otherwise a chain of round trips, one per library the dynamic linker opens). The
//! same search runs from a file a mount opens cold ([`start_files`]): a program's or library's closure, or
//! a Python module's imports (`imports`).
//!
//! From the image config's Entrypoint + Cmd (resolved against its `PATH` and `WorkingDir`): the program;
//! for a script (`#!`) its interpreter, recursively (`#!/usr/bin/env NAME` searches `NAME` too), up to
//! [`MAX_SCRIPT_DEPTH`] levels; for an ELF file its interpreter (`PT_INTERP`), `/etc/ld.so.cache`, and the
//! closure of its `DT_NEEDED` libraries, searched as glibc's loader does: `DT_RPATH` (of the object, then
//! of the program, when the object has no `DT_RUNPATH`), `LD_LIBRARY_PATH` from the config's env,
//! `DT_RUNPATH`, the image's `/etc/ld.so.cache`, then the standard directories (`/usr/local/lib`, the multiarch `/lib/<triplet>` and
//! `/usr/lib/<triplet>`, `/lib64`, `/usr/lib64`, `/lib`, `/usr/lib`); `$ORIGIN` expands to the object's
//! directory, and a library of another ELF class or machine is passed over as the loader does. After a
//! program's libraries come the data files its start reads (see `runtime`): glibc's locale, character-set
//! and time-zone data, and for a CPython interpreter the modules it imports before the program's own code.
//!
//! The image is untrusted: paths resolve inside it (see `path`), every read is capped, and so are the reads
//! in all ([`MAX_READS`], [`MAX_BYTES`]) and the set ([`MAX_FILES`]). Whatever fails (a truncated ELF file, a missing
//! library, a read error) only leaves a file out: finding the set never fails the indexing.

mod elf;
mod imports;
pub(crate) mod ldcache;
mod next;
mod path;
mod pyc;
mod runtime;
mod search;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use clip_format::{Archive, DataRef, Ino, NodeKind, MAX_SCRIPT_LINE};
use futures::future::{join_all, BoxFuture};
use tracing::debug;

pub(crate) use elf::file_names as elf_names;
pub(crate) use imports::PYC_MAX;
pub use next::{next_files, KnownLoads};
use path::{join, resolve, DirCache, Found};
pub(crate) use pyc::imports as bytecode_imports;
use search::{expand_origin, split_list, standard_dirs};

/// Most files in a startup set.
pub const MAX_FILES: usize = 256;
/// Most reads of file bytes while finding a set (each at most [`HEAD`] or an ELF section's cap).
pub const MAX_READS: usize = 2048;
/// Most bytes asked for in all those reads.
pub const MAX_BYTES: u64 = 64 << 20;
/// Script interpreters followed (`#!` of a `#!`…), as Linux's binfmt recursion limit.
pub const MAX_SCRIPT_DEPTH: usize = 4;
/// Bytes read from the start of each candidate file: the ELF and program headers, or a `#!` line.
const HEAD: u64 = 16 << 10;
/// The `PATH` a runtime uses when the image's env sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A read failure of [`FileBytes`] (only logged: it leaves a file out of the set).
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// Reads bytes of the files of an index being built (through its spans, from the image's layers).
pub trait FileBytes: Send + Sync {
    /// Up to `len` bytes of the file at `data` from `offset` (fewer at the file's end).
    fn read<'a>(&'a self, data: DataRef, offset: u64, len: u64) -> BoxFuture<'a, Result<Vec<u8>, ReadError>>;
}

/// The startup set of the image indexed in `archive` (see the [module docs](self)): regular files, the
/// program first, at most [`MAX_FILES`]. Empty when the config names no program or it is not in the image.
///
/// What `known` says of the image's programs, libraries and scripts (recorded as its layers streamed by) is
/// taken instead of reading them: for an image whose layers were all recorded so, only the loader's cache
/// is read.
pub async fn startup_set(archive: &Archive, files: &dyn FileBytes, known: &KnownLoads) -> Vec<Ino> {
    let config = &archive.meta().config;
    let Some(program) = config.entrypoint.iter().chain(&config.cmd).next() else { return Vec::new() };
    let mut finder = Finder::new(archive, files);
    finder.known = Some(known);
    let mut programs = VecDeque::new();
    programs.extend(finder.find_program(program.as_bytes()).map(|p| (p, 0)));
    while let Some((found, depth)) = programs.pop_front() {
        if !finder.add(&found) {
            continue;
        }
        let Some(head) = finder.head(&found).await else { continue };
        match head {
            Head::Script(line) if depth < MAX_SCRIPT_DEPTH => {
                programs.extend(finder.interpreters(&line).into_iter().map(|p| (p, depth + 1)));
            }
            Head::Elf(elf) => finder.program_start(&found, &elf).await,
            Head::Script(_) | Head::Other => {}
        }
    }
    debug!(files = finder.set.len(), reads = finder.reads, bytes = finder.bytes, "startup set found");
    finder.set
}

/// What opening `file` at `path` ([`Archive::path_of`]) is about to load besides the file itself, each
/// file sent to `found` as soon as it is found, so a caller can start loading a level while the next is
/// looked for. Returns how many were found.
/// - An ELF program or library: what its start reads, as for a startup set's program: its libraries, a level
///   of the closure at a time, then the data files (see the [module docs](self)).
/// - A CPython module's cached bytecode (`…/__pycache__/NAME.cpython-XY.pyc`): the modules it imports as it
///   runs, and theirs, a level at a time, with the libraries of the extension modules among them.
/// - Anything else: nothing.
///
/// When the index records what `file` loads next (its `NEXT` section, see [`next_files`]), that closure is
/// taken instead, all at once, without reading a file.
pub async fn start_files(
    archive: &Archive,
    files: &dyn FileBytes,
    file: Ino,
    path: Vec<u8>,
    found: Box<dyn FnMut(Ino) + Send + '_>,
) -> usize {
    let Ok(node) = archive.node(file) else { return 0 };
    let file = Found { node, path };
    let mut finder = Finder::new(archive, files);
    finder.add(&file);
    // The file itself is being loaded by whoever opened it.
    finder.found = found;
    if finder.next_closure(file.node.ino).await {
        // Known from the index: the whole closure at once.
    } else if is_bytecode(&file.path) {
        finder.import_closure(&file).await;
    } else if let Some(Head::Elf(elf)) = finder.head(&file).await {
        finder.program_start(&file, &elf).await;
    }
    finder.set.len() - 1
}

/// Whether [`start_files`] may find anything from the file at `path` (`executable`: its mode has an execute
/// bit): a program, a shared object (`….so`, `….so.N…`) or CPython bytecode; for other files it is not worth
/// a look.
pub fn starts_more(path: &[u8], executable: bool) -> bool {
    executable || is_shared_object(path) || is_bytecode(path)
}

/// Whether `path` names a shared object by its file name (`….so`, `….so.N…`): a library or an extension
/// module.
pub(crate) fn is_shared_object(path: &[u8]) -> bool {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    name.ends_with(b".so") || name.windows(5).any(|w| w.starts_with(b".so.") && w[4].is_ascii_digit())
}

/// Whether `path` names CPython bytecode cached beside a module's source (`…/__pycache__/….pyc`), what
/// [`start_files`] follows the imports of.
pub(crate) fn is_bytecode(path: &[u8]) -> bool {
    path.ends_with(b".pyc") && path.windows(13).any(|w| w == b"/__pycache__/")
}

/// What the first bytes of a file say it is.
#[derive(Clone)]
enum Head {
    /// A `#!` script: its first line, without `#!`.
    Script(Vec<u8>),
    Elf(Elf),
    Other,
}

/// An ELF file as a search knows it.
#[derive(Clone)]
enum Elf {
    /// Its program headers: the interpreter and the dynamic section are read where they say.
    Headers(elf::Headers),
    /// What its layer's streaming recorded ([`KnownLoads`]): nothing more to read.
    Known { kind: elf::Kind, interp: Option<Vec<u8>>, names: elf::Names },
}

impl Elf {
    fn kind(&self) -> elf::Kind {
        match self {
            Elf::Headers(h) => h.kind,
            Elf::Known { kind, .. } => *kind,
        }
    }

    /// The program headers, when the rest is still to be read.
    fn headers(&self) -> Option<&elf::Headers> {
        match self {
            Elf::Headers(h) => Some(h),
            Elf::Known { .. } => None,
        }
    }
}

struct Finder<'a> {
    archive: &'a Archive,
    files: &'a dyn FileBytes,
    /// The program's working directory.
    cwd: Vec<u8>,
    path: Vec<Vec<u8>>,
    ld_library_path: Vec<Vec<u8>>,
    set: Vec<Ino>,
    in_set: HashSet<Ino>,
    /// What each file read so far turned out to be (`None`: unreadable).
    heads: HashMap<Ino, Option<Head>>,
    reads: usize,
    /// Bytes asked for so far.
    bytes: u64,
    /// The image's `/etc/ld.so.cache`, read when the first library is searched.
    ld_cache: Option<ldcache::LdCache>,
    /// The directories resolved so far, and their names: each library's and each module's search tries the
    /// same few.
    dirs: DirCache,
    /// Told of each file as it joins the set.
    found: Box<dyn FnMut(Ino) + Send + 'a>,
    /// What the layers' streaming recorded of the image's files, taken instead of reading them.
    known: Option<&'a KnownLoads>,
}

impl<'a> Finder<'a> {
    /// A finder over the image in `archive`, with the `PATH`, `LD_LIBRARY_PATH` and working directory of its
    /// config; it tells no one of the files it finds until given a `found`.
    fn new(archive: &'a Archive, files: &'a dyn FileBytes) -> Self {
        let config = &archive.meta().config;
        let env = |key: &str| {
            config
                .env
                .iter()
                .rev()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::as_bytes)
        };
        Finder {
            archive,
            files,
            cwd: config.working_dir.as_deref().filter(|d| d.starts_with('/')).unwrap_or("/").as_bytes().to_vec(),
            path: split_list(env("PATH").unwrap_or(DEFAULT_PATH.as_bytes())),
            ld_library_path: split_list(env("LD_LIBRARY_PATH").unwrap_or_default()),
            set: Vec::new(),
            in_set: HashSet::new(),
            heads: HashMap::new(),
            reads: 0,
            bytes: 0,
            ld_cache: None,
            dirs: DirCache::default(),
            found: Box::new(|_| {}),
            known: None,
        }
    }

    /// What a start of the ELF program `program` reads next: its libraries, then the data files.
    async fn program_start(&mut self, program: &Found, elf: &Elf) {
        self.elf_closure(program, elf).await;
        self.python_start(program);
    }

    /// Adds a file to the set; false when it is not a regular file, is in already, or the set is full.
    fn add(&mut self, found: &Found) -> bool {
        let ok =
            found.node.kind() == NodeKind::File && self.set.len() < MAX_FILES && self.in_set.insert(found.node.ino);
        if ok {
            self.set.push(found.node.ino);
            (self.found)(found.node.ino);
        }
        ok
    }

    /// Up to `len` bytes of `found` from `offset`; `None` once the read budget is spent or on an error.
    async fn read(&mut self, found: &Found, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.read_all(vec![(found, Some(offset..offset.saturating_add(len)))]).await.pop().flatten()
    }

    /// Counts a read of up to `len` bytes of `found` from `offset` against the budget: where its data is and
    /// how much to read, or `None` when the budget is spent (or the file has no data there).
    fn spend(&mut self, found: &Found, offset: u64, len: u64) -> Option<(DataRef, u64)> {
        let data = found.node.data_ref()?;
        let len = len.min(found.node.size.saturating_sub(offset));
        if self.reads >= MAX_READS || self.bytes.saturating_add(len) > MAX_BYTES {
            return None;
        }
        self.reads += 1;
        self.bytes += len;
        Some((data, len))
    }

    async fn head(&mut self, found: &Found) -> Option<Head> {
        if let Some(head) = self.heads.get(&found.node.ino) {
            return head.clone();
        }
        let head = match self.known_head(found) {
            Some(head) => Some(head),
            None => self.read(found, 0, HEAD).await.map(|bytes| parse_head(&bytes, found.node.size)),
        };
        self.heads.insert(found.node.ino, head.clone());
        head
    }

    /// A program named as in an exec: a path (relative to the working directory), or a name searched in
    /// `PATH` (an executable regular file).
    fn find_program(&self, name: &[u8]) -> Option<Found> {
        if name.contains(&b'/') {
            return resolve(self.archive, &self.cwd, name).filter(|f| f.node.kind() == NodeKind::File);
        }
        self.path.iter().find_map(|dir| {
            resolve(self.archive, &self.cwd, &join(dir, name))
                .filter(|f| f.node.kind() == NodeKind::File && f.node.mode & 0o111 != 0)
        })
    }

    /// The interpreters a `#!` line runs: the interpreter, and for `env NAME` the program `NAME` too.
    fn interpreters(&self, line: &[u8]) -> Vec<Found> {
        let mut words = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        let Some(interp) = words.next() else { return Vec::new() };
        let mut out: Vec<Found> = self.find_program_path(interp).into_iter().collect();
        if interp.rsplit(|&b| b == b'/').next() == Some(b"env") {
            let name = words.find(|w| !w.starts_with(b"-") && !w.contains(&b'='));
            out.extend(name.and_then(|n| self.find_program(n)));
        }
        out
    }

    /// An interpreter path of a `#!` line (never searched in `PATH`).
    fn find_program_path(&self, path: &[u8]) -> Option<Found> {
        resolve(self.archive, &self.cwd, path).filter(|f| f.node.kind() == NodeKind::File)
    }

    /// Adds the ELF interpreter of `program`, the loader's cache and the closure of its libraries, level by
    /// level: the libraries one level needs are read all at once (their heads, then their dynamic sections,
    /// then their string tables), so finding the set takes a few round trips however many libraries it has.
    async fn elf_closure(&mut self, program: &Found, elf: &Elf) {
        let interp = match elf {
            Elf::Headers(h) => match h.interp.clone() {
                Some(range) => self.read(program, range.start, range.end - range.start).await,
                None => None,
            }
            .and_then(|bytes| elf::interpreter(&bytes)),
            Elf::Known { interp, .. } => interp.clone(),
        };
        let dynamic = interp.is_some();
        if let Some(found) = interp.and_then(|interp| resolve(self.archive, b"/", &interp)) {
            self.add(&found);
        }
        let names = self.names(vec![(program.clone(), elf.clone())]).await.pop().unwrap_or_default();
        if dynamic || !names.needed.is_empty() {
            for file in [&b"/etc/ld.so.preload"[..], b"/etc/ld.so.cache"] {
                if let Some(found) = resolve(self.archive, b"/", file) {
                    self.add(&found);
                }
            }
        }
        let program_rpath = if names.runpath.is_empty() { names.rpath.clone() } else { Vec::new() };
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut libc_dir = None;
        let mut level = vec![(program.dir(), names)];
        while !level.is_empty() {
            // Every place the level's new names may be found (each name once, searched from the first object
            // that needs it), their heads read at once; then each name takes its first candidate that is a
            // library of the program's kind, in the loader's order, from what was read.
            let mut wanted = Vec::new();
            for (origin, names) in &level {
                for name in &names.needed {
                    if seen.insert(name.clone()) {
                        wanted.push((name, self.candidates(name, origin, names, &program_rpath, elf.kind()).await));
                    }
                }
            }
            self.read_heads(wanted.iter().flat_map(|(_, found)| found.iter().cloned()).collect()).await;
            let mut libs = Vec::new();
            for (name, candidates) in wanted {
                let mut lib = None;
                for found in candidates {
                    lib = self.library_of_kind(found, elf.kind()).await;
                    if lib.is_some() {
                        break;
                    }
                }
                let Some(lib) = lib else {
                    debug!(library = %String::from_utf8_lossy(name), "a needed library is not in the image");
                    continue;
                };
                if name.as_slice() == b"libc.so.6" {
                    libc_dir = Some(lib.0.dir());
                }
                if self.add(&lib.0) {
                    libs.push(lib);
                }
            }
            let dirs: Vec<Vec<u8>> = libs.iter().map(|(lib, _)| lib.dir()).collect();
            level = dirs.into_iter().zip(self.names(libs).await).collect();
        }
        if let Some(dir) = libc_dir {
            self.glibc_data(&dir);
        }
    }

    /// The names in the dynamic sections of `files`, in their order: those known as they are, the others'
    /// dynamic sections read at once, then their string tables.
    async fn names(&mut self, files: Vec<(Found, Elf)>) -> Vec<elf::Names> {
        let wanted = files.iter().map(|(file, e)| (file, e.headers().and_then(|h| h.dynamic.clone())));
        let sections = self.read_all(wanted.collect()).await;
        let dynamics: Vec<_> = files
            .iter()
            .zip(sections)
            .map(|((file, e), bytes)| Some(e.headers()?.dynamic(&bytes?, file.node.size)))
            .map(|d| d.filter(|d| d.loads_libraries() && d.strtab.is_some()))
            .collect();
        let wanted =
            files.iter().zip(&dynamics).map(|((file, _), d)| (file, d.as_ref().and_then(|d| d.strtab.clone())));
        let tables = self.read_all(wanted.collect()).await;
        files
            .iter()
            .zip(dynamics.iter().zip(tables))
            .map(|((_, e), (d, bytes))| match (e, d, bytes) {
                (Elf::Known { names, .. }, _, _) => names.clone(),
                (_, Some(d), Some(bytes)) => d.strings(&bytes),
                _ => elf::Names::default(),
            })
            .collect()
    }

    /// Reads a range of each file at once (`None` for a file without one, past the budget, or on an error).
    async fn read_all(&mut self, wanted: Vec<(&Found, Option<Range<u64>>)>) -> Vec<Option<Vec<u8>>> {
        let reads: Vec<_> = wanted
            .into_iter()
            .map(|(file, range)| {
                let range = range.filter(|r| r.start < r.end)?;
                self.spend(file, range.start, range.end - range.start).map(|(data, len)| (file, data, range.start, len))
            })
            .collect();
        let files = self.files;
        join_all(reads.iter().map(|r| async move {
            let (file, data, offset, len) = (*r)?;
            files
                .read(data, offset, len)
                .await
                .map_err(|error| {
                    let path = String::from_utf8_lossy(&file.path);
                    debug!(%path, offset, len, error, "reading a startup file failed; leaving it out");
                })
                .ok()
        }))
        .await
    }

    /// Reads the heads of `files` not read (or known) yet, all at once.
    async fn read_heads(&mut self, files: Vec<Found>) {
        let mut todo: Vec<Found> = Vec::new();
        for file in files {
            if file.node.kind() != NodeKind::File || self.heads.contains_key(&file.node.ino) {
                continue;
            }
            if let Some(head) = self.known_head(&file) {
                self.heads.insert(file.node.ino, Some(head));
            } else if !todo.iter().any(|t| t.node.ino == file.node.ino) {
                todo.push(file);
            }
        }
        let bytes = self.read_all(todo.iter().map(|f| (f, Some(0..HEAD))).collect()).await;
        for (file, bytes) in todo.iter().zip(bytes) {
            self.heads.insert(file.node.ino, bytes.map(|b| parse_head(&b, file.node.size)));
        }
    }

    /// The files the loader may take for library `name` needed by the object in `origin` with `names`, in
    /// its search order: `DT_RPATH` (of the object, then of the program, unless the object has a
    /// `DT_RUNPATH`), `LD_LIBRARY_PATH`, `DT_RUNPATH`, the image's `/etc/ld.so.cache`, the standard
    /// directories.
    async fn candidates(
        &mut self,
        name: &[u8],
        origin: &[u8],
        names: &elf::Names,
        program_rpath: &[Vec<u8>],
        kind: elf::Kind,
    ) -> Vec<Found> {
        if name.contains(&b'/') {
            return resolve(self.archive, &self.cwd, name).into_iter().collect();
        }
        let mut first: Vec<Vec<u8>> = Vec::new();
        if names.runpath.is_empty() {
            first.extend(names.rpath.iter().chain(program_rpath).cloned());
        }
        first.extend(self.ld_library_path.iter().cloned());
        first.extend(names.runpath.iter().cloned());
        let mut tried = HashSet::new();
        let mut found = self.in_dirs(name, origin, first, &mut tried);
        let cached = self.ld_cache().await.get(name).cloned().unwrap_or_default();
        found.extend(cached.iter().filter_map(|path| resolve(self.archive, b"/", path)));
        found.extend(self.in_dirs(name, origin, standard_dirs(kind), &mut tried));
        found
    }

    /// `dir/name` for each of `dirs` (not `tried` yet) that exists.
    fn in_dirs(&self, name: &[u8], origin: &[u8], dirs: Vec<Vec<u8>>, tried: &mut HashSet<Vec<u8>>) -> Vec<Found> {
        dirs.into_iter()
            .filter_map(|dir| expand_origin(&dir, origin))
            .filter(|dir| tried.insert(dir.clone()))
            .filter_map(|dir| self.dirs.dir(self.archive, &self.cwd, &dir))
            .filter_map(|dir| self.dirs.find_in(self.archive, &dir, name))
            .collect()
    }

    /// The image's `/etc/ld.so.cache` (empty when it has none, or it is unreadable).
    async fn ld_cache(&mut self) -> &ldcache::LdCache {
        if self.ld_cache.is_none() {
            let found = resolve(self.archive, b"/", b"/etc/ld.so.cache").filter(|f| f.node.kind() == NodeKind::File);
            let known = found.as_ref().and_then(|f| self.known?.loader_cache(f.node.data_ref()?));
            let cache = match (known, found) {
                (Some(cache), _) => cache,
                (None, Some(found)) => {
                    ldcache::parse(&self.read(&found, 0, ldcache::MAX_CACHE).await.unwrap_or_default())
                }
                (None, None) => ldcache::LdCache::default(),
            };
            self.ld_cache = Some(cache);
        }
        self.ld_cache.get_or_insert_default()
    }

    /// `found` as an ELF file, when it is one of `kind`.
    async fn library_of_kind(&mut self, found: Found, kind: elf::Kind) -> Option<(Found, Elf)> {
        if found.node.kind() != NodeKind::File {
            return None;
        }
        match self.head(&found).await? {
            Head::Elf(e) if e.kind() == kind => Some((found, e)),
            _ => None,
        }
    }
}

/// What the first bytes of a file of `size` bytes say it is.
fn parse_head(bytes: &[u8], size: u64) -> Head {
    match script_line(bytes) {
        Some(line) => Head::Script(line.to_vec()),
        None => elf::headers(bytes, size).map_or(Head::Other, |h| Head::Elf(Elf::Headers(h))),
    }
}

/// The `#!` line a script's first bytes `bytes` start with, without `#!` (as much of it as Linux reads).
pub(crate) fn script_line(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(b"#!")?;
    rest[..rest.len().min(MAX_SCRIPT_LINE - 2)].split(|&b| b == b'\n').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_a_search_starts_from_are_told_by_name_and_mode() {
        let shared =
            [&b"/usr/lib/libc.so.6"[..], b"/lib/x86_64-linux-gnu/libz.so.1.2.13", b"/opt/_json.cpython-311.so"];
        let bytecode = [&b"/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"[..]];
        for name in shared.into_iter().chain(bytecode) {
            assert!(starts_more(name, false), "{}", String::from_utf8_lossy(name));
        }
        let other = [&b"/usr/bin/python3"[..], b"/etc/ld.so.cache", b"/usr/lib/so/readme", b"/x.sox", b"/opt/m.pyc"];
        for name in other {
            assert!(!starts_more(name, false), "{}", String::from_utf8_lossy(name));
        }
        assert!(starts_more(b"/usr/bin/python3", true));
    }
}
