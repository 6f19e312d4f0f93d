//! What a layer part records of what its files load, read as the layer streams by (the optional `LOAD`
//! section, JSON): for each CPython module's cached bytecode the imports the module runs as it is
//! imported; for each ELF file (a library, an extension module or a program) the names it gives the
//! loader; for each executable script its `#!` line; for the loader's cache, what it maps. An image's
//! index resolves them against its merged tree into what opening each file loads next (see
//! [`crate::NextFiles`]) and into its startup set without reading any of those files again.

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// The most imports, or library names, recorded for one file.
pub const MAX_MODULE_IMPORTS: usize = 256;
/// The most files of each kind recorded for one layer.
pub const MAX_LAYER_MODULES: usize = 1 << 16;

/// One `import` a module runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleImport {
    /// The dotted module name (empty for `from . import x`).
    pub name: String,
    /// 0 for an absolute import, else how many packages up a relative one starts (`from ..x` is 2).
    pub level: u32,
    /// The names of `from NAME import a, b` (each may be a submodule).
    pub fromlist: Vec<String>,
}

/// The imports of the bytecode in one tar entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleImports {
    /// Where the entry's bytes start in the uncompressed layer (its [`crate::TarEntry::data_offset`]).
    pub data_offset: u64,
    /// The CPython version the bytecode is for (`(3, 11)`).
    pub version: (u32, u32),
    pub imports: Vec<ModuleImport>,
}

/// The names the ELF file in one tar entry (a shared object, or a program: a file with an execute bit) gives
/// the loader, for its search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElfNames {
    /// Where the entry's bytes start in the uncompressed layer.
    pub data_offset: u64,
    /// The ELF class (64-bit or not), byte order and machine (`e_machine`): a library must match them, and
    /// they say which multiarch directories the loader searches.
    pub class64: bool,
    pub big_endian: bool,
    pub machine: u16,
    /// `DT_NEEDED`, `DT_RUNPATH` and `DT_RPATH` (names that are not UTF-8 are left out).
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
    pub rpath: Vec<String>,
    /// The interpreter `PT_INTERP` names (a dynamic program's loader), when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interp: Option<String>,
}

/// The `#!` line of an executable script in one tar entry: what runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptLine {
    /// Where the entry's bytes start in the uncompressed layer.
    pub data_offset: u64,
    /// The first line without `#!` (at most [`MAX_SCRIPT_LINE`] bytes; a line that is not UTF-8 is not
    /// recorded).
    pub line: String,
}

/// The longest `#!` line Linux reads (with the `#!`).
pub const MAX_SCRIPT_LINE: usize = 256;

/// What the loader's cache (`etc/ld.so.cache`) in one tar entry maps: each library name to the paths it
/// lists for it, in its order, the names sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderCache {
    /// Where the entry's bytes start in the uncompressed layer.
    pub data_offset: u64,
    pub libraries: Vec<(String, Vec<String>)>,
}

/// All a part records of what its layer's files load, in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLoads {
    pub bytecode: Vec<ModuleImports>,
    pub elf_files: Vec<ElfNames>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<ScriptLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loader_caches: Vec<LoaderCache>,
}

impl PartLoads {
    pub fn is_empty(&self) -> bool {
        self.bytecode.is_empty()
            && self.elf_files.is_empty()
            && self.scripts.is_empty()
            && self.loader_caches.is_empty()
    }
}

/// The section's bytes.
pub(crate) fn encode(loads: &PartLoads) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(loads).map_err(FormatError::Meta)
}

/// Reads the section: `None` unless it holds at most [`MAX_LAYER_MODULES`] files of each kind, each with at
/// most [`MAX_MODULE_IMPORTS`] imports or names (a script line at most [`MAX_SCRIPT_LINE`] bytes), at
/// offsets inside a layer of `uncompressed_size` bytes.
pub(crate) fn decode(raw: &[u8], uncompressed_size: u64) -> Option<PartLoads> {
    let loads: PartLoads = serde_json::from_slice(raw).ok()?;
    let inside = |offset: u64| offset < uncompressed_size;
    let bytecode = |m: &ModuleImports| m.imports.len() <= MAX_MODULE_IMPORTS && inside(m.data_offset);
    let elf = |e: &ElfNames| {
        [&e.needed, &e.runpath, &e.rpath].iter().all(|l| l.len() <= MAX_MODULE_IMPORTS) && inside(e.data_offset)
    };
    let script = |s: &ScriptLine| s.line.len() <= MAX_SCRIPT_LINE && inside(s.data_offset);
    let cache = |c: &LoaderCache| c.libraries.len() <= MAX_LAYER_MODULES && inside(c.data_offset);
    let counts = [loads.bytecode.len(), loads.elf_files.len(), loads.scripts.len(), loads.loader_caches.len()]
        .iter()
        .all(|&n| n <= MAX_LAYER_MODULES);
    let each = loads.bytecode.iter().all(bytecode)
        && loads.elf_files.iter().all(elf)
        && loads.scripts.iter().all(script)
        && loads.loader_caches.iter().all(cache);
    (counts && each).then_some(loads)
}
