//! What a layer part records of what its files load, read as the layer streams by (the optional `LOAD`
//! section, JSON): for each CPython module's cached bytecode the imports the module runs as it is
//! imported, and for each shared object (a library or an extension module) the names its ELF file gives
//! the loader. An image's index resolves them against its merged tree into what opening each file loads
//! next (see [`crate::NextFiles`]) without reading any of those files again.

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

/// The names the ELF file of a shared object in one tar entry gives the loader, for its search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedObjectNames {
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
}

/// All a part records of what its layer's files load, in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLoads {
    pub bytecode: Vec<ModuleImports>,
    pub shared_objects: Vec<SharedObjectNames>,
}

impl PartLoads {
    pub fn is_empty(&self) -> bool {
        self.bytecode.is_empty() && self.shared_objects.is_empty()
    }
}

/// The section's bytes.
pub(crate) fn encode(loads: &PartLoads) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(loads).map_err(FormatError::Meta)
}

/// Reads the section: `None` unless it holds at most [`MAX_LAYER_MODULES`] files of each kind, each with at
/// most [`MAX_MODULE_IMPORTS`] imports or names, at offsets inside a layer of `uncompressed_size` bytes.
pub(crate) fn decode(raw: &[u8], uncompressed_size: u64) -> Option<PartLoads> {
    let loads: PartLoads = serde_json::from_slice(raw).ok()?;
    let inside = |offset: u64| offset < uncompressed_size;
    let bytecode = |m: &ModuleImports| m.imports.len() <= MAX_MODULE_IMPORTS && inside(m.data_offset);
    let shared = |e: &SharedObjectNames| {
        [&e.needed, &e.runpath, &e.rpath].iter().all(|l| l.len() <= MAX_MODULE_IMPORTS) && inside(e.data_offset)
    };
    let counts = loads.bytecode.len() <= MAX_LAYER_MODULES && loads.shared_objects.len() <= MAX_LAYER_MODULES;
    (counts && loads.bytecode.iter().all(bytecode) && loads.shared_objects.iter().all(shared)).then_some(loads)
}
