//! What importing a CPython module loads next: the closure of the modules its bytecode imports at module
//! level (see `pyc`), found as CPython's path finder finds them — in the module's own package for a
//! relative import, else in the directory its top-level package is in (an application's own), then the
//! interpreter's library, `lib-dynload` and site directories — a level at a
//! time, each level's bytecode read at once. Python imports them one after another (each a round trip on a
//! cold mount); knowing them from the first module lets them all load together. The libraries of an
//! extension module are followed as a program's are (the module itself the loader maps, not reads whole). Modules the interpreter has frozen in (3.11 on) are left out:
//! it never reads their files.

use std::collections::HashSet;

use clip_format::{Next, NodeKind};
use tracing::debug;

use super::path::{parent, Found};
use super::runtime::python_roots;
use super::{pyc, Finder, Head};

/// The most bytes of one module's bytecode read to find its imports.
pub(crate) const PYC_MAX: u64 = 4 << 20;
/// The largest extension module a `NEXT` edge loads whole (the loader maps and relocates it as the import
/// runs); a larger one is only looked through, for its libraries.
const EXTENSION_LOAD_MAX: u64 = 4 << 20;
/// The most imports resolved in one search (each a few lookups per directory of `sys.path`).
const MAX_RESOLVED: usize = 4096;
/// Modules CPython 3.11 on runs from copies frozen into the interpreter (its start-up modules, and what
/// `-m` and `importlib.util` need), not from the library's files.
const FROZEN: [&str; 18] = [
    "abc",
    "codecs",
    "io",
    "_collections_abc",
    "_sitebuiltins",
    "genericpath",
    "ntpath",
    "posixpath",
    "os",
    "os.path",
    "site",
    "stat",
    "importlib._bootstrap",
    "importlib._bootstrap_external",
    "importlib.machinery",
    "importlib.util",
    "zipimport",
    "runpy",
];

/// Where a CPython interpreter looks for modules, from the path of a module's cached bytecode.
struct Interpreter {
    version: (u32, u32),
    /// `sys.path`: the library, `lib-dynload`, the site directories.
    roots: Vec<Vec<u8>>,
    /// File name endings of extension modules, in the order CPython tries them.
    extensions: Vec<String>,
}

/// The file a module is run from.
enum ModuleFile {
    /// Cached bytecode, whose imports are followed.
    Bytecode(Found),
    /// Source without bytecode beside it (loaded, not followed).
    Source(Found),
    /// An extension module (a shared library).
    Extension(Found),
    /// A namespace package: a directory without a file.
    Namespace,
}

/// A module found: its file and, for a package, its directory.
struct Module {
    file: ModuleFile,
    package: Option<Vec<u8>>,
}

impl Finder<'_> {
    /// Adds the closure of the modules that `module` (cached bytecode at a `…/__pycache__/NAME.TAG.pyc`
    /// path) imports, but not its extension modules, only their libraries.
    pub(super) async fn import_closure(&mut self, module: &Found) {
        let Some(interpreter) = Interpreter::of_bytecode(&module.path) else { return };
        let mut level = vec![module.clone()];
        let mut libraries_of = HashSet::new();
        let mut budget = MAX_RESOLVED;
        while !level.is_empty() {
            let bytes = self.read_all(level.iter().map(|f| (f, Some(0..PYC_MAX))).collect()).await;
            let mut modules = Vec::new();
            for (file, bytes) in level.iter().zip(bytes) {
                if let Some((version, imports)) = bytes.as_deref().and_then(pyc::imports) {
                    modules
                        .extend(self.imported(&interpreter, file, version, &imports, &mut budget).unwrap_or_default());
                }
            }
            let (mut next, mut extensions) = (Vec::new(), Vec::new());
            for module in modules {
                match module.file {
                    ModuleFile::Bytecode(f) if self.add(&f) => next.push(f),
                    // Mapped by the loader a page at a time, not read whole: only its libraries are looked for.
                    ModuleFile::Extension(f) if libraries_of.insert(f.node.ino) => extensions.push(f),
                    ModuleFile::Source(f) => {
                        self.add(&f);
                    }
                    _ => {}
                }
            }
            for ext in extensions {
                if let Some(Head::Elf(elf)) = self.head(&ext).await {
                    self.elf_closure(&ext, &elf).await;
                }
            }
            level = next;
        }
        if budget == 0 {
            debug!(module = %String::from_utf8_lossy(&module.path), "import search cut short");
        }
    }

    /// The modules the `imports` of `file`, bytecode of CPython `version`, run, each import taken from
    /// `budget` (none once it is spent); `None` when `py` is another version.
    fn imported(
        &self,
        py: &Interpreter,
        file: &Found,
        version: (u32, u32),
        imports: &[pyc::Import],
        budget: &mut usize,
    ) -> Option<Vec<Module>> {
        if version != py.version {
            return None;
        }
        // The directory of the module's source: bytecode is cached in its `__pycache__`, or (without source)
        // beside it.
        let dir = parent(&file.path);
        let package = if dir.ends_with(b"/__pycache__") { parent(&dir) } else { dir };
        let roots = self.search_path(py, &package);
        let taken = imports.len().min(*budget);
        *budget -= taken;
        Some(imports[..taken].iter().flat_map(|import| self.import(py, &roots, &package, import)).collect())
    }

    /// What importing the module whose bytecode `file` (of CPython `version`) holds loads next, for the
    /// index's `NEXT` section: the bytecode or source of each module its `imports` run, and each extension
    /// module among them, looked through (the mount looks for its libraries). `None` when `file` is not
    /// bytecode an interpreter reads.
    pub(super) fn import_edges(&self, file: &Found, version: (u32, u32), imports: &[pyc::Import]) -> Option<Vec<Next>> {
        let interpreter = Interpreter::of_bytecode(&file.path)?;
        let mut budget = MAX_RESOLVED;
        let modules = self.imported(&interpreter, file, version, imports, &mut budget)?;
        let mut edges = Vec::new();
        for module in modules {
            let edge = match module.file {
                ModuleFile::Bytecode(f) | ModuleFile::Source(f) => Next::Load(f.node.ino),
                ModuleFile::Extension(f) if f.node.size <= EXTENSION_LOAD_MAX => Next::Load(f.node.ino),
                ModuleFile::Extension(f) => Next::Through(f.node.ino),
                ModuleFile::Namespace => continue,
            };
            if edge.ino() != file.node.ino && !edges.contains(&edge) {
                edges.push(edge);
            }
        }
        Some(edges)
    }

    /// The modules one `import` runs, parents first: for `import a.b`, `a` then `a.b`; for `from P import
    /// x`, also `P.x` when that is a module.
    /// `dir` is the directory of the importing module's source (its package), `roots` where absolute imports
    /// are looked for.
    fn import(&self, py: &Interpreter, roots: &[Vec<u8>], dir: &[u8], import: &pyc::Import) -> Vec<Module> {
        let mut out = Vec::new();
        let parts: Vec<&str> = import.name.split('.').filter(|p| !p.is_empty()).collect();
        // Where the first name is looked for, and the dotted name of what is imported so far.
        let (mut dirs, mut dotted) = if import.level > 0 {
            // The package a relative import starts from: the module's own (its directory), then up.
            let mut base = dir.to_vec();
            for _ in 1..import.level {
                base = parent(&base);
            }
            (vec![base], None)
        } else {
            (roots.to_vec(), Some(String::new()))
        };
        for part in &parts {
            if let Some(name) = dotted.as_mut() {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(part);
                if py.version >= (3, 11) && FROZEN.contains(&name.as_str()) {
                    return out;
                }
            }
            let Some(module) = self.find_module(py, &dirs, part) else { return out };
            let Some(package) = module.package.clone() else {
                out.push(module);
                return out;
            };
            dirs = vec![package];
            out.push(module);
        }
        // `from P import x`: `x` may be a submodule of the package `P` (a relative `from . import x` names
        // the module's own package).
        if !import.fromlist.is_empty() && (parts.is_empty() || out.last().is_some_and(|m| m.package.is_some())) {
            for name in &import.fromlist {
                if let Some(module) = self.find_module(py, &dirs, name) {
                    out.push(module);
                }
            }
        }
        out
    }

    /// Where a module in `dir` looks for absolute imports: the directory its top-level package is in (the
    /// packages above it have `__init__`; Python found the package there, so that is on its path: an
    /// application's own directory, say), then the interpreter's `sys.path`.
    fn search_path(&self, py: &Interpreter, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut top = dir.to_vec();
        let is_package =
            |dir: &[u8]| self.dirs.dir(self.archive, b"/", dir).and_then(|d| self.module_file(py, &d, "__init__"));
        while top != b"/" && is_package(&top).is_some() {
            top = parent(&top);
        }
        let mut roots = py.roots.clone();
        if !roots.contains(&top) {
            roots.insert(0, top);
        }
        roots
    }

    /// The module `name` in the first of `dirs` that has it, as CPython's path finder takes it there: a
    /// package (a directory with `__init__`), an extension module, source, bytecode alone; a directory
    /// without `__init__` is a namespace package when no later directory has the module.
    fn find_module(&self, py: &Interpreter, dirs: &[Vec<u8>], name: &str) -> Option<Module> {
        if name.is_empty() || name.contains('/') || name == ".." {
            return None;
        }
        let mut namespace = None;
        for dir in dirs {
            // Most roots have nothing of the name: told from the directory's names, without a lookup.
            let Some(d) = self.dirs.dir(self.archive, b"/", dir) else { continue };
            if !self.dirs.may_have_stem(self.archive, &d, name.as_bytes()) {
                continue;
            }
            let package = self.dirs.find_in(self.archive, &d, name.as_bytes());
            if let Some(p) = package.filter(|f| f.node.kind() == NodeKind::Dir) {
                if let Some(file) = self.module_file(py, &p, "__init__") {
                    return Some(Module { file, package: Some(p.path) });
                }
                namespace.get_or_insert(p.path);
            }
            if let Some(file) = self.module_file(py, &d, name) {
                return Some(Module { file, package: None });
            }
        }
        namespace.map(|dir| Module { file: ModuleFile::Namespace, package: Some(dir) })
    }

    /// The file of module `name` directly in `dir`: an extension, else the source's cached bytecode (or
    /// the source), else bytecode without source.
    fn module_file(&self, py: &Interpreter, dir: &Found, name: &str) -> Option<ModuleFile> {
        // Each name looked up in the directory itself, not from the root (a search tries some twenty names).
        let file = |name: &[u8]| self.dirs.find_in(self.archive, dir, name).filter(|f| f.node.kind() == NodeKind::File);
        // `NAME{ending}`: looked up only when the directory's kept names of stem `name` hold it (or are not
        // kept), not each of the twenty-odd endings formatted and looked up (what resolving the imports of
        // every module of an image spends its time on).
        let present = self.dirs.names_of_stem(self.archive, dir, name.as_bytes());
        let named = |ending: &str| {
            let there = present.as_ref().is_none_or(|names| {
                names.iter().any(|n| n.len() == name.len() + ending.len() && n.ends_with(ending.as_bytes()))
            });
            there.then(|| file(format!("{name}{ending}").as_bytes())).flatten()
        };
        if let Some(f) = py.extensions.iter().find_map(|ending| named(ending)) {
            return Some(ModuleFile::Extension(f));
        }
        let (major, minor) = py.version;
        if let Some(source) = named(".py") {
            let cached = format!("__pycache__/{name}.cpython-{major}{minor}.pyc");
            return Some(file(cached.as_bytes()).map_or(ModuleFile::Source(source), ModuleFile::Bytecode));
        }
        named(".pyc").map(ModuleFile::Bytecode)
    }
}

impl Interpreter {
    /// The interpreter whose cached bytecode is at `path` (`PREFIX/lib/pythonX.Y/…/__pycache__/NAME.cpython-XY.pyc`;
    /// bytecode elsewhere, in a `dist-packages` say, is taken as `/usr`'s interpreter's).
    fn of_bytecode(path: &[u8]) -> Option<Interpreter> {
        let path = std::str::from_utf8(path).ok()?;
        let (dir, name) = path.rsplit_once('/')?;
        if !dir.ends_with("/__pycache__") {
            return None;
        }
        let tag = name.strip_suffix(".pyc")?.split('.').find_map(|part| part.strip_prefix("cpython-"))?;
        if tag.len() < 2 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let version = (tag[..1].parse().ok()?, tag[1..].parse().ok()?);
        let lib = format!("/lib/python{}.{}/", version.0, version.1);
        let prefix = path.find(&lib).map_or("/usr", |i| &path[..i]);
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        let (major, minor) = version;
        let mut extensions: Vec<String> = ["x86_64", "aarch64", "i386", "arm", "powerpc64le", "s390x", "riscv64"]
            .iter()
            .flat_map(|arch| {
                ["gnu", "musl", "gnueabihf"].map(|abi| format!(".cpython-{major}{minor}-{arch}-linux-{abi}.so"))
            })
            .collect();
        extensions.extend([".abi3.so".to_string(), ".so".to_string()]);
        Some(Interpreter { version, roots: python_roots(prefix.as_bytes(), version), extensions })
    }
}
